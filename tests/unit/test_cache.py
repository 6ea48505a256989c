"""The score cache and the caching wrapper, on a scorer that counts what it is asked."""

from __future__ import annotations

import pytest

from rerank_core import CachedReranker, ScoreCache
from tests.fakes import CountingScorer

DOCS = [f"passage number {i}" for i in range(10)]


def test_second_call_is_served_from_the_cache() -> None:
    inner = CountingScorer()
    cached = CachedReranker(inner, max_entries=100)
    first = cached.score("q", DOCS)
    second = cached.score("q", DOCS)
    assert first == second == inner.score("q", DOCS)
    assert len(inner.seen) == len(DOCS) * 2  # once through the cache, once directly above
    info = cached.cache_info()
    assert (info.hits, info.misses, info.entries) == (10, 10, 10)
    assert info.hit_rate == pytest.approx(0.5)


def test_only_the_misses_reach_the_scorer() -> None:
    inner = CountingScorer()
    cached = CachedReranker(inner)
    cached.score("q", DOCS[:6])
    inner.seen.clear()
    scores = cached.score("q", DOCS)
    assert inner.seen == [("q", d) for d in DOCS[6:]]
    assert scores == CountingScorer().score("q", DOCS)


def test_keys_separate_queries_documents_and_scorers() -> None:
    shared = ScoreCache(100)
    a = CachedReranker(CountingScorer(salt=0), cache=shared)
    b = CachedReranker(CountingScorer(salt=1), cache=shared)
    sa = a.score("q", DOCS[:3])
    sb = b.score("q", DOCS[:3])
    assert sa != sb  # the second scorer is not served the first one's scores
    assert a.score("other query", DOCS[:3]) != sa
    assert shared.info().hits == 0 and len(shared) == 9


def test_the_bound_holds_and_the_least_recent_goes_first() -> None:
    inner = CountingScorer()
    cached = CachedReranker(inner, max_entries=4)
    cached.score("q", DOCS[:4])
    cached.score("q", DOCS[:1])  # touch passage 0
    cached.score("q", DOCS[4:6])  # evicts passages 1 and 2
    assert cached.cache_info().entries == 4
    inner.seen.clear()
    cached.score("q", [DOCS[0], DOCS[3], DOCS[1]])
    assert inner.seen == [("q", DOCS[1])]


def test_rerank_through_the_cache_matches_and_keeps_inputs() -> None:
    inner = CountingScorer()
    cached = CachedReranker(inner, rerank_window=5)
    docs = list(DOCS)
    before = list(docs)
    results = cached.rerank("q", docs, top_n=7)
    assert docs == before
    assert [r.index for r in results[:5]] == [
        r.index for r in CountingScorer(rerank_window=5).rerank("q", docs, top_n=5)
    ]
    assert all(r.score is None for r in results[5:])
    assert len(inner.seen) == 5


async def test_async_path_uses_the_cache() -> None:
    inner = CountingScorer()
    cached = CachedReranker(inner)
    assert await cached.ascore("q", DOCS) == cached.score("q", DOCS)
    assert len(inner.seen) == len(DOCS)
    assert cached.cache_info().hits == len(DOCS)


def test_same_text_in_one_call_is_scored_consistently() -> None:
    cached = CachedReranker(CountingScorer())
    scores = cached.score("q", ["a", "b", "a"])
    assert scores[0] == scores[2]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ScoreCache(0)
    with pytest.raises(TypeError, match="Reranker"):
        CachedReranker(object())  # type: ignore[arg-type]


def test_clear_resets_counts() -> None:
    cached = CachedReranker(CountingScorer())
    cached.score("q", DOCS)
    cached.cache.clear()
    info = cached.cache_info()
    assert (info.hits, info.misses, info.entries) == (0, 0, 0)
    assert cached.describe()["cache"]["max_entries"] == 100_000
