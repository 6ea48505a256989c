"""What the framework adapters share, with no framework in sight.

``langchain_rerank`` and ``llamaindex_rerank`` each turn their framework's objects into texts,
hand them to :meth:`Cut.rerank` (or :meth:`Cut.arerank`) and turn the results back. Everything
between those two ends lives here once: building the scorer for ``from_model`` through the one
factory (:func:`rerank_core.registry.load_reranker`), keeping ``top_n`` and ``score_threshold``
exactly as :meth:`rerank_core.Reranker.rerank` documents them, saying in the log why a threshold
left nothing, and the JSON-safe description the adapters serialize in place of the live scorer.

This module imports neither LangChain nor LlamaIndex, and neither adapter imports the other.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rerank_core.base import Cutoffs, Reranker, RerankResult
from rerank_core.fusion import Fusion

__all__ = [
    "FUSION_FIELD",
    "Cut",
    "check_scorer",
    "describe_scorer",
    "first_stage_scores",
    "from_model_parts",
]


def from_model_parts(
    field_names: Collection[str],
    model: str | os.PathLike[str] | None,
    backend: str,
    options: Mapping[str, Any],
    *,
    owner: str,
) -> tuple[Reranker, dict[str, Any]]:
    """Build the scorer for an adapter's ``from_model`` and return it with the adapter's fields.

    Keyword arguments named like a field of the adapter (``top_n``, ``score_threshold``, ...) are
    returned for the adapter; every other one goes to
    :func:`~rerank_core.registry.load_reranker` (``device``, ``batch_size``, ``cache_entries``,
    ``rerank_window``, ...), whose backend rejects a name it does not know.

    Raises:
        TypeError: ``scorer`` was given: ``from_model`` builds the scorer itself.
        ValueError: ``backend`` is not a registered backend.
    """
    if "scorer" in options:
        raise TypeError(
            f"{owner}.from_model builds the scorer from model and backend; "
            f"to use an existing one, call {owner}(scorer=...)"
        )
    from rerank_core.registry import load_reranker

    fields = {k: v for k, v in options.items() if k in field_names}
    scorer_options = {k: v for k, v in options.items() if k not in field_names}
    return load_reranker(model, backend=backend, **scorer_options), fields


@dataclass(frozen=True, slots=True)
class Cut:
    """What an adapter keeps of a ranking: the scorer's :class:`~rerank_core.base.Cutoffs`.

    The adapter asks the scorer for the whole ranking and applies the cut-offs exactly as
    :meth:`rerank_core.Reranker.rerank` does (threshold, margin, gap, then ``top_n``), so that,
    when candidates were given and none reaches the threshold, the result is empty and ``log``
    says so at INFO with the count, the best score, the threshold and the score scale: a
    threshold on the wrong scale (0.3 against raw logits, say) is the usual reason.

    Attributes:
        top_n: Keep at most this many; ``None`` keeps all.
        score_threshold: Drop scored results below this; ``None`` keeps all.
        owner: The adapter's name, for the log line.
        log: The adapter's logger.
        score_margin: Drop scored results more than this below the best score.
        cut_at_largest_gap: Keep only the scored results above the largest score drop.
        fusion: The adapter's fusion with the first stage (a spec or ``"none"``); ``None`` uses
            the scorer's own (:attr:`rerank_core.Reranker.fusion`).
    """

    top_n: int | None
    score_threshold: float | None
    owner: str
    log: logging.Logger
    score_margin: float | None = None
    cut_at_largest_gap: bool = False
    fusion: Fusion | str | None = None

    @classmethod
    def of(cls, adapter: Any, log: logging.Logger, *, top_n: int | object | None = ...) -> Cut:
        """The cut-offs of an adapter's fields (``top_n`` given when it is named otherwise)."""
        return cls(
            adapter.top_n if top_n is ... else top_n,  # type: ignore[arg-type]
            adapter.score_threshold,
            type(adapter).__name__,
            log,
            adapter.score_margin,
            adapter.cut_at_largest_gap,
            adapter.fusion,
        )

    def rerank(
        self,
        scorer: Reranker,
        query: str,
        texts: Sequence[str],
        first_stage_scores: Sequence[float] | None = None,
    ) -> list[RerankResult]:
        """Rank ``texts`` for ``query`` with ``scorer`` and keep what :meth:`keep` keeps.

        ``texts`` come in first-stage order; ``first_stage_scores`` are the first stage's scores
        when the framework carries them (for fusions that use scores).
        """
        ranked = scorer.rerank(
            query, texts, fusion=self.fusion, first_stage_scores=first_stage_scores
        )
        return self.keep(ranked, scorer.score_scale)

    async def arerank(
        self,
        scorer: Reranker,
        query: str,
        texts: Sequence[str],
        first_stage_scores: Sequence[float] | None = None,
    ) -> list[RerankResult]:
        """Async twin of :meth:`rerank`: scoring runs off the event loop (``Reranker.arerank``)."""
        ranked = await scorer.arerank(
            query, texts, fusion=self.fusion, first_stage_scores=first_stage_scores
        )
        return self.keep(ranked, scorer.score_scale)

    def keep(self, ranked: Sequence[RerankResult], scale: str) -> list[RerankResult]:
        """Apply the cut-offs to a whole ranking whose scores are on ``scale``."""
        cutoffs = Cutoffs(
            self.top_n, self.score_threshold, self.score_margin, self.cut_at_largest_gap
        )
        why = cutoffs.why_empty(ranked, scale)
        if why is not None:
            self.log.info("%s: %s; returning none", self.owner, why)
        return cutoffs.apply(ranked)


#: Help text of the adapters' ``fusion`` field.
FUSION_FIELD = (
    "Fusion with the first stage's ranking: a spec such as 'rrf', 'rrf:weight=0.4' or "
    "'linear:weight=0.7,evidence=rank', or 'none' to order by the reranker alone; None (default) "
    "uses the scorer's own (the bundled model's measured setting)."
)


def first_stage_scores(values: Sequence[object], *, source: str) -> list[float] | None:
    """The first-stage scores a framework carries, or ``None`` when any is missing.

    ``values`` holds one entry per candidate (``None`` where the framework has no score);
    ``source`` names where they came from for the error message. A score that is present but
    not a finite number is an error, not a silent fallback to ranks.
    """
    if not values or any(v is None for v in values):
        return None
    out: list[float] = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{source} of candidate {i} is not a finite number: {v!r}")
        out.append(float(v))
    return out


def describe_scorer(scorer: Reranker) -> dict[str, Any]:
    """What an adapter serializes in place of its live scorer: ``describe()`` and ``identity()``.

    The result is plain JSON data (anything else is written as its ``str``), so it survives
    ``json.dumps``; it says which reranker scored, not how to load it again.
    """
    data = {**scorer.describe(), "identity": scorer.identity()}
    loaded: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return loaded


def check_scorer(value: object, *, owner: str) -> object:
    """Refuse a serialized description where a live scorer belongs, with a message that helps.

    Used as a "before" validator of the adapters' ``scorer`` field: reloading an adapter from its
    JSON would otherwise fail with a bare type error.

    Raises:
        ValueError: ``value`` is a ``dict``.
    """
    if isinstance(value, dict):
        name = value.get("model_name") or value.get("model") or "a reranker"
        raise ValueError(
            f"{owner}.scorer must be a rerank_core.Reranker, got a description of {name}: "
            "serialized adapters record which reranker scored but cannot carry a loaded model; "
            f"rebuild it with {owner}.from_model(model, backend=...) or {owner}(scorer=...)"
        )
    return value
