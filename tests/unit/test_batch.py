"""Batch reranking without a Ray cluster: input layouts, scoring and ranking groups, refusals."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")

from rerank_core.app.batch import (  # noqa: E402
    OUTPUT_COLUMNS,
    _groups_from_records,
    _parse_lines,
    detect_input,
    require_ray,
    score_groups,
)
from tests.fakes import WordOverlap  # noqa: E402

ROWS = [
    {
        "qid": "1",
        "query": "solar power",
        "candidates": [
            {"docid": "a", "text": "wind farms"},
            {"docid": "b", "text": "solar power plants", "score": 3.5},
            {"docid": "c", "text": "solar panels"},
            {"docid": "d", "text": "more wind"},
        ],
    },
    {"qid": "2", "query": "rain", "candidates": [{"docid": "x", "text": "rain today"}]},
    {"qid": "3", "query": "empty", "candidates": []},
]


def test_groups_are_scored_together_and_ranked_within_each_query() -> None:
    scorer = WordOverlap(batch_size=64)
    out = score_groups(scorer, _groups_from_records(ROWS)).to_pylist()
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 5  # one call across queries
    assert [list(r) for r in out] == [list(OUTPUT_COLUMNS)] * 5
    by_doc = {r["docid"]: r for r in out}
    assert [by_doc[d]["score"] for d in "abcd"] == [0.0, 1.0, 0.5, 0.0]
    # Best first; the tie between a and d keeps first-stage order.
    assert [by_doc[d]["rank"] for d in "abcd"] == [3, 1, 2, 4]
    assert [by_doc[d]["first_stage_rank"] for d in "abcd"] == [1, 2, 3, 4]
    assert by_doc["b"]["first_stage_score"] == 3.5 and by_doc["a"]["first_stage_score"] is None
    assert by_doc["x"]["rank"] == 1 and by_doc["x"]["qid"] == "2"
    assert {r["model"] for r in out} == {scorer.score_id}
    assert all(isinstance(r["score"], float) for r in out)


def test_a_fusion_ranks_a_rerank_files_candidates_and_is_recorded() -> None:
    scorer = WordOverlap(batch_size=64, fusion="rrf:weight=0")  # the first stage's order alone
    out = score_groups(scorer, _groups_from_records(ROWS)).to_pylist()
    by_doc = {r["docid"]: r for r in out}
    assert [by_doc[d]["rank"] for d in "abcd"] == [1, 2, 3, 4]
    assert [by_doc[d]["score"] for d in "abcd"] == [0.0, 1.0, 0.5, 0.0]  # scores unchanged
    assert {r["model"] for r in out} == {f"{scorer.score_id} fusion=rrf:weight=0,k=60"}
    dl19_style = [
        {
            "qid": "1",
            "query": "q",
            "candidates": [{"docid": "a", "text": "t", "first_stage_score": 2.0}],
        }
    ]
    assert _groups_from_records(dl19_style).column("first_stage_scores").to_pylist() == [[2.0]]


def test_bad_rows_name_the_query() -> None:
    with pytest.raises(ValueError, match="query 1: docid a appears more than once"):
        _groups_from_records(
            [{"qid": 1, "query": "q", "candidates": [{"docid": "a", "text": "t"}] * 2}]
        )
    with pytest.raises(ValueError, match=r"query 7: candidates\[0\] needs docid and text"):
        _groups_from_records([{"qid": 7, "query": "q", "candidates": [{"docid": "a"}]}])
    with pytest.raises(ValueError, match="score must be a number"):
        _groups_from_records(
            [{"qid": 7, "query": "q", "candidates": [{"docid": "a", "text": "t", "score": "x"}]}]
        )
    blank = _groups_from_records([{"qid": "9", "query": "  ", "candidates": ROWS[1]["candidates"]}])
    with pytest.raises(ValueError, match="query 9"):
        score_groups(WordOverlap(), blank)
    lines = pa.table({"text": ['{"qid": 1, "query": "q", "candidates": []}', "{oops"]})
    with pytest.raises(ValueError, match="invalid JSON line"):
        _parse_lines(lines, "rerank")


def test_input_layout_and_format_are_detected(tmp_path: Path) -> None:
    grouped = tmp_path / "a.jsonl"
    grouped.write_text(json.dumps(ROWS[0]) + "\n", encoding="utf-8")
    assert (detect_input(grouped).format, detect_input(grouped).layout) == ("jsonl", "rerank")
    pairs = tmp_path / "p.parquet"
    pa.parquet.write_table(
        pa.table({"qid": ["1"], "query": ["q"], "docid": ["d"], "text": ["t"]}), pairs
    )
    assert (detect_input(pairs).format, detect_input(pairs).layout) == ("parquet", "pairs")
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"qid": "1", "query": "q", "text": "t"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing field\(s\) \['docid'\]"):
        detect_input(bad)
    with pytest.raises(ValueError, match="expected JSON lines"):
        detect_input(_touch(tmp_path / "x.csv"))


def _touch(path: Path) -> Path:
    path.write_text("", encoding="utf-8")
    return path


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'rag-rerank[ray]'")):
        require_ray()


def test_an_existing_output_is_refused_before_any_work(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from rerank_core.app.batch import rerank_dataset

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(ROWS[0]) + "\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    out.write_bytes(b"finished")
    with pytest.raises(FileExistsError, match="never appended to"):
        rerank_dataset(src, out)
    assert out.read_bytes() == b"finished"
    with pytest.raises(ValueError, match="unknown backend"):
        rerank_dataset(src, tmp_path / "new.parquet", backend="nope")
    with pytest.raises(ValueError, match=r"name it \.parquet or \.jsonl"):
        rerank_dataset(src, tmp_path / "new.csv")


def test_an_output_that_appears_meanwhile_is_not_replaced_and_the_result_is_kept(
    tmp_path: Path,
) -> None:
    from rerank_core.app.batch import _Writer

    out = tmp_path / "out.jsonl"
    writer = _Writer(out, "jsonl", {})
    writer.write(score_groups(WordOverlap(), _groups_from_records(ROWS[:1])))
    out.write_text("another run's output\n", encoding="utf-8")
    with pytest.raises(FileExistsError, match="kept in"):
        writer.publish(overwrite=False)
    writer.discard()
    assert out.read_text(encoding="utf-8") == "another run's output\n"
    assert len(writer.partial.read_text(encoding="utf-8").splitlines()) == 4
    writer.publish(overwrite=True)
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4
    assert not writer.partial.exists()
