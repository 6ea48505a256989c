"""Fusion of the reranker with the first stage: the formulas, the policy, the defaults."""

from __future__ import annotations

import asyncio
import json

import pytest

from rerank_core.base import Cutoffs, RerankResult
from rerank_core.fusion import Fusion
from rerank_core.registry import model_fusion
from tests.fakes import TableScorer

# First-stage order a..e; the reranker prefers e, d, c, b, a (the reverse).
DOCS = ["a", "b", "c", "d", "e"]
TABLE = {"a": 0.10, "b": 0.20, "c": 0.30, "d": 0.40, "e": 0.90}


def _indices(results: list[RerankResult]) -> list[int]:
    return [r.index for r in results]


# ------------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("rrf", Fusion("rrf")),
        ("rrf:weight=0.4,k=20", Fusion("rrf", weight=0.4, k=20)),
        (" linear : weight=0.7 , evidence=rank ", Fusion("linear", weight=0.7, evidence="rank")),
        ({"method": "linear", "rank_scale": 3}, Fusion("linear", rank_scale=3)),
    ],
)
def test_specs_parse_and_round_trip(spec, expected):
    parsed = Fusion.parse(spec)
    assert parsed == expected
    assert Fusion.parse(parsed.spec()) == parsed


@pytest.mark.parametrize("spec", [None, "none", Fusion("none"), {"method": "none"}])
def test_none_means_no_fusion(spec):
    assert Fusion.parse(spec) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("borda", "method must be one of"),
        ("rrf:weight=1.5", r"weight must be in \[0, 1\]"),
        ("rrf:weight=abc", "weight must be a number"),
        ("rrf:weight", "is not key=value"),
        ("rrf:depth=3", "unknown fusion settings"),
        ("linear:evidence=votes", "evidence must be one of"),
        ("linear:rank_scale=0", "rank_scale must be a positive number"),
        (3, "must be a Fusion, a spec string or None"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Fusion.parse(spec)


# ------------------------------------------------------------------------------- formulas


def test_rrf_is_the_weighted_reciprocal_rank_sum():
    scores = [0.1, 0.9, 0.5]  # reranker ranks: 3, 1, 2; first-stage ranks 1, 2, 3
    fused = Fusion("rrf", weight=0.25, k=10).fuse(scores, scale="probability")
    expected = [0.25 / 13 + 0.75 / 11, 0.25 / 11 + 0.75 / 12, 0.25 / 12 + 0.75 / 13]
    assert fused == pytest.approx(expected)


def test_linear_mixes_probability_with_rank_or_min_max_scores():
    rank = Fusion("linear", weight=0.6, evidence="rank", rank_scale=2)
    assert rank.fuse([0.2, 0.8], scale="probability") == pytest.approx(
        [0.6 * 0.2 + 0.4 * 1.0, 0.6 * 0.8 + 0.4 * (1 / 1.5)]
    )
    score = Fusion("linear", weight=0.5, evidence="score")
    fused = score.fuse([0.0, 0.0, 0.0], scale="logit", first_stage_scores=[30.0, 10.0, 20.0])
    assert fused == pytest.approx([0.5 * 0.5 + 0.5 * 1.0, 0.25, 0.25 + 0.25])
    with pytest.raises(ValueError, match="needs first_stage_scores"):
        score.fuse([0.1], scale="probability")


def test_weight_one_is_the_reranker_and_zero_the_first_stage():
    for method in ("rrf", "linear"):
        only_model = TableScorer(TABLE, fusion=Fusion(method, weight=1.0))
        only_first = TableScorer(TABLE, fusion=Fusion(method, weight=0.0))
        assert _indices(only_model.rerank("q", DOCS)) == [4, 3, 2, 1, 0]
        assert _indices(only_first.rerank("q", DOCS)) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------- the policy


def test_fusion_orders_but_scores_and_threshold_stay_the_rerankers():
    scorer = TableScorer(TABLE, fusion="rrf:weight=0.5,k=1")
    ranked = scorer.rerank("q", DOCS)
    plain = scorer.rerank("q", DOCS, fusion="none")
    assert _indices(plain) == [4, 3, 2, 1, 0]
    assert _indices(ranked) != _indices(plain)  # the first stage moved something
    assert {r.index: r.score for r in ranked} == {i: TABLE[d] for i, d in enumerate(DOCS)}
    assert all(r.fused_score is not None for r in ranked)
    assert all(r.fused_score is None for r in plain)
    fused = [r.fused_score for r in ranked]
    assert fused == sorted(fused, reverse=True)
    kept = scorer.rerank("q", DOCS, score_threshold=0.35)
    assert {r.document for r in kept} == {"d", "e"}
    assert _indices(kept) == [i for i in _indices(ranked) if TABLE[DOCS[i]] >= 0.35]
    top = scorer.rerank("q", DOCS, top_n=2)
    assert top == ranked[:2]


def test_async_and_sync_fusion_agree():
    scorer = TableScorer(TABLE, fusion="linear:weight=0.5,evidence=rank,rank_scale=1")
    assert asyncio.run(scorer.arerank("q", DOCS)) == scorer.rerank("q", DOCS)


def test_first_stage_scores_drive_score_fusion_and_are_checked():
    scorer = TableScorer(TABLE)
    spec = "linear:weight=0.2,evidence=score"
    # First-stage scores that put "c" far ahead: the fused order starts with it.
    ranked = scorer.rerank("q", DOCS, fusion=spec, first_stage_scores=[1, 1, 100, 1, 1])
    assert ranked[0].document == "c"
    with pytest.raises(ValueError, match="needs first_stage_scores"):
        scorer.rerank("q", DOCS, fusion=spec)
    with pytest.raises(ValueError, match="3 values for 5 documents"):
        scorer.rerank("q", DOCS, fusion=spec, first_stage_scores=[1, 2, 3])
    with pytest.raises(ValueError, match=r"first_stage_scores\[1\] must be a finite number"):
        scorer.rerank("q", DOCS, fusion=spec, first_stage_scores=[1, float("nan"), 1, 1, 1])
    assert scorer.calls == 1  # bad calls fail before scoring


def test_window_fuses_the_scored_head_only():
    scorer = TableScorer(TABLE, rerank_window=3, fusion="rrf:weight=1")
    ranked = scorer.rerank("q", DOCS)
    assert _indices(ranked) == [2, 1, 0, 3, 4]
    assert [r.score for r in ranked[3:]] == [None, None]


def test_cutoffs_filter_on_scores_and_keep_the_fused_order():
    ranked = [
        RerankResult(0, 0.2, "a", 0.9),
        RerankResult(1, 0.9, "b", 0.8),
        RerankResult(2, 0.85, "c", 0.7),
        RerankResult(3, None, "d"),
    ]
    assert _indices(Cutoffs(score_margin=0.1).apply(ranked)) == [1, 2, 3]
    assert _indices(Cutoffs(cut_at_largest_gap=True).apply(ranked)) == [1, 2, 3]
    assert _indices(Cutoffs(score_threshold=0.5, top_n=1).apply(ranked)) == [1]


def test_the_fusion_attribute_is_validated_and_described():
    scorer = TableScorer(TABLE)
    assert scorer.fusion is None and scorer.describe()["fusion"] is None
    scorer.fusion = "rrf:weight=0.3"
    assert scorer.fusion == Fusion("rrf", weight=0.3)
    assert scorer.describe()["fusion"] == "rrf:weight=0.3,k=60"
    with pytest.raises(ValueError, match="method must be one of"):
        scorer.fusion = "average"


# ------------------------------------------------------------------------------- defaults


def test_a_models_fusion_file_is_its_default(tmp_path):
    Fusion("rrf", weight=0.7, k=30).save(tmp_path / "fusion.json", measured={"x": 1})
    assert json.loads((tmp_path / "fusion.json").read_text())["measured"] == {"x": 1}
    assert model_fusion(str(tmp_path), None, local=True) == Fusion("rrf", weight=0.7, k=30)
    assert model_fusion(str(tmp_path), False, local=True) is None
    assert model_fusion(str(tmp_path), "none", local=True) is None
    assert model_fusion(str(tmp_path), "rrf", local=True) == Fusion("rrf")
    assert model_fusion(str(tmp_path), None, local=False) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert model_fusion(str(empty), None, local=True) is None
    with pytest.raises(FileNotFoundError, match="fusion=True"):
        model_fusion(str(empty), True, local=True)
    (empty / "fusion.json").write_text('{"format": 9}')
    with pytest.raises(ValueError, match="not a rag-rerank fusion file"):
        model_fusion(str(empty), None, local=True)


def test_the_bundled_model_ships_a_fusion_that_never_lost_on_its_sweep():
    from rerank_core.cross_encoder import DEFAULT_MODEL_DIR

    shipped = model_fusion(None, None, local=True)
    assert shipped is not None and shipped.method == "linear" and shipped.evidence == "rank"
    measured = json.loads((DEFAULT_MODEL_DIR / "fusion.json").read_text())["measured"]
    assert len(measured["first_stage"]) == 5
    for stage, alone in measured["first_stage"].items():
        assert measured["fused"][stage] >= alone - measured["tolerance"], stage
    assert "/" not in json.dumps(measured["model"])  # no install path in a shipped file
