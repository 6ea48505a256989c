"""The reranker contract: validation, batching, ordering and policy, shared by every backend.

A backend subclasses :class:`Reranker` and implements one method, :meth:`Reranker._score_pairs`,
which scores one batch of ``(query, document)`` pairs. Everything a caller relies on (argument
checks, length-sorted batching, restoring input order, finiteness checks, sorting, thresholds,
``top_n``, the rerank window, the rerank gate and the async twins) lives here, once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rerank_core.fusion import Fusion, check_first_stage_scores
from rerank_core.validation import check_number, check_positive_int, check_text, check_texts

logger = logging.getLogger(__name__)

Pair = tuple[str, str]

__all__ = [
    "SCORE_SCALES",
    "Batch",
    "Cutoffs",
    "Pair",
    "RerankResult",
    "Reranker",
    "RerankerError",
    "RerankerWrapper",
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
        fused_score: The value the ranking was ordered by when a :class:`~rerank_core.Fusion`
            combined the reranker with the first stage (``None`` without fusion, and for
            unscored candidates). ``score`` stays the reranker's own.
    """

    index: int
    score: float | None
    document: str
    fused_score: float | None = None

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
class Cutoffs:
    """What a ranking keeps, applied in this order: absolute threshold, margin, gap, ``top_n``.

    Score cut-offs apply to scored results only; results the policy left unscored (outside the
    rerank window, or skipped by the gate) are exempt from them and follow in input order.
    ``top_n`` applies to everything.

    Attributes:
        top_n: Keep at most this many results; ``None`` keeps all.
        score_threshold: Drop scored results below this absolute score.
        score_margin: Drop scored results more than this below the best score of the query (a
            relative cut: it keeps the near-ties of the best, whatever the scale's offset).
        cut_at_largest_gap: Keep the scored results above the largest drop between consecutive
            scores (the "elbow" of the ranking); with fewer than two it keeps them.

    Example:
        >>> ranked = scorer.rerank(query, docs)  # doctest: +SKIP
        >>> Cutoffs(top_n=5, score_margin=0.2).apply(ranked)  # doctest: +SKIP
    """

    top_n: int | None = None
    score_threshold: float | None = None
    score_margin: float | None = None
    cut_at_largest_gap: bool = False

    def __post_init__(self) -> None:
        check_positive_int("top_n", self.top_n)
        _check_threshold(self.score_threshold)
        check_number("score_margin", self.score_margin, minimum=0.0)
        if not isinstance(self.cut_at_largest_gap, bool):
            raise ValueError(f"cut_at_largest_gap must be a bool, got {self.cut_at_largest_gap!r}")

    def apply(self, ranked: Sequence[RerankResult]) -> list[RerankResult]:
        """Keep what these cut-offs keep of ``ranked`` (scored results first, then unscored).

        The cut-offs decide *which* scored results stay, on their ``score``; the order of
        ``ranked`` (by score, or by fused score under fusion) is kept.
        """
        scored = [r for r in ranked if r.score is not None]
        rest = [r for r in ranked if r.score is None]
        floor = -math.inf
        if self.score_threshold is not None:
            floor = self.score_threshold
        values = sorted((s for r in scored if (s := r.score) is not None), reverse=True)
        if self.score_margin is not None and values:
            floor = max(floor, values[0] - self.score_margin)
        values = [v for v in values if v >= floor]
        if self.cut_at_largest_gap and len(values) > 1:
            drops = [a - b for a, b in itertools.pairwise(values)]
            floor = max(floor, values[drops.index(max(drops))])
        kept = [r for r in scored if r.score is not None and r.score >= floor] + rest
        return kept if self.top_n is None else kept[: self.top_n]

    def why_empty(self, ranked: Sequence[RerankResult], scale: str) -> str | None:
        """Why :meth:`apply` kept nothing of a non-empty ``ranked``; ``None`` if it kept some."""
        if not ranked or self.apply(ranked):
            return None
        best = max((r.score for r in ranked if r.score is not None), default=None)
        return (
            f"none of {len(ranked)} candidates reached score_threshold={self.score_threshold:g} "
            f"(best score {best:.6g}, scores on the {scale!r} scale)"
        )


