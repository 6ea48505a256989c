"""Metrics of ``rag-rerank eval`` on a tiny example computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("ir_measures")

from rerank_core.app.evaluate import (
    Candidate,
    EvalReport,
    QueryCandidates,
    evaluate_candidates,
    evaluate_rerank_file,
    load_qrels,
    load_rerank_file,
)
from tests.fakes import TableScorer

L3 = math.log2(3)


QRELS = {"q1": {"d1": 2, "d2": 0, "d3": 1}, "q2": {"d4": 1}}
TABLE = {"d1": 0.9, "d2": 0.1, "d3": 0.6, "d4": 0.8, "d5": 0.2}


def queries() -> list[QueryCandidates]:
    # Passage text is its id, so the table scorer can look it up.
    def q(qid: str, ids: list[str]) -> QueryCandidates:
        return QueryCandidates(qid, f"query {qid}", tuple(Candidate(i, i) for i in ids))

    return [q("q1", ["d2", "d3", "d1"]), q("q2", ["d5", "d4"])]


def run(**kwargs):
    return evaluate_candidates(
        queries(), QRELS, {"table": TableScorer(TABLE)}, recall_at=[2], **kwargs
    )


def test_first_stage_metrics_match_hand_computation() -> None:
    report = run()
    fs = report.row("first stage").metrics
    # q1 ranks d2 (0), d3 (1), d1 (2): DCG = 1/log2(3) + 2/log2(4); ideal = 2 + 1/log2(3).
    ndcg_q1 = (1 / L3 + 2 / 2) / (2 + 1 / L3)
    ndcg_q2 = (1 / L3) / 1  # d4 at rank 2
    assert fs["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)
    assert fs["MRR@10"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert fs["Recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert fs["hit@1"] == 0.0
    assert report.metric_names == ["nDCG@10", "MRR@10", "Recall@2", "hit@1"]


def test_rerank_puts_relevant_first() -> None:
    m = run().row("table").metrics
    assert m == {"nDCG@10": 1.0, "MRR@10": 1.0, "Recall@2": 1.0, "hit@1": 1.0}


def test_relevance_level_applies_to_binary_metrics_only() -> None:
    fs = run(relevance_level=2).row("first stage").metrics
    assert fs["MRR@10"] == pytest.approx((1 / 3 + 0) / 2)  # q2 has no grade-2 passage
    assert fs["nDCG@10"] == pytest.approx(run().row("first stage").metrics["nDCG@10"])


def test_window_reranks_only_the_head() -> None:
    report = run(windows=[2])
    m = report.row("table @2").metrics
    # q1: d2, d3 reranked -> d3, d2, then d1 unscored; q2: both reranked -> d4, d5.
    ndcg_q1 = (1 + 2 / 2) / (2 + 1 / L3)
    assert m["nDCG@10"] == pytest.approx((ndcg_q1 + 1.0) / 2)
    assert m["hit@1"] == pytest.approx(1.0)
    assert report.row("table @2").window == 2


def test_threshold_drops_results_and_empty_queries_score_zero() -> None:
    report = run(thresholds=[0.5, 0.95])
    kept = report.row("table ≥0.5")
    assert kept.metrics["nDCG@10"] == pytest.approx(1.0)
    assert kept.mean_results == pytest.approx((2 + 1) / 2)
    empty = report.row("table ≥0.95")
    assert empty.mean_results == 0.0
    assert empty.metrics == {"nDCG@10": 0.0, "MRR@10": 0.0, "Recall@2": 0.0, "hit@1": 0.0}
    # A threshold reuses the full rerank's scores: same latency numbers.
    assert kept.latency_ms == report.row("table").latency_ms


def test_latency_is_measured_for_reranking_only_when_first_stage_is_precomputed() -> None:
    report = run()
    assert report.row("first stage").latency_ms == {}
    lat = report.row("table").latency_ms
    assert set(lat) == {"rerank", "total"}
    assert 0 <= lat["rerank"]["p50"] <= lat["rerank"]["p95"]


def test_first_stage_latency_is_added_when_measured() -> None:
    qs = [
        QueryCandidates(q.qid, q.query, q.candidates, first_stage_ms=ms)
        for q, ms in zip(queries(), [10.0, 30.0], strict=True)
    ]
    report = evaluate_candidates(qs, QRELS, {"table": TableScorer(TABLE)})
    fs = report.row("first stage").latency_ms
    assert fs["first_stage"]["p50"] == pytest.approx(20.0)
    total = report.row("table").latency_ms["total"]
    assert total["mean"] > 20.0


def test_calibration_counts_graded_positives_and_judged_negatives() -> None:
    cal = run().calibration["table"]
    # grade >= 2: d1 (0.9); judged grade 0: d2 (0.1). d3 (grade 1) and d5 (unjudged) are neither.
    assert cal["positive_count"] == 1 and cal["negative_count"] == 1
    assert cal["positive_at_or_above"] == {"0.3": 1.0, "0.5": 1.0}
    assert cal["negative_at_or_above"] == {"0.3": 0.0, "0.5": 0.0}
    assert cal["positive_median"] == pytest.approx(0.9)


def test_queries_without_judgments_are_left_out_and_counted() -> None:
    qs = [*queries(), QueryCandidates("q9", "unjudged", (Candidate("d1", "d1"),))]
    report = evaluate_candidates(qs, QRELS, {})
    assert report.queries == 2
    assert report.info["queries_without_judgments"] == 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="windows"):
        run(windows=[0])
    with pytest.raises(ValueError, match="thresholds"):
        run(thresholds=[float("nan")])
    with pytest.raises(ValueError, match="no query has judgments"):
        evaluate_candidates(queries(), {"other": {"d1": 1}}, {})
    dup = [QueryCandidates("q1", "q", (Candidate("d1", "a"), Candidate("d1", "b")))]
    with pytest.raises(ValueError, match="d1 appears more than once"):
        evaluate_candidates(dup, QRELS, {})
    with pytest.raises(TypeError, match=r"rerankers\['x'\]"):
        evaluate_candidates(queries(), QRELS, {"x": 3})  # type: ignore[dict-item]


def test_inputs_are_not_mutated() -> None:
    qs = queries()
    qrels = {q: dict(j) for q, j in QRELS.items()}
    evaluate_candidates(qs, qrels, {"table": TableScorer(TABLE)}, windows=[1], thresholds=[0.5])
    assert qs == queries() and qrels == QRELS


def test_load_qrels_reads_trec_and_beir(tmp_path: Path) -> None:
    trec = tmp_path / "qrels.txt"
    trec.write_text("q1 0 d1 2\nq1 0 d2 0\nq2 Q0 d4 1\n")
    beir = tmp_path / "test.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td4\t1\n")
    expected = {"q1": {"d1": 2, "d2": 0}, "q2": {"d4": 1}}
    assert load_qrels(trec) == expected == load_qrels(beir)
    bad = tmp_path / "bad.txt"
    bad.write_text("q1 d1\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1"):
        load_qrels(bad)


def write_rerank_file(path: Path) -> Path:
    rows = [
        {"qid": "q1", "query": "query q1", "candidates": [
            {"docid": "d2", "text": "d2", "label": 0},
            {"docid": "d3", "text": "d3", "label": 1},
            {"docid": "d1", "text": "d1", "label": 2},
        ]},
        {"qid": "q2", "query": "query q2", "candidates": [
            {"docid": "d5", "text": "d5", "label": None},
            {"docid": "d4", "text": "d4", "label": 1},
        ]},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_rerank_file_labels_serve_as_qrels(tmp_path: Path) -> None:
    path = write_rerank_file(tmp_path / "run.jsonl")
    qs, labels = load_rerank_file(path)
    assert labels == QRELS
    assert [c.docid for c in qs[0].candidates] == ["d2", "d3", "d1"]
    from_labels = evaluate_rerank_file(path, None, {"table": TableScorer(TABLE)})
    from_dict = evaluate_candidates(queries(), QRELS, {"table": TableScorer(TABLE)})
    for name in ("first stage", "table"):
        assert from_labels.row(name).metrics == from_dict.row(name).metrics
    shallow, _ = load_rerank_file(path, depth=1)
    assert [len(q.candidates) for q in shallow] == [1, 1]


def test_report_files(tmp_path: Path) -> None:
    report = run(windows=[1], thresholds=[0.5])
    paths = report.save(tmp_path, "tiny")
    data = json.loads(paths["json"].read_text())
    assert [r["name"] for r in data["rows"]] == [
        "first stage",
        "table",
        "table ≥0.5",
        "table @1",
    ]
    md = paths["markdown"].read_text()
    assert "| table @1 |" in md and "Calibration" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = EvalReport.from_dict(data)
    assert loaded == report
    assert loaded.row("table @1").window == 1


def test_extras_named_in_error_messages_exist() -> None:
    import re

    import tomllib

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for module in ("evaluate.py", "bench.py", "bench_cli.py", "eval_cli.py"):
        text = (root / "core" / "app" / module).read_text()
        for name in re.findall(r"rag-rerank\[(\w+)\]", text):
            assert name in extras, f"{module} names extra {name!r} missing from pyproject"
