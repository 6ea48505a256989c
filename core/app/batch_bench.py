"""Benchmark of ``rag-rerank batch``: throughput against the in-process scorer, and memory.

Two measurements on one local Ray:

1. **Throughput**: the same synthetic rerank file (``compare_pairs`` pairs) scored by the plain
   in-process scorer (``score_pairs`` per query, ``threads`` torch threads), then by the batch job
   with 1 and with 2 actors of ``threads`` threads each. The ratios come from this one run, on a
   warm page cache; Ray start-up is excluded, actor start-up (loading the model) is included.
2. **Memory**: a ``pairs``-pair synthetic input (1,000,000 by default, generated on disk, never
   held in memory) through the batch job with ``actors`` actors. The resident memory (RSS) of
   the driver and of each scoring actor is sampled every 0.2 s; the report gives the peaks and
   the pairs/s of that run.

Example:
    >>> from rerank_core.app.batch_bench import run_batch_bench
    >>> report = run_batch_bench(model="tiny-model", pairs=1_000_000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["batch_bench_to_markdown", "run_batch_bench", "write_synthetic_input"]

_WORDS = (
    "the of and to in is was for on that with as by at from his an were are which this be has "
    "river bank loan money water fish bridge city rate interest account flood boat stone history "
    "market paper energy solar wind power grid price forest tree climate rain school student "
    "music film team game season player league election party court law police health hospital "
    "disease patient drug virus cell protein gene blood heart brain species animal plant bird"
).split()


def write_synthetic_input(
    path: str | os.PathLike[str], pairs: int, candidates: int = 100, words: int = 40, seed: int = 0
) -> Path:
    """Write a rerank file of ``pairs`` pairs: ``pairs // candidates`` queries, streamed to disk.

    Passages have ``words`` random words (about ``1.3 * words`` tokens), queries 4-8 words.
    """
    rng = random.Random(seed)
    path = Path(path)
    queries = max(1, pairs // candidates)
    with path.open("w", encoding="utf-8") as fh:
        left = pairs
        for q in range(queries):
            n = candidates if q < queries - 1 else left
            left -= n
            row = {
                "qid": f"q{q}",
                "query": " ".join(rng.choices(_WORDS, k=rng.randint(4, 8))),
                "candidates": [
                    {"docid": f"d{q}-{j}", "text": " ".join(rng.choices(_WORDS, k=words))}
                    for j in range(n)
                ],
            }
            fh.write(json.dumps(row) + "\n")
    return path


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


class _MemorySampler:
    """Samples the RSS of this process and of every live scoring actor until stopped."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.driver_peak = 0
        self.actor_peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _actor_pids(self) -> list[int]:
        from ray._private import state  # the GCS actor table; works without the dashboard

        return [
            int(a["Pid"])
            for a in state.actors().values()
            if "BatchScorer" in a["ActorClassName"] and a["State"] == "ALIVE" and a.get("Pid")
        ]

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        pids: list[int] = []
        last_lookup = 0.0
        while not self._stop.is_set():
            self.driver_peak = max(self.driver_peak, me.memory_info().rss)
            now = time.monotonic()
            if now - last_lookup > 1.0:
                try:
                    pids = self._actor_pids()
                except Exception:  # the table is best effort while actors come and go
                    logger.debug("actor table lookup failed", exc_info=True)
                last_lookup = now
            for pid in pids:
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
                self.actor_peaks[pid] = max(self.actor_peaks.get(pid, 0), rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def _local_ray(cpus: int) -> Iterator[Any]:
    from rerank_core.app.batch import require_ray

    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, cpus),
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _in_process(model: str, backend: str, options: dict[str, Any], path: Path) -> dict[str, Any]:
    from rerank_core.app.data import iter_jsonl
    from rerank_core.registry import load_reranker

    t0 = time.perf_counter()
    scorer = load_reranker(model, backend=backend, **options)
    load_s = time.perf_counter() - t0
    n = 0
    t0 = time.perf_counter()
    for row in iter_jsonl(path):
        texts = [c["text"] for c in row["candidates"]]
        scorer.score(row["query"], texts)
        n += len(texts)
    seconds = time.perf_counter() - t0
    return {
        "runner": "in-process",
        "pairs": n,
        "seconds": round(seconds, 2),
        "load_seconds": round(load_s, 2),
        "pairs_per_s": round(n / seconds, 1),
    }


def _batch_run(
    model: str,
    backend: str,
    options: dict[str, Any],
    src: Path,
    out: Path,
    actors: int,
    threads: int,
    sample_memory: bool = False,
) -> dict[str, Any]:
    from rerank_core.app.batch import rerank_dataset

    sampler = _MemorySampler() if sample_memory else None
    t0 = time.perf_counter()
    with sampler if sampler is not None else contextlib.nullcontext():
        summary = rerank_dataset(
            src,
            out,
            model=model,
            backend=backend,
            actors=actors,
            threads_per_actor=threads,
            options=options,
            overwrite=True,
        )
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {
        "runner": f"batch, {actors} actor{'s' if actors > 1 else ''}",
        "actors": actors,
        "pairs": summary.pairs,
        "seconds": round(wall, 2),
        "pairs_per_s": round(summary.pairs / wall, 1),
        "startup_seconds": round(summary.first_rows_seconds, 2),
        "steady_pairs_per_s": round(summary.steady_pairs_per_second, 1),
        "output_mb": round(out.stat().st_size / 2**20, 1),
    }
    if sampler is not None:
        row["driver_peak_rss_mb"] = round(sampler.driver_peak / 2**20, 1)
        row["actor_peak_rss_mb"] = sorted(
            (round(v / 2**20, 1) for v in sampler.actor_peaks.values()), reverse=True
        )
    return row


