"""A bounded, self-stopping load test of the rerank server on 127.0.0.1.

:func:`run_load_test` starts ``rag-rerank serve`` in a subprocess (once per backend and mode:
dynamic batching on, then off), drives N concurrent async clients, each sending requests of
``documents`` documents back to back for a fixed time, and measures throughput, latency
percentiles, failures, the mean number of requests per model call (from ``/metrics``) and the
server's peak memory. A last run starts a server with a tiny queue and sends more clients than it
can serve, to check that past capacity the server answers only 200 or 503 (fast, with
``Retry-After``), stays up, and keeps its memory bounded. :func:`write_report` writes
``server_bench.json`` and ``server_bench.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["LoadTestConfig", "run_load_test", "write_report"]

_WORDS = (
    "retrieval reranker model query passage relevance score vector search index document answer "
    "question context language neural network training data token batch latency throughput "
    "检索 重排序 模型 查询 段落 相关性 向量 文档 问题 答案"
).split()


@dataclass
class LoadTestConfig:
    """What to run. See ``rag-rerank bench-server --help`` for the meaning of each field."""

    model: str | None = None
    backends: list[str] = field(default_factory=lambda: ["torch"])
    concurrency: list[int] = field(default_factory=lambda: [8, 16, 32])
    documents: int = 50
    duration_s: float = 20.0
    warmup_s: float = 2.0
    modes: list[str] = field(default_factory=lambda: ["batching", "no-batching"])
    overload_clients: int = 64
    overload_queue: int = 4
    device: str | None = None
    batch_size: int = 32
    threads: int | None = None
    port: int = 0
    data: Path | None = None
    max_queue: int = 256
    request_timeout_s: float = 60.0
    startup_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        from rerank_core.registry import BACKENDS

        local = [name for name, spec in BACKENDS.items() if spec.local]
        if not self.backends or any(b not in local for b in self.backends):
            raise ValueError(f"backends must be among {local}, got {self.backends!r}")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ValueError(f"concurrency must be positive ints, got {self.concurrency!r}")
        bad = [m for m in self.modes if m not in ("batching", "no-batching")]
        if bad or not self.modes:
            raise ValueError(f"modes must be 'batching' and/or 'no-batching', got {self.modes!r}")
        if self.documents < 1 or self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError("documents must be >= 1, duration_s > 0 and warmup_s >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {self.threads!r}")


# ------------------------------------------------------------------------------- workload


def _load_requests(cfg: LoadTestConfig) -> tuple[list[bytes], str]:
    """Request bodies for ``/v1/rerank``: real TREC DL19 queries and passages when available."""
    from rerank_core.app.data import data_root, iter_jsonl

    path = cfg.data
    if path is None:
        root = data_root()
        candidate = root / "trec-dl19" / "bm25_top100.jsonl" if root else None
        path = candidate if candidate is not None and candidate.is_file() else None
    bodies: list[bytes] = []
    if path is not None:
        for row in iter_jsonl(path):
            texts = [c["text"] for c in row["candidates"]]
            for start in range(0, max(1, len(texts) - cfg.documents + 1), cfg.documents):
                docs = texts[start : start + cfg.documents]
                while len(docs) < cfg.documents:  # short candidate lists: repeat, keep the size
                    docs += texts[: cfg.documents - len(docs)]
                bodies.append(_body(row["query"], docs))
        return bodies, f"TREC DL19 BM25 top-100 passages ({path})"
    rng = random.Random(0)
    for _ in range(64):
        query = " ".join(rng.choices(_WORDS, k=rng.randint(4, 10)))
        docs = [" ".join(rng.choices(_WORDS, k=rng.randint(20, 90))) for _ in range(cfg.documents)]
        bodies.append(_body(query, docs))
    return bodies, "synthetic English/Chinese word salad (shared data not found)"


def _body(query: str, docs: list[str]) -> bytes:
    return json.dumps({"query": query, "documents": docs}, ensure_ascii=False).encode("utf-8")


# ------------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ServerProcess:
    """``rag-rerank serve`` in a subprocess, stopped with SIGTERM (graceful) on exit."""

    def __init__(
        self, cfg: LoadTestConfig, *, backend: str, batching: bool, max_queue: int
    ) -> None:
        self.port = cfg.port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "rerank_core.app.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--backend", backend]
        cmd += ["--port", str(self.port), "--max-queue", str(max_queue)]
        cmd += ["--batch-size", str(cfg.batch_size)]
        cmd += ["--batching" if batching else "--no-batching"]
        if cfg.model:
            cmd += ["--model", cfg.model]
        if cfg.device:
            cmd += ["--device", cfg.device]
        if cfg.threads:
            cmd += ["--threads", str(cfg.threads)]
        env = {**os.environ, "RAG_RERANK_API_KEY": ""}
        # A file, not a pipe: nobody reads the server's log while it runs, and a full pipe
        # would block the server on its next log line.
        self.log = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log, text=True
        )
        self.timeout = cfg.startup_timeout_s

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's stderr."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, self.log_tail()
                raise RuntimeError(f"server exited with {code}: {tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"server did not become ready in {self.timeout:.0f}s: {tail}")

    def rss_mb(self) -> float:
        import psutil

        try:
            return float(psutil.Process(self.proc.pid).memory_info().rss) / 2**20
        except psutil.Error:
            return float("nan")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> _ServerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _batch_counts(url: str) -> tuple[float, float]:
    """(sum, count) of the server's requests-per-batch histogram."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "rag_rerank_batch_requests":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total = sample.value
                elif sample.name.endswith("_count"):
                    count = sample.value
    return total, count


