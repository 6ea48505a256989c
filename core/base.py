"""The reranker contract: validation, batching, ordering and policy, shared by every backend.

A backend subclasses :class:`Reranker` and implements one method, :meth:`Reranker._score_pairs`,
which scores one batch of ``(query, document)`` pairs. Everything a caller relies on (argument
checks, length-sorted batching, restoring input order, finiteness checks, sorting, thresholds,
``top_n``, the rerank window, the rerank gate and the async twins) lives here, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rerank_core.validation import check_positive_int, check_text, check_texts

logger = logging.getLogger(__name__)

Pair = tuple[str, str]

__all__ = [
    "SCORE_SCALES",
    "Pair",
    "RerankResult",
    "Reranker",
    "RerankerError",
    "ScoringError",
]


#: What a score can mean. ``probability``: in [0, 1], a threshold such as 0.3 applies;
#: ``calibrated-probability``: a probability fitted so that 0.5 means "as likely relevant as not";
#: ``logit``: unbounded, its sigmoid is a probability; ``similarity``: a bounded similarity such as
#: a cosine, not a probability; ``unknown``: the backend cannot say (a generic remote server).
SCORE_SCALES = ("probability", "calibrated-probability", "logit", "similarity", "unknown")


class RerankerError(Exception):
    """Base class of the errors a reranking backend raises when scoring fails."""


class ScoringError(RerankerError):
    """A backend returned something that is not one finite score per input pair."""


@dataclass(frozen=True, slots=True)
class RerankResult:
    """One reranked candidate.

    Attributes:
        index: Position of the document in the list passed to :meth:`Reranker.rerank`.
        score: Relevance score as a plain ``float`` on the backend's scale (for
            :class:`~rerank_core.CrossEncoderScorer` with ``normalize=True``, a probability in
            [0, 1]). ``None`` when the policy left this candidate unscored: it fell outside the
            rerank window, or the rerank gate skipped the query.
        document: The input text, unchanged.
    """

    index: int
    score: float | None
    document: str

    @property
    def reranked(self) -> bool:
        """Whether the model scored this candidate."""
        return self.score is not None


def _check_query(query: object) -> str:
    return check_text("query", query, allow_blank=False)


def _check_documents(documents: object) -> list[str]:
    return check_texts("documents", documents)


def _check_threshold(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"score_threshold must be a number or None, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the policy decided to score for one ``rerank`` call."""

    query: str
    documents: list[str]
    scored: int  # the first ``scored`` documents go to the model; the rest pass through


