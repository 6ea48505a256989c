"""``CrossEncoderRerank``: a LlamaIndex ``BaseNodePostprocessor`` over a rag-rerank scorer."""

from __future__ import annotations

from typing import Any

try:
    from llama_index.core.bridge.pydantic import Field
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "llamaindex_rerank needs llama-index-core: pip install 'rag-rerank[llamaindex]'"
    ) from exc

from rerank_core import Reranker, RerankResult

__all__ = ["CrossEncoderRerank"]

dispatcher = get_dispatcher(__name__)

RETRIEVAL_SCORE_KEY = "retrieval_score"


class CrossEncoderRerank(BaseNodePostprocessor):
    """Rerank retrieved nodes with a cross-encoder (or any :class:`rerank_core.Reranker`).

    Returns new ``NodeWithScore`` objects, best first, whose ``score`` is the reranker's score;
    with ``keep_retrieval_score`` the first-stage score is kept in the returned node's
    ``metadata["retrieval_score"]``. The caller's nodes are never modified. Emits
    ``ReRankStartEvent``/``ReRankEndEvent`` and the ``CBEventType.RERANKING`` callback event.
    Nodes the scorer's policy leaves unscored (outside ``rerank_window``, or skipped by its gate)
    follow in their original order with their first-stage score.

    Example:
        >>> from rerank_core import CrossEncoderScorer
        >>> rerank = CrossEncoderRerank(scorer=CrossEncoderScorer(), top_n=3)
        >>> engine = index.as_query_engine(
        ...     similarity_top_k=50, node_postprocessors=[rerank]
        ... )  # doctest: +SKIP
    """

    scorer: Reranker = Field(description="The reranker that scores (query, node text) pairs.")
    top_n: int | None = Field(
        default=3, ge=1, description="Nodes to return, best first; None returns all."
    )
    score_threshold: float | None = Field(
        default=None, description="Drop nodes scoring below this; None keeps all."
    )
    keep_retrieval_score: bool = Field(
        default=False,
        description="Keep the first-stage score in metadata['retrieval_score'].",
    )

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialisation."""
        return "CrossEncoderRerank"

    @classmethod
    def from_model(cls, model_name_or_path: str | None = None, **kwargs: Any) -> CrossEncoderRerank:
        """Build from a model id or folder (``None``: the bundled model).

        Keyword arguments that are fields of this class set them; the rest go to
        :class:`rerank_core.CrossEncoderScorer`.
        """
        from rerank_core import CrossEncoderScorer

        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.model_fields}
        return cls(scorer=CrossEncoderScorer(model_name_or_path, **kwargs), **fields)

    def _texts(self, nodes: list[NodeWithScore]) -> list[str]:
        return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]

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

    def _start(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> QueryBundle:
        if query_bundle is None:
            raise ValueError("CrossEncoderRerank needs a query: pass query_bundle or query_str")
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=self.top_n or len(nodes),
                model_name=self.scorer.model_name,
            )
        )
        return query_bundle

    def _payload(self, nodes: list[NodeWithScore], query: str) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.scorer.model_name,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n,
        }

    @dispatcher.span
    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query_bundle = self._start(nodes, query_bundle)
        query = query_bundle.query_str
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._payload(nodes, query)
        ) as event:
            results = self.scorer.rerank(
                query, self._texts(nodes), top_n=self.top_n, score_threshold=self.score_threshold
            )
            out = self._to_nodes(nodes, results)
            event.on_end(payload={EventPayload.NODES: out})
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out

    @dispatcher.span
    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query_bundle = self._start(nodes, query_bundle)
        query = query_bundle.query_str
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._payload(nodes, query)
        ) as event:
            results = await self.scorer.arerank(
                query, self._texts(nodes), top_n=self.top_n, score_threshold=self.score_threshold
            )
            out = self._to_nodes(nodes, results)
            event.on_end(payload={EventPayload.NODES: out})
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out
