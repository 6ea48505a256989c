"""What ``rag-rerank batch --resume`` reads back from an interrupted run, without Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from rerank_core.app.batch import (  # noqa: E402
    _output_schema,
    _plan_resume,
    _Writer,
    detect_input,
    rerank_dataset,
)


def _row(qid: str, docid: str, score: float, rank: int) -> dict:
    return {
        "qid": qid,
        "docid": docid,
        "score": score,
        "rank": rank,
        "first_stage_rank": rank,
        "first_stage_score": None,
        "model": '{"backend": "torch"}',
    }


def _input(path: Path) -> Path:
    queries = {"q1": ["a", "b"], "q2": ["c", "d"], "q3": ["e", "f"]}
    lines = [
        json.dumps(
            {"qid": q, "query": f"query {q}", "candidates": [{"docid": d, "text": d} for d in ids]}
        )
        for q, ids in queries.items()
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_whole_parquet_parts_count_and_unfinished_ones_do_not(tmp_path: Path) -> None:
    src = _input(tmp_path / "in.jsonl")
    out = tmp_path / "out.parquet"
    dead = 2**22 + 17  # no such process
    parts = tmp_path / f".out.parquet.{dead}.parts"
    parts.mkdir()
    q1 = [_row("q1", "a", 0.9, 1), _row("q1", "b", 0.1, 2)]
    pq.write_table(pa.Table.from_pylist(q1, schema=_output_schema()), parts / "part-000001.parquet")
    # Half of q2 in a second part, and a part cut off mid-write (never renamed from .tmp).
    q2 = [_row("q2", "c", 0.5, 1)]
    pq.write_table(pa.Table.from_pylist(q2, schema=_output_schema()), parts / "part-000002.parquet")
    (parts / "part-000003.parquet.tmp").write_bytes(b"PAR1\x00\x01truncated")
    # A merge into the partial file that was cut off: unreadable, its parts hold the rows.
    (tmp_path / f".out.parquet.{dead}.partial").write_bytes(b"PAR1 cut")

    plan = _plan_resume(detect_input(src), out, "parquet")
    assert plan.done == {"q1"}  # q2 lacks a pair: scored again whole; q3 never reached
    assert plan.carried == 2
    assert {p.name for p in plan.earlier.leftovers()} == {
        parts.name,
        f".out.parquet.{dead}.partial",
    }


def test_cut_and_corrupt_json_lines_are_dropped_not_trusted(tmp_path: Path) -> None:
    src = _input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    good = [_row("q1", "a", 0.9, 1), _row("q1", "b", 0.1, 2), _row("q3", "e", 0.4, 1)]
    lines = [json.dumps(r) for r in good]
    lines.insert(1, '{"qid": "q1", "docid": "b", "score": "high"')  # corrupt, not last
    lines.append(json.dumps(_row("q3", "f", 0.2, 2))[:-5])  # cut off by a kill
    (tmp_path / f".out.jsonl.{2**22 + 17}.partial").write_text("\n".join(lines), encoding="utf-8")
    plan = _plan_resume(detect_input(src), out, "jsonl")
    assert plan.done == {"q1"} and plan.carried == 2
    assert plan.earlier.dropped == 2


def test_a_run_still_writing_the_output_is_not_touched(tmp_path: Path) -> None:
    src = _input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    live = tmp_path / f".out.jsonl.{os.getppid()}.partial"
    live.write_text("", encoding="utf-8")
    with pytest.raises(FileExistsError, match=f"pid {os.getppid()}"):
        _plan_resume(detect_input(src), out, "jsonl")
    assert live.exists()


def test_resume_and_overwrite_exclude_each_other(tmp_path: Path) -> None:
    pytest.importorskip(
        "ray", reason="the ray extra is not installed: pip install 'rag-rerank[ray]'"
    )
    src = _input(tmp_path / "in.jsonl")
    with pytest.raises(ValueError, match="resume"):
        rerank_dataset(src, tmp_path / "out.jsonl", resume=True, overwrite=True)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_failed_run_keeps_its_rows_for_a_resume(tmp_path: Path, fmt: str) -> None:
    src = _input(tmp_path / "in.jsonl")
    out = tmp_path / f"out.{fmt}"
    first = _Writer(out, fmt, {})
    first.write(pa.Table.from_pylist([_row("q2", "c", 0.5, 1), _row("q2", "d", 0.4, 2)]))
    first.discard()  # what rerank_dataset does when the job fails or is interrupted
    assert not out.exists()
    # Same process, later call: the earlier writer's files are found, its rows count.
    plan = _plan_resume(detect_input(src), out, fmt)
    assert plan.done == {"q2"} and plan.carried == 2 and plan.left == 2
    second = _Writer(out, fmt, {})
    assert second.partial != first.partial and second.parts != first.parts
    second.discard()  # wrote nothing: leaves nothing
    assert not second.partial.exists() and not second.parts.exists()