# ------------------------------------------------------------------------------- clients


@dataclass
class _Sample:
    start: float
    latency: float
    status: int  # 0: transport error or timeout


async def _drive(
    url: str,
    bodies: list[bytes],
    clients: int,
    seconds: float,
    *,
    timeout: float,
    pause_on_503: float = 0.0,
) -> tuple[list[_Sample], float]:
    """``clients`` loops posting back to back for ``seconds``; returns samples and elapsed time."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": "application/json"}
    samples: list[_Sample] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        t0 = time.perf_counter()
        stop_at = t0 + seconds

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() < stop_at:
                body = bodies[i % len(bodies)]
                i += clients
                start = time.perf_counter()
                try:
                    r = await http.post("/v1/rerank", content=body, headers=headers)
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                samples.append(_Sample(start, time.perf_counter() - start, status))
                if status == 503 and pause_on_503:
                    await asyncio.sleep(pause_on_503)

        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - t0
    return samples, elapsed


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[pos]


def _measure(
    server: _ServerProcess, bodies: list[bytes], clients: int, cfg: LoadTestConfig, **kw: Any
) -> dict[str, Any]:
    if cfg.warmup_s > 0:
        asyncio.run(
            _drive(server.url, bodies, clients, cfg.warmup_s, timeout=cfg.request_timeout_s, **kw)
        )
    batch_sum0, batch_n0 = _batch_counts(server.url)
    peak = [server.rss_mb()]
    done = [False]

    async def watch_memory() -> None:
        while not done[0]:
            peak.append(server.rss_mb())
            await asyncio.sleep(0.25)

    async def run() -> tuple[list[_Sample], float]:
        watcher = asyncio.create_task(watch_memory())
        try:
            return await _drive(
                server.url, bodies, clients, cfg.duration_s, timeout=cfg.request_timeout_s, **kw
            )
        finally:
            done[0] = True
            await watcher

    samples, elapsed = asyncio.run(run())
    batch_sum1, batch_n1 = _batch_counts(server.url)
    ok = [s.latency for s in samples if s.status == 200]
    statuses = Counter(s.status for s in samples)
    rejected = [s.latency for s in samples if s.status == 503]
    batches = batch_n1 - batch_n0
    return {
        "clients": clients,
        "seconds": round(elapsed, 3),
        "requests": len(samples),
        "ok": len(ok),
        "failed": len(samples) - len(ok),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "throughput_rps": round(len(ok) / elapsed, 2),
        "docs_per_s": round(len(ok) * cfg.documents / elapsed, 1),
        "p50_ms": round(_percentile(ok, 50) * 1000, 1),
        "p99_ms": round(_percentile(ok, 99) * 1000, 1),
        "p99_503_ms": round(_percentile(rejected, 99) * 1000, 1) if rejected else None,
        "mean_requests_per_batch": round((batch_sum1 - batch_sum0) / batches, 2)
        if batches
        else None,
        "peak_rss_mb": round(max(p for p in peak if p == p), 1),
    }


# ------------------------------------------------------------------------------- driver


def run_load_test(
    cfg: LoadTestConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every mode and concurrency level, then the past-capacity run; return the report.

    Every run stops itself after ``warmup_s + duration_s``; servers are stopped with SIGTERM.
    """
    say = progress or logger.info
    bodies, workload = _load_requests(cfg)
    runs: list[dict[str, Any]] = []
    for backend in cfg.backends:
        for mode in cfg.modes:
            with _ServerProcess(
                cfg, backend=backend, batching=mode == "batching", max_queue=cfg.max_queue
            ) as server:
                for clients in cfg.concurrency:
                    say(f"{backend}, {mode}: {clients} clients for {cfg.duration_s:g}s ...")
                    measured = _measure(server, bodies, clients, cfg)
                    result = {"backend": backend, "mode": mode, **measured}
                    say(
                        f"  {result['throughput_rps']} req/s, p50 {result['p50_ms']} ms, "
                        f"p99 {result['p99_ms']} ms, failed {result['failed']}"
                    )
                    runs.append(result)
    overload: dict[str, Any] | None = None
    if cfg.overload_clients > 0:
        say(
            f"past capacity: {cfg.overload_clients} clients, queue {cfg.overload_queue}, "
            f"{cfg.duration_s:g}s ..."
        )
        backend = cfg.backends[0]
        with _ServerProcess(
            cfg, backend=backend, batching=True, max_queue=cfg.overload_queue
        ) as server:
            overload = _measure(server, bodies, cfg.overload_clients, cfg, pause_on_503=0.05)
            import httpx

            overload["healthy_after"] = httpx.get(f"{server.url}/health", timeout=10).status_code
            overload["max_queue"] = cfg.overload_queue
            overload["backend"] = backend
        code = server.proc.returncode
        overload["exit_code"] = code
        # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean stop too.
        overload["clean_exit"] = code in (0, -signal.SIGTERM)
        say(f"  statuses {overload['statuses']}, peak RSS {overload['peak_rss_mb']} MB")
    speedup: dict[str, dict[str, float]] = {}
    for backend in cfg.backends:
        for clients in cfg.concurrency:
            mine = [r for r in runs if r["backend"] == backend and r["clients"] == clients]
            on = [r for r in mine if r["mode"] == "batching"]
            off = [r for r in mine if r["mode"] == "no-batching"]
            if on and off and off[0]["throughput_rps"]:
                ratio = round(on[0]["throughput_rps"] / off[0]["throughput_rps"], 2)
                speedup.setdefault(backend, {})[str(clients)] = ratio
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "workload": workload,
        "environment": _environment(cfg),
        "runs": runs,
        "batching_speedup": speedup,
        "overload": overload,
    }


