"""Calibration: fitting, applying, storing, measuring, and the calibrating reranker."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rerank_core.cache import CachedReranker, ScoreCache
from rerank_core.calibration import (
    CalibratedReranker,
    Calibration,
    brier_score,
    expected_calibration_error,
    fit_calibration,
    log_loss,
    reliability_bins,
    to_logit,
)
from tests.fakes import WordOverlap


def _synthetic(a: float, b: float, n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(a * z + b)))).astype(int)
    return z, y


# --------------------------------------------------------------------------- fitting


def test_platt_recovers_known_parameters() -> None:
    z, y = _synthetic(0.6, -1.2)
    cal = fit_calibration(z, y, method="platt", dataset="synthetic", relevance_level=2)
    assert cal.a == pytest.approx(0.6, abs=0.04)
    assert cal.b == pytest.approx(-1.2, abs=0.06)
    assert (cal.pairs, cal.positives, cal.dataset) == (len(y), int(y.sum()), "synthetic")


def test_temperature_recovers_the_temperature_and_keeps_one_half() -> None:
    z, y = _synthetic(1 / 2.5, 0.0, seed=1)
    cal = fit_calibration(z, y, method="temperature")
    assert 1 / cal.a == pytest.approx(2.5, rel=0.06)
    assert cal.b == 0.0
    assert cal.apply([0.0]) == [0.5]


def test_platt_fitted_on_probabilities_matches_the_fit_on_logits() -> None:
    z, y = _synthetic(0.6, -1.2, n=5000, seed=2)
    on_logits = fit_calibration(z, y)
    on_probs = fit_calibration(1 / (1 + np.exp(-z)), y, scale="probability")
    assert (on_probs.a, on_probs.b) == pytest.approx((on_logits.a, on_logits.b), abs=1e-6)


def test_isotonic_is_monotone_and_matches_pool_adjacent_violators() -> None:
    z, y = _synthetic(0.8, 0.3, n=3000, seed=3)
    cal = fit_calibration(z, y, method="isotonic")
    assert all(np.diff(cal.knots_y) >= 0)
    grid = cal.apply(np.linspace(-15, 15, 2001))
    assert all(np.diff(grid) >= 0)
    assert min(grid) >= 0 and max(grid) <= 1
    sklearn = pytest.importorskip("sklearn.isotonic")
    reference = sklearn.IsotonicRegression(out_of_bounds="clip").fit(z, y)
    assert cal.apply(z) == pytest.approx(reference.predict(z), abs=1e-9)


def test_isotonic_pools_a_violating_pair() -> None:
    cal = fit_calibration([0.0, 1.0, 2.0, 3.0], [0, 1, 0, 1], method="isotonic")
    assert cal.apply([0.0, 1.0, 2.0, 3.0]) == [0.0, 0.5, 0.5, 1.0]


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [1, 1], "both relevant and non-relevant"),
        ([0.1, 0.2], [1], "2 scores but 1 labels"),
        ([0.1, 0.2], [0, 2], "labels must be 0"),
        ([0.1, math.nan], [0, 1], "finite"),
    ],
)
def test_fitting_rejects_bad_data(scores: list[float], labels: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_calibration(scores, labels)


def test_fitting_rejects_an_unknown_method_or_scale() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        fit_calibration([0.0, 1.0], [0, 1], method="beta")
    with pytest.raises(ValueError, match="scale 'similarity'"):
        fit_calibration([0.0, 1.0], [0, 1], scale="similarity")


# --------------------------------------------------------------------------- applying, storing


def test_apply_reads_probabilities_as_their_logits_and_survives_0_and_1() -> None:
    cal = Calibration("platt", a=0.5, b=-1.0)
    z = [-3.0, 0.0, 2.0]
    probs = [1 / (1 + math.exp(-v)) for v in z]
    assert cal.apply(probs, scale="probability") == pytest.approx(cal.apply(z), abs=1e-12)
    ends = cal.apply([0.0, 1.0], scale="probability")
    assert all(math.isfinite(p) for p in ends) and 0 < ends[0] < ends[1] < 1
    assert to_logit([0.0, 1.0]).tolist() == pytest.approx([-20.723, 20.723], abs=1e-3)


@pytest.mark.parametrize(
    "cal",
    [
        Calibration("platt", a=0.5, b=-1.0, dataset="d", pairs=10, positives=3, model={"m": 1}),
        Calibration("temperature", a=0.25),
        Calibration("isotonic", knots_x=(-1.0, 0.5, 2.0), knots_y=(0.0, 0.4, 0.9)),
    ],
)
def test_save_and_load_round_trip(cal: Calibration, tmp_path: Path) -> None:
    path = cal.save(tmp_path / "calibration.json")
    loaded = Calibration.load(path)
    assert loaded == cal
    assert loaded.model == cal.model
    assert loaded.apply([-2.0, 0.0, 3.0]) == cal.apply([-2.0, 0.0, 3.0])
    assert json.loads(path.read_text())["fitted_on"]["pairs"] == cal.pairs


def test_load_names_the_file_of_a_bad_calibration(tmp_path: Path) -> None:
    bad = tmp_path / "calibration.json"
    bad.write_text('{"kind": "platt", "a": -1}')
    with pytest.raises(ValueError, match=r"calibration\.json.*slope a must be positive"):
        Calibration.load(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a valid calibration"):
        Calibration.load(bad)


def test_isotonic_knots_are_checked() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Calibration("isotonic", knots_x=(1.0, 0.0), knots_y=(0.1, 0.2))
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibration("isotonic", knots_x=(0.0, 1.0), knots_y=(0.5, 0.2))


# --------------------------------------------------------------------------- measures


def test_ece_brier_and_log_loss_match_hand_computed_values() -> None:
    probs = [0.05, 0.15, 0.15, 0.95, 0.95, 1.0]
    labels = [0, 0, 1, 1, 0, 1]
    # bins: [0, .1): 0.05 vs 0 -> 0.05 x 1; [.1, .2): 0.15 vs 0.5 -> 0.35 x 2;
    # [.9, 1]: 0.9667 vs 0.6667 -> 0.3 x 3 (1.0 falls in the last, closed bin)
    assert expected_calibration_error(probs, labels) == pytest.approx((0.05 + 0.7 + 0.9) / 6)
    assert brier_score(probs, labels) == pytest.approx(
        (0.0025 + 0.0225 + 0.7225 + 0.0025 + 0.9025 + 0.0) / 6
    )
    expected = -(math.log(0.95) + math.log(0.85) + math.log(0.15) + math.log(0.95))
    expected += -(math.log(0.05) + math.log(1 - 1e-15))
    assert log_loss(probs, labels) == pytest.approx(expected / 6)
    bins = reliability_bins(probs, labels)
    assert [(b["low"], b["count"]) for b in bins] == [(0.0, 1), (0.1, 2), (0.9, 3)]


def test_a_perfectly_calibrated_constant_has_zero_ece() -> None:
    assert expected_calibration_error([0.25] * 4, [1, 0, 0, 0]) == pytest.approx(0.0)


def test_measures_reject_values_outside_0_1() -> None:
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        brier_score([1.5], [1])


# --------------------------------------------------------------------------- the reranker

QUERY = "red apple pie"
DOCS = ["a red apple pie recipe", "apple", "nothing here", "red pie", "red apple"]
PLATT = Calibration("platt", a=0.8, b=-0.5)


def test_calibrated_reranker_keeps_the_order_and_maps_the_scores() -> None:
    inner = WordOverlap()
    calibrated = CalibratedReranker(inner, PLATT)
    raw = inner.score(QUERY, DOCS)
    assert calibrated.score(QUERY, DOCS) == pytest.approx(PLATT.apply(raw, scale="probability"))
    assert [r.index for r in calibrated.rerank(QUERY, DOCS)] == [
        r.index for r in inner.rerank(QUERY, DOCS)
    ]
    assert asyncio.run(calibrated.ascore(QUERY, DOCS)) == calibrated.score(QUERY, DOCS)
    assert calibrated.score_scale == "calibrated-probability"
    assert calibrated.describe()["calibration"]["kind"] == "platt"


def test_identity_changes_with_the_calibration() -> None:
    inner = WordOverlap()
    one = CalibratedReranker(inner, PLATT)
    two = CalibratedReranker(inner, Calibration("platt", a=0.8, b=-0.4))
    same = CalibratedReranker(inner, Calibration("platt", a=0.8, b=-0.5, dataset="other"))
    assert len({inner.score_id, one.score_id, two.score_id}) == 3
    assert one.score_id == same.score_id  # provenance does not change a score
    assert one.identity()["inner"] == inner.identity()


def test_the_cache_keeps_calibrated_and_raw_scores_apart() -> None:
    inner = WordOverlap()
    shared = ScoreCache(100)
    raw = CachedReranker(inner, cache=shared)
    calibrated = CachedReranker(CalibratedReranker(inner, PLATT), cache=shared)
    raw_scores = raw.score(QUERY, DOCS)
    cal_scores = calibrated.score(QUERY, DOCS)
    assert cal_scores != raw_scores
    assert len(shared) == 2 * len(DOCS)
    assert calibrated.score(QUERY, DOCS) == cal_scores
    assert raw.score(QUERY, DOCS) == raw_scores


def test_calibrated_reranker_refuses_scales_it_cannot_read() -> None:
    class Unknown(WordOverlap):
        @property
        def score_scale(self) -> str:
            return "unknown"

    with pytest.raises(ValueError, match=r"scale 'unknown'.*input_scale"):
        CalibratedReranker(Unknown(), PLATT)
    told = CalibratedReranker(Unknown(), PLATT, input_scale="probability")
    assert told.score(QUERY, DOCS) == CalibratedReranker(WordOverlap(), PLATT).score(QUERY, DOCS)
    with pytest.raises(ValueError, match="already calibrated"):
        CalibratedReranker(CalibratedReranker(WordOverlap(), PLATT), PLATT)
    with pytest.raises(TypeError, match="Calibration or a path"):
        CalibratedReranker(WordOverlap(), {"kind": "platt"})  # type: ignore[arg-type]
