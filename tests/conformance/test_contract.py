"""The reranker contract, run over every reranker the product ships (see ``conftest.py``).

A backend is done when it passes this module unchanged: order and ties, threshold before
``top_n``, the rerank window, the gate, async equal to sync, an event loop that keeps running,
the same errors for the same bad input, and inputs that are never mutated.
"""

from __future__ import annotations

import copy
import json
import math
import sys

import pytest

from rerank_core import Reranker, RerankResult
from rerank_core.base import SCORE_SCALES

QUERY = "what is artificial intelligence"
DOCS = [
    "Artificial intelligence is the capability of machines to perform tasks that need thinking.",
    "Apples are red or green fruit grown in orchards.",
    "Machine learning, a branch of artificial intelligence, learns from data.",
    "The weather tomorrow will be sunny with light wind.",
    "Deep learning uses neural networks with many layers.",
    "Apples are red or green fruit grown in orchards.",  # a duplicate: ties keep input order
    "",  # an empty document is scored, not dropped
]
# How closely a reranker agrees with itself when the same pair is scored in another batch. Exact
# backends agree to float noise. Dynamic int8 quantises activations with one scale per batch, so
# a pair's score moves with the other pairs of its batch (measured: up to 0.014 on the tiny
# model); 0.05 bounds that while still catching a wrong pair-to-score mapping.
SELF_TOLERANCE = 1e-5
INT8_SELF_TOLERANCE = 0.05


@pytest.fixture
def tol(reranker: Reranker) -> float:
    """This reranker's self-agreement tolerance."""
    return INT8_SELF_TOLERANCE if reranker.identity().get("quantize") == "int8" else SELF_TOLERANCE


def _expected_order(results: list[RerankResult]) -> list[int]:
    scored = [r for r in results if r.score is not None]
    return [r.index for r in sorted(scored, key=lambda r: (-(r.score or 0.0), r.index))]


def test_scores_are_plain_floats_one_per_document(reranker: Reranker, tol: float) -> None:
    scores = reranker.score(QUERY, DOCS)
    assert len(scores) == len(DOCS)
    assert all(type(s) is float and math.isfinite(s) for s in scores)
    assert reranker.score(QUERY, DOCS[:1]) == pytest.approx(scores[:1], abs=tol)
    assert reranker.score_pairs([(QUERY, d) for d in DOCS]) == pytest.approx(scores, abs=tol)
    assert reranker.score(QUERY, []) == []
    if reranker.score_scale in ("probability", "calibrated-probability"):
        assert all(0.0 <= s <= 1.0 for s in scores)


def test_rerank_orders_by_score_and_ties_keep_input_order(reranker: Reranker, tol: float) -> None:
    results = reranker.rerank(QUERY, DOCS)
    assert sorted(r.index for r in results) == list(range(len(DOCS)))
    assert [r.index for r in results] == _expected_order(results)
    assert all(r.document == DOCS[r.index] for r in results)
    dup = {r.index: r.score for r in results}
    assert dup[1] == pytest.approx(dup[5], abs=tol)