def _batch_of(pairs: Sequence[Pair], indices: Sequence[int], payload: Any = None) -> Batch:
    return Batch(tuple(indices), tuple(pairs[i] for i in indices), payload)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the policy decided to score for one ``rerank`` call."""

    query: str
    documents: list[str]
    scored: int  # the first ``scored`` documents go to the model; the rest pass through
    fusion: Fusion | None = None
    first_stage_scores: list[float] | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """One unit of scoring work, handed from preparation to scoring as a value.

    Attributes:
        indices: Positions of this batch's pairs in the call's input.
        pairs: The ``(query, document)`` pairs, in the order of ``indices``.
        payload: What the backend prepared for them (token windows for local models); ``None``
            when the backend scores plain text.
    """

    indices: tuple[int, ...]
    pairs: tuple[Pair, ...]
    payload: Any = None


class Reranker(ABC):
    """Abstract base of every reranker.

    A call runs in three stages that hand values to each other: :meth:`_prepare` turns the
    checked pairs into :class:`Batch` objects (tokenizing and planning, for local models),
    :meth:`_score_batch` scores one batch, and the base puts the scores back in input order and
    checks them. A backend implements :meth:`_score_pairs` (the plain-text batch call) and may
    override :meth:`_prepare` / :meth:`_score_batch` to pass prepared inputs, and
    :meth:`_ascore_batch` when it has a native async path (remote APIs). By default the async
    methods run preparation (when :attr:`_prepare_blocks`) and scoring in worker threads, so the
    event loop is never blocked.

    Args:
        batch_size: Most pairs per batch.
        max_concurrency: Batches of one call scored at once (threads on the sync path, tasks on
            the async path). Local models keep the default 1: they use every core per batch.
            Remote APIs gain from several requests in flight.
        rerank_window: Rerank only the first K candidates (in the order given, normally the
            first stage's); the rest follow in their original order, unscored. Cost grows
            linearly with K, while the answer usually sits near the top of the first stage, so a
            window of 10-20 out of 50-100 keeps most of the quality gain at a fraction of the
            latency. ``None`` reranks everything.
        should_rerank: A gate called with the query; when it returns ``False`` the candidates
            pass through in their original order, unscored, and the model is not called. Use it
            to spend the reranker only on queries that need it (long, ambiguous, high-value).
        fusion: Order by a mix of the reranker's and the first stage's judgement (a
            :class:`~rerank_core.Fusion` or its spec string, such as ``"rrf"``); ``None`` orders by
            the reranker's score alone. Also settable later as the :attr:`fusion` attribute;
            :func:`~rerank_core.load_reranker` sets a model's measured default.

    Example:
        >>> from rerank_core import CrossEncoderScorer
        >>> scorer = CrossEncoderScorer("cross-encoder/ms-marco-MiniLM-L6-v2")  # doctest: +SKIP
        >>> scorer.rerank("what is rag?", docs, top_n=3, score_threshold=0.3)  # doctest: +SKIP
    """

    #: Human-readable model identity, used in logs and events.
    model_name: str = "reranker"
    #: Whether :meth:`_prepare` does real work (tokenizing) that must run off the event loop.
    _prepare_blocks: bool = False
    #: Whether a pair's score depends on the other pairs of the call (a cascade ranks them
    #: together): such scores are never cached per pair, and servers never merge requests.
    scores_depend_on_call: bool = False

    def __init__(
        self,
        *,
        batch_size: int = 32,
        max_concurrency: int = 1,
        rerank_window: int | None = None,
        should_rerank: Callable[[str], bool] | None = None,
        fusion: Fusion | str | None = None,
    ) -> None:
        self.batch_size = check_positive_int("batch_size", batch_size, allow_none=False) or 1
        self.max_concurrency = (
            check_positive_int("max_concurrency", max_concurrency, allow_none=False) or 1
        )
        self.rerank_window = check_positive_int("rerank_window", rerank_window)
        if should_rerank is not None and not callable(should_rerank):
            raise TypeError("should_rerank must be a callable taking the query, or None")
        self.should_rerank = should_rerank
        self.fusion = fusion

    @property
    def fusion(self) -> Fusion | None:
        """The default :class:`~rerank_core.Fusion` of :meth:`rerank`; ``None``: score order."""
        return self._fusion

    @fusion.setter
    def fusion(self, value: Fusion | str | Mapping[str, Any] | None) -> None:
        self._fusion = Fusion.parse(value)

    # ----------------------------------------------------------------- backend hooks

    @abstractmethod
    def _score_pairs(self, pairs: Sequence[Pair]) -> Sequence[float]:
        """Score one batch of ``(query, document)`` pairs, one score per pair, in order."""

    def _prepare(self, pairs: Sequence[Pair]) -> list[Batch]:
        """Split a call's pairs into batches; default: longest first by characters.

        Sorting by length keeps the padding inside a batch small for backends that pad.
        """
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        return [
            _batch_of(pairs, order[i : i + self.batch_size])
            for i in range(0, len(order), self.batch_size)
        ]

    def _score_batch(self, batch: Batch) -> Sequence[float]:
        """Score one prepared batch; default: :meth:`_score_pairs` on its pairs."""
        return self._score_pairs(batch.pairs)

    async def _ascore_batch(self, batch: Batch) -> Sequence[float]:
        """Async twin of :meth:`_score_batch`; default: the sync path in a worker thread."""
        return await asyncio.to_thread(self._score_batch, batch)

    # ----------------------------------------------------------------- scoring

    def score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        """Score arbitrary ``(query, document)`` pairs, possibly for many queries at once.

        Returns:
            One plain ``float`` per pair, in input order.

        Raises:
            TypeError: ``pairs`` is not a sequence of ``(str, str)`` pairs.
            ValueError: a query is blank, or a text holds a lone surrogate.
            ScoringError: the backend returned a wrong count or a non-finite score.
        """
        checked = self._check_pairs(pairs)
        if not checked:
            return []
        batches = self._prepare(checked)
        if self.max_concurrency == 1 or len(batches) == 1:
            results = [self._score_batch(b) for b in batches]
        else:
            with ThreadPoolExecutor(min(self.max_concurrency, len(batches))) as pool:
                results = list(pool.map(self._score_batch, batches))
        return self._collect(len(checked), batches, results)

    async def ascore_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        """Async twin of :meth:`score_pairs`; never blocks the event loop.

        At most ``max_concurrency`` batches are in flight; when one fails, the others of the
        same call are cancelled.
        """
        checked = self._check_pairs(pairs)
        if not checked:
            return []
        if self._prepare_blocks:
            batches = await asyncio.to_thread(self._prepare, checked)
        else:
            batches = self._prepare(checked)
        gate = asyncio.Semaphore(self.max_concurrency)

        async def run(batch: Batch) -> Sequence[float]:
            async with gate:
                return await self._ascore_batch(batch)

        tasks = [asyncio.ensure_future(run(b)) for b in batches]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return self._collect(len(checked), batches, results)

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
        score_margin: float | None = None,
        cut_at_largest_gap: bool = False,
        fusion: Fusion | str | None = None,
        first_stage_scores: Sequence[float] | None = None,
    ) -> list[RerankResult]:
        """Score and order ``documents`` for ``query``.

        Results are sorted by score, highest first (ties keep input order), or by fused score
        under a fusion with the first stage (see :class:`~rerank_core.Fusion`). The cut-offs then
        apply on the reranker's scores in this order (see :class:`Cutoffs`): the absolute
        threshold (scores strictly below it are dropped), the margin below the best score, the
        largest gap, then ``top_n``. Candidates the policy left unscored (outside
        ``rerank_window``, or all of them when ``should_rerank`` says no) follow the scored ones
        in their original order with ``score=None``; score cut-offs do not apply to them,
        ``top_n`` does. When nothing passes, the result is empty.

        Args:
            query: The user question.
            documents: Candidate texts, normally the first stage's ranking.
            top_n: Keep at most this many results; ``None`` keeps all.
            score_threshold: Drop scored results below this value; ``None`` keeps all.
            score_margin: Drop scored results more than this below the best score.
            cut_at_largest_gap: Keep only the scored results above the largest score drop.
            fusion: This call's fusion (a :class:`~rerank_core.Fusion`, a spec such as ``"rrf"``,
                or ``"none"``); ``None`` uses the reranker's :attr:`fusion`.
            first_stage_scores: The first stage's score of each document (higher is better),
                for fusions that use scores; ranks come from the order of ``documents``.

        Returns:
            New :class:`RerankResult` objects; ``documents`` is not modified.
        """
        cutoffs = Cutoffs(top_n, score_threshold, score_margin, cut_at_largest_gap)
        plan = self._plan(query, documents, fusion, first_stage_scores)
        head = [(plan.query, d) for d in plan.documents[: plan.scored]]
        scores = self.score_pairs(head) if head else []
        return cutoffs.apply(self._assemble(plan, scores))

    async def arerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        score_threshold: float | None = None,
        score_margin: float | None = None,
        cut_at_largest_gap: bool = False,
        fusion: Fusion | str | None = None,
        first_stage_scores: Sequence[float] | None = None,
    ) -> list[RerankResult]:
        """Async twin of :meth:`rerank`; never blocks the event loop."""
        cutoffs = Cutoffs(top_n, score_threshold, score_margin, cut_at_largest_gap)
        plan = self._plan(query, documents, fusion, first_stage_scores)
        head = [(plan.query, d) for d in plan.documents[: plan.scored]]
        scores = await self.ascore_pairs(head) if head else []
        return cutoffs.apply(self._assemble(plan, scores))

    # ----------------------------------------------------------------- internals

    def _plan(
        self,
        query: str,
        documents: Sequence[str],
        fusion: Fusion | str | None = None,
        first_stage_scores: Sequence[float] | None = None,
    ) -> _Plan:
        query = _check_query(query)
        docs = _check_documents(documents)
        first = check_first_stage_scores(first_stage_scores, len(docs))
        how = self.fusion if fusion is None else Fusion.parse(fusion)
        if how is not None and how.evidence == "score" and how.method == "linear" and first is None:
            raise ValueError(f"fusion {how.spec()!r} needs first_stage_scores")
        if not docs:
            return _Plan(query, docs, 0)
        if self.should_rerank is not None and not self.should_rerank(query):
            logger.debug("rerank gate skipped query; %d candidates pass through", len(docs))
            return _Plan(query, docs, 0)
        window = len(docs) if self.rerank_window is None else min(self.rerank_window, len(docs))
        return _Plan(query, docs, window, how, first)

    def _assemble(self, plan: _Plan, scores: Sequence[float]) -> list[RerankResult]:
        """The whole ranking: scored results best first (stable), then the unscored."""
        docs, n = plan.documents, plan.scored
        if plan.fusion is None:
            scored = [RerankResult(i, scores[i], docs[i]) for i in range(n)]
            scored.sort(key=lambda r: -r.score)  # type: ignore[operator]  # scored carry floats
        else:
            first = None if plan.first_stage_scores is None else plan.first_stage_scores[:n]
            fused = plan.fusion.fuse(scores, scale=self.score_scale, first_stage_scores=first)
            scored = [RerankResult(i, scores[i], docs[i], fused[i]) for i in range(n)]
            scored.sort(key=lambda r: -r.fused_score)  # type: ignore[operator]
        return scored + [RerankResult(i, None, docs[i]) for i in range(n, len(docs))]

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

    def _collect(
        self, n: int, batches: Sequence[Batch], results: Sequence[Sequence[float]]
    ) -> list[float]:
        """Put each batch's scores back in input order, checking count and finiteness."""
        out: list[float | None] = [None] * n
        for batch, scores in zip(batches, results, strict=True):
            if len(scores) != len(batch.indices):
                raise ScoringError(
                    f"{self.model_name}: backend returned {len(scores)} scores "
                    f"for {len(batch.indices)} pairs"
                )
            for i, value in zip(batch.indices, scores, strict=True):
                out[i] = float(value)
        result: list[float] = []
        for i, score in enumerate(out):
            if score is None or not math.isfinite(score):
                raise ScoringError(f"{self.model_name}: non-finite score {score!r} for pair {i}")
            result.append(score)
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
            "fusion": None if self.fusion is None else self.fusion.spec(),
        }


