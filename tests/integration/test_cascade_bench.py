"""``rag-rerank bench-cascade`` on a tiny rerank file with the tiny real cross-encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ir_measures")

from typer.testing import CliRunner

from rerank_core.app.cli import _register, app

DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "France borders Spain.", "Hi."]


def test_bench_cascade_reports_quality_and_strong_stage_work(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "run.jsonl"
    lines = []
    for qid, query in (("1", "capital of France"), ("2", "yellow fruit")):
        cands = [{"docid": f"d{i}", "text": t} for i, t in enumerate(DOCS)]
        lines.append(json.dumps({"qid": qid, "query": query, "candidates": cands}))
    data.write_text("\n".join(lines))
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("1 0 d0 3\n1 0 d2 1\n2 0 d1 2\n")
    _register()
    result = CliRunner().invoke(
        app,
        ["bench-cascade", "--data", str(data), "--model", str(tiny_model_dir),
         "--fast-backend", "torch", "--fast-max-length", "16", "-k", "2", "-k", "4",
         "--timed", "2", "--out", str(tmp_path / "out"), "--name", "c"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "c.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == [
        "first stage", "fast", "strong", "strong @2", "cascade 2", "strong @4", "cascade 4",
        "cascade 2 (timed)",
    ]  # fmt: skip
    assert rows["strong"]["strong_pairs_per_query"] == 4
    assert rows["fast"]["fast_pairs_per_query"] == 4
    assert rows["cascade 2"]["strong_pairs_per_query"] == 2
    assert rows["cascade 2"]["strong_pairs_vs_strong"] == 0.5
    # k covering every candidate is the strong model alone; the uncached run ranks the same
    assert rows["cascade 4"]["nDCG@10"] == pytest.approx(rows["strong"]["nDCG@10"])
    assert rows["cascade 2 (timed)"]["nDCG@10"] == pytest.approx(rows["cascade 2"]["nDCG@10"])
    assert rows["cascade 2 (timed)"]["timing"] == "measured"
    assert rows["cascade 2"]["timing"] == "estimated" and rows["cascade 2"]["ms_per_query"] > 0
    assert rows["strong @4"]["ceiling_recall_at_k"] == 1.0
    assert "| cascade 2 |" in (tmp_path / "out" / "c.md").read_text()
