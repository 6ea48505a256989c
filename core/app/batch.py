"""Rerank a dataset of query-passage pairs with Ray Data: one scorer per actor, streamed.

Two input layouts are read, from JSON lines (``.jsonl``, ``.jsonl.gz``) or Parquet (a file or a
folder of files):

* **rerank file**: one row per query, ``{qid, query, candidates: [{docid, text, score?}, ...]}``
  (``first_stage_score`` is read where ``score`` is absent)
  with the candidates in first-stage order (as ``trec-dl19/bm25_top100.jsonl``). Each row is
  scored whole inside one actor call, so the input streams through: memory stays bounded by the
  blocks in flight, whatever the file's size.
* **pairs**: one row per pair, ``{qid, query, docid, text, score?}``. Ranking within a query needs
  all its pairs together, so this layout is grouped by ``qid`` first: an all-to-all shuffle
  through Ray's object store (which spills to disk), not a stream.

``score`` in the input is the optional first-stage score; it comes back as
``first_stage_score``. Each output row is one input pair:

==================== =========================================================================
column               meaning
==================== =========================================================================
``qid``, ``docid``   as in the input
``score``            the reranker's score (plain float64; its scale is in ``model``)
``rank``             1 = best within the query (ties keep first-stage order); for a rerank
                     file, in the order of the reranker's fusion with the first stage when it
                     has one (the bundled model does), else by score
``first_stage_rank`` 1-based position in the rerank file's candidates (null for pairs input)
``first_stage_score`` the input's ``score``, null when absent
``model``            the reranker's :attr:`~rerank_core.Reranker.score_id`: every setting that
                     changes a score, as canonical JSON, followed by ``fusion=SPEC`` when a
                     fusion ordered the ranks
==================== =========================================================================

Every actor loads its scorer through :func:`rerank_core.registry.load_reranker`, so a batch
score equals the in-process score of the same pair with the same backend and options. Ray
restarts an actor that dies (a killed process, a lost node) and re-runs the batches it held;
only finished batches reach the output, which the driver writes beside it under a private name
(JSON lines flushed block by block, Parquet as whole parts) and publishes under its final name
at the end, so a crashed or killed job leaves no half output and a finished output is never
appended to. ``resume=True`` (``--resume``) picks up what a finished, failed or killed run left
and scores only the queries it lacks.

Example:
    >>> from rerank_core.app.batch import rerank_dataset
    >>> summary = rerank_dataset(  # doctest: +SKIP
    ...     "trec-dl19/bm25_top100.jsonl", "scores.parquet", backend="onnx", actors=2
    ... )
    >>> summary.pairs  # doctest: +SKIP
    4300
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_core.validation import check_positive_int, check_text

if TYPE_CHECKING:
    import pyarrow as pa

    from rerank_core.base import Reranker

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_COLUMNS",
    "BatchScorer",
    "BatchSummary",
    "detect_input",
    "require_ray",
    "rerank_dataset",
    "score_groups",
]

RAY_HINT = "pip install 'rag-rerank[ray]'"

#: Output columns, in order.
OUTPUT_COLUMNS = (
    "qid",
    "docid",
    "score",
    "rank",
    "first_stage_rank",
    "first_stage_score",
    "model",
)

_JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
_PAIR_FIELDS = ("qid", "query", "docid", "text")


def require_ray() -> Any:
    """Import ``ray`` and ``ray.data``.

    Raises:
        ImportError: Ray is not installed; the message gives the extra to install.
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError(f"batch reranking runs on Ray Data: {RAY_HINT}") from exc
    return ray


def _output_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("qid", pa.string()),
            ("docid", pa.string()),
            ("score", pa.float64()),
            ("rank", pa.int32()),
            ("first_stage_rank", pa.int32()),
            ("first_stage_score", pa.float64()),
            ("model", pa.string()),
        ]
    )


def _group_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("qid", pa.string()),
            ("query", pa.string()),
            ("docids", pa.list_(pa.string())),
            ("texts", pa.list_(pa.string())),
            ("first_stage_ranks", pa.list_(pa.int32())),
            ("first_stage_scores", pa.list_(pa.float64())),
        ]
    )


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class InputSpec:
    """What :func:`detect_input` found: ``format`` (jsonl|parquet), ``layout`` (rerank|pairs)."""

    path: Path
    format: str
    layout: str
    files: tuple[str, ...] = field(default=())