class RerankerWrapper(Reranker):
    """Base of rerankers that pass whole calls to another reranker and add something around them.

    The wrapped reranker keeps its own batching: the wrapper hands it all of a call's pairs in
    one :meth:`~Reranker.score_pairs` (or :meth:`~Reranker.ascore_pairs`) call, through its
    public methods only. Scale and identity are the wrapped reranker's unless a subclass changes
    scores. Subclasses implement :meth:`_score_pairs` and :meth:`_ascore_batch`.

    Args:
        inner: The reranker to wrap.
        rerank_window: See :class:`Reranker` (the wrapper's own policy).
        should_rerank: See :class:`Reranker`.
        fusion: See :class:`Reranker`.
    """

    def __init__(
        self,
        inner: Reranker,
        *,
        rerank_window: int | None = None,
        should_rerank: Callable[[str], bool] | None = None,
        fusion: Fusion | str | None = None,
    ) -> None:
        if not isinstance(inner, Reranker):
            raise TypeError(f"inner must be a Reranker, got {type(inner).__name__}")
        super().__init__(
            batch_size=inner.batch_size,
            rerank_window=rerank_window,
            should_rerank=should_rerank,
            fusion=fusion,
        )
        self.inner = inner
        self.model_name = inner.model_name

    def _prepare(self, pairs: Sequence[Pair]) -> list[Batch]:
        return [_batch_of(pairs, range(len(pairs)))]

    @property
    def score_scale(self) -> str:
        """The wrapped reranker's scale."""
        return self.inner.score_scale

    def identity(self) -> dict[str, Any]:
        """The wrapped reranker's identity."""
        return self.inner.identity()