def run_batch_bench(
    model: str,
    *,
    backend: str = "torch",
    pairs: int = 1_000_000,
    compare_pairs: int = 20_000,
    candidates: int = 100,
    words: int = 40,
    actors: int = 2,
    threads: int = 1,
    batch_size: int = 32,
    workdir: str | os.PathLike[str],
    command: str = "",
) -> dict[str, Any]:
    """Run both measurements (see the module docstring) and return the report as a dict.

    Args:
        model: Model folder or id every runner loads.
        backend: Registry backend of every runner.
        pairs: Pairs of the memory run; 0 skips it.
        compare_pairs: Pairs of the throughput comparison; 0 skips it.
        candidates: Candidates per query of the synthetic inputs.
        words: Words per synthetic passage.
        actors: Actors of the memory run.
        threads: Threads of the in-process scorer and of each actor.
        batch_size: Pairs per forward pass.
        workdir: Folder for the synthetic inputs and outputs (needs about 300 MB per million
            pairs).
        command: The command line, recorded in the report.
    """
    from rerank_core.app.bench import machine_info

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    options = {"batch_size": batch_size, "num_threads": threads}
    report: dict[str, Any] = {
        "command": command,
        "machine": {**machine_info(), "cpu_flags": _cpu_flags()},
        "model": model,
        "backend": backend,
        "threads": threads,
        "candidates_per_query": candidates,
        "words_per_passage": words,
        "throughput": [],
        "memory": None,
    }
    with _local_ray(max(actors, 2) * threads + 1) as ray:
        report["ray_version"] = ray.__version__
        if compare_pairs:
            src = write_synthetic_input(work / "compare.jsonl", compare_pairs, candidates, words)
            rows = [_in_process(model, backend, options, src)]
            for n in (1, 2):
                rows.append(
                    _batch_run(model, backend, options, src, work / "cmp.parquet", n, threads)
                )
            base = rows[0]["pairs_per_s"]
            rows[0]["steady_pairs_per_s"] = base
            for r in rows:
                r["vs_in_process"] = round(r["pairs_per_s"] / base, 3)
                r["steady_vs_in_process"] = round(r["steady_pairs_per_s"] / base, 3)
            report["throughput"] = rows
        if pairs:
            t0 = time.perf_counter()
            src = write_synthetic_input(work / "big.jsonl", pairs, candidates, words, seed=1)
            report["input_mb"] = round(src.stat().st_size / 2**20, 1)
            report["generate_seconds"] = round(time.perf_counter() - t0, 1)
            report["memory"] = _batch_run(
                model, backend, options, src, work / "big.parquet", actors, threads, True
            )
    return report


def batch_bench_to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    m = report["machine"]
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['memory_gb']} GB, flags "
        f"{' '.join(m['cpu_flags']) or 'n/a'}; load average at start {m['load_average']}; "
        f"Ray {report.get('ray_version')}, torch {m['versions'].get('torch')}.",
        "",
        f"Model `{report['model']}`, backend {report['backend']}, {report['threads']} thread(s) "
        f"per scorer; synthetic rerank file, {report['candidates_per_query']} candidates per "
        f"query, {report['words_per_passage']} words per passage.",
    ]
    if report["throughput"]:
        lines += [
            "",
            "| runner | pairs | seconds | pairs/s | × in-process | start-up s | steady pairs/s "
            "| steady × in-process |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in report["throughput"]:
            lines.append(
                f"| {r['runner']} | {r['pairs']} | {r['seconds']} | {r['pairs_per_s']} | "
                f"{r['vs_in_process']:.2f} | {r.get('startup_seconds', 0)} | "
                f"{r['steady_pairs_per_s']} | {r['steady_vs_in_process']:.2f} |"
            )
        lines += [
            "",
            "Batch seconds include starting the actors and loading the model in each (start-up "
            "s: until the first scored block reached the driver); steady pairs/s leaves that "
            "out. The in-process row excludes its one model load.",
        ]
    mem = report.get("memory")
    if mem:
        lines += [
            "",
            f"Memory run: {mem['pairs']} pairs ({report['input_mb']} MB of JSON lines) with "
            f"{mem['actors']} actors in {mem['seconds']} s ({mem['pairs_per_s']} pairs/s, "
            f"{mem['steady_pairs_per_s']} after start-up); "
            f"peak RSS of the driver {mem['driver_peak_rss_mb']} MB, of each scoring actor "
            f"{', '.join(str(x) for x in mem['actor_peak_rss_mb'])} MB (sampled every 0.2 s); "
            f"output {mem['output_mb']} MB of Parquet.",
        ]
    return "\n".join(lines) + "\n"
