"""Calibration end to end on a real tiny cross-encoder: loading, the command, and ``eval``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rerank_core import load_reranker
from rerank_core.app.evaluate import evaluate_rerank_file
from rerank_core.cache import CachedReranker
from rerank_core.calibration import CALIBRATION_FILE, CalibratedReranker, Calibration

PLATT = Calibration("platt", a=0.5, b=0.3, dataset="synthetic")
TEXTS = [
    "Bananas are yellow.",
    "Paris is the capital of France.",
    "Rome is in Italy.",
    "France borders Spain.",
    "The Seine flows through Paris.",
    "Cats sleep a lot.",
    "Italy is shaped like a boot.",
    "Madrid is in Spain.",
]
QUERIES = {"1": "capital of France", "2": "where is Rome"}


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model in a folder of its own, so a calibration beside it touches no other test."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _labelled_file(path: Path, model: Path) -> Path:
    """A rerank file whose labels follow the tiny model's own scores, with one flip per query
    (so a calibration has a positive slope to find and the classes are not separable)."""
    raw = load_reranker(model, device="cpu", calibration=False)
    lines = []
    for qid, query in QUERIES.items():
        scores = raw.score(query, TEXTS)
        order = sorted(range(len(TEXTS)), key=lambda i: -scores[i])
        relevant = set(order[:3]) ^ {order[2], order[3]}  # swap the 3rd and 4th
        lines.append(
            {
                "qid": qid,
                "query": query,
                "candidates": [
                    {"docid": f"d{i}", "text": t, "label": int(i in relevant)}
                    for i, t in enumerate(TEXTS)
                ],
            }
        )
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_load_reranker_applies_a_calibration_beside_the_model(model_copy: Path) -> None:
    raw = load_reranker(model_copy, device="cpu")
    assert raw.score_scale == "probability"
    PLATT.save(model_copy / CALIBRATION_FILE)
    calibrated = load_reranker(model_copy, device="cpu")
    assert isinstance(calibrated, CalibratedReranker)
    assert calibrated.score_scale == "calibrated-probability"
    query, docs = QUERIES["1"], TEXTS
    expected = PLATT.apply(raw.score(query, docs), scale="probability")
    assert calibrated.score(query, docs) == pytest.approx(expected, abs=1e-6)
    off = load_reranker(model_copy, device="cpu", calibration=False)
    assert off.score_scale == "probability"
    assert off.score(query, docs) == pytest.approx(raw.score(query, docs))
    cached = load_reranker(model_copy, device="cpu", cache_entries=100)
    assert isinstance(cached, CachedReranker) and isinstance(cached.inner, CalibratedReranker)
    assert cached.score_id == calibrated.score_id != raw.score_id


def test_load_reranker_takes_a_named_calibration_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = PLATT.save(tmp_path / "mine.json")
    calibrated = load_reranker(tiny_model_dir, device="cpu", calibration=path)
    assert isinstance(calibrated, CalibratedReranker) and calibrated.calibration == PLATT
    logits = load_reranker(tiny_model_dir, device="cpu", normalize=False, calibration=path)
    assert logits.score(QUERIES["1"], TEXTS) == pytest.approx(
        calibrated.score(QUERIES["1"], TEXTS), abs=1e-6
    )
    assert load_reranker(tiny_model_dir, device="cpu").score_scale == "probability"
    # The policy asked of the model holds for the calibrated one; its attributes stay readable.
    windowed = load_reranker(tiny_model_dir, device="cpu", calibration=path, rerank_window=2)
    assert [r.reranked for r in windowed.rerank(QUERIES["1"], TEXTS)] == [True] * 2 + [False] * 6
    assert windowed.max_length == 128
    assert windowed.count_tokens([(QUERIES["1"], TEXTS[0])])[0] > 0
    with pytest.raises(FileNotFoundError, match="calibration=True"):
        load_reranker(tiny_model_dir, device="cpu", calibration=True)


def test_a_remote_reranker_takes_a_calibration(tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    path = PLATT.save(tmp_path / "remote.json")
    remote = load_reranker(
        backend="http",
        provider="tei",
        base_url="http://127.0.0.1:9",
        raw_scores=True,
        calibration=path,
    )
    assert isinstance(remote, CalibratedReranker)
    assert (remote.input_scale, remote.score_scale) == ("logit", "calibrated-probability")
    with pytest.raises(ValueError, match="scale 'unknown'"):
        load_reranker(
            backend="http", provider="generic", base_url="http://127.0.0.1:9", calibration=path
        )


def test_calibrate_command_end_to_end(model_copy: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rerank_core.app.cli import _register, app

    _register()
    data = _labelled_file(tmp_path / "run.jsonl", model_copy)
    out = tmp_path / "platt.json"
    scores = tmp_path / "scores.jsonl"
    common = ["calibrate", str(data), "--model", str(model_copy), "--device", "cpu"]
    result = CliRunner().invoke(app, [*common, "-o", str(out), "--save-scores", str(scores)])
    assert result.exit_code == 0, result.output
    assert "before (raw sigmoid)" in result.output and "ECE (10 bins)" in result.output
    cal = Calibration.load(out)
    assert (cal.kind, cal.pairs, cal.positives, cal.relevance_level) == ("platt", 16, 6, 1)
    assert cal.a > 0 and cal.model["class"] == "CrossEncoderScorer"
    assert len(scores.read_text().splitlines()) == 16
    # Reusing the saved scores, isotonic, written beside the model: loading applies it.
    again = CliRunner().invoke(
        app, [*common, "--scores", str(scores), "--method", "isotonic", "--name", "tiny-run"]
    )
    assert again.exit_code == 0, again.output
    beside = Calibration.load(model_copy / CALIBRATION_FILE)
    assert (beside.kind, beside.dataset, beside.pairs) == ("isotonic", "tiny-run", 16)
    loaded = load_reranker(model_copy, device="cpu")
    assert isinstance(loaded, CalibratedReranker) and loaded.calibration == beside
    bad = CliRunner().invoke(app, [*common, "--method", "beta", "-o", str(out)])
    assert bad.exit_code != 0 and "--method must be one of" in bad.output


def test_eval_reports_ece_and_brier_before_and_after(model_copy: Path, tmp_path: Path) -> None:
    data = _labelled_file(tmp_path / "run.jsonl", model_copy)
    PLATT.save(model_copy / CALIBRATION_FILE)
    report = evaluate_rerank_file(
        data,
        rerankers={
            "raw": load_reranker(model_copy, device="cpu", calibration=False),
            "calibrated": load_reranker(model_copy, device="cpu"),
        },
        recall_at=[5],
    )
    raw, cal = report.calibration["raw"], report.calibration["calibrated"]
    assert raw["calibration_pairs"] == cal["calibration_pairs"] == 16
    assert "before" not in raw
    assert cal["before"]["ece"] == pytest.approx(raw["ece"])
    assert cal["before"]["brier"] == pytest.approx(raw["brier"])
    assert cal["ece"] != pytest.approx(raw["ece"])
    assert report.row("calibrated").metrics == pytest.approx(report.row("raw").metrics)
    assert "ECE (10 bins)" in report.to_markdown()
    paths = report.save(tmp_path / "out", "run")
    assert paths["reliability"].stat().st_size > 0
