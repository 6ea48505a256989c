"""A two-stage cascade: a fast reranker orders every candidate, a strong one re-orders its top K.

LLM-class rerankers (Qwen3-Reranker, bge-reranker-v2-gemma) are tens of times slower per pair
than a MiniLM cross-encoder. A cascade spends the strong model only where it matters: the fast
model scores all candidates, the strong model scores the fast model's top ``k``, and the final
ranking is the strong model's order of those ``k`` followed by the rest in the fast order.

**What the scores mean.** A cascade's :attr:`~CascadeReranker.score_scale` is the strong
stage's, so a threshold means what it means for the strong model:

* the top ``k`` (by the fast stage) carry the strong stage's scores, unchanged;
* every other candidate carries the fast stage's score, read on the strong stage's axis (a
  probability and a logit are converted into each other; two probability scales are read as
  they are), and *lowered as a block* just enough to rank below the lowest strong score of the
  top ``k`` (the "floor"). When the fast scores already sit below the floor they are returned
  unchanged. So a candidate outside the top ``k`` never scores above any candidate the strong
  model kept, and a threshold above the floor drops it: the fast model ranked it below all of
  the top ``k``, and the strong model put the weakest of those at the floor.

When the two stages' scales cannot be compared (a ``similarity`` or ``unknown`` scale on one side
only), the rest are lowered on the raw axis the same way, and the cascade's scale is
``"unknown"``: its scores order the candidates but a threshold on them means nothing.

A candidate's score depends on the other candidates of the call (they decide whether it reaches
the top ``k``): :meth:`~CascadeReranker.score` and :meth:`~CascadeReranker.score_pairs` run the
cascade over all the documents given together, one candidate list per distinct query of the call.
For the same reason a cascade's own scores must not be cached per pair; cache its stages instead
(``load_reranker(..., cache_entries=N, cascade=...)`` does). The class says so with
``scores_depend_on_call = True``: ``CachedReranker`` refuses it, and ``rag-rerank serve``'s
dynamic batching scores each request in its own call instead of merging them.

**Policy.** The cascade's own ``rerank_window`` and ``should_rerank`` work as for every
reranker: only the first ``rerank_window`` candidates enter the cascade (the rest follow
unscored, in input order), and a gate that says no skips both stages. ``top_n``,
``score_threshold``, ``score_margin`` and ``cut_at_largest_gap`` apply to the cascade's scores
as above; ``top_n <= k`` returns only candidates the strong model ordered. The stages' own window
and gate are not used (the cascade calls their :meth:`~rerank_core.Reranker.score_pairs`), so
setting one on a stage is refused.

Example:
    >>> from rerank_core import CascadeReranker, load_reranker
    >>> fast = load_reranker(backend="onnx-int8")  # doctest: +SKIP
    >>> strong = load_reranker("Qwen/Qwen3-Reranker-0.6B")  # doctest: +SKIP
    >>> cascade = CascadeReranker(fast, strong, k=20)  # doctest: +SKIP
    >>> cascade.rerank(query, docs, top_n=5)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rerank_core.base import Batch, Pair, Reranker, _batch_of
from rerank_core.validation import check_positive_int

__all__ = ["CascadeReranker", "build_cascade"]

# Scales whose values sit on one probability axis: a logit is the log-odds of a probability.
_PROBABILITIES = ("probability", "calibrated-probability")
_LOG_ODDS = (*_PROBABILITIES, "logit")
# Probabilities are clipped to [_EPS, 1 - _EPS] before taking their log-odds, so 0 and 1 stay
# finite (the same bound as rerank_core.calibration).
_EPS = 1e-9
# Keys of a ``cascade=`` spec that are not options of the fast stage's backend.
_SPEC_KEYS = ("k", "model", "backend", "calibration")


def _to_axis(value: float, scale: str) -> float:
    """``value`` on the log-odds axis for probability scales, as is otherwise."""
    if scale in _PROBABILITIES:
        p = min(max(value, _EPS), 1.0 - _EPS)
        return math.log(p) - math.log1p(-p)
    return value


def _from_axis(value: float, scale: str) -> float:
    if scale in _PROBABILITIES:
        return 0.5 * (1.0 + math.tanh(0.5 * value))  # the sigmoid, without overflow
    return value


def _comparable(fast: str, strong: str) -> bool:
    return fast == strong or (fast in _LOG_ODDS and strong in _LOG_ODDS)


class CascadeReranker(Reranker):
    """Rerank every candidate with a fast reranker, then the fast top ``k`` with a strong one.

    The final order is the strong stage's order of the fast stage's top ``k``, then every other
    candidate in the fast stage's order (ties, as everywhere, keep input order). See the module
    documentation for what the scores of candidates outside the top ``k`` are.

    Both stages run through their own async path in :meth:`arerank` / :meth:`ascore_pairs`, one
    after the other, so the event loop is never blocked. Each stage receives all of a call's pairs
    in one :meth:`~rerank_core.Reranker.score_pairs` call (two model calls per cascade call,
    whatever the number of queries), and batches them itself.

    Args:
        fast: Scores every candidate (a small cross-encoder, an int8 one).
        strong: Scores the fast stage's top ``k`` (an LLM-class reranker).
        k: How many of the fast stage's best candidates per query the strong stage scores.
        rerank_window: See :class:`~rerank_core.Reranker` (the cascade's own policy).
        should_rerank: See :class:`~rerank_core.Reranker`.

    Raises:
        TypeError: a stage is not a :class:`~rerank_core.Reranker`.
        ValueError: ``k`` is not a positive int, or a stage has its own window or gate.

    Example:
        >>> cascade = CascadeReranker(fast_scorer, llm_scorer, k=20)  # doctest: +SKIP
        >>> cascade.rerank(query, docs, top_n=5, score_threshold=0.3)  # doctest: +SKIP
    """

    scores_depend_on_call = True

    def __init__(
        self,
        fast: Reranker,
        strong: Reranker,
        *,
        k: int = 20,
        rerank_window: int | None = None,
        should_rerank: Callable[[str], bool] | None = None,
    ) -> None:
        for name, stage in (("fast", fast), ("strong", strong)):
            if not isinstance(stage, Reranker):
                raise TypeError(f"{name} must be a Reranker, got {type(stage).__name__}")
            if stage.rerank_window is not None or stage.should_rerank is not None:
                raise ValueError(
                    f"the {name} stage has its own rerank_window or should_rerank, which a "
                    "cascade does not use: set them on the CascadeReranker instead"
                )
        self.k = check_positive_int("k", k, allow_none=False) or 1
        super().__init__(
            batch_size=strong.batch_size, rerank_window=rerank_window, should_rerank=should_rerank
        )
        self.fast = fast
        self.strong = strong
        self.model_name = strong.model_name

    # ----------------------------------------------------------------- scoring

    def _prepare(self, pairs: Sequence[Pair]) -> list[Batch]:
        # One batch: the cascade needs all of a query's candidates together to pick its top k.
        return [_batch_of(pairs, range(len(pairs)))]

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        fast = self.fast.score_pairs(list(pairs))
        head = self._heads(pairs, fast)
        strong = self.strong.score_pairs([pairs[i] for i in head]) if head else []
        return self._merge(pairs, fast, head, strong)

    async def _ascore_batch(self, batch: Batch) -> list[float]:
        pairs = batch.pairs
        fast = await self.fast.ascore_pairs(list(pairs))
        head = self._heads(pairs, fast)
        strong = await self.strong.ascore_pairs([pairs[i] for i in head]) if head else []
        return self._merge(pairs, fast, head, strong)

    @staticmethod
    def _groups(pairs: Sequence[Pair]) -> list[list[int]]:
        """Positions of each distinct query's pairs, queries in order of first appearance."""
        groups: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            groups.setdefault(query, []).append(i)
        return list(groups.values())

    def _heads(self, pairs: Sequence[Pair], fast: Sequence[float]) -> list[int]:
        """Positions of the pairs the strong stage scores: each query's fast top ``k``."""
        head: list[int] = []
        for group in self._groups(pairs):
            ranked = sorted(group, key=lambda i: -fast[i])  # stable: ties keep input order
            head.extend(ranked[: self.k])
        return head

    def _merge(
        self,
        pairs: Sequence[Pair],
        fast: Sequence[float],
        head: Sequence[int],
        strong: Sequence[float],
    ) -> list[float]:
        out = [float(s) for s in fast]
        for i, s in zip(head, strong, strict=True):
            out[i] = float(s)
        chosen = set(head)
        for group in self._groups(pairs):
            top = [out[i] for i in group if i in chosen]
            rest = [i for i in group if i not in chosen]
            if rest:
                for i, value in zip(
                    rest, self._below(min(top), [out[i] for i in rest]), strict=True
                ):
                    out[i] = value
        return out

    def _below(self, floor: float, values: Sequence[float]) -> list[float]:
        """The fast scores ``values`` on the strong axis, lowered as a block below ``floor``."""
        fast_scale, strong_scale = self.fast.score_scale, self.strong.score_scale
        axis = [_to_axis(v, fast_scale) for v in values]
        shift = max(0.0, max(axis) - _to_axis(floor, strong_scale))
        if shift == 0.0 and (fast_scale in _PROBABILITIES) == (strong_scale in _PROBABILITIES):
            out = [float(v) for v in values]  # already below the floor, same form: unchanged
        else:
            out = [_from_axis(v - shift, strong_scale) for v in axis]
        # Strictly below the floor, so no candidate outside the top k ties with one inside it
        # (rounding in the sigmoid can land the best of the rest on the floor itself).
        cap = math.nextafter(floor, -math.inf)
        if strong_scale in _PROBABILITIES:
            cap = max(cap, 0.0)  # a floor of exactly 0 leaves ties at 0, in input order
        return [min(v, cap) for v in out]

    # ----------------------------------------------------------------- identity

    @property
    def score_scale(self) -> str:
        """The strong stage's scale, or ``"unknown"`` when the fast stage's cannot be read on it."""
        fast, strong = self.fast.score_scale, self.strong.score_scale
        return strong if _comparable(fast, strong) else "unknown"

    def identity(self) -> dict[str, Any]:
        """Both stages' identities and ``k``: each changes a cascade's scores."""
        return {
            "class": type(self).__name__,
            "model": self.model_name,
            "scale": self.score_scale,
            "k": self.k,
            "fast": self.fast.identity(),
            "strong": self.strong.identity(),
        }

    def describe(self) -> dict[str, Any]:
        """Both stages' descriptions, ``k`` and the cascade's scale."""
        return {
            "class": type(self).__name__,
            "model_name": self.model_name,
            "score_scale": self.score_scale,
            "k": self.k,
            "fast": self.fast.describe(),
            "strong": self.strong.describe(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fast={self.fast!r}, strong={self.strong!r}, k={self.k})"


def build_cascade(
    model: str | os.PathLike[str] | None,
    spec: Mapping[str, Any],
    *,
    backend: str = "auto",
    cache_entries: int | None = None,
    calibration: str | os.PathLike[str] | bool | None = None,
    **options: Any,
) -> CascadeReranker:
    """What :func:`~rerank_core.load_reranker` builds for ``cascade=spec``.

    ``model``, ``backend``, ``calibration`` and ``options`` build the strong stage; ``spec``
    builds the fast stage, with :func:`~rerank_core.load_reranker` both times.

    Args:
        model: The strong stage's model.
        spec: ``{"k": int, "model": fast model (default: the bundled one), "backend": fast
            backend (default ``"auto"``), "calibration": as for load_reranker, **fast options}``.
            The fast stage takes ``device`` from ``options`` unless ``spec`` sets it.
        backend: The strong stage's backend.
        cache_entries: Caches each stage's scores (never the cascade's: they depend on the other
            candidates of a call).
        calibration: The strong stage's calibration.
        **options: The strong stage's options; ``rerank_window`` and ``should_rerank`` go to the
            cascade.

    Raises:
        ValueError: ``spec`` has no ``k`` or is not a mapping.

    Example:
        >>> load_reranker(
        ...     "Qwen/Qwen3-Reranker-0.6B",
        ...     cascade={"k": 20, "backend": "onnx-int8"},  # the bundled model, int8, first
        ... )  # doctest: +SKIP
    """
    from rerank_core.registry import load_reranker

    if not isinstance(spec, Mapping):
        raise ValueError(
            f"cascade must be a mapping such as {{'k': 20, 'backend': 'onnx-int8'}}, "
            f"got {type(spec).__name__}"
        )
    if "k" not in spec:
        raise ValueError("cascade needs k: how many fast-stage candidates the strong model scores")
    policy = {key: options.pop(key) for key in ("rerank_window", "should_rerank") if key in options}
    fast_options = {key: value for key, value in spec.items() if key not in _SPEC_KEYS}
    if "device" in options:
        fast_options.setdefault("device", options["device"])
    fast = load_reranker(
        spec.get("model"),
        backend=spec.get("backend", "auto"),
        cache_entries=cache_entries,
        calibration=spec.get("calibration"),
        **fast_options,
    )
    strong = load_reranker(
        model, backend=backend, cache_entries=cache_entries, calibration=calibration, **options
    )
    return CascadeReranker(fast, strong, k=spec["k"], **policy)
