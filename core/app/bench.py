"""Speed of reranking backends on the same weights and inputs.

Every backend scores the same queries with the same candidates from the same model folder:

* ``loop``: the per-document loop of the original tutorial code, one
  ``tokenizer(query, doc, return_tensors="pt", truncation=True)`` and one forward pass per
  document;
* ``sentence-transformers``: ``CrossEncoder.predict(pairs, batch_size=32)``, what LangChain's
  ``HuggingFaceCrossEncoder`` and LlamaIndex's ``SentenceTransformerRerank`` run;
* ``torch``, ``torch-bf16``, ``onnx``, ``onnx-int8``: rag-rerank's own backends
  (:func:`rerank_core.load_reranker`): :class:`~rerank_core.CrossEncoderScorer` in fp32 and with
  bf16 autocast, ONNX Runtime fp32 and dynamic int8.

A backend is one entry of :data:`BACKENDS`: a function that takes a :class:`BenchModel` and
returns ``score(query, documents) -> scores``. Each backend runs in its own fresh process, so its
peak memory is its own and one backend's caches do not warm another's.

Measured per backend, input set (DL19 passages, synthetic pairs of 32/128/256/512 tokens) and
candidate count (50, 100): pairs per second, per-query latency p50/p95, peak RSS, the ratio to
sentence-transformers, and the largest score difference from sentence-transformers on the same
pairs (a check that a faster backend still computes the same thing), and the fraction of the
machine's GEMM peak (measured in the same run, per precision) that the model's FLOPs reached.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "BenchModel",
    "FastestPath",
    "Workload",
    "bench_to_markdown",
    "bundled_models",
    "dl19_workload",
    "machine_info",
    "run_bench",
    "save_bench",
    "synthetic_workload",
]

ScoreFn = Callable[[str, Sequence[str]], Sequence[float]]

DEFAULT_LENGTHS = (32, 128, 256, 512)
DEFAULT_CANDIDATES = (20, 50, 100)
BASELINE = "sentence-transformers"


@dataclass(frozen=True)
class BenchModel:
    """What every backend loads: the same weights, window, device, dtype and batch size.

    ``batch_size`` ``None`` leaves each rag-rerank backend its own default (32 pairs for torch,
    16 for ONNX Runtime, whose activations set the process's peak memory).
    """

    path: str
    device: str = "cpu"
    max_length: int = 512
    batch_size: int | None = None
    dtype: str = "float32"
    threads: int | None = None

    @property
    def name(self) -> str:
        """The model folder's name (or the hub id)."""
        return Path(self.path).name or self.path


@dataclass(frozen=True)
class FastestPath:
    """The configuration timed as the "fastest path" row.

    Attributes:
        model: Model folder or id; ``None``: the bundled model with the fewest layers.
        backend: A local backend of the registry.
        rerank_window: Rerank only the first K candidates (the rest keep their first-stage
            order); ``None`` reranks all. The default 50 kept 93 % of the bundled model's
            nDCG@10 gain over BM25 on TREC DL19 with ``onnx-int8`` (``eval-dl19``: 0.6321 at
            window 50 against 0.6421 for torch on all 100 and 0.5058 for BM25), window 20 only
            58 %.
    """

    model: str | None = None
    backend: str = "onnx-int8"
    rerank_window: int | None = 50

    def label(self) -> str:
        """The row's backend column."""
        window = f", window {self.rerank_window}" if self.rerank_window else ""
        return f"fastest path ({self.backend}{window})"


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _loop_backend(m: BenchModel) -> ScoreFn:
    """The tutorial's loop: one tokenizer call and one forward pass per document."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(m.path)
    model = AutoModelForSequenceClassification.from_pretrained(m.path, dtype=_torch_dtype(m.dtype))
    model = model.to(m.device).eval()

    def score(query: str, docs: Sequence[str]) -> list[float]:
        scores = []
        for doc in docs:
            inputs = tokenizer(
                query, doc, return_tensors="pt", truncation=True, max_length=m.max_length
            ).to(m.device)
            with torch.no_grad():
                logit = model(**inputs).logits[0][0].item()
            # The tutorial keeps the raw logit; the sigmoid (free) makes it comparable.
            scores.append(1.0 / (1.0 + math.exp(-logit)))
        return scores

    return score


def _st_backend(m: BenchModel) -> ScoreFn:
    """sentence-transformers ``CrossEncoder.predict(batch_size=32)``."""
    try:
        from sentence_transformers import CrossEncoder
    except ImportError as exc:
        raise ImportError(
            "the sentence-transformers backend needs: pip install 'rag-rerank[bench]'"
        ) from exc

    ce = CrossEncoder(
        m.path,
        device=m.device,
        max_length=m.max_length,
        model_kwargs={"dtype": _torch_dtype(m.dtype)},
    )

    def score(query: str, docs: Sequence[str]) -> Sequence[float]:
        out = ce.predict([(query, d) for d in docs], batch_size=32, show_progress_bar=False)
        return [float(x) for x in out]

    return score


def _registry_backend(backend: str) -> Callable[[BenchModel], ScoreFn]:
    """rag-rerank's own backend ``backend`` (see :data:`rerank_core.registry.BACKENDS`)."""

    def make(m: BenchModel) -> ScoreFn:
        from rerank_core.registry import load_reranker

        return load_reranker(m.path, backend=backend, **_registry_options(backend, m)).score

    make.__doc__ = f"rag-rerank's ``{backend}`` backend."
    return make


def _registry_options(backend: str, m: BenchModel) -> dict[str, Any]:
    # Raw model scores (no calibration file), comparable with sentence-transformers'.
    kwargs: dict[str, Any] = {
        "max_length": m.max_length,
        "device": m.device,
        "calibration": False,
    }
    if m.batch_size:
        kwargs["batch_size"] = m.batch_size
    if m.threads:  # otherwise each runtime's default: one thread per physical core
        kwargs["num_threads"] = m.threads
    if BACKENDS_PRECISION.get(backend) is None:  # follows dtype
        kwargs["dtype"] = m.dtype
    return kwargs


def _local_backends() -> dict[str, Any]:
    from rerank_core.registry import BACKENDS as REGISTRY

    return {name: b for name, b in REGISTRY.items() if b.local}


#: What each rag-rerank backend's matrix products run in (``None``: its ``dtype``).
BACKENDS_PRECISION: dict[str, str | None] = {
    name: b.precision for name, b in _local_backends().items()
}

#: Backend name -> factory: the two references, then every local backend of the registry.
#: A backend here is a function that takes a :class:`BenchModel` and returns
#: ``score(query, documents)`` giving probabilities.
BACKENDS: dict[str, Callable[[BenchModel], ScoreFn]] = {
    "loop": _loop_backend,
    "sentence-transformers": _st_backend,
    **{name: _registry_backend(name) for name in _local_backends()},
}

#: Backends whose process never needs torch (ONNX Runtime on an exported model).
_TORCH_FREE = frozenset(name for name, b in _local_backends().items() if b.extra == "onnx")

_DTYPE_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def backend_precision(backend: str, dtype: str = "float32") -> str:
    """``fp32``, ``bf16``, ``fp16`` or ``int8``: what ``backend`` multiplies in."""
    return BACKENDS_PRECISION.get(backend) or _DTYPE_PRECISION[dtype]


# --------------------------------------------------------------------------- inputs


@dataclass
class Workload:
    """Queries with candidate passages; each query carries the largest candidate count.

    Attributes:
        name: ``"dl19"``, ``"synthetic-128"``, ...
        queries: ``(query, passages)`` per query.
        mean_tokens: Mean tokens per (query, passage) pair after truncation, for the record.
    """

    name: str
    queries: list[tuple[str, list[str]]]
    mean_tokens: float = 0.0


def _pair_tokens(tokenizer: Any, query: str, docs: Sequence[str], max_length: int) -> float:
    enc = tokenizer([query] * len(docs), list(docs), truncation=True, max_length=max_length)
    lengths = [len(ids) for ids in enc["input_ids"]]
    return sum(lengths) / len(lengths)


def dl19_workload(
    path: str | os.PathLike[str],
    tokenizer: Any,
    *,
    queries: int,
    candidates: int,
    max_length: int,
) -> Workload:
    """The first ``queries`` DL19 queries with their first ``candidates`` BM25 passages."""
    from rerank_core.app.evaluate import load_rerank_file

    rows, _ = load_rerank_file(path, depth=candidates)
    picked = [(q.query, [c.text for c in q.candidates]) for q in rows if len(q.candidates)]
    picked = [p for p in picked if len(p[1]) >= candidates][:queries]
    if not picked:
        raise ValueError(f"{path}: no query has {candidates} candidates")
    tokens = sum(_pair_tokens(tokenizer, q, d, max_length) for q, d in picked) / len(picked)
    return Workload("dl19", picked, tokens)


_SYNTHETIC_QUERIES = [
    "what is the average lifespan of a house cat",
    "how do vaccines train the immune system",
    "causes of the french revolution",
    "best way to store fresh herbs",
    "why is the sky blue during the day",
]


def _word_list(tokenizer: Any) -> list[str]:
    words = []
    for tok in tokenizer.get_vocab():
        word = tok.lstrip("▁Ġ")
        if len(word) >= 3 and word.isascii() and word.isalpha() and word.islower():
            words.append(word)
    if len(words) < 100:
        raise ValueError("the tokenizer's vocabulary has too few plain words for synthetic text")
    return sorted(words)


def synthetic_workload(
    tokenizer: Any,
    length: int,
    *,
    queries: int,
    candidates: int,
    max_length: int,
    seed: int = 0,
) -> Workload:
    """Random-word passages sized so each (query, passage) pair is about ``length`` tokens."""
    rng = random.Random(seed * 1000 + length)
    words = _word_list(tokenizer)
    picked = []
    for i in range(queries):
        query = _SYNTHETIC_QUERIES[i % len(_SYNTHETIC_QUERIES)]
        docs = []
        for _ in range(candidates):
            n = max(1, length - len(tokenizer(query)["input_ids"]))
            doc = " ".join(rng.choice(words) for _ in range(n))
            for _ in range(8):  # words can split into several tokens: trim to the target
                have = len(tokenizer(query, doc)["input_ids"])
                if have <= length or n <= 1:
                    break
                n = max(1, n - max(1, have - length))
                doc = " ".join(doc.split()[:n])
            docs.append(doc)
        picked.append((query, docs))
    tokens = sum(_pair_tokens(tokenizer, q, d, max_length) for q, d in picked) / len(picked)
    return Workload(f"synthetic-{length}", picked, tokens)


# --------------------------------------------------------------------------- measuring


def _percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def _peak_rss_mb() -> float | None:
    from rerank_core.app.hardware import peak_rss_mib

    try:
        return peak_rss_mib()
    except (ImportError, OSError):  # no resource module (Windows)
        return None


def _scorer(name: str, model: BenchModel, fastest: FastestPath | None) -> ScoreFn:
    if fastest is None:
        return BACKENDS[name](model)
    from rerank_core.registry import load_reranker

    # What a user of the fastest path runs: the default calibration and the rerank window.
    options = {**_registry_options(fastest.backend, model), "calibration": None}
    reranker = load_reranker(
        model.path, backend=fastest.backend, rerank_window=fastest.rerank_window, **options
    )

    def score(query: str, docs: Sequence[str]) -> list[float]:
        return [r.score for r in reranker.rerank(query, docs)]

    return score


def _measure_backend(
    name: str,
    model: BenchModel,
    workloads: Sequence[Workload],
    candidates: Sequence[int],
    warmup: int,
    fastest: FastestPath | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Load one backend and time it on every workload; runs inside the worker process.

    ``started_at`` is the wall-clock time the worker process was started (isolated runs): the
    cold start is from then to the end of the first score call (one query, the fewest
    candidates), which includes the interpreter, the imports and the model load.
    """
    if model.threads and name not in _TORCH_FREE:
        import torch

        torch.set_num_threads(model.threads)
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    score = _scorer(name, model, fastest)
    load_s = time.perf_counter() - t0
    # An LLM reranker reads its prompt template too: count what it reads, not the bare pair.
    count_tokens = getattr(getattr(score, "__self__", None), "count_tokens", None)
    query, docs = workloads[0].queries[0]
    t1 = time.perf_counter()
    score(query, docs[: min(candidates)])
    first_score_s = time.perf_counter() - t1
    first_score_at = time.time()
    rss_first = _peak_rss_mb()
    rows = []
    for w in workloads:
        for n in candidates:
            batches = [(q, docs[:n]) for q, docs in w.queries]
            for q, docs in batches[:warmup]:
                score(q, docs)
            batches = batches[warmup:]
            times = []
            first: list[float] = []
            for q, docs in batches:
                t = time.perf_counter()
                out = score(q, docs)
                times.append((time.perf_counter() - t) * 1000)
                if not first and fastest is None:  # the window leaves some unscored
                    first = [float(x) for x in out]
            pairs = sum(len(d) for _, d in batches)
            tokens = w.mean_tokens
            if callable(count_tokens):
                counts = count_tokens([(q, d) for q, docs in batches for d in docs])
                tokens = sum(counts) / len(counts)
            rows.append(
                {
                    "model": model.name,
                    "workload": w.name,
                    "candidates": n,
                    "queries": len(batches),
                    "mean_tokens": round(tokens, 1),
                    "pairs_per_s": pairs / (sum(times) / 1000),
                    "p50_ms": _percentile(times, 50),
                    "p95_ms": _percentile(times, 95),
                    "first_query_scores": first,
                }
            )
    loaded = sys.modules.get("torch")
    cuda_peak = None
    if loaded is not None and model.device.startswith("cuda"):
        cuda_peak = loaded.cuda.max_memory_allocated() / 2**20
    return {
        "model": model.name,
        "backend": fastest.label() if fastest else name,
        "load_s": load_s,
        "first_score_s": first_score_s,
        "cold_start_s": first_score_at - started_at if started_at is not None else None,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_first_score_mb": rss_first,
        "rss_before_load_mb": rss_before,
        "cuda_peak_mb": cuda_peak,
        "torch_loaded": loaded is not None,
        "torch_threads": loaded.get_num_threads() if loaded is not None else None,
        "rows": rows,
    }


def _worker_main(job: str, result: str, started_at: str) -> None:
    """Entry point of an isolated backend process: arguments in ``job``, figures to ``result``."""
    import pickle

    with open(job, "rb") as f:
        name, model, workloads, candidates, warmup, fastest = pickle.load(f)
    out = _measure_backend(
        name, model, workloads, candidates, warmup, fastest, started_at=float(started_at)
    )
    Path(result).write_text(json.dumps(out), encoding="utf-8")


def _run_isolated(*args: Any) -> dict[str, Any]:
    """Run :func:`_measure_backend` in a fresh Python process (nothing shared but the inputs)."""
    import pickle
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rag-rerank-bench-") as tmp:
        job, result = Path(tmp) / "job.pkl", Path(tmp) / "result.json"
        with job.open("wb") as f:
            pickle.dump(args, f)
        code = (
            "import sys\nfrom rerank_core.app.bench import _worker_main\n"
            "_worker_main(*sys.argv[1:])"
        )
        started_at = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", code, str(job), str(result), repr(started_at)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not result.is_file():
            what = args[5].label() if args[5] is not None else args[0]
            raise RuntimeError(
                f"benchmark of {what} failed in its process (exit {proc.returncode}):\n"
                + proc.stderr[-3000:]
            )
        figures: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
        return figures


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_NUMERIC_FLAGS = frozenset(
    {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
)


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model and flags, cores, memory, load, torch threads and library versions."""
    import importlib.metadata as md

    import psutil
    import torch

    from rerank_core.cpu import cpu_flags, int8_kernel

    versions = {"python": platform.python_version()}
    for pkg in (
        "rag-rerank",
        "torch",
        "transformers",
        "sentence-transformers",
        "tokenizers",
        "numpy",
        "onnxruntime",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "versions": versions,
        # the instructions that change int8 and bf16 numerics and speed
        "cpu_flags": sorted(cpu_flags() & _NUMERIC_FLAGS),
        "int8_kernel": int8_kernel(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@dataclass
class BenchReport:
    """Results of one ``run_bench`` call; ``to_dict`` is what the JSON file holds.

    Attributes:
        command: The command line that made it.
        model: Settings of the first model (path, dtype, window, queries, ...).
        machine: CPU, flags, cores, load, versions (:func:`machine_info`).
        backends: Per model and backend (and the fastest path): ``load_s``, ``cold_start_s``
            (process start to the first score returned), ``first_score_s``, ``peak_rss_mb``,
            ``rss_after_first_score_mb``, ``torch_loaded``.
        rows: Per model, backend, input set and candidate count: pairs/s, p50/p95 ms, ...
        models: Settings of every model timed.
        fastest: The fastest-path configuration, if one was timed.
    """

    command: str
    model: dict[str, Any]
    machine: dict[str, Any]
    backends: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    fastest: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the report."""
        return asdict(self)


def _compare(backends: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = {
        (r["model"], r["workload"], r["candidates"]): r
        for b in backends
        if b["backend"] == BASELINE
        for r in b["rows"]
    }
    rows = []
    for b in backends:
        for r in b["rows"]:
            ref = base.get((r["model"], r["workload"], r["candidates"]))
            row = {k: v for k, v in r.items() if k != "first_query_scores"}
            row["backend"] = b["backend"]
            row["peak_rss_mb"] = b["peak_rss_mb"]
            row["vs_st"] = r["pairs_per_s"] / ref["pairs_per_s"] if ref else None
            if (
                ref
                and r["first_query_scores"]
                and len(ref["first_query_scores"]) == len(r["first_query_scores"])
            ):
                row["max_abs_diff_vs_st"] = max(
                    abs(a - c)
                    for a, c in zip(r["first_query_scores"], ref["first_query_scores"], strict=True)
                )
            else:
                row["max_abs_diff_vs_st"] = None
            rows.append(row)
    rows.sort(key=lambda x: (x["model"], x["workload"], x["candidates"], x["backend"]))
    return rows


def _measure_peaks(precisions: set[str], device: str, threads: int | None) -> dict[str, float]:
    """GEMM peak per precision, measured with the thread count the backends run with."""
    import torch

    from rerank_core.app.hardware import gemm_peak

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        out = {}
        for precision in sorted(precisions):
            try:
                out[precision] = gemm_peak(precision, device=device)
            except (RuntimeError, NotImplementedError) as exc:  # e.g. no int8 GEMM on this device
                logger.warning("no %s GEMM peak on %s: %s", precision, device, exc)
        return out
    finally:
        torch.set_num_threads(before)


def _add_peak_fraction(
    rows: list[dict[str, Any]], gemm: dict[str, float], configs: dict[str, Any], dtype: str
) -> list[dict[str, Any]]:
    """Add each row's model GFLOP/s and its share of the GEMM peak of the backend's precision."""
    from rerank_core.app.hardware import flops_per_pair

    for row in rows:
        name = row["backend"]
        if name.startswith("fastest path"):
            row["precision"] = row["model_gflops_per_s"] = row["fraction_of_peak"] = None
            continue
        precision = backend_precision(name, dtype)
        rate = row["pairs_per_s"] * flops_per_pair(configs[row["model"]], row["mean_tokens"]) / 1e9
        peak = gemm.get(precision)
        row["precision"] = precision
        row["model_gflops_per_s"] = rate
        row["fraction_of_peak"] = rate / peak if peak else None
    return rows


def default_backends(model_path: str | os.PathLike[str]) -> list[str]:
    """The backends that can run ``model_path``.

    An LLM reranker runs on ``causal-lm`` only; a cross-encoder on the two references and every
    other local backend.
    """
    from rerank_core.registry import detect_backend

    if detect_backend(os.fspath(model_path)) == "causal-lm":
        return ["causal-lm"]
    return [name for name in BACKENDS if name != "causal-lm"]


def bundled_models() -> list[Path]:
    """The model folders shipped inside the package, the default model first."""
    from rerank_core.cross_encoder import default_model_path

    default = default_model_path()
    others = sorted(
        p for p in default.parent.iterdir() if p != default and (p / "config.json").is_file()
    )
    return [default, *others]


def _layers(path: str) -> int:
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        return int(config.get("num_hidden_layers") or config.get("n_layers") or 1_000)
    except (OSError, ValueError):
        return 1_000


def _max_length(tokenizer: Any, config: Any) -> int:
    limits = [int(tokenizer.model_max_length)]
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limits.append(int(positions))
    sane = [n for n in limits if 0 < n < 100_000]
    return min(sane) if sane else 512


def run_bench(
    model_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    backends: Sequence[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    candidates: Sequence[int] = DEFAULT_CANDIDATES,
    queries: int = 10,
    warmup: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int | None = None,
    max_length: int | None = None,
    threads: int | None = None,
    isolate: bool = True,
    peaks: bool = True,
    fastest: FastestPath | None = None,
    command: str = "",
) -> BenchReport:
    """Time every backend on the same models, queries and candidates.

    Args:
        model_path: Cross-encoder folder or hub id, or a list of them (each model is timed
            with every backend; a second bundled model is one more entry).
        backends: Names from :data:`BACKENDS`; ``None``: :func:`default_backends` of the
            first model.
        data: A rerank file (DL19's ``bm25_top100.jsonl``) for real passages; ``None`` skips.
        lengths: Synthetic pair lengths in tokens; empty for none.
        candidates: Candidates per query to time.
        queries: Timed queries per input set and candidate count.
        warmup: Untimed queries run first.
        device: Torch device for every backend.
        dtype: ``float32``, ``float16`` or ``bfloat16`` for every backend.
        batch_size: Batch size of rag-rerank's scorers; ``None`` keeps each backend's default
            (sentence-transformers runs 32, as its integrations do).
        max_length: Token window; ``None`` uses each model's own limit.
        threads: Threads of each backend's runtime (torch, ONNX Runtime); ``None`` keeps each
            runtime's default (one per physical core).
        isolate: Run each backend in a fresh process, started with the same Python: peak memory
            and the cold start (process start to the first score) are then the backend's own.
        peaks: Measure the machine's GEMM peak for each precision the backends use (about a
            second each) and report every row's fraction of it.
        fastest: Also time this configuration as a "fastest path" row (through ``rerank``, with
            its window and the model's calibration); its ``model`` ``None`` takes the listed
            model with the fewest layers.
        command: The command line, recorded in the report.

    Returns:
        A :class:`BenchReport`.

    Raises:
        ValueError: an unknown backend name, bad counts, or no input at all.
    """
    from transformers import AutoConfig, AutoTokenizer

    paths = _model_list(model_path)
    listed = list(paths)
    if not paths:
        raise ValueError("name at least one model")
    if backends is None:
        backends = default_backends(paths[0])
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; known: {sorted(BACKENDS)}")
    if not backends and fastest is None:
        raise ValueError("name at least one backend")
    if fastest is not None and fastest.backend not in _local_backends():
        raise ValueError(f"the fastest path needs a local backend, got {fastest.backend!r}")
    for label, values in (("lengths", lengths), ("candidates", candidates)):
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{label} must be positive ints, got {list(values)}")
    if not candidates:
        raise ValueError("name at least one candidate count")
    if data is None and not lengths:
        raise ValueError("no input: give a rerank file (data) or synthetic lengths")
    if queries < 1 or warmup < 0:
        raise ValueError("queries must be ≥ 1 and warmup ≥ 0")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    jobs: list[tuple[str, FastestPath | None]] = [(name, None) for name in backends]
    fastest_path = None
    if fastest is not None:
        fastest_path = _model_list(fastest.model)[0] if fastest.model else min(paths, key=_layers)
        if fastest_path not in paths:
            paths.append(fastest_path)
    info = machine_info(device)
    gemm: dict[str, float] = {}
    if peaks and backends:
        gemm = _measure_peaks({backend_precision(b, dtype) for b in backends}, device, threads)
        info["gemm_peak_gflops"] = {k: round(v, 1) for k, v in gemm.items()}
    most = max(candidates)
    results = []
    settings = []
    configs: dict[str, Any] = {}
    for path in paths:
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)
        window = max_length or _max_length(tokenizer, config)
        model = BenchModel(path, device, window, batch_size, dtype, threads)
        configs[model.name] = config
        settings.append({**asdict(model), "queries": queries, "warmup": warmup})
        workloads = []
        if data is not None:
            workloads.append(
                dl19_workload(
                    data, tokenizer, queries=queries + warmup, candidates=most, max_length=window
                )
            )
        for length in lengths:
            workloads.append(
                synthetic_workload(
                    tokenizer, length, queries=queries + warmup, candidates=most, max_length=window
                )
            )
        todo = list(jobs) if path in listed else []
        if fastest is not None and path == fastest_path:
            todo.append((fastest.backend, fastest))
        for name, spec in todo:
            logger.info("benchmarking %s on %s", spec.label() if spec else name, model.name)
            # The first ``warmup`` queries of each workload are run but not timed.
            args = (name, model, workloads, list(candidates), warmup, spec)
            results.append(_run_isolated(*args) if isolate else _measure_backend(*args))
    return BenchReport(
        command=command,
        model={**settings[0], "isolated": isolate},
        machine=info,
        backends=[{k: v for k, v in b.items() if k != "rows"} for b in results],
        rows=_add_peak_fraction(_compare(results), gemm, configs, dtype),
        models=settings,
        fastest=None if fastest is None else {**asdict(fastest), "model": fastest_path},
    )


def _model_list(
    model_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[str]:
    """The models as folders or hub ids; a bundled reranker's name becomes its folder."""
    from rerank_core.cross_encoder import bundled_model_path

    items = [model_path] if isinstance(model_path, str | os.PathLike) else list(model_path)
    return [os.fspath(bundled_model_path(p) or p) for p in items]


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _summary_tables(report: BenchReport) -> list[str]:
    """Per backend: cold start and memory; per candidate count on DL19: p50 / p95."""
    lines = [
        "Each backend in its own process: cold start = process start to the first score "
        "returned (interpreter, imports, model load and one query with the fewest candidates); "
        "peak RSS over the whole run, and after that first score.",
        "",
        "| model | backend | cold start s | load s | peak RSS MB | RSS after first score MB "
        "| torch loaded |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for b in report.backends:
        lines.append(
            f"| {b['model']} | {b['backend']} | {_fmt(b.get('cold_start_s'), '.2f')} "
            f"| {b['load_s']:.2f} | {_fmt(b['peak_rss_mb'], '.0f')} "
            f"| {_fmt(b.get('rss_after_first_score_mb'), '.0f')} "
            f"| {'yes' if b.get('torch_loaded') else 'no'} |"
        )
    workload = "dl19" if any(r["workload"] == "dl19" for r in report.rows) else None
    if workload is None:
        return lines
    counts = sorted({r["candidates"] for r in report.rows if r["workload"] == workload})
    lines += [
        "",
        "Rerank latency per query on DL19 BM25 candidates, p50 / p95 ms:",
        "",
        "| model | backend | " + " | ".join(f"{n} candidates" for n in counts) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in counts) + " |",
    ]
    cells: dict[tuple[str, str], dict[int, str]] = {}
    for r in report.rows:
        if r["workload"] == workload:
            cell = f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f}"
            cells.setdefault((r["model"], r["backend"]), {})[r["candidates"]] = cell
    order = {b["backend"]: i for i, b in enumerate(report.backends)}
    for (model, backend), by_n in sorted(
        cells.items(),
        key=lambda kv: (kv[0][1].startswith("fastest"), kv[0][0], order.get(kv[0][1], 0)),
    ):
        lines.append(
            f"| {model} | {backend} | " + " | ".join(by_n.get(n, "n/a") for n in counts) + " |"
        )
    return lines


def bench_to_markdown(report: BenchReport) -> str:
    """The benchmark as Markdown tables with the machine and the command that produced it."""
    m = report.machine
    v = m["versions"]
    threads = sorted({b["torch_threads"] for b in report.backends if b.get("torch_threads")})
    models = report.models or [report.model]
    lines = [
        f"Command: `{report.command}`" if report.command else "",
        "",
        f"Machine: {m['cpu']}, {m['physical_cores']} cores / {m['logical_cores']} threads, "
        f"{m['memory_gb']} GB, device {m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}; "
        f"CPU flags {', '.join(m.get('cpu_flags', [])) or 'n/a'} (int8 kernel "
        f"{m.get('int8_kernel', 'n/a')}); torch threads {', '.join(map(str, threads)) or 'n/a'}; "
        f"load average at start {m['load_average']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "Models: "
        + "; ".join(f"`{s['path']}` ({s['dtype']}, max_length {s['max_length']})" for s in models)
        + f"; {report.model['queries']} timed queries per row; batch size "
        + (f"{models[0]['batch_size']}" if models[0].get("batch_size") else "each backend's own")
        + ".",
        "",
        *_summary_tables(report),
        "",
        "| model | input | tokens/pair | candidates | backend | pairs/s | × ST | × loop | p50 ms "
        "| p95 ms | % of peak | peak RSS MB | max Δscore vs ST |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    loop = {
        (r["model"], r["workload"], r["candidates"]): r
        for r in report.rows
        if r["backend"] == "loop"
    }
    for r in report.rows:
        ratio = f"{r['vs_st']:.2f}" if r["vs_st"] is not None else "n/a"
        diff = f"{r['max_abs_diff_vs_st']:.1e}" if r["max_abs_diff_vs_st"] is not None else "n/a"
        rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "n/a"
        base = loop.get((r["model"], r["workload"], r["candidates"]))
        vs_loop = f"{r['pairs_per_s'] / base['pairs_per_s']:.2f}" if base else "n/a"
        share = r.get("fraction_of_peak")
        peak = f"{100 * share:.0f} % {r['precision']}" if share is not None else "n/a"
        lines.append(
            f"| {r['model']} | {r['workload']} | {r['mean_tokens']:.0f} | {r['candidates']} "
            f"| {r['backend']} | {r['pairs_per_s']:.1f} | {ratio} | {vs_loop} | {r['p50_ms']:.1f} "
            f"| {r['p95_ms']:.1f} | {peak} | {rss} | {diff} |"
        )
    if m.get("gemm_peak_gflops"):
        lines += [
            "",
            "GEMM peak measured in this run (2048² products, GFLOP/s; GOP/s for int8): "
            + ", ".join(f"{k} {v}" for k, v in m["gemm_peak_gflops"].items())
            + ". % of peak = pairs/s × the model's FLOPs per pair at that length ÷ the peak of "
            "the precision the backend multiplies in.",
        ]
    if report.fastest:
        f = report.fastest
        lines += [
            "",
            f"Fastest path: `{f['model']}` on `{f['backend']}`, rerank window "
            f"{f['rerank_window']} (candidates beyond it keep their first-stage order), timed "
            "through `rerank` with the model's calibration.",
        ]
    return "\n".join(lines).lstrip("\n") + "\n"


def save_bench(
    report: BenchReport, out_dir: str | os.PathLike[str], stem: str = "bench"
) -> dict[str, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(bench_to_markdown(report), encoding="utf-8")
    return paths
