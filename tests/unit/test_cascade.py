"""CascadeReranker: the strong stage orders the fast top k, the rest keep the fast order below."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rerank_core import CachedReranker, CascadeReranker, load_reranker
from tests.fakes import ScaledTable, WordOverlap

Q = "query"
DOCS = ["a", "b", "c", "d", "e", "f"]
# The fast stage orders c, a, e, b, f, d; the strong stage disagrees inside the fast top 3.
FAST = {"a": 0.8, "b": 0.4, "c": 0.9, "d": 0.1, "e": 0.7, "f": 0.3}
STRONG = {"a": 0.95, "b": 0.99, "c": 0.6, "d": 0.98, "e": 0.85, "f": 0.97}


def _cascade(
    fast: dict[str, float] = FAST,
    strong: dict[str, float] = STRONG,
    *,
    k: int,
    strong_scale: str = "probability",
) -> tuple[CascadeReranker, ScaledTable, ScaledTable]:
    f, s = ScaledTable(fast), ScaledTable(strong, strong_scale)
    return CascadeReranker(f, s, k=k), f, s


def test_strong_orders_the_fast_top_k_and_the_rest_keep_the_fast_order() -> None:
    cascade, fast, strong = _cascade(k=3)
    results = cascade.rerank(Q, DOCS)
    assert [r.document for r in results] == ["a", "e", "c", "b", "f", "d"]
    # the strong stage saw the fast top 3 only, in one call; the fast stage saw everything once
    assert [sorted(d for _, d in call) for call in strong.seen] == [["a", "c", "e"]]
    assert [len(call) for call in fast.seen] == [6]
    # below the strong floor (0.6) already: the rest keep their fast scores unchanged
    assert [r.score for r in results] == [0.95, 0.85, 0.6, 0.4, 0.3, 0.1]
    assert cascade.score(Q, DOCS) == [0.95, 0.4, 0.6, 0.1, 0.85, 0.3]  # input order


def test_the_rest_are_lowered_as_a_block_below_the_strong_floor() -> None:
    strong = {**STRONG, "a": 0.3, "c": 0.2, "e": 0.25}  # the strong model rates the top 3 low
    fast = {**FAST, "b": 0.65, "f": 0.5}
    cascade, *_ = _cascade(fast, strong, k=3)
    results = cascade.rerank(Q, DOCS)
    assert [r.document for r in results] == ["a", "e", "c", "b", "f", "d"]
    rest = {r.document: r.score for r in results[3:]}
    assert all(0.0 < s < 0.2 for s in rest.values())  # probabilities, below the floor 0.2
    # one shift on the log-odds axis: the fast model's gaps between the rest are kept
    logit = {d: math.log(s / (1 - s)) for d, s in rest.items()}
    gap = math.log(0.65 / 0.35) - math.log(0.5 / 0.5)
    assert logit["b"] - logit["f"] == pytest.approx(gap, rel=1e-9)
    assert logit["b"] == pytest.approx(math.log(0.2 / 0.8), abs=1e-6)
    # a threshold at the floor keeps the strong stage's picks and nothing the fast model ranked
    # below them; top_n applies after
    kept = cascade.rerank(Q, DOCS, score_threshold=0.2)
    assert [r.document for r in kept] == ["a", "e", "c"]
    assert [r.document for r in cascade.rerank(Q, DOCS, top_n=4)] == ["a", "e", "c", "b"]


def test_a_logit_strong_stage_reads_fast_probabilities_as_log_odds() -> None:
    strong = {d: 4.0 * v for d, v in STRONG.items()}  # logits: floor 4 * 0.6 = 2.4
    cascade, *_ = _cascade(strong=strong, k=3, strong_scale="logit")
    assert cascade.score_scale == "logit"
    rest = {r.document: r.score for r in cascade.rerank(Q, DOCS)[3:]}
    assert rest == pytest.approx({d: math.log(FAST[d] / (1 - FAST[d])) for d in "bfd"}, rel=1e-9)


def test_ties_at_the_floor_stay_below_it() -> None:
    # the best of the rest lands exactly on the floor once shifted: it must stay strictly below
    fast = {**FAST, "b": 0.6}
    strong = {**STRONG, "a": 0.6, "c": 0.6, "e": 0.6}
    cascade, *_ = _cascade(fast, strong, k=3)
    results = cascade.rerank(Q, DOCS)
    assert [r.document for r in results[:3]] == ["a", "c", "e"]  # tied: input order
    assert results[3].document == "b" and results[3].score < 0.6  # type: ignore[operator]


def test_each_query_of_a_call_gets_its_own_top_k_in_two_model_calls() -> None:
    fast, strong = WordOverlap(), WordOverlap()
    cascade = CascadeReranker(fast, strong, k=1)
    pairs = [("red apple", "a red apple"), ("blue sky", "blue"), ("red apple", "apple")]
    pairs += [("blue sky", "the blue sky"), ("red apple", "pear")]
    scores = cascade.score_pairs(pairs)
    assert len(fast.calls) == 1 and len(strong.calls) == 1
    assert sorted(strong.calls[0]) == [("blue sky", "the blue sky"), ("red apple", "a red apple")]
    assert scores[0] == 1.0 and scores[3] == 1.0  # each query's best went to the strong stage
    assert scores[1] == 0.5 and scores[2] == 0.5 and scores[4] == 0.0  # fast, below the floor


def test_k_covering_every_candidate_is_the_strong_model_alone() -> None:
    cascade, *_ = _cascade(k=10)
    strong = ScaledTable(STRONG)
    assert cascade.rerank(Q, DOCS) == strong.rerank(Q, DOCS)


async def test_async_runs_both_stages_and_equals_sync() -> None:
    cascade, fast, strong = _cascade(k=2)
    sync = cascade.rerank(Q, DOCS, top_n=4)
    assert await cascade.arerank(Q, DOCS, top_n=4) == sync
    assert len(fast.seen) == 2 and len(strong.seen) == 2  # once per path


def test_scale_identity_and_bad_arguments() -> None:
    cascade, fast, strong = _cascade(k=3)
    assert cascade.score_scale == "probability"
    identity = cascade.identity()
    assert identity["k"] == 3 and identity["fast"] == fast.identity()
    assert identity["strong"] == strong.identity()
    assert CascadeReranker(fast, strong, k=4).score_id != cascade.score_id
    odd = CascadeReranker(ScaledTable(FAST, "similarity"), strong, k=3)
    assert odd.score_scale == "unknown"  # a similarity cannot be read as a probability
    with pytest.raises(ValueError, match="k must be a positive int"):
        CascadeReranker(fast, strong, k=0)
    with pytest.raises(TypeError, match="strong must be a Reranker"):
        CascadeReranker(fast, "model", k=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="set them on the CascadeReranker"):
        CascadeReranker(ScaledTable(FAST, rerank_window=5), strong, k=3)
    with pytest.raises(ValueError, match="cache its stages"):
        CachedReranker(cascade)


def test_the_factory_builds_a_cascade_with_cached_stages(tiny_model_dir: Path) -> None:
    cascade = load_reranker(
        tiny_model_dir,
        backend="torch",
        device="cpu",
        cache_entries=100,
        rerank_window=4,
        cascade={"k": 2, "model": tiny_model_dir, "backend": "torch", "max_length": 16},
    )
    assert isinstance(cascade, CascadeReranker) and cascade.k == 2
    assert cascade.rerank_window == 4
    assert isinstance(cascade.fast, CachedReranker) and isinstance(cascade.strong, CachedReranker)
    assert cascade.fast.inner.max_length == 16 and cascade.strong.inner.max_length == 128
    assert cascade.fast.inner.device == "cpu"  # inherited from the strong stage's options
    results = cascade.rerank("what is rag", ["a", "b c", "d e f", "g", "h"])
    assert [r.reranked for r in results] == [True] * 4 + [False]
    with pytest.raises(ValueError, match="cascade needs k"):
        load_reranker(tiny_model_dir, cascade={"backend": "torch"})


def test_the_adapters_from_model_pass_a_cascade_to_the_factory(tiny_model_dir: Path) -> None:
    from langchain_rerank import CrossEncoderReranker
    from llamaindex_rerank import CrossEncoderRerank

    spec = {"k": 2, "model": tiny_model_dir, "backend": "torch"}
    lc = CrossEncoderReranker.from_model(tiny_model_dir, backend="torch", cascade=spec, top_n=2)
    li = CrossEncoderRerank.from_model(tiny_model_dir, backend="torch", cascade=spec, top_n=2)
    for adapter in (lc, li):
        assert isinstance(adapter.scorer, CascadeReranker) and adapter.scorer.k == 2


def test_the_server_scores_each_request_of_a_cascade_in_its_own_call() -> None:
    import asyncio

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from rerank_core.app.server import ServerSettings, create_app
    from tests.integration.live_server import running

    cascade, *_ = _cascade(k=2)
    # Batching waits long enough that the two requests below land in one dynamic batch.
    settings = ServerSettings(model_name="c", max_wait_ms=300.0)
    halves = (["a", "b", "c"], ["d", "e", "f"])
    with running(create_app(cascade, settings=settings)) as (url, _):

        async def both() -> list[list[float]]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                replies = await asyncio.gather(
                    *(http.post("/v1/rerank", json={"query": Q, "documents": h}) for h in halves)
                )
            return [
                [
                    r["relevance_score"]
                    for r in sorted(x.json()["results"], key=lambda r: r["index"])
                ]
                for x in replies
            ]

        got = asyncio.run(both())
    assert got == [cascade.score(Q, h) for h in halves]
