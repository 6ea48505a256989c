"""Which request batching to use on Ray Serve: the app's dynamic batcher or ``@serve.batch``.

:func:`run_ray_serve_bench` deploys one replica at a time on one local Ray, in three modes, and
drives the same closed-loop load at it through Ray Serve's proxy (the load test's clients):

- ``batcher``: the app's dynamic batcher (token budget, one model call for every request
  waiting), as ``rag-rerank serve --ray`` deploys it;
- ``serve-batch``: the app with its batcher off and its scoring call replaced by a
  ``@serve.batch`` method (Ray Serve's batching: up to ``max_batch_size`` requests, waiting up to
  ``batch_wait_timeout_s``), scored in one worker thread as the batcher does;
- ``none``: no batching, one model call per request.

Each mode reports requests/s, documents/s and latency percentiles. Requires the ``ray-serve``
extra: ``pip install 'rag-rerank[ray-serve]'``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rerank_core.app.ray_serve import APP_NAME, RerankReplica, require_serve

serve = require_serve()

logger = logging.getLogger(__name__)

__all__ = ["MODES", "ServeBatchReplica", "bench_to_markdown", "run_ray_serve_bench"]

MODES = ("batcher", "serve-batch", "none")


class ServeBatchReplica(RerankReplica):
    """The rerank app with Ray Serve's ``@serve.batch`` doing the request batching.

    Args:
        model, backend, options, settings: As for :class:`RerankReplica` (``settings.batching``
            should be off: the app's queue then passes each request straight through).
        max_batch_size: Most requests per model call.
        batch_wait_timeout_s: How long a batch waits to fill.
    """

    def __init__(
        self,
        model: str | None,
        backend: str,
        options: Mapping[str, Any],
        settings: Any,
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ) -> None:
        super().__init__(model, backend, options, settings)
        self._scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-batch")
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> Any:
        from rerank_core.app.server import _Draining

        app = super().__serve_build_asgi_app__()
        batcher = app.state.rerank_control.batcher

        async def score(pairs: list[Any], max_doc_tokens: int | None = None) -> Any:
            if batcher.draining:
                raise _Draining()
            return await self._batched(pairs)

        batcher.score = score  # the endpoints call batcher.score for every request
        return app

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _batched(self, requests: list[list[Any]]) -> list[tuple[list[float], list[int]]]:
        pairs = [p for r in requests for p in r]
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(self._scoring, self.reranker.score_pairs, pairs)
        out, start = [], 0
        for r in requests:
            out.append((scores[start : start + len(r)], [1] * len(r)))
            start += len(r)
        return out


def _deploy(config: Any, mode: str, max_batch_size: int, wait_s: float) -> None:
    from rerank_core.app.ray_serve import build_application
    from rerank_core.app.server import ServerSettings

    settings = dataclasses.replace(
        config.settings or ServerSettings(api_key=None),
        batching=mode == "batcher",
        max_wait_ms=wait_s * 1000,
    )
    config = dataclasses.replace(config, settings=settings)
    if mode == "serve-batch":
        ingress = serve.ingress()(ServeBatchReplica)
        deployment = serve.deployment(name="ServeBatchReplica")(ingress)
        app = deployment.options(**config.deployment_options()).bind(
            config.model, config.backend, dict(config.options), settings, max_batch_size, wait_s
        )
    else:
        app = build_application(config)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def run_ray_serve_bench(
    model: str | None,
    *,
    backend: str = "torch",
    threads: int = 1,
    clients: Sequence[int] = (16,),
    documents: int = 20,
    duration_s: float = 20.0,
    warmup_s: float = 3.0,
    modes: Sequence[str] = MODES,
    max_batch_size: int = 16,
    batch_wait_s: float = 0.002,
    max_ongoing_requests: int = 64,
    port: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure each batching mode on one replica; return the report (see the module docstring)."""
    import ray

    from rerank_core.app.loadtest import LoadTestConfig, _drive, _free_port, _load_requests
    from rerank_core.app.ray_serve import RayServeConfig, connect, stop

    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {list(MODES)}")
    say = progress or (lambda _: None)
    cfg = LoadTestConfig(model=model, documents=documents, duration_s=duration_s)
    bodies, source = _load_requests(cfg)
    config = RayServeConfig(
        model=model,
        backend=backend,
        options={"num_threads": threads, "device": "cpu"},
        replicas=1,
        max_ongoing_requests=max_ongoing_requests,
        replica_cpus=float(threads),
        port=port or _free_port(),
    )
    url = f"http://127.0.0.1:{config.port}"
    started = connect(config)
    serve.start(http_options={"host": "127.0.0.1", "port": config.port})
    runs: list[dict[str, Any]] = []
    try:
        for mode in modes:
            t0 = time.perf_counter()
            _deploy(config, mode, max_batch_size, batch_wait_s)
            say(f"{mode}: replica ready in {time.perf_counter() - t0:.1f} s")
            for n in clients:
                if warmup_s > 0:
                    asyncio.run(_drive(url, bodies, n, warmup_s, timeout=120))
                samples, elapsed = asyncio.run(_drive(url, bodies, n, duration_s, timeout=120))
                ok = sorted(s.latency for s in samples if s.status == 200)
                row = {
                    "mode": mode,
                    "clients": n,
                    "seconds": round(elapsed, 2),
                    "ok": len(ok),
                    "failed": len(samples) - len(ok),
                    "requests_per_s": round(len(ok) / elapsed, 2),
                    "docs_per_s": round(len(ok) * documents / elapsed, 1),
                    "p50_ms": round(ok[len(ok) // 2] * 1000, 1) if ok else None,
                    "p99_ms": round(ok[min(len(ok) - 1, int(len(ok) * 0.99))] * 1000, 1)
                    if ok
                    else None,
                }
                runs.append(row)
                say(json.dumps(row))
            serve.delete(APP_NAME, _blocking=True)
    finally:
        stop(local_ray=started, disconnect=started)
        del ray
    return {
        "model": model or "bundled",
        "backend": backend,
        "threads": threads,
        "documents": documents,
        "duration_s": duration_s,
        "max_batch_size": max_batch_size,
        "batch_wait_s": batch_wait_s,
        "max_ongoing_requests": max_ongoing_requests,
        "requests": source,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
    }


def bench_to_markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table."""
    lines = [
        f"# Ray Serve request batching: {report['model']} ({report['backend']}, "
        f"{report['threads']} thread(s), one replica)",
        "",
        f"{report['documents']} documents per request, {report['duration_s']:g} s per run; "
        f"@serve.batch max_batch_size={report['max_batch_size']}, wait "
        f"{report['batch_wait_s'] * 1000:g} ms; {report['cores']} cores, load average "
        f"{report['load_average']} at the end; requests: {report['requests']}.",
        "",
        f"Command: `{report.get('command', 'rag-rerank bench-ray-serve')}`",
        "",
        "| mode | clients | requests/s | docs/s | p50 ms | p99 ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['mode']} | {r['clients']} | {r['requests_per_s']} | {r['docs_per_s']} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['failed']} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.json`` and ``name.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / f"{name}.json", out / f"{name}.md"
    j.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    m.write_text(bench_to_markdown(report), encoding="utf-8")
    return j, m