class Reranker(ABC):
    """Abstract base of every reranker.

    Subclasses implement :meth:`_score_pairs`. They may override :meth:`_batch_plan` to batch by
    a better length measure than characters, and :meth:`_ascore_pairs` when they have a native
    async path (remote APIs); by default the async methods run the sync path in a worker thread so
    the event loop is never blocked.

    Args:
        batch_size: Most pairs per call of :meth:`_score_pairs`.
        rerank_window: Rerank only the first K candidates (in the order given, normally the
            first stage's); the rest follow in their original order, unscored. Cost grows
            linearly with K, while the answer usually sits near the top of the first stage, so a
            window of 10-20 out of 50-100 keeps most of the quality gain at a fraction of the
            latency. ``None`` reranks everything.
        should_rerank: A gate called with the query; when it returns ``False`` the candidates
            pass through in their original order, unscored, and the model is not called. Use it
            to spend the reranker only on queries that need it (long, ambiguous, high-value).

    Example:
        >>> from rerank_core import CrossEncoderScorer
        >>> scorer = CrossEncoderScorer("cross-encoder/ms-marco-MiniLM-L6-v2")  # doctest: +SKIP
        >>> scorer.rerank("what is rag?", docs, top_n=3, score_threshold=0.3)  # doctest: +SKIP
    """

    #: Human-readable model identity, used in logs, events and cache keys.
    model_name: str = "reranker"

    def __init__(
        self,
        *,
        batch_size: int = 32,
        rerank_window: int | None = None,
        should_rerank: Callable[[str], bool] | None = None,
    ) -> None:
        self.batch_size = check_positive_int("batch_size", batch_size) or 32
        self.rerank_window = check_positive_int("rerank_window", rerank_window)
        if should_rerank is not None and not callable(should_rerank):
            raise TypeError("should_rerank must be a callable taking the query, or None")
        self.should_rerank = should_rerank

    # ----------------------------------------------------------------- backend hooks

    @abstractmethod
    def _score_pairs(self, pairs: Sequence[Pair]) -> Sequence[float]:
        """Score one batch of ``(query, document)`` pairs, one score per pair, in order."""

    async def _ascore_pairs(self, pairs: Sequence[Pair]) -> Sequence[float]:
        """Async twin of :meth:`_score_pairs`; default: the sync path in a worker thread."""
        return await asyncio.to_thread(self._score_pairs, pairs)

    def _batch_plan(self, pairs: Sequence[Pair]) -> list[list[int]]:
        """Split pair indices into batches, longest first, so padding within a batch is small."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        size = self.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    # ----------------------------------------------------------------- scoring

    def score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        """Score arbitrary ``(query, document)`` pairs, possibly for many queries at once.

        Returns:
            One plain ``float`` per pair, in input order.
        """
        checked = self._check_pairs(pairs)
        if not checked:
            return []
        out: list[float | None] = [None] * len(checked)
        for batch in self._batch_plan(checked):
            scores = self._score_pairs([checked[i] for i in batch])
            self._scatter(batch, scores, out)
        return self._finite(out)

    async def ascore_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        """Async twin of :meth:`score_pairs`; batches run concurrently when the backend allows."""
        checked = self._check_pairs(pairs)
        if not checked:
            return []
        out: list[float | None] = [None] * len(checked)
        batches = self._batch_plan(checked)
        results = await asyncio.gather(
            *(self._ascore_pairs([checked[i] for i in b]) for b in batches)
        )
        for batch, scores in zip(batches, results, strict=True):
            self._scatter(batch, scores, out)
        return self._finite(out)

    def score(self, query: str, documents: Sequence[str]) -> list[float]:
        """Score every document against ``query``.

        Returns:
            One plain ``float`` per document, in input order. Empty input gives ``[]`` without
            calling the model.

        Raises:
            ValueError: ``query`` is empty.
            TypeError: ``documents`` is not a sequence of ``str`` (the message names the index).
            ScoringError: the backend returned a wrong count or a non-finite score.
        """
        query = _check_query(query)
        docs = _check_documents(documents)
        return self.score_pairs([(query, d) for d in docs])

    async def ascore(self, query: str, documents: Sequence[str]) -> list[float]:
        """Async twin of :meth:`score`; never blocks the event loop."""
        query = _check_query(query)
        docs = _check_documents(documents)
        return await self.ascore_pairs([(query, d) for d in docs])

    # ----------------------------------------------------------------- reranking

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        score_threshold: float | None = None,
    ) -> list[RerankResult]:
        """Score and order ``documents`` for ``query``.

        Results are sorted by score, highest first (ties keep input order). The threshold is
        applied first (scores strictly below it are dropped), then ``top_n``. Candidates the
        policy left unscored (outside ``rerank_window``, or all of them when ``should_rerank``
        says no) follow the scored ones in their original order with ``score=None``; the
        threshold does not apply to them, ``top_n`` does.

        Args:
            query: The user question.
            documents: Candidate texts, normally the first stage's ranking.
            top_n: Keep at most this many results; ``None`` keeps all.
            score_threshold: Drop scored results below this value; ``None`` keeps all.

        Returns:
            New :class:`RerankResult` objects; ``documents`` is not modified.
        """
        plan = self._plan(query, documents, top_n, score_threshold)
        head = [(plan.query, d) for d in plan.documents[: plan.scored]]
        scores = self.score_pairs(head) if head else []
        return self._assemble(plan, scores, top_n, score_threshold)

    async def arerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        score_threshold: float | None = None,
    ) -> list[RerankResult]:
        """Async twin of :meth:`rerank`; never blocks the event loop."""
        plan = self._plan(query, documents, top_n, score_threshold)
        head = [(plan.query, d) for d in plan.documents[: plan.scored]]
        scores = await self.ascore_pairs(head) if head else []
        return self._assemble(plan, scores, top_n, score_threshold)

    # ----------------------------------------------------------------- internals

    def _plan(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None,
        score_threshold: float | None,
    ) -> _Plan:
        query = _check_query(query)
        docs = _check_documents(documents)
        check_positive_int("top_n", top_n)
        _check_threshold(score_threshold)
        if not docs:
            return _Plan(query, docs, 0)
        if self.should_rerank is not None and not self.should_rerank(query):
            logger.debug("rerank gate skipped query; %d candidates pass through", len(docs))
            return _Plan(query, docs, 0)
        window = len(docs) if self.rerank_window is None else min(self.rerank_window, len(docs))
        return _Plan(query, docs, window)

    @staticmethod
    def _assemble(
        plan: _Plan,
        scores: Sequence[float],
        top_n: int | None,
        score_threshold: float | None,
    ) -> list[RerankResult]:
        docs = plan.documents
        scored = [RerankResult(i, scores[i], docs[i]) for i in range(plan.scored)]
        scored.sort(key=lambda r: -r.score)  # type: ignore[operator]  # scored results carry floats
        if score_threshold is not None:
            scored = [r for r in scored if r.score >= score_threshold]  # type: ignore[operator]
        rest = [RerankResult(i, None, docs[i]) for i in range(plan.scored, len(docs))]
        results = scored + rest
        return results if top_n is None else results[:top_n]

    @staticmethod
    def _check_pairs(pairs: Sequence[Pair]) -> list[Pair]:
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
            raise TypeError(
                f"pairs must be a sequence of (query, document), got {type(pairs).__name__}"
            )
        checked: list[Pair] = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(f"pairs[{i}] must be a (query, document) tuple")
            checked.append(
                (
                    check_text(f"pairs[{i}] query", pair[0], allow_blank=False),
                    check_text(f"pairs[{i}] document", pair[1]),
                )
            )
        return checked

    def _scatter(self, batch: list[int], scores: Sequence[float], out: list[float | None]) -> None:
        if len(scores) != len(batch):
            raise ScoringError(
                f"{self.model_name}: backend returned {len(scores)} scores for {len(batch)} pairs"
            )
        for i, s in zip(batch, scores, strict=True):
            out[i] = float(s)

    def _finite(self, out: list[float | None]) -> list[float]:
        result: list[float] = []
        for i, s in enumerate(out):
            if s is None or not math.isfinite(s):
                raise ScoringError(f"{self.model_name}: non-finite score {s!r} for pair {i}")
            result.append(s)
        return result

    # ----------------------------------------------------------------- identity

    @property
    def score_scale(self) -> str:
        """What this reranker's scores mean: one of :data:`SCORE_SCALES`."""
        return "unknown"

    def identity(self) -> dict[str, Any]:
        """Every setting that changes a score, as JSON-safe values.

        Two rerankers with equal identities give the same score for the same pair (up to
        floating-point noise), so caches and servers key on it. Subclasses extend it with each
        score-affecting setting they add; settings that only change speed (batch size, threads)
        stay out.
        """
        return {"class": type(self).__name__, "model": self.model_name, "scale": self.score_scale}

    @property
    def score_id(self) -> str:
        """:meth:`identity` as one canonical string (sorted-key JSON), for cache keys."""
        return json.dumps(self.identity(), sort_keys=True, default=str)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_name={self.model_name!r})"

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description of this reranker for logs and events (for people)."""
        return {
            "class": type(self).__name__,
            "model_name": self.model_name,
            "score_scale": self.score_scale,
        }
