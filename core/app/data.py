"""Readers for the training and evaluation formats the commands use.

Training data is ``{query, positives, negatives}`` JSON lines, in one of two layouts:

* a folder with ``train.jsonl[.gz]`` (``qid``, ``query``, ``positives: [pid]``,
  ``negatives: [pid]``) and ``corpus.jsonl[.gz]`` (``pid``, ``text``, optional ``title``), whose
  corpus is also where hard negatives are mined;
* a single ``.jsonl[.gz]`` file whose ``positives`` and ``negatives`` are the passage texts.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainingSet", "data_root", "iter_jsonl", "load_training_set"]


def data_root(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The shared data folder: ``path``, else ``$RAG_RERANK_DATA``, else ``../shared/data``.

    Returns ``None`` when none of them exists, so callers can skip cleanly.
    """
    candidates = [path, os.environ.get("RAG_RERANK_DATA")]
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" for p in (here.parents[2].parent, Path.cwd().parent)]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-empty line of a ``.jsonl`` or ``.jsonl.gz`` file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.jsonl.gz", f"{stem}.jsonl"):
        if (folder / name).is_file():
            return folder / name
    return None


@dataclass
class TrainingSet:
    """Queries with their positive and negative passages, plus the corpus they come from."""

    name: str
    queries: list[dict[str, Any]]  # qid, query, positives [pid], negatives [pid]
    corpus: dict[str, str] = field(default_factory=dict)  # pid -> text


def _passage_text(row: dict[str, Any]) -> str:
    title = (row.get("title") or "").strip()
    text = str(row.get("text", "")).strip()
    return f"{title}. {text}" if title and not text.startswith(title) else text


def load_training_set(path: str | os.PathLike[str], split: str = "train") -> TrainingSet:
    """Load a training set from a folder (ids + corpus) or a single JSONL file (inline texts).

    Raises:
        FileNotFoundError: nothing usable at ``path``.
        ValueError: a row lacks ``query`` or ``positives``, or names a passage the corpus lacks.
    """
    path = Path(path)
    if path.is_dir():
        train_file, corpus_file = _find(path, split), _find(path, "corpus")
        if split != "train" and corpus_file is not None:
            corpus_file = _find(path, f"{split}_corpus") or corpus_file
        if train_file is None or corpus_file is None:
            raise FileNotFoundError(f"{path} needs {split}.jsonl[.gz] and corpus.jsonl[.gz]")
        corpus = {str(r["pid"]): _passage_text(r) for r in iter_jsonl(corpus_file)}
        queries = []
        for n, row in enumerate(iter_jsonl(train_file), 1):
            if not row.get("query") or not row.get("positives"):
                raise ValueError(f"{train_file}:{n}: needs a query and at least one positive")
            pids = [str(p) for p in row["positives"]] + [str(p) for p in row.get("negatives", [])]
            missing = [p for p in pids if p not in corpus]
            if missing:
                raise ValueError(f"{train_file}:{n}: passages {missing[:3]} not in the corpus")
            queries.append(
                {
                    "qid": str(row.get("qid", n)),
                    "query": str(row["query"]),
                    "positives": [str(p) for p in row["positives"]],
                    "negatives": [str(p) for p in row.get("negatives", [])],
                }
            )
        return TrainingSet(path.name, queries, corpus)
    if path.is_file():
        corpus_ids: dict[str, str] = {}
        queries = []

        def pid(text: str) -> str:
            return corpus_ids.setdefault(text, f"p{len(corpus_ids)}")

        for n, row in enumerate(iter_jsonl(path), 1):
            if not row.get("query") or not row.get("positives"):
                raise ValueError(f"{path}:{n}: needs a query and at least one positive")
            queries.append(
                {
                    "qid": str(row.get("qid", n)),
                    "query": str(row["query"]),
                    "positives": [pid(str(t)) for t in row["positives"]],
                    "negatives": [pid(str(t)) for t in row.get("negatives", [])],
                }
            )
        corpus = {v: k for k, v in corpus_ids.items()}
        return TrainingSet(path.stem.split(".")[0], queries, corpus)
    raise FileNotFoundError(f"no training data at {path}")