def _first_stage_score(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: score must be a number or null, got {value!r}")
    return float(value)


def detect_input(path: str | os.PathLike[str]) -> InputSpec:
    """Find the format and layout of an input file or folder by its name and first record.

    Raises:
        FileNotFoundError: ``path`` does not exist or a folder holds no ``.parquet`` file.
        ValueError: the format or layout is not one this command reads.
    """
    import pyarrow.parquet as pq

    from rerank_core.app.data import iter_jsonl

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    name = p.name.lower()
    if p.is_dir() or name.endswith(".parquet"):
        files = tuple(sorted(str(f) for f in p.rglob("*.parquet"))) if p.is_dir() else (str(p),)
        if not files:
            raise FileNotFoundError(f"input folder {p} holds no .parquet file")
        columns = set(pq.read_schema(files[0]).names)
        fmt = "parquet"
    elif name.endswith(_JSONL_SUFFIXES):
        first = next(iter(iter_jsonl(p)), None)
        if first is None:
            raise ValueError(f"input {p} is empty")
        if not isinstance(first, dict):
            raise ValueError(f"{p}:1: each line must be a JSON object")
        columns, files, fmt = set(first), (str(p),), "jsonl"
    else:
        raise ValueError(f"input {p}: expected JSON lines (.jsonl, .jsonl.gz) or Parquet")
    if "candidates" in columns:
        missing = {"qid", "query"} - columns
        layout = "rerank"
    else:
        missing = set(_PAIR_FIELDS) - columns
        layout = "pairs"
    if missing:
        raise ValueError(
            f"input {p}: missing field(s) {sorted(missing)}; expected {{qid, query, candidates}} "
            f"(one row per query) or {{qid, query, docid, text}} (one row per pair)"
        )
    return InputSpec(p, fmt, layout, files)


def _groups_from_records(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rerank-file rows -> the group schema; first-stage rank is the candidate's position."""
    cols: dict[str, list[Any]] = {n: [] for n in _group_schema().names}
    for row in records:
        if "qid" not in row or "query" not in row or "candidates" not in row:
            raise ValueError(f"a rerank-file row lacks qid, query or candidates: {_brief(row)}")
        qid = str(row["qid"])
        cands = row["candidates"]
        if cands is None:
            cands = []
        if not isinstance(cands, (list, tuple)) and hasattr(cands, "tolist"):
            cands = cands.tolist()
        if not isinstance(cands, (list, tuple)):
            raise ValueError(f"query {qid}: candidates must be a list")
        docids, texts, ranks, scores = [], [], [], []
        for j, c in enumerate(cands):
            if not isinstance(c, Mapping) or "docid" not in c or "text" not in c:
                raise ValueError(f"query {qid}: candidates[{j}] needs docid and text")
            docids.append(str(c["docid"]))
            texts.append(c["text"])
            ranks.append(j + 1)
            first = c.get("score", c.get("first_stage_score"))
            scores.append(_first_stage_score(first, f"query {qid} candidates[{j}]"))
        _check_unique(qid, docids)
        cols["qid"].append(qid)
        cols["query"].append(row["query"])
        cols["docids"].append(docids)
        cols["texts"].append(texts)
        cols["first_stage_ranks"].append(ranks)
        cols["first_stage_scores"].append(scores)
    return _table(cols, _group_schema(), "rerank-file")


def _pairs_from_records(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    import pyarrow as pa

    names = ("qid", "query", "docid", "text", "score")
    cols: dict[str, list[Any]] = {n: [] for n in names}
    for row in records:
        missing = [f for f in _PAIR_FIELDS if f not in row]
        if missing:
            raise ValueError(f"a pair row lacks {missing}: {_brief(row)}")
        cols["qid"].append(str(row["qid"]))
        cols["query"].append(row["query"])
        cols["docid"].append(str(row["docid"]))
        cols["text"].append(row["text"])
        cols["score"].append(_first_stage_score(row.get("score"), f"query {row['qid']}"))
    schema = pa.schema([(n, pa.float64() if n == "score" else pa.string()) for n in names])
    return _table(cols, schema, "pair")


def _table(cols: Mapping[str, list[Any]], schema: pa.Schema, kind: str) -> pa.Table:
    import pyarrow as pa

    try:
        return pa.table(dict(cols), schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"a {kind} row has a field of the wrong type: {exc}") from None


def _brief(row: Mapping[str, Any]) -> str:
    text = json.dumps(row, default=str, ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_unique(qid: str, docids: list[str]) -> None:
    if len(set(docids)) != len(docids):
        seen: set[str] = set()
        dup = next(d for d in docids if d in seen or seen.add(d))  # type: ignore[func-returns-value]
        raise ValueError(f"query {qid}: docid {dup} appears more than once")


def _parse_lines(batch: pa.Table, layout: str) -> pa.Table:
    """Ray Data ``read_text`` lines -> group rows (rerank layout) or pair rows."""
    lines = batch.column("text").to_pylist()
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON line ({exc}): {line[:80]!r}") from None
        if not isinstance(record, dict):
            raise ValueError(f"each line must be a JSON object, got {line[:80]!r}")
        records.append(record)
    return _groups_from_records(records) if layout == "rerank" else _pairs_from_records(records)


def _parquet_groups(batch: pa.Table) -> pa.Table:
    return _groups_from_records(batch.to_pylist())


def _parquet_pairs(batch: pa.Table) -> pa.Table:
    return _pairs_from_records(batch.to_pylist())


def _group_pairs(group: pa.Table) -> pa.Table:
    """All pair rows of one qid -> one group row (no first-stage rank: pairs have no order)."""
    rows = group.to_pylist()
    qid = rows[0]["qid"]
    queries = {r["query"] for r in rows}
    if len(queries) > 1:
        raise ValueError(f"query {qid}: its pairs carry {len(queries)} different query texts")
    docids = [r["docid"] for r in rows]
    _check_unique(qid, docids)
    cols = {
        "qid": [qid],
        "query": [rows[0]["query"]],
        "docids": [docids],
        "texts": [[r["text"] for r in rows]],
        "first_stage_ranks": [[None] * len(rows)],
        "first_stage_scores": [[r["score"] for r in rows]],
    }
    return _table(cols, _group_schema(), "pair")


# --------------------------------------------------------------------------- scoring


def score_groups(scorer: Reranker, groups: pa.Table, model_id: str | None = None) -> pa.Table:
    """Score every pair of a block of query groups and rank each query's pairs.

    The pure core of :class:`BatchScorer`, usable without Ray. All pairs of the block go to one
    :meth:`~rerank_core.Reranker.score_pairs` call, so the backend batches across queries.

    Args:
        scorer: The reranker.
        groups: Rows with ``qid, query, docids, texts, first_stage_ranks, first_stage_scores``.
        model_id: Value of the ``model`` column; ``None`` is ``scorer.score_id``.

    Returns:
        One row per pair, columns :data:`OUTPUT_COLUMNS`.

    Raises:
        ValueError: a blank query; TypeError: a query or text that is not a string (both name
            the qid and docid).
    """
    import pyarrow as pa

    model_id = run_id(scorer) if model_id is None else model_id
    qids = groups.column("qid").to_pylist()
    queries = groups.column("query").to_pylist()
    docids = groups.column("docids").to_pylist()
    texts = groups.column("texts").to_pylist()
    fs_ranks = groups.column("first_stage_ranks").to_pylist()
    fs_scores = groups.column("first_stage_scores").to_pylist()
    pairs: list[tuple[str, str]] = []
    for qid, query, ids, docs in zip(qids, queries, docids, texts, strict=True):
        q = check_text(f"query {qid}", query, allow_blank=False)
        for docid, text in zip(ids, docs, strict=True):
            pairs.append((q, check_text(f"text of query {qid} docid {docid}", text)))
    scores = scorer.score_pairs(pairs) if pairs else []
    out: dict[str, list[Any]] = {n: [] for n in OUTPUT_COLUMNS}
    start = 0
    for qid, ids, ranks, firsts in zip(qids, docids, fs_ranks, fs_scores, strict=True):
        own = scores[start : start + len(ids)]
        start += len(ids)
        key = own
        if scorer.fusion is not None and ids and all(r is not None for r in ranks):
            # Fusion with the first stage orders the candidates of a rerank file (whose order
            # is known); pairs input has no first-stage order and is ranked by score.
            by_rank = sorted(range(len(ids)), key=lambda i: ranks[i])
            given = [firsts[i] for i in by_rank]
            fused = scorer.fusion.fuse(
                [own[i] for i in by_rank],
                scale=scorer.score_scale,
                first_stage_scores=None if any(v is None for v in given) else given,
            )
            key = [0.0] * len(own)
            for j, i in enumerate(by_rank):
                key[i] = fused[j]
        order = sorted(range(len(own)), key=lambda i: -key[i])  # stable: ties keep input order
        rank = [0] * len(own)
        for r, i in enumerate(order, 1):
            rank[i] = r
        out["qid"] += [qid] * len(ids)
        out["docid"] += ids
        out["score"] += own
        out["rank"] += rank
        out["first_stage_rank"] += ranks
        out["first_stage_score"] += firsts
    out["model"] = [model_id] * len(out["qid"])
    return pa.table(out, schema=_output_schema())


def run_id(scorer: Reranker) -> str:
    """The ``model`` column: the scorer's ``score_id``, and its fusion when it has one.

    Ranks under another fusion differ, so a resume must not mix them.
    """
    if scorer.fusion is None:
        return scorer.score_id
    return f"{scorer.score_id} fusion={scorer.fusion.spec()}"


class BatchScorer:
    """Ray Data actor: one scorer per actor, loaded once through the registry.

    Args:
        model: Model id or folder; ``None`` is the bundled reranker.
        backend: A :data:`rerank_core.registry.BACKENDS` name.
        options: Keyword arguments for :func:`rerank_core.registry.load_reranker`.
    """

    def __init__(
        self, model: str | None, backend: str, options: Mapping[str, Any] | None = None
    ) -> None:
        from rerank_core.registry import load_reranker

        self.scorer = load_reranker(model, backend=backend, **dict(options or {}))
        self.model_id = run_id(self.scorer)

    def __call__(self, groups: pa.Table) -> pa.Table:
        """Score one block of query groups (see :func:`score_groups`)."""
        return score_groups(self.scorer, groups, self.model_id)


def _bound_scorer(model: str | None, backend: str, options: Mapping[str, Any]) -> type:
    """:class:`BatchScorer` with its arguments bound in the class itself.

    Ray keeps constructor arguments in the object store, where a restarted actor may no longer
    find them; arguments shipped with the class definition survive any number of restarts.
    """
    frozen = dict(options)

    class _Bound(BatchScorer):
        def __init__(self) -> None:
            super().__init__(model, backend, frozen)

    _Bound.__name__ = _Bound.__qualname__ = "BatchScorer"
    return _Bound


# --------------------------------------------------------------------------- output


class _Writer:
    """Writes output batches where an interrupted run leaves only whole, readable rows.

    JSON lines go to a private partial file, flushed after every block: a run killed mid-write
    leaves complete lines and at most one cut-off last line. Parquet blocks go to a private
    folder of parts, each written under a temporary name and renamed when complete, so a killed
    run leaves whole parts only (and maybe one ``.tmp``). :meth:`publish` merges the parts (for
    Parquet) and gives the output its final name; a resumed run (:func:`rerank_dataset` with
    ``resume=True``) reads back what an interrupted one left.
    """

    def __init__(self, path: Path, fmt: str, metadata: Mapping[str, str]) -> None:
        self.path = path
        self.fmt = fmt
        # The pid says whether the run is still alive; the token keeps two runs in one process
        # (an interrupted call, then a resumed one) apart.
        stem = f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.partial = path.with_name(f"{stem}.partial")
        self.parts = path.with_name(f"{stem}.parts")
        self.metadata = dict(metadata)
        self.rows = 0
        self.keep = False
        self._fh: Any = None
        self._part = 0
        if fmt == "parquet":
            self.parts.mkdir()
        else:
            self._fh = self.partial.open("w", encoding="utf-8")

    def write(self, table: pa.Table) -> None:
        table = table.select(list(OUTPUT_COLUMNS)).cast(_output_schema())
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            self._part += 1
            part = self.parts / f"part-{self._part:06d}.parquet"
            tmp = part.with_name(part.name + ".tmp")
            pq.write_table(table, str(tmp))
            os.replace(tmp, part)
        else:
            self._fh.write(
                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist())
            )
            self._fh.flush()
        self.rows += table.num_rows

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _merge_parts(self) -> None:
        import pyarrow.parquet as pq

        schema = _output_schema().with_metadata(
            {k.encode(): v.encode() for k, v in self.metadata.items()}
        )
        with pq.ParquetWriter(str(self.partial), schema) as out:
            for part in sorted(self.parts.glob("part-*.parquet")):
                out.write_table(pq.read_table(part).cast(_output_schema()))

    def publish(self, overwrite: bool) -> None:
        self.close()
        if self.fmt == "parquet":
            self._merge_parts()
        if overwrite:
            os.replace(self.partial, self.path)
        else:
            try:
                os.link(self.partial, self.path)  # fails if another run published meanwhile
            except FileExistsError:
                self.keep = True  # the finished work stays, under its partial name
                raise FileExistsError(
                    f"output {self.path} appeared while this run was writing; this run's "
                    f"result is kept in {self.partial}"
                ) from None
            self.partial.unlink()
        self._remove_parts()

    def _remove_parts(self) -> None:
        if self.parts.is_dir():
            for f in self.parts.iterdir():
                f.unlink()
            self.parts.rmdir()

    def discard(self) -> None:
        """After a failure: keep the rows written so far for a resume, or remove the files."""
        self.close()
        if self.keep:
            return
        if self.rows:
            kept = self.parts if self.fmt == "parquet" else self.partial
            logger.warning(
                "the run stopped after %d scored pairs; they are kept in %s: run again with "
                "--resume to score only the rest",
                self.rows,
                kept,
            )
            if self.fmt == "parquet":
                self.partial.unlink(missing_ok=True)
            return
        self.partial.unlink(missing_ok=True)
        self._remove_parts()


# --------------------------------------------------------------------------- resume


def _digest(docids: Iterable[str]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for d in sorted(docids):
        h.update(d.encode("utf-8", "surrogatepass") + b"\0")
    return h.digest()


def _input_digests(spec: InputSpec) -> dict[str, bytes]:
    """Each input query's digest of its docids (read on the driver, only for a resume)."""
    import pyarrow.parquet as pq

    from rerank_core.app.data import iter_jsonl

    per_qid: dict[str, list[str]] = {}

    def add(row: Mapping[str, Any]) -> None:
        qid = str(row.get("qid"))
        if spec.layout == "rerank":
            for c in row.get("candidates") or []:
                per_qid.setdefault(qid, []).append(str(c.get("docid")))
            per_qid.setdefault(qid, [])
        else:
            per_qid.setdefault(qid, []).append(str(row.get("docid")))

    if spec.format == "jsonl":
        for row in iter_jsonl(spec.path):
            add(row)
    else:
        columns = ["qid", "candidates"] if spec.layout == "rerank" else ["qid", "docid"]
        for f in spec.files:
            for batch in pq.ParquetFile(f).iter_batches(columns=columns, batch_size=4096):
                for row in batch.to_pylist():
                    add(row)
    return {qid: _digest(ids) for qid, ids in per_qid.items()}


def _valid_row(row: Any) -> bool:
    if not isinstance(row, dict) or list(row) != list(OUTPUT_COLUMNS):
        return False
    ok = isinstance(row["qid"], str) and isinstance(row["docid"], str)
    ok = ok and isinstance(row["model"], str)
    ok = ok and isinstance(row["score"], (int, float)) and not isinstance(row["score"], bool)
    return ok and isinstance(row["rank"], int) and not isinstance(row["rank"], bool)


@dataclass
class _Earlier:
    """What earlier runs left for ``output``: the published output and interrupted runs' files."""

    output: Path | None = None
    partials: list[Path] = field(default_factory=list)  # JSON lines of interrupted runs
    parts: list[Path] = field(default_factory=list)  # Parquet part folders of interrupted runs
    merges: list[Path] = field(default_factory=list)  # half-merged Parquet partial files
    dropped: int = 0

    def leftovers(self) -> list[Path]:
        return [*self.partials, *self.parts, *self.merges]

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every readable, well-formed row; a cut-off or corrupt line or part is counted."""
        import pyarrow.parquet as pq

        for folder in self.parts:
            for part in sorted(folder.iterdir()):
                if not part.name.endswith(".parquet"):
                    continue  # a part cut off mid-write (.tmp)
                try:
                    table = pq.read_table(part)
                except Exception:
                    logger.warning("resume: skipping unreadable part %s", part)
                    continue
                yield from self._checked(table.to_pylist())
        for path in self.partials:
            yield from self._jsonl(path)
        if self.output is not None:
            if self.output.name.lower().endswith(".parquet"):
                try:
                    reader = pq.ParquetFile(self.output)
                except Exception as exc:
                    raise ValueError(
                        f"output {self.output} is not a readable Parquet file ({exc}); "
                        "--resume cannot use it: pass --overwrite or choose another path"
                    ) from None
                for batch in reader.iter_batches(batch_size=8192):
                    yield from self._checked(batch.to_pylist())
            else:
                yield from self._jsonl(self.output)

    def _checked(self, rows: Iterable[Any]) -> Iterator[dict[str, Any]]:
        for row in rows:
            if _valid_row(row):
                yield row
            else:
                self.dropped += 1

    def _jsonl(self, path: Path) -> Iterator[dict[str, Any]]:
        with path.open("rb") as fh:
            for raw in fh:
                try:
                    if not raw.endswith(b"\n"):
                        raise ValueError("cut-off last line")
                    row = json.loads(raw)
                except ValueError:
                    self.dropped += 1
                    continue
                yield from self._checked([row])


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _find_earlier(out: Path, fmt: str) -> _Earlier:
    """The output and what interrupted runs into it left; refuses while another run writes."""
    earlier = _Earlier(output=out if out.exists() else None)
    prefix = f".{out.name}."
    for f in sorted(out.parent.glob(f".{glob.escape(out.name)}.*")):
        rest = f.name[len(prefix) :]
        run, _, kind = rest.partition(".")
        pid_text = run.split("-")[0]
        if not pid_text.isdigit() or kind not in ("partial", "parts"):
            continue
        if _pid_alive(int(pid_text)):
            raise FileExistsError(
                f"another run (pid {pid_text}) is writing {out} ({f.name}); wait for it, or "
                "remove that file if no such run is active"
            )
        if kind == "parts":
            earlier.parts.append(f)
        elif fmt == "parquet":
            earlier.merges.append(f)  # a merge cut off; its parts folder has the rows
        else:
            earlier.partials.append(f)
    return earlier


@dataclass
class _ResumePlan:
    """Queries already scored in full (their rows are carried over) and the earlier files."""

    earlier: _Earlier
    done: frozenset[str]
    models: frozenset[str]
    carried: int
    left: int  # input queries still to score


def _plan_resume(spec: InputSpec, out: Path, fmt: str) -> _ResumePlan:
    """Which input queries earlier runs scored in full: every one of their pairs, nothing else.

    A query of which only some pairs were written (a run cut off inside it) is scored again
    whole, so its ranks cover all its pairs; its earlier rows are dropped.
    """
    earlier = _find_earlier(out, fmt)
    wanted = _input_digests(spec)
    seen: dict[str, set[str]] = {}
    models: set[str] = set()
    for row in earlier.rows():
        if row["qid"] in wanted:
            seen.setdefault(row["qid"], set()).add(row["docid"])
            models.add(row["model"])
    done = frozenset(q for q, ids in seen.items() if _digest(ids) == wanted[q])
    carried = sum(len(seen[q]) for q in done)
    if earlier.dropped:
        logger.warning(
            "resume: %d cut-off or unreadable row(s) in earlier output are scored again",
            earlier.dropped,
        )
    logger.info(
        "resume: %d of %d queries (%d pairs) already scored", len(done), len(wanted), carried
    )
    return _ResumePlan(earlier, done, frozenset(models), carried, len(wanted) - len(done))


def _carry(plan: _ResumePlan, writer: _Writer, chunk: int = 8192) -> None:
    """Write the earlier rows of the fully scored queries, each pair once."""
    import pyarrow as pa

    written: dict[str, set[str]] = {}
    rows: list[dict[str, Any]] = []
    plan.earlier.dropped = 0
    for row in plan.earlier.rows():
        qid, docid = row["qid"], row["docid"]
        if qid not in plan.done:
            continue
        ids = written.setdefault(qid, set())
        if docid in ids:
            continue
        ids.add(docid)
        rows.append(row)
        if len(rows) >= chunk:
            writer.write(pa.Table.from_pylist(rows, schema=_output_schema()))
            rows = []
    if rows:
        writer.write(pa.Table.from_pylist(rows, schema=_output_schema()))


def _skip_done(groups: pa.Table, done: frozenset[str]) -> pa.Table:
    import pyarrow as pa
    import pyarrow.compute as pc

    if not done:
        return groups
    keep = pc.invert(pc.is_in(groups.column("qid"), value_set=pa.array(sorted(done), pa.string())))
    return groups.filter(keep)


def _output_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("parquet", "jsonl"):
            raise ValueError(f"output format must be 'parquet' or 'jsonl', got {fmt!r}")
        return fmt
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    raise ValueError(f"output {path}: name it .parquet or .jsonl (or give the format)")


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class BatchSummary:
    """What a :func:`rerank_dataset` run did.

    Attributes:
        output: The file written.
        pairs: Rows written (one per input pair), carried over ones included.
        seconds: Wall time of the Ray job (reading, scoring, writing), Ray start excluded.
        first_rows_seconds: Time until the first scored block was written: mostly starting
            the actors and loading the model in each.
        first_rows: Rows of that first block.
        model: The reranker's ``score_id``.
        actors: Size of the actor pool.
        layout: ``"rerank"`` or ``"pairs"``.
        carried: Rows carried over from an earlier run (``resume``), not scored by this one.
    """

    output: Path
    pairs: int
    seconds: float
    model: str
    actors: int
    layout: str
    first_rows_seconds: float = 0.0
    first_rows: int = 0
    carried: int = 0

    @property
    def pairs_per_second(self) -> float:
        """Throughput of the whole job (pairs this run scored)."""
        return (self.pairs - self.carried) / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_pairs_per_second(self) -> float:
        """Throughput once the first block was out (actor start-up excluded)."""
        span = self.seconds - self.first_rows_seconds
        return (self.pairs - self.carried - self.first_rows) / span if span > 0 else 0.0


def _connect(ray: Any, address: str | None, cpus: int) -> bool:
    """Use a running Ray, join ``address``, or start a local one; True if we started it."""
    if ray.is_initialized():
        return False
    common = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **common)
    else:
        # Readers and parsers take no CPU slot (they are light next to scoring); Ray Data's
        # re-blocking step takes one, so one slot is kept free of actors.
        num_cpus = max(os.cpu_count() or 1, cpus + 1)
        ray.init(num_cpus=num_cpus, include_dashboard=False, **common)
    return True


def rerank_dataset(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    backend: str = "torch",
    actors: int = 1,
    threads_per_actor: int = 1,
    gpus_per_actor: float = 0.0,
    queries_per_batch: int = 8,
    options: Mapping[str, Any] | None = None,
    output_format: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    address: str | None = None,
    max_restarts: int = 4,
    progress: bool = False,
    on_rows: Callable[[int], None] | None = None,
) -> BatchSummary:
    """Rerank every pair of ``source`` on a pool of Ray actors and write one row per pair.

    Uses the running Ray if there is one, else joins ``address``, else starts a local Ray with
    one CPU slot per core (at least ``actors * threads_per_actor + 1``) and stops it at the end.
    A Ray of your own needs one CPU slot more than the actors take, for Ray Data's re-blocking
    of the input into actor-sized blocks.

    Args:
        source: JSON lines or Parquet, rerank-file or pairs layout (see the module docstring).
        output: ``.parquet`` or ``.jsonl`` file to create.
        model: Model id or folder; ``None`` is the bundled reranker.
        backend: A :data:`rerank_core.registry.BACKENDS` name; ``"http"`` (with ``provider``
            in ``options``) has each actor call a rerank API.
        actors: Actors in the pool, each with its own scorer.
        threads_per_actor: CPU slots per actor, passed to a local scorer as ``num_threads``.
        gpus_per_actor: GPUs per actor (``device`` defaults to ``"cuda"`` when above 0).
        queries_per_batch: Query groups per actor call; all their pairs are scored together.
        options: More :func:`~rerank_core.registry.load_reranker` keyword arguments
            (``batch_size``, ``max_length``, ``chunking``, ``device``, ...).
        output_format: ``"parquet"`` or ``"jsonl"``; ``None`` goes by the output's suffix.
        overwrite: Replace an existing output; otherwise an existing output is refused.
        resume: Keep what an earlier run into ``output`` wrote (the finished output, or the
            files a killed or failed run left beside it) and score only the rest: a query all
            of whose input pairs are there, read back intact, is carried over as it is; any
            other query (never reached, or cut off mid-write: a truncated JSON line, a Parquet
            part not finished) is scored again whole, so its ranks cover all its pairs. The
            output is then replaced by one holding every input pair once. The earlier rows
            must come from the same model and settings (``model`` column), else
            ``ValueError``. The driver reads the input's qids and docids once to plan this.
        address: Ray cluster address (``"auto"``, ``"ray://host:10001"``); ``None`` runs
            locally unless Ray is already initialised.
        max_restarts: How often Ray restarts a dead actor (its unfinished batches are retried on
            the restarted actor or another one).
        progress: Show a progress bar of pairs written (on stderr).
        on_rows: Called on the driver with the running count after each block is written.

    Returns:
        A :class:`BatchSummary`.

    Raises:
        ImportError: Ray is not installed.
        FileExistsError: ``output`` exists and neither ``overwrite`` nor ``resume`` is set, or
            another run is writing it.
        FileNotFoundError: ``source`` does not exist.
        ValueError: bad arguments or bad input rows (the message names the query).
    """
    from rerank_core.registry import BACKENDS

    if overwrite and resume:
        raise ValueError("choose one of overwrite (start again) and resume (keep what is done)")
    ray = require_ray()
    actors = check_positive_int("actors", actors) or 1
    threads = check_positive_int("threads_per_actor", threads_per_actor) or 1
    per_call = check_positive_int("queries_per_batch", queries_per_batch) or 1
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"max_restarts must be a non-negative int, got {max_restarts!r}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    gpus = float(gpus_per_actor)
    if gpus < 0:
        raise ValueError(f"gpus_per_actor must be >= 0, got {gpus_per_actor!r}")
    out = Path(output)
    fmt = _output_format(out, output_format)
    if out.exists() and not overwrite and not resume:
        raise FileExistsError(
            f"output {out} exists; a finished output is never appended to: pass resume=True "
            "(--resume) to score only the pairs it lacks, overwrite=True (--overwrite) to "
            "replace it, or choose another path"
        )
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    spec = detect_input(source)
    plan = _plan_resume(spec, out, fmt) if resume else None
    done = plan.done if plan is not None else frozenset()
    scorer_options = dict(options or {})
    if BACKENDS[backend].local:
        scorer_options.setdefault("num_threads", threads)
        if gpus > 0:
            scorer_options.setdefault("device", "cuda")
    model_arg = str(model) if model else None

    if plan is not None and plan.left == 0:  # nothing to score: no Ray needed
        return _publish_carried(plan, out, fmt, actors, spec.layout)

    started = _connect(ray, address, actors * threads)
    writer: _Writer | None = None
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts pairs; Ray's would print per operator
        groups = _build_groups(ray, spec, actors, per_call, done)
        with warnings.catch_warnings():
            # Ray deprecates passing actor options through map_batches' **kwargs but has no
            # named parameter for restarts yet; the options still apply.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            scored = groups.map_batches(
                _bound_scorer(model_arg, backend, scorer_options),
                batch_size=per_call,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=threads,
                num_gpus=gpus or None,
                max_restarts=max_restarts,
                max_task_retries=-1,
            )
        from tqdm.auto import tqdm

        bar = tqdm(desc="reranked", unit="pair", disable=not progress, smoothing=0.1)
        model_id = ""
        first_s, first_n = 0.0, 0
        t0 = time.perf_counter()
        for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            if table.num_rows == 0:
                continue
            if writer is None:
                first_s, first_n = time.perf_counter() - t0, table.num_rows
                model_id = str(table.column("model")[0])
                if plan is not None and plan.models - {model_id}:
                    raise ValueError(
                        f"--resume: {out} was scored with other model settings "
                        f"({sorted(plan.models - {model_id})}) than this run ({model_id}); "
                        "resume with the same model and options, or pass --overwrite"
                    )
                writer = _Writer(out, fmt, {"rag_rerank.model": model_id})
            writer.write(table)
            bar.update(table.num_rows)
            if on_rows is not None:
                on_rows(writer.rows)
        seconds = time.perf_counter() - t0
        bar.close()
        if writer is None:  # no new pair: still a valid output (maybe all carried over)
            if plan is not None and len(plan.models) > 1:
                raise ValueError(f"--resume: {out} mixes model settings {sorted(plan.models)}")
            model_id = next(iter(plan.models)) if plan is not None and plan.models else ""
            writer = _Writer(out, fmt, {"rag_rerank.model": model_id} if model_id else {})
        scored = writer.rows
        if plan is not None:
            _carry(plan, writer)
        writer.publish(overwrite or resume)
        rows = writer.rows
        writer = None
        if plan is not None:
            _remove(plan.earlier.leftovers())
    finally:
        if writer is not None:
            writer.discard()
        if started:
            ray.shutdown()
    logger.info("wrote %d scored pairs to %s in %.1f s", rows, out, seconds)
    return BatchSummary(
        out, rows, seconds, model_id, actors, spec.layout, first_s, first_n, rows - scored
    )


def _publish_carried(
    plan: _ResumePlan, out: Path, fmt: str, actors: int, layout: str
) -> BatchSummary:
    if len(plan.models) > 1:
        raise ValueError(f"--resume: {out} mixes model settings {sorted(plan.models)}")
    model_id = next(iter(plan.models), "")
    writer = _Writer(out, fmt, {"rag_rerank.model": model_id} if model_id else {})
    try:
        _carry(plan, writer)
        writer.publish(True)
    except BaseException:
        writer.keep = False
        writer.close()
        writer.partial.unlink(missing_ok=True)
        writer._remove_parts()
        raise
    _remove(plan.earlier.leftovers())
    logger.info("resume: every pair of %s was already scored", out)
    return BatchSummary(out, writer.rows, 0.0, model_id, actors, layout, carried=writer.rows)


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.is_dir():
            for f in p.iterdir():
                f.unlink()
            p.rmdir()
        else:
            p.unlink(missing_ok=True)


def _build_groups(
    ray: Any, spec: InputSpec, actors: int, per_call: int, done: frozenset[str] = frozenset()
) -> Any:
    """The input as a Ray dataset of query groups (the rerank layout streams; pairs shuffle).

    Blocks are cut to ``per_call`` groups: an actor task takes whole blocks, so one big block
    (a small file is read as one) would go to a single actor while the others wait.
    """
    # Reading and parsing take no CPU slot: they are light next to scoring, and a slot held by
    # a reader is one an actor cannot have (on a 2-core box that would stall the pool).
    readers = 1 + actors // 4
    if spec.format == "jsonl":
        open_args = {"compression": "gzip"} if spec.path.name.lower().endswith(".gz") else None
        lines = ray.data.read_text(
            str(spec.path),
            num_cpus=0,
            concurrency=readers,
            arrow_open_stream_args=open_args,
        )
        ds = lines.map_batches(
            _parse_lines,
            fn_kwargs={"layout": spec.layout},
            batch_format="pyarrow",
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=readers),
        )
    else:
        raw = ray.data.read_parquet(list(spec.files), num_cpus=0, concurrency=readers)
        parse = _parquet_groups if spec.layout == "rerank" else _parquet_pairs
        ds = raw.map_batches(
            parse,
            batch_format="pyarrow",
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=readers),
        )
    if spec.layout == "pairs":
        ds = ds.groupby("qid").map_groups(_group_pairs, batch_format="pyarrow", num_cpus=0)
    if done:  # queries an earlier run scored in full (resume)
        ds = ds.map_batches(
            _skip_done, fn_kwargs={"done": done}, batch_format="pyarrow", num_cpus=0
        )
    return ds.repartition(target_num_rows_per_block=per_call)
