"""``rag-rerank bench`` in smoke mode on the tiny real cross-encoder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("psutil")

from typer.testing import CliRunner

from rerank_core.app.bench import FastestPath, bench_to_markdown, default_backends, run_bench
from rerank_core.app.cli import _register, app
from rerank_core.cpu import cpu_flags


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_all_backends_agree_and_are_timed(tiny_model_dir: Path) -> None:
    # Timings are reported, not judged: how fast a backend runs depends on the CPU and its load,
    # so this checks that every figure is there and sane, and that the scores agree.
    report = run_bench(
        tiny_model_dir,
        lengths=[32],
        candidates=[3, 6],
        queries=2,
        warmup=1,
        isolate=False,
        command="test",
    )
    rows = report.rows
    assert {(r["backend"], r["candidates"]) for r in rows} == {
        (b, n) for b in default_backends(tiny_model_dir) for n in (3, 6)
    }
    assert "causal-lm" not in default_backends(tiny_model_dir)  # a BERT cross-encoder
    for r in rows:
        assert r["workload"] == "synthetic-32" and r["queries"] == 2
        assert abs(r["mean_tokens"] - 32) <= 2
        for key in ("pairs_per_s", "p50_ms", "p95_ms", "model_gflops_per_s", "fraction_of_peak"):
            assert _positive(r[key]), (r["backend"], key, r[key])
        assert r["p50_ms"] <= r["p95_ms"]  # two quantiles of the same timings
        # Same weights, same pairs: fp32 backends give sentence-transformers' scores; bf16 and
        # int8 stay close on probabilities.
        tolerance = 1e-5 if r["precision"] == "fp32" else 0.05
        assert r["max_abs_diff_vs_st"] < tolerance, r["backend"]
        if r["backend"] == "sentence-transformers":
            assert r["vs_st"] == pytest.approx(1.0)
    m = report.machine
    assert m["logical_cores"] >= 1 and m["versions"]["torch"] and m["cpu"]
    assert set(m["gemm_peak_gflops"]) == {"fp32", "bf16", "int8"}
    assert all(_positive(v) for v in m["gemm_peak_gflops"].values())
    assert m["int8_kernel"] and set(m["cpu_flags"]) <= set(cpu_flags())
    assert {r["backend"]: r["precision"] for r in rows}["onnx-int8"] == "int8"
    assert report.model["max_length"] == 128  # the tiny model's own window
    md = bench_to_markdown(report)
    assert (
        all(f"| {b} |" in md for b in default_backends(tiny_model_dir)) and "Command: `test`" in md
    )


def test_bench_times_a_causal_lm_reranker(tmp_path: Path) -> None:
    from tests.llm_models import build_qwen3_reranker

    folder = build_qwen3_reranker(tmp_path / "qwen3")
    assert default_backends(folder) == ["causal-lm"]
    report = run_bench(
        folder, lengths=[32], candidates=[3], queries=1, warmup=1, isolate=False, command="llm"
    )
    (row,) = report.rows
    assert row["backend"] == "causal-lm" and row["precision"] == "fp32"
    # the model reads its prompt template too (system turn, instruction, assistant turn)
    assert row["mean_tokens"] > 32 + 40
    for key in ("pairs_per_s", "p50_ms", "model_gflops_per_s", "fraction_of_peak", "peak_rss_mb"):
        assert _positive(row[key]), (key, row[key])
    assert "| causal-lm |" in bench_to_markdown(report)


def test_unknown_backend_is_named(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown backends \\['nope'\\]"):
        run_bench(tiny_model_dir, backends=["nope"])


@pytest.mark.slow
def test_isolated_backend_reports_its_own_peak_memory(tiny_model_dir: Path) -> None:
    report = run_bench(
        tiny_model_dir, backends=["torch"], lengths=[32], candidates=[4], queries=1, warmup=0
    )
    (backend,) = report.backends
    assert backend["peak_rss_mb"] > 50  # torch alone is more than this
    assert report.rows[0]["vs_st"] is None  # no baseline in this run


def test_cli_bench_smoke_and_eval(tmp_path: Path, tiny_model_dir: Path) -> None:
    _register()
    runner = CliRunner()
    help_text = runner.invoke(app, ["--help"]).output
    assert "eval" in help_text and "bench" in help_text
    out = tmp_path / "bench"
    result = runner.invoke(
        app,
        ["bench", "--smoke", "--no-isolate", "--candidates", "4", "--out", str(out),
         "--backend", "torch", "--backend", "sentence-transformers",
         "--fastest-backend", "torch", "--fastest-window", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    assert {r["workload"] for r in data["rows"]} >= {"synthetic-32", "synthetic-128"}
    assert data["fastest"]["backend"] == "torch" and data["fastest"]["rerank_window"] == 2
    assert "fastest path (torch, window 2)" in {r["backend"] for r in data["rows"]}
    assert (out / "bench.md").read_text().startswith("Command: `rag-rerank")

    run_file = tmp_path / "run.jsonl"
    docs = [{"docid": "a", "text": "Paris is in France.", "label": 1},
            {"docid": "b", "text": "Bananas are yellow.", "label": 0}]  # fmt: skip
    run_file.write_text(json.dumps({"qid": "1", "query": "where is Paris", "candidates": docs}))
    result = runner.invoke(
        app,
        ["eval", str(run_file), "--no-bi-encoder", "--model", f"tiny={tiny_model_dir}",
         "--window", "1", "--threshold", "0.5", "--out", str(tmp_path / "ev"), "--name", "t"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "ev" / "t.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["first stage", "tiny", "tiny ≥0.5", "tiny @1"]
    assert (tmp_path / "ev" / "t.png").stat().st_size > 1000
    bad = runner.invoke(app, ["eval", str(run_file), "--no-bi-encoder", "--window", "0"])
    assert bad.exit_code != 0 and "windows" in bad.output


def test_isolated_onnx_int8_reports_cold_start_and_memory_without_torch() -> None:
    # The bundled model's shipped int8 export, in a fresh process of its own.
    from rerank_core.cross_encoder import default_model_path

    report = run_bench(
        default_model_path(),
        backends=["onnx-int8"],
        lengths=[16],
        candidates=[2],
        queries=1,
        warmup=0,
        peaks=False,
    )
    (b,) = report.backends
    assert b["backend"] == "onnx-int8" and b["torch_loaded"] is False
    assert b["cold_start_s"] > b["load_s"] > 0 and b["first_score_s"] > 0
    assert 0 < b["rss_before_load_mb"] <= b["rss_after_first_score_mb"] <= b["peak_rss_mb"]
    # the child's own memory, not the high-water mark it inherits from this (torch-laden)
    # process at the fork, which getrusage's ru_maxrss would report
    from rerank_core.app.hardware import peak_rss_mib

    assert b["rss_before_load_mb"] < peak_rss_mib()
    assert "| rag-rerank-minilm-l6 | onnx-int8 |" in bench_to_markdown(report)


def test_models_list_fastest_path_and_latency_table(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import build_cross_encoder

    small = build_cross_encoder(tmp_path / "one-layer", layers=1)
    rerank_file = tmp_path / "dl19.jsonl"
    docs = ["Paris is in France.", "Bananas are yellow.", "The Seine flows through Paris."]
    candidates = [{"docid": str(j), "text": d} for j, d in enumerate(docs)]
    rows = [
        {"qid": str(i), "query": q, "candidates": candidates}
        for i, q in enumerate(["where is paris", "what colour are bananas"])
    ]
    rerank_file.write_text("\n".join(json.dumps(r) for r in rows))
    report = run_bench(
        [tiny_model_dir, small],
        backends=["torch"],
        data=rerank_file,
        lengths=[],
        candidates=[2, 3],
        queries=1,
        warmup=1,
        isolate=False,
        peaks=False,
        fastest=FastestPath(backend="torch", rerank_window=2),
    )
    label = "fastest path (torch, window 2)"
    got = {(r["model"], r["backend"], r["candidates"]) for r in report.rows}
    assert got == {
        (m, b, n)
        for m, b in ((tiny_model_dir.name, "torch"), (small.name, "torch"), (small.name, label))
        for n in (2, 3)
    }
    # the fastest path defaults to the model with the fewest layers
    assert report.fastest == {"model": str(small), "backend": "torch", "rerank_window": 2}
    assert [m["path"] for m in report.models] == [str(tiny_model_dir), str(small)]
    assert all(b["cold_start_s"] is None for b in report.backends)  # not isolated
    md = bench_to_markdown(report)
    assert "| 2 candidates | 3 candidates |" in md
    assert f"| {small.name} | {label} |" in md
    with pytest.raises(ValueError, match="no input"):
        run_bench(tiny_model_dir, backends=["torch"], lengths=[])


def test_bench_takes_a_bundled_model_by_name(tmp_path: Path) -> None:
    # The name every other command takes (load_reranker, ask, serve) names the shipped folder
    # here too, never a hub id to download.
    from rerank_core.app.bench import _model_list
    from rerank_core.cross_encoder import DEFAULT_MODEL_DIR

    other = str(tmp_path / "mine")
    assert _model_list(["rag-rerank-minilm-l6", other]) == [str(DEFAULT_MODEL_DIR), other]
    assert _model_list("rag-rerank-minilm-l6") == [str(DEFAULT_MODEL_DIR)]
