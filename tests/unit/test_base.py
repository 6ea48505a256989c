"""The reranker contract, on a deterministic in-process backend (no model, no network)."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence

import pytest

from rerank_core import RerankResult, ScoringError
from rerank_core.base import Pair
from tests.fakes import Broken, WordOverlap

DOCS = [
    "apples are red",
    "machine learning learns from data",
    "artificial intelligence is machine intelligence",
    "the weather is fine",
]
QUERY = "what is artificial intelligence"


def test_score_is_plain_floats_in_input_order() -> None:
    r = WordOverlap()
    scores = r.score(QUERY, DOCS)
    assert scores == [0.0, 0.0, 0.75, 0.25]
    assert all(type(s) is float for s in scores)


def test_rerank_sorts_by_score_and_keeps_documents() -> None:
    results = WordOverlap().rerank(QUERY, DOCS)
    assert [r.index for r in results] == [2, 3, 0, 1]  # ties keep input order
    assert all(r.document == DOCS[r.index] for r in results)
    assert all(isinstance(r, RerankResult) for r in results)


def test_threshold_applies_before_top_n() -> None:
    r = WordOverlap()
    assert [x.index for x in r.rerank(QUERY, DOCS, score_threshold=0.2)] == [2, 3]
    assert [x.index for x in r.rerank(QUERY, DOCS, score_threshold=0.2, top_n=1)] == [2]
    assert [x.index for x in r.rerank(QUERY, DOCS, top_n=3)] == [2, 3, 0]
    assert r.rerank(QUERY, DOCS, score_threshold=2.0) == []


def test_result_is_frozen() -> None:
    res = WordOverlap().rerank(QUERY, DOCS)[0]
    with pytest.raises(AttributeError):
        res.score = 3.0  # type: ignore[misc]


def test_empty_documents_give_empty_result_without_model_call() -> None:
    r = WordOverlap()
    assert r.rerank(QUERY, []) == []
    assert r.score(QUERY, []) == []
    assert r.calls == []


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query_is_a_value_error(query: str) -> None:
    with pytest.raises(ValueError, match="query"):
        WordOverlap().rerank(query, DOCS)


def test_non_string_document_names_its_index() -> None:
    with pytest.raises(TypeError, match=r"documents\[2\]"):
        WordOverlap().rerank(QUERY, ["a", "b", 3, "d"])  # type: ignore[list-item]


def test_a_bare_string_is_not_a_document_list() -> None:
    with pytest.raises(TypeError, match="sequence"):
        WordOverlap().score(QUERY, "just one string")


@pytest.mark.parametrize("top_n", [0, -1, 1.5, True])
def test_bad_top_n(top_n: object) -> None:
    with pytest.raises(ValueError, match="top_n"):
        WordOverlap().rerank(QUERY, DOCS, top_n=top_n)  # type: ignore[arg-type]


def test_bad_threshold() -> None:
    with pytest.raises(ValueError, match="score_threshold"):
        WordOverlap().rerank(QUERY, DOCS, score_threshold=math.nan)


def test_duplicates_are_each_scored_and_returned() -> None:
    docs = ["artificial intelligence", "artificial intelligence", "pears"]
    results = WordOverlap().rerank(QUERY, docs)
    assert sorted(r.index for r in results) == [0, 1, 2]
    assert results[0].score == results[1].score


def test_input_list_is_not_mutated() -> None:
    docs = list(DOCS)
    WordOverlap().rerank(QUERY, docs, top_n=2)
    assert docs == DOCS


def test_batches_respect_batch_size_and_group_similar_lengths() -> None:
    r = WordOverlap(batch_size=2)
    docs = ["a" * 50, "b", "c" * 49, "d" * 2, "e"]
    scores = r.score("q", docs)
    assert len(scores) == 5
    assert [len(c) for c in r.calls] == [2, 2, 1]
    assert {d for _, d in r.calls[0]} == {"a" * 50, "c" * 49}  # longest together


def test_nan_from_backend_is_an_error() -> None:
    with pytest.raises(ScoringError, match="non-finite"):
        Broken([0.1, math.nan]).score(QUERY, ["a", "b"])


def test_wrong_count_from_backend_is_an_error() -> None:
    with pytest.raises(ScoringError, match="1 scores for 2 pairs"):
        Broken([0.1]).score(QUERY, ["a", "b"])


def test_rerank_window_scores_only_the_head() -> None:
    r = WordOverlap(rerank_window=2)
    docs = ["pears", "artificial intelligence", "is what", "artificial"]
    results = r.rerank(QUERY, docs)
    assert [x.index for x in results] == [1, 0, 2, 3]
    assert [x.score for x in results[2:]] == [None, None]
    assert not results[2].reranked and results[0].reranked
    assert sum(len(c) for c in r.calls) == 2
    # the threshold only judges what was scored; top_n counts everything
    assert [x.index for x in r.rerank(QUERY, docs, score_threshold=0.5)] == [1, 2, 3]
    assert [x.index for x in r.rerank(QUERY, docs, top_n=3)] == [1, 0, 2]


def test_gate_passes_candidates_through_without_model_call() -> None:
    r = WordOverlap(should_rerank=lambda q: len(q.split()) > 3)
    results = r.rerank("short query", DOCS, top_n=2)
    assert [x.index for x in results] == [0, 1]
    assert all(x.score is None for x in results)
    assert r.calls == []
    assert r.rerank(QUERY, DOCS)[0].index == 2  # a long query is reranked


def test_score_pairs_across_queries() -> None:
    r = WordOverlap()
    assert r.score_pairs([("a b", "a"), ("c", "c d"), ("e", "f")]) == [0.5, 1.0, 0.0]
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        r.score_pairs([("only one",)])  # type: ignore[list-item]


async def test_async_agrees_with_sync() -> None:
    r = WordOverlap(batch_size=3)
    assert await r.ascore(QUERY, DOCS) == r.score(QUERY, DOCS)
    assert await r.arerank(QUERY, DOCS, top_n=2) == r.rerank(QUERY, DOCS, top_n=2)


async def test_async_does_not_block_the_event_loop() -> None:
    # The backend waits for an event that only a coroutine on the loop can set: if scoring ran
    # on the loop thread, the event could never be set and the backend would time out.
    class WaitsForTheLoop(WordOverlap):
        def __init__(self) -> None:
            super().__init__()
            self.loop_ran = threading.Event()

        def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
            assert self.loop_ran.wait(10), "the event loop did not run while scoring"
            return super()._score_pairs(pairs)

    r = WaitsForTheLoop()

    async def set_soon() -> None:
        await asyncio.sleep(0.01)
        r.loop_ran.set()

    setter = asyncio.create_task(set_soon())
    results = await r.arerank(QUERY, DOCS)
    await setter
    assert [x.index for x in results] == [2, 3, 0, 1]
    assert threading.get_ident() not in r.threads
