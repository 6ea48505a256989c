"""``rag-rerank batch`` on a real local Ray: equal scores, a killed actor, no doubled output.

One Ray serves the whole session (``ray_session`` in ``conftest.py``: Ray takes tens of seconds
to start on 2 cores); each job is bounded in time. The scorer is the tiny cross-encoder built
from a config.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip(
    "ray", reason="the ray extra is not installed: pip install 'rag-rerank[ray]'"
)
pq = pytest.importorskip("pyarrow.parquet")

from rerank_core.app.batch import OUTPUT_COLUMNS, rerank_dataset  # noqa: E402
from rerank_core.registry import load_reranker  # noqa: E402
from tests.integration.conftest import bounded  # noqa: E402

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 300
WORDS = (
    "river bank loan money water fish bridge city rate interest account flood boat stone "
    "history market paper energy solar wind power grid price forest tree climate rain"
).split()


def _bounded(fn: Callable[[], Any], timeout: float = JOB_TIMEOUT_S) -> Any:
    return bounded(fn, timeout, "the Ray job")


def _queries(n: int, candidates: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for q in range(n):
        query = " ".join(rng.sample(WORDS, 3))
        cands = [
            {
                "docid": f"d{q}-{j}",
                "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 30))),
                "score": float(candidates - j),
            }
            for j in range(candidates)
        ]
        rows.append({"qid": f"q{q}", "query": query, "candidates": cands})
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _reference(model_dir: Path, rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    scorer = load_reranker(model_dir, backend="torch", num_threads=1)
    ref = {}
    for r in rows:
        texts = [c["text"] for c in r["candidates"]]
        for c, s in zip(r["candidates"], scorer.score(r["query"], texts), strict=True):
            ref[(r["qid"], c["docid"])] = s
    return ref


def _read(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _check_output(
    out: list[dict[str, Any]], ref: dict[tuple[str, str], float], *, ranked_input: bool
) -> None:
    keys = [(r["qid"], r["docid"]) for r in out]
    assert len(keys) == len(set(keys)), "a pair was written twice"
    assert set(keys) == set(ref), "a pair is missing or unknown"
    by_query: dict[str, list[dict[str, Any]]] = {}
    for r in out:
        assert list(r) == list(OUTPUT_COLUMNS)
        assert r["score"] == pytest.approx(ref[(r["qid"], r["docid"])], abs=1e-5)
        by_query.setdefault(r["qid"], []).append(r)
    for rows in by_query.values():
        assert sorted(r["rank"] for r in rows) == list(range(1, len(rows) + 1))
        best_first = sorted(rows, key=lambda r: r["rank"])
        scores = [r["score"] for r in best_first]
        assert scores == sorted(scores, reverse=True)
        if ranked_input:
            assert sorted(r["first_stage_rank"] for r in rows) == list(range(1, len(rows) + 1))
    assert len({r["model"] for r in out}) == 1
    assert json.loads(out[0]["model"])["backend"] == "torch"


def test_rerank_file_scores_equal_the_in_process_scorer(
    ray_session: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = _queries(12, 9)
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    summary = _bounded(
        lambda: rerank_dataset(
            src, out, model=tiny_model_dir, actors=2, queries_per_batch=3, options={}
        )
    )
    assert summary.pairs == 12 * 9 and summary.layout == "rerank"
    result = _read(out)
    _check_output(result, _reference(tiny_model_dir, rows), ranked_input=True)
    first = {(r["qid"], r["docid"]): r["first_stage_score"] for r in result}
    assert first[("q0", "d0-0")] == 9.0 and first[("q0", "d0-8")] == 1.0
    assert pq.read_schema(out).metadata[b"rag_rerank.model"].decode() == summary.model

    # A second run into the same output is refused and leaves the first output as it was.
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="never appended"):
        rerank_dataset(src, out, model=tiny_model_dir)
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".*.partial")), "a partial file was left behind"


def test_pairs_parquet_are_grouped_by_query_and_written_as_jsonl(
    ray_session: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import pyarrow as pa

    rows = _queries(5, 4, seed=3)
    flat = [
        {"qid": r["qid"], "query": r["query"], "docid": c["docid"], "text": c["text"]}
        for r in rows
        for c in r["candidates"]
    ]
    random.Random(1).shuffle(flat)  # a query's pairs need not be next to each other
    src = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(flat), src)
    out = tmp_path / "out.jsonl"
    summary = _bounded(lambda: rerank_dataset(src, out, model=tiny_model_dir, actors=1))
    assert summary.layout == "pairs" and summary.pairs == 20
    result = _read(out)
    _check_output(result, _reference(tiny_model_dir, rows), ranked_input=False)
    assert all(r["first_stage_rank"] is None and r["first_stage_score"] is None for r in result)


def test_a_killed_actor_loses_and_doubles_nothing(
    ray_session: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from ray._private import state

    rows = _queries(30, 8, seed=7)
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"an older output that --overwrite replaces")
    killed: list[str] = []
    rows_seen: list[int] = []

    def kill_one_actor(written: int) -> None:
        rows_seen.append(written)
        if killed:
            return
        for actor_id, actor in state.actors().items():
            if "BatchScorer" in actor["ActorClassName"] and actor["State"] == "ALIVE":
                os.kill(actor["Pid"], signal.SIGKILL)
                killed.append(actor_id)
                return

    summary = _bounded(
        lambda: rerank_dataset(
            src,
            out,
            model=tiny_model_dir,
            actors=2,
            queries_per_batch=1,
            overwrite=True,
            on_rows=kill_one_actor,
        )
    )
    assert killed, "no scoring actor was found to kill"
    # Killed after the first block reached the driver, with blocks still to come.
    assert rows_seen[0] < 30 * 8 and len(rows_seen) > 1
    assert state.actors()[killed[0]]["NumRestarts"] >= 1, "Ray did not restart the actor"
    assert summary.pairs == 30 * 8
    _check_output(_read(out), _reference(tiny_model_dir, rows), ranked_input=True)


def test_an_interrupted_job_resumes_with_every_pair_once(
    ray_session: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import pyarrow as pa

    from rerank_core.app.batch import _groups_from_records, score_groups

    rows = _queries(10, 6, seed=11)
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    ref = _reference(tiny_model_dir, rows)
    # What a driver killed mid-write leaves: its first block (2 whole queries) flushed, the
    # last line cut off halfway, under the private name of a run that no longer exists.
    scorer = load_reranker(tiny_model_dir, backend="torch", num_threads=1)
    block = score_groups(scorer, _groups_from_records(rows[:2]))
    lines = "".join(json.dumps(r) + "\n" for r in block.to_pylist()).encode()
    left = tmp_path / f".out.jsonl.{2**22 + 17}-0a1b2c3d.partial"
    left.write_bytes(lines[:-30])
    assert isinstance(block, pa.Table) and block.num_rows == 12

    summary = _bounded(
        lambda: rerank_dataset(
            src, out, model=tiny_model_dir, actors=2, queries_per_batch=2, resume=True
        )
    )
    # The query whose last line was cut is scored again whole; the other one is carried over.
    assert (summary.pairs, summary.carried) == (60, 6)
    result = _read(out)
    _check_output(result, ref, ranked_input=True)
    assert not list(tmp_path.glob(".out.jsonl.*")), "the earlier run's files were left behind"

    # Resuming a finished output scores nothing (Ray is not even needed) and changes no row.
    again = rerank_dataset(src, out, model=tiny_model_dir, resume=True)
    assert (again.pairs, again.carried) == (60, 60)
    assert sorted(map(json.dumps, _read(out))) == sorted(map(json.dumps, result))