def test_threshold_applies_before_top_n(reranker: Reranker) -> None:
    everything = reranker.rerank(QUERY, DOCS)
    scores = sorted(r.score for r in everything if r.score is not None)
    threshold = scores[len(scores) // 2]  # keeps about half
    kept = [r for r in everything if r.score is not None and r.score >= threshold]
    got = reranker.rerank(QUERY, DOCS, top_n=2, score_threshold=threshold)
    assert [r.index for r in got] == [r.index for r in kept[:2]]
    assert reranker.rerank(QUERY, DOCS, top_n=3) == pytest.approx(everything[:3])
    nothing = reranker.rerank(QUERY, DOCS, score_threshold=max(scores) + 1.0)
    assert nothing == []


def test_the_window_scores_only_the_first_k(reranker: Reranker) -> None:
    windowed = copy.copy(reranker)
    windowed.rerank_window = 3
    results = windowed.rerank(QUERY, DOCS)
    assert sorted(r.index for r in results if r.reranked) == [0, 1, 2]
    assert [r.index for r in results if not r.reranked] == list(range(3, len(DOCS)))
    assert [r.index for r in results[:3]] == _expected_order(results[:3])


def test_the_gate_passes_candidates_through_unscored(reranker: Reranker) -> None:
    asked: list[str] = []

    def gate(query: str) -> bool:
        asked.append(query)
        return False

    gated = copy.copy(reranker)
    gated.should_rerank = gate
    results = gated.rerank(QUERY, DOCS, top_n=4)
    assert asked == [QUERY]
    assert [(r.index, r.score) for r in results] == [(i, None) for i in range(4)]


async def test_async_equals_sync(reranker: Reranker, tol: float) -> None:
    sync = reranker.rerank(QUERY, DOCS, top_n=5)
    asynced = await reranker.arerank(QUERY, DOCS, top_n=5)
    assert [r.index for r in asynced] == [r.index for r in sync]
    assert [r.score for r in asynced] == pytest.approx([r.score for r in sync], abs=tol)
    assert await reranker.ascore(QUERY, DOCS) == pytest.approx(reranker.score(QUERY, DOCS), abs=tol)
    pairs = [(QUERY, DOCS[0]), ("apples", DOCS[1]), (QUERY, DOCS[2])]
    assert await reranker.ascore_pairs(pairs) == pytest.approx(reranker.score_pairs(pairs), abs=tol)


# The stages that do real work: on the loop thread they would stall every other coroutine.
BLOCKING_STAGES = {"_score_batch", "_score_pairs", "_forward", "_tokenize"}


async def test_no_blocking_stage_runs_on_the_event_loop(reranker: Reranker) -> None:
    # sys.setprofile traces the calling thread only: here, the loop's. Whatever the timing, a
    # backend that tokenized or scored on the loop shows up by name.
    on_loop: list[str] = []
    stages = set(BLOCKING_STAGES)
    if reranker._prepare_blocks:
        stages.add("_prepare")

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name in stages:  # type: ignore[attr-defined]
            on_loop.append(frame.f_code.co_name)  # type: ignore[attr-defined]

    sys.setprofile(profile)
    try:
        results = await reranker.arerank(QUERY, DOCS * 4, top_n=3)
        scores = await reranker.ascore_pairs([(QUERY, d) for d in DOCS])
    finally:
        sys.setprofile(None)
    assert len(results) == 3 and len(scores) == len(DOCS)
    assert on_loop == []


BAD_INPUTS = [
    pytest.param(lambda r: r.score("", DOCS), ValueError, id="empty-query"),
    pytest.param(lambda r: r.score("\u200b ", DOCS), ValueError, id="invisible-query"),
    pytest.param(lambda r: r.score(123, DOCS), TypeError, id="query-not-str"),
    pytest.param(lambda r: r.score(QUERY, ["ok", 5]), TypeError, id="document-not-str"),
    pytest.param(lambda r: r.score(QUERY, "one string"), TypeError, id="documents-a-string"),
    pytest.param(lambda r: r.score(QUERY, ["bad \ud800"]), ValueError, id="lone-surrogate"),
    pytest.param(lambda r: r.score_pairs([(123, "a")]), TypeError, id="pair-query-not-str"),
    pytest.param(lambda r: r.score_pairs([("", "a")]), ValueError, id="pair-query-empty"),
    pytest.param(lambda r: r.score_pairs([("q",)]), TypeError, id="pair-not-a-pair"),
    pytest.param(lambda r: r.rerank(QUERY, DOCS, top_n=0), ValueError, id="top-n-zero"),
    pytest.param(lambda r: r.rerank(QUERY, DOCS, top_n=True), ValueError, id="top-n-bool"),
    pytest.param(
        lambda r: r.rerank(QUERY, DOCS, score_threshold=math.nan), ValueError, id="nan-threshold"
    ),
]


@pytest.mark.parametrize(("call", "error"), BAD_INPUTS)
def test_bad_input_raises_the_same_error_everywhere(
    reranker: Reranker, call: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        call(reranker)  # type: ignore[operator]


async def test_bad_input_raises_the_same_error_on_the_async_path(reranker: Reranker) -> None:
    with pytest.raises(ValueError, match="query"):
        await reranker.arerank("  ", DOCS)
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        await reranker.ascore(QUERY, ["ok", None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        await reranker.ascore_pairs([(1, "a")])  # type: ignore[list-item]


async def test_inputs_are_never_mutated(reranker: Reranker, tol: float) -> None:
    docs = list(DOCS)
    pairs = [(QUERY, d) for d in DOCS]
    before = (copy.deepcopy(docs), copy.deepcopy(pairs))
    reranker.rerank(QUERY, docs, top_n=2)
    await reranker.arerank(QUERY, docs, top_n=2)
    reranker.score_pairs(pairs)
    await reranker.ascore_pairs(pairs)
    assert (docs, pairs) == before
    assert reranker.score(QUERY, tuple(DOCS)) == pytest.approx(reranker.score(QUERY, DOCS), abs=tol)


def test_scale_and_identity_are_stated(reranker: Reranker) -> None:
    assert reranker.score_scale in SCORE_SCALES
    identity = reranker.identity()
    assert json.loads(reranker.score_id) == json.loads(json.dumps(identity, default=str))
    assert identity["scale"] == reranker.score_scale
    assert reranker.score_id == reranker.score_id  # stable
    described = reranker.describe()
    assert described["score_scale"] == reranker.score_scale
    json.dumps(described)
