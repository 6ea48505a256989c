"""A bounded LRU cache of scores, and a reranker that consults it before its backend.

Scores are keyed by the scorer's identity (model and the settings that change a score), the query
and a hash of the passage, so the same passage text never costs a second forward pass for the same
query: useful when users repeat queries, when a pipeline reranks the same candidates twice, and
when a rerank window is widened. The cache holds at most ``max_entries`` scores and forgets the
least recently used first. It is off unless you wrap a scorer in :class:`CachedReranker`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rerank_core.base import Batch, Pair, Reranker, RerankerWrapper

__all__ = ["CacheInfo", "CachedReranker", "ScoreCache"]

_Key = tuple[str, str, bytes]


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Counters of a :class:`ScoreCache`.

    Attributes:
        hits: Lookups answered from the cache.
        misses: Lookups that went to the model.
        entries: Scores held now.
        max_entries: The bound.
    """

    hits: int
    misses: int
    entries: int
    max_entries: int

    @property
    def hit_rate(self) -> float:
        """Share of lookups answered from the cache (0.0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ScoreCache:
    """A thread-safe LRU map from (scorer, query, passage hash) to a score.

    Args:
        max_entries: Most scores kept; the least recently used go first.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive int, got {max_entries!r}")
        self.max_entries = max_entries
        self._data: OrderedDict[_Key, float] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @staticmethod
    def key(scorer_id: str, query: str, document: str) -> _Key:
        """The cache key: passages are hashed (BLAKE2b, 128 bits) so the cache stays small."""
        return (scorer_id, query, hashlib.blake2b(document.encode(), digest_size=16).digest())

    def get_many(self, keys: Sequence[_Key]) -> list[float | None]:
        """Scores for ``keys`` (``None`` where absent), counting hits and misses."""
        out: list[float | None] = []
        with self._lock:
            for k in keys:
                value = self._data.get(k)
                if value is None:
                    self._misses += 1
                else:
                    self._hits += 1
                    self._data.move_to_end(k)
                out.append(value)
        return out

    def put_many(self, items: Sequence[tuple[_Key, float]]) -> None:
        """Store scores, evicting the least recently used beyond the bound."""
        with self._lock:
            for k, v in items:
                self._data[k] = v
                self._data.move_to_end(k)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        """Forget every score and reset the counters."""
        with self._lock:
            self._data.clear()
            self._hits = self._misses = 0

    def info(self) -> CacheInfo:
        """Hit and miss counts and the current size."""
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._data), self.max_entries)

    def __len__(self) -> int:
        return len(self._data)


class CachedReranker(RerankerWrapper):
    """Wrap a reranker so repeated (query, passage) pairs are scored once.

    The wrapper is itself a :class:`~rerank_core.Reranker`: pass it wherever a scorer goes (the
    LangChain and LlamaIndex adapters included). Misses go to the wrapped scorer in one call, so
    its own batching still applies; scores are returned exactly as the scorer gave them.

    Args:
        inner: The scorer whose results to keep.
        max_entries: Bound of a new private cache (ignored when ``cache`` is given).
        cache: A :class:`ScoreCache` to share between wrappers. Keys include each scorer's
            :meth:`~rerank_core.Reranker.identity` (model, scale, precision, window, remote
            options), so rerankers whose scores differ never share entries.
        rerank_window: See :class:`~rerank_core.Reranker` (the wrapper's own policy).
        should_rerank: See :class:`~rerank_core.Reranker`.
        fusion: See :class:`~rerank_core.Reranker`.

    Example:
        >>> cached = CachedReranker(CrossEncoderScorer(), max_entries=50_000)  # doctest: +SKIP
        >>> cached.rerank(query, docs); cached.rerank(query, docs)  # doctest: +SKIP
        >>> cached.cache_info()  # doctest: +SKIP
        CacheInfo(hits=100, misses=100, entries=100, max_entries=50000)
    """

    def __init__(
        self,
        inner: Reranker,
        *,
        max_entries: int = 100_000,
        cache: ScoreCache | None = None,
        rerank_window: int | None = None,
        should_rerank: Any = None,
        fusion: Any = None,
    ) -> None:
        super().__init__(
            inner, rerank_window=rerank_window, should_rerank=should_rerank, fusion=fusion
        )
        if inner.scores_depend_on_call:
            raise ValueError(
                "a cascade's scores depend on the other candidates of a call and cannot be "
                "cached per pair: cache its stages instead "
                "(load_reranker(..., cache_entries=N, cascade=...))"
            )
        self.cache = cache if cache is not None else ScoreCache(max_entries)
        self._scorer_id = inner.score_id

    def cache_info(self) -> CacheInfo:
        """Hit and miss counts and the size of the cache."""
        return self.cache.info()

    def _lookup(self, pairs: Sequence[Pair]) -> tuple[list[Any], list[float | None], list[int]]:
        keys = [ScoreCache.key(self._scorer_id, q, d) for q, d in pairs]
        found = self.cache.get_many(keys)
        return keys, found, [i for i, s in enumerate(found) if s is None]

    def _fill(
        self, keys: list[Any], found: list[float | None], missing: list[int], new: Sequence[float]
    ) -> list[float]:
        for i, s in zip(missing, new, strict=True):
            found[i] = s
        self.cache.put_many([(keys[i], float(s)) for i, s in zip(missing, new, strict=True)])
        return [float(s) for s in found]  # type: ignore[arg-type]  # every slot is filled now

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        keys, found, missing = self._lookup(pairs)
        new = self.inner.score_pairs([pairs[i] for i in missing]) if missing else []
        return self._fill(keys, found, missing, new)

    async def _ascore_batch(self, batch: Batch) -> list[float]:
        keys, found, missing = self._lookup(batch.pairs)
        new = await self.inner.ascore_pairs([batch.pairs[i] for i in missing]) if missing else []
        return self._fill(keys, found, missing, new)

    def describe(self) -> dict[str, Any]:
        """The wrapped scorer's description, with the cache's counters."""
        info = self.cache_info()
        return {
            **self.inner.describe(),
            "fusion": None if self.fusion is None else self.fusion.spec(),
            "cache": {"hits": info.hits, "misses": info.misses, "max_entries": info.max_entries},
        }
