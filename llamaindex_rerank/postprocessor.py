"""``CrossEncoderRerank``: a LlamaIndex ``BaseNodePostprocessor`` over a rag-rerank scorer."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.bridge.pydantic import ConfigDict, Field, field_serializer, field_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from rerank_core import Reranker, RerankResult
from rerank_core import adapters as shared

__all__ = ["CrossEncoderRerank"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

RETRIEVAL_SCORE_KEY = "retrieval_score"


@dataclass
class _Call:
    """One reranking call between its start and end events."""

    query: str
    texts: list[str]
    first: list[float] | None
    out: list[NodeWithScore] = field(default_factory=list)


class CrossEncoderRerank(BaseNodePostprocessor):
    """Rerank retrieved nodes with a cross-encoder (or any :class:`rerank_core.Reranker`).

    Returns new ``NodeWithScore`` objects, best first, whose ``score`` is the reranker's score;
    with ``keep_retrieval_score`` the first-stage score is kept in the returned node's
    ``metadata["retrieval_score"]``. The caller's nodes are never modified. Emits
    ``ReRankStartEvent``/``ReRankEndEvent`` and the ``CBEventType.RERANKING`` callback event.
    Nodes the scorer's policy leaves unscored (outside ``rerank_window``, or skipped by its gate)
    follow in their original order with their first-stage score. When no node reaches
    ``score_threshold`` the result is empty and the ``llamaindex_rerank.postprocessor`` logger
    says why at INFO (candidates, best score, threshold, score scale).

    Unknown fields are refused (``top_k=5`` is a ``ValidationError``). ``to_dict()`` and
    ``to_json()`` write the settings with the scorer's description and identity in place of the
    live scorer; ``from_dict`` of that record raises a ``ValueError`` that says to rebuild the
    scorer with :meth:`from_model`.

    Example:
        >>> rerank = CrossEncoderRerank.from_model(backend="onnx-int8", top_n=3)  # doctest: +SKIP
        >>> engine = index.as_query_engine(
        ...     similarity_top_k=50, node_postprocessors=[rerank]
        ... )  # doctest: +SKIP
    """

    model_config = ConfigDict(extra="forbid")

    scorer: Reranker = Field(description="The reranker that scores (query, node text) pairs.")
    top_n: int | None = Field(
        default=3, ge=1, description="Nodes to return, best first; None returns all."
    )
    score_threshold: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Drop nodes scoring below this (on the scorer's scale); None keeps all.",
    )
    score_margin: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Drop nodes scoring more than this below the best one; None keeps all.",
    )
    cut_at_largest_gap: bool = Field(
        default=False,
        description="Keep only the nodes above the largest drop between consecutive scores.",
    )
    keep_retrieval_score: bool = Field(
        default=False,
        description="Keep the first-stage score in metadata['retrieval_score'].",
    )
    fusion: str | None = Field(default=None, description=shared.FUSION_FIELD)

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialisation."""
        return "CrossEncoderRerank"

    @field_validator("scorer", mode="before")
    @classmethod
    def _live_scorer(cls, value: object) -> object:
        return shared.check_scorer(value, owner=cls.__name__)

    @field_serializer("scorer")
    def _describe_scorer(self, scorer: Reranker) -> dict[str, Any]:
        return shared.describe_scorer(scorer)

    @classmethod
    def from_model(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        backend: str = "auto",
        **options: Any,
    ) -> CrossEncoderRerank:
        """Build the scorer with :func:`rerank_core.registry.load_reranker` and wrap it.

        Args:
            model: Hugging Face id or local folder; ``None`` uses the bundled reranker.
            backend: A registered backend (``"torch"``, ``"torch-bf16"``, ``"onnx"``,
                ``"onnx-int8"``, ``"causal-lm"``, ...) or ``"auto"`` (default: ``causal-lm`` for
                LLM rerankers, ``torch`` otherwise).
            **options: Fields of this class (``top_n``, ``score_threshold``,
                ``keep_retrieval_score``, ``callback_manager``) set them; every other option goes
                to the backend (``device``, ``batch_size``, ``cache_entries``, ...).

        Raises:
            ValueError: unknown backend.
            TypeError: an option neither this class nor the backend knows.
        """
        scorer, fields = shared.from_model_parts(
            cls.model_fields, model, backend, options, owner=cls.__name__
        )
        return cls(scorer=scorer, **fields)

    def _cut(self) -> shared.Cut:
        return shared.Cut.of(self, logger)

    def _to_nodes(
        self, nodes: list[NodeWithScore], results: list[RerankResult]
    ) -> list[NodeWithScore]:
        out = []
        for r in results:
            original = nodes[r.index]
            node = original.node.model_copy(deep=True)
            if self.keep_retrieval_score:
                node.metadata[RETRIEVAL_SCORE_KEY] = original.score
            score = original.score if r.score is None else r.score
            out.append(NodeWithScore(node=node, score=score))
        return out

    @contextmanager
    def _reranking(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> Iterator[_Call]:
        """Emit the start events, yield the call to fill in ``out``, then emit the end events."""
        if query_bundle is None:
            raise ValueError("CrossEncoderRerank needs a query: pass query_bundle or query_str")
        model = self.scorer.model_name
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle, nodes=nodes, top_n=self.top_n or len(nodes), model_name=model
            )
        )
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: self.top_n,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
            first = shared.first_stage_scores(
                [n.score for n in nodes], source="NodeWithScore.score"
            )
            call = _Call(query_bundle.query_str, texts, first)
            yield call
            event.on_end(payload={EventPayload.NODES: call.out})
        dispatcher.event(ReRankEndEvent(nodes=call.out))

    @dispatcher.span
    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as call:
            results = self._cut().rerank(self.scorer, call.query, call.texts, call.first)
            call.out = self._to_nodes(nodes, results)
        return call.out

    @dispatcher.span
    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as call:
            results = await self._cut().arerank(self.scorer, call.query, call.texts, call.first)
            call.out = self._to_nodes(nodes, results)
        return call.out
