"""``rag-rerank eval`` end to end with real parts: tiny cross-encoders, all-MiniLM-L6-v2, Chroma."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("ir_measures")
pytest.importorskip("sentence_transformers")

from rerank_core.app.evaluate import (
    BiEncoderScorer,
    evaluate_beir,
    evaluate_rerank_file,
    load_beir,
)

CORPUS = {
    "c1": ("Fleas", "A flea can live up to a year; its life cycle depends on the host."),
    "c2": ("Paris", "Paris is the capital and largest city of France."),
    "c3": ("Photosynthesis", "Plants turn light, water and carbon dioxide into sugar."),
    "c4": ("Rome", "Rome is the capital city of Italy."),
    "c5": ("Cats", "House cats usually live twelve to eighteen years."),
    "c6": ("Madrid", "Madrid is the capital of Spain."),
}
QUERIES = {"q1": "how long do fleas live", "q2": "what is the capital of France"}


def write_beir(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as fh:
        for i, (title, text) in CORPUS.items():
            fh.write(json.dumps({"_id": i, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as fh:
        for i, text in {**QUERIES, "q3": "not judged"}.items():
            fh.write(json.dumps({"_id": i, "text": text}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tc1\t1\nq2\tc2\t1\n")
    return folder


@pytest.fixture(scope="module")
def embedder() -> BiEncoderScorer:
    return BiEncoderScorer(device="cpu")


def test_bi_encoder_scores_are_cosines(embedder: BiEncoderScorer) -> None:
    docs = ["Paris is the capital of France.", "Fleas live about a year."]
    scores = embedder.score("capital of France", docs)
    vecs = embedder.embed(["capital of France", *docs])
    assert scores == pytest.approx([float(vecs[0] @ vecs[1]), float(vecs[0] @ vecs[2])], abs=1e-6)
    assert scores[0] > scores[1]


def test_beir_end_to_end_with_chroma_cache(
    tmp_path: Path, embedder: BiEncoderScorer, tiny_model_dir: Path, caplog
) -> None:
    folder = write_beir(tmp_path / "mini")
    corpus, queries, qrels = load_beir(folder)
    assert set(queries) == {"q1", "q2"} == set(qrels)
    assert corpus["c2"].startswith("Paris Paris is")
    cache = tmp_path / "cache"
    kwargs = {"top_k": 4, "embedder": embedder, "cache_dir": cache, "recall_at": [1, 4]}
    report = evaluate_beir(folder, {"tiny": str(tiny_model_dir)}, windows=[2], **kwargs)
    first = report.row("chroma dense")
    # all-MiniLM-L6-v2 finds both answers first on this easy corpus.
    assert first.metrics["hit@1"] == 1.0 and first.metrics["Recall@4"] == 1.0
    assert first.latency_ms["first_stage"]["p50"] > 0
    assert report.depth == 4
    tiny = report.row("tiny")
    assert tiny.latency_ms["total"]["p50"] >= tiny.latency_ms["rerank"]["p50"]
    assert tiny.metrics["Recall@4"] == 1.0  # reranking never changes what was recalled
    assert report.row("tiny @2").window == 2
    caplog.set_level(logging.INFO, logger="rerank_core.app.evaluate")
    again = evaluate_beir(folder, {}, **kwargs)
    assert "reusing the embedded corpus" in caplog.text
    assert again.row("chroma dense").metrics == first.metrics


def test_model_path_string_builds_a_cross_encoder(tmp_path: Path, tiny_model_dir: Path) -> None:
    from rerank_core import CrossEncoderScorer

    path = tmp_path / "run.jsonl"
    docs = [{"docid": f"d{i}", "text": t, "label": int(i == 1)} for i, t in enumerate(
        ["Bananas are yellow.", "Paris is the capital of France.", "Rome is in Italy."]
    )]  # fmt: skip
    path.write_text(json.dumps({"qid": "1", "query": "capital of France", "candidates": docs}))
    by_path = evaluate_rerank_file(path, None, {"m": str(tiny_model_dir)}, thresholds=[0.5])
    by_object = evaluate_rerank_file(
        path, None, {"m": CrossEncoderScorer(str(tiny_model_dir), device="cpu")}
    )
    assert by_path.row("m").metrics == by_object.row("m").metrics
    assert by_path.info["rerankers"]["m"]["class"] == "CrossEncoderScorer"
    assert by_path.calibration["m"]["positive"] == "grade ≥ 1"


@pytest.mark.data
@pytest.mark.slow
def test_dl19_reference_figures(data_dir: Path, embedder: BiEncoderScorer) -> None:
    """BM25 order 0.5058 and all-MiniLM-L6-v2 cosine re-scoring 0.6424 (data/README.md)."""
    dl19 = data_dir / "trec-dl19"
    report = evaluate_rerank_file(
        dl19 / "bm25_top100.jsonl", dl19 / "qrels.txt", {"bi-encoder": embedder}
    )
    assert report.queries == 43 and report.depth == 100
    assert round(report.row("first stage").metrics["nDCG@10"], 3) == 0.506
    assert round(report.row("bi-encoder").metrics["nDCG@10"], 3) == 0.642


@pytest.mark.data
def test_dl19_first_stage_reference_figure(data_dir: Path) -> None:
    dl19 = data_dir / "trec-dl19"
    report = evaluate_rerank_file(dl19 / "bm25_top100.jsonl", dl19 / "qrels.txt")
    assert report.row("first stage").metrics["nDCG@10"] == pytest.approx(0.5058, abs=5e-5)


def _small_rerank_file(path: Path) -> Path:
    texts = [
        "Bananas are yellow.",
        "Paris is the capital of France.",
        "Rome is in Italy.",
        "France borders Spain.",
    ]
    lines = [
        {
            "qid": qid,
            "query": query,
            "candidates": [
                {"docid": f"d{i}", "text": t, "label": int(i == answer)}
                for i, t in enumerate(texts)
            ],
        }
        for qid, query, answer in (("1", "capital of France", 1), ("2", "where is Rome", 2))
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_eval_cli_through_a_running_server_equals_the_local_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """``rag-rerank eval --backend http --provider generic --base-url ...`` scores remotely."""
    from typer.testing import CliRunner

    from rerank_core.app.cli import _register, app
    from rerank_core.app.server import ServerSettings, create_app
    from rerank_core.registry import load_reranker
    from tests.integration.live_server import running

    _register()
    data = _small_rerank_file(tmp_path / "run.jsonl")
    common = [
        "eval",
        str(data),
        "--no-bi-encoder",
        "--name",
        "run",
        "--model",
        f"tiny={tiny_model_dir}",
    ]
    local = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "local"), "--device", "cpu"])
    assert local.exit_code == 0, local.output
    scorer = load_reranker(tiny_model_dir, backend="torch", device="cpu")
    with running(create_app(scorer, settings=ServerSettings(model_name="tiny"))) as (url, _):
        remote = CliRunner().invoke(
            app,
            [
                "eval",
                str(data),
                "--no-bi-encoder",
                "--name",
                "run",
                "--backend",
                "http",
                "--provider",
                "generic",
                "--base-url",
                url,
                "-o",
                str(tmp_path / "remote"),
            ],
        )
    assert remote.exit_code == 0, remote.output
    by_local = json.loads((tmp_path / "local" / "run.json").read_text())
    by_remote = json.loads((tmp_path / "remote" / "run.json").read_text())
    local_rows = {r["name"]: r for r in by_local["rows"]}
    remote_rows = {r["name"]: r for r in by_remote["rows"]}
    assert remote_rows["generic"]["metrics"] == pytest.approx(local_rows["tiny"]["metrics"])
    # The score distribution (medians of relevant and other passages) is the model's own.
    for key in ("positive_median", "negative_median"):
        assert by_remote["calibration"]["generic"][key] == pytest.approx(
            by_local["calibration"]["tiny"][key], abs=1e-5
        )
    assert by_remote["info"]["rerankers"]["generic"]["class"] == "HTTPReranker"


def test_eval_cli_rejects_an_unknown_backend_naming_the_known_ones(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rerank_core.app.cli import _register, app

    _register()
    data = _small_rerank_file(tmp_path / "run.jsonl")
    out = CliRunner().invoke(app, ["eval", str(data), "--no-bi-encoder", "-b", "nope"])
    assert out.exit_code != 0
    assert "onnx-int8" in out.output and "http" in out.output
