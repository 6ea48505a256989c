"""What the LangChain compressor and retriever share: documents in and out, and ``dumpd``."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

from langchain_core.documents import Document
from langchain_core.load.serializable import (
    Serializable,
    SerializedConstructor,
    SerializedNotImplemented,
)
from pydantic import BaseModel, Field, field_validator

from rerank_core import Reranker, RerankResult
from rerank_core import adapters as shared

SCORE_KEY = "relevance_score"
#: Where a document carries the value a fusion with the first stage ranked it by.
FUSED_KEY = "fused_score"


def texts_of(documents: Sequence[Document]) -> list[str]:
    """The texts a scorer reads: each document's ``page_content``."""
    return [d.page_content for d in documents]


def first_stage_of(documents: Sequence[Document], key: str | None) -> list[float] | None:
    """The first stage's scores from ``metadata[key]`` of each document, or ``None`` if no key.

    Raises:
        ValueError: a document lacks the key, or its value is not a finite number.
    """
    if key is None:
        return None
    missing = [i for i, d in enumerate(documents) if d.metadata.get(key) is None]
    if missing:
        raise ValueError(
            f"first_stage_score_key={key!r}: document {missing[0]} has no metadata[{key!r}] "
            f"({len(missing)} of {len(documents)} lack it)"
        )
    return shared.first_stage_scores(
        [d.metadata[key] for d in documents], source=f"metadata[{key!r}]"
    )


def to_documents(documents: Sequence[Document], results: list[RerankResult]) -> list[Document]:
    """New documents in result order, scored ones with ``metadata["relevance_score"]``.

    Each is a copy (metadata deep-copied) keeping ``id``, ``page_content`` and all metadata, so the
    caller's documents are never changed.
    """
    out = []
    for r in results:
        doc = documents[r.index]
        metadata = copy.deepcopy(doc.metadata)
        if r.score is not None:
            metadata[SCORE_KEY] = r.score
        if r.fused_score is not None:
            metadata[FUSED_KEY] = r.fused_score
        out.append(doc.model_copy(update={"metadata": metadata}))
    return out


class RankingFields(BaseModel):
    """The cut-off and fusion fields the compressor and the retriever share."""

    score_threshold: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Drop documents scoring below this (on the reranker's scale); None keeps all.",
    )
    score_margin: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Drop documents scoring more than this below the best one; None keeps all.",
    )
    cut_at_largest_gap: bool = Field(
        default=False,
        description="Keep only the documents above the largest drop between consecutive scores.",
    )
    fusion: str | None = Field(default=None, description=shared.FUSION_FIELD)
    first_stage_score_key: str | None = Field(
        default=None,
        description=(
            "Metadata key holding each document's first-stage score (higher is better), for "
            "fusions that use scores; None: fusion uses the documents' order only."
        ),
    )


class ScorerRecord(Serializable):
    """``dumpd`` support: the settings, with the scorer's description in place of the live object.

    The record says which reranker scored (its ``describe()`` and ``identity()``); it cannot carry
    a loaded model, so building the class from it raises a ``ValueError`` that says how to rebuild
    the scorer instead.
    """

    #: The field holding the :class:`~rerank_core.Reranker`.
    scorer_field: ClassVar[str] = "scorer"

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """``dumpd`` records the settings and the scorer's description."""
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """The import path users write: ``langchain_rerank``."""
        return ["langchain_rerank"]

    def to_json(self) -> SerializedConstructor | SerializedNotImplemented:
        """The constructor record, with the scorer's description in place of the live object."""
        record = super().to_json()
        if record["type"] == "constructor":
            scorer: Reranker = getattr(self, self.scorer_field)
            record["kwargs"][self.scorer_field] = shared.describe_scorer(scorer)
        return record

    @field_validator("scorer", "reranker", mode="before", check_fields=False)
    @classmethod
    def _live_scorer(cls, value: Any) -> Any:
        return shared.check_scorer(value, owner=cls.__name__)