def _environment(cfg: LoadTestConfig) -> dict[str, Any]:
    import torch

    from rerank_core.cross_encoder import pick_device

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "device": pick_device(cfg.device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "server_threads": cfg.threads,
        "model": cfg.model or "bundled default",
        "backends": list(cfg.backends),
    }


def write_report(report: dict[str, Any], output: Path) -> tuple[Path, Path]:
    """Write ``server_bench.json`` and ``server_bench.md`` into ``output``; return both paths."""
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / "server_bench.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    cfg, env = report["config"], report["environment"]
    threads = f"torch threads {env['server_threads']}, " if env.get("server_threads") else ""
    lines = [
        f"Load test of `rag-rerank serve` on 127.0.0.1: model {env['model']} "
        f"(backends {', '.join(env['backends'])}) on {env['device']}"
        f"{' (' + env['gpu'] + ')' if env.get('gpu') else ''}, {env['cpu_count']} CPUs, "
        f"{threads}"
        f"{cfg['documents']} documents per request, {cfg['duration_s']:g}s per run after "
        f"{cfg['warmup_s']:g}s warm-up; workload: {report['workload']}.",
        "",
        "| backend | clients | batching | req/s | docs/s | p50 ms | p99 ms | failed "
        "| requests/batch | peak RSS MB |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = {b: i for i, b in enumerate(env["backends"])}
    for r in sorted(report["runs"], key=lambda r: (order[r["backend"]], r["clients"], r["mode"])):
        lines.append(
            f"| {r['backend']} | {r['clients']} | {'on' if r['mode'] == 'batching' else 'off'} "
            f"| {r['throughput_rps']} | {r['docs_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
            f"| {r['failed']} | {r['mean_requests_per_batch']} | {r['peak_rss_mb']} |"
        )
    for backend, ratios in report["batching_speedup"].items():
        lines += [
            "",
            f"Throughput with batching / without ({backend}): "
            + ", ".join(f"{k} clients {v}x" for k, v in ratios.items())
            + ".",
        ]
    o = report.get("overload")
    if o:
        lines += [
            "",
            f"Past capacity ({o['backend']}, {o['clients']} clients, queue of {o['max_queue']}): "
            "statuses "
            f"{o['statuses']} over {o['requests']} requests, p99 of 503 answers "
            f"{o['p99_503_ms']} ms, peak server RSS {o['peak_rss_mb']} MB, /health after: "
            f"{o['healthy_after']}, graceful stop on SIGTERM: {'yes' if o['clean_exit'] else 'no'} "
            f"(exit code {o['exit_code']}).",
        ]
    md_path = output / "server_bench.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path
