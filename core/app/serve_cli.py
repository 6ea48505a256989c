"""``rag-rerank serve`` and ``rag-rerank bench-server``."""

from __future__ import annotations

import enum
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from rerank_core.registry import BACKENDS

# The choices of ``--backend`` are the registry's own list, so a new backend is servable at once.
if TYPE_CHECKING:
    BackendName = str
else:
    BackendName = enum.Enum("BackendName", {name: name for name in ("auto", *BACKENDS)}, type=str)


def _name(backend: object) -> str:
    return str(getattr(backend, "value", backend))


def register(app: typer.Typer) -> None:
    """Add the server commands to ``app``."""

    @app.command("serve")
    def serve_command(
        model: str = typer.Option(
            None, "--model", "-m", help="Hugging Face id or local folder (default: bundled model)."
        ),
        backend: BackendName = typer.Option(
            "auto",
            "--backend",
            "-b",
            help="How the model runs (onnx-int8 is the fastest on CPU); auto: causal-lm for LLM "
            "rerankers (Qwen3-Reranker, ...), torch otherwise.",
        ),
        host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 for all)."),
        port: int = typer.Option(8000, help="TCP port."),
        device: str = typer.Option(
            None, help="cuda, cuda:1, mps or cpu (default: best; torch backends)."
        ),
        dtype: str = typer.Option(
            None, help="float32, float16, bfloat16 (default: auto; torch backends)."
        ),
        batch_size: int = typer.Option(
            None, min=1, help="Pairs per forward pass (default: the backend's, 32 locally)."
        ),
        threads: int = typer.Option(
            None, min=1, help="CPU threads of the model (default: one per core)."
        ),
        provider: str = typer.Option(
            None, help="With --backend http: the remote API (cohere, jina, tei, generic, ...)."
        ),
        base_url: str = typer.Option(None, help="With --backend http: the remote API's URL."),
        max_length: int = typer.Option(None, help="Tokens per pair (default: the model's)."),
        raw_scores: bool = typer.Option(
            False, "--raw-scores", help="Return raw logits instead of probabilities in [0, 1]."
        ),
        model_name: str = typer.Option(
            None, help="Model name reported in responses (default: the model id or folder name)."
        ),
        batching: bool = typer.Option(
            True, "--batching/--no-batching", help="Score concurrent requests together."
        ),
        max_batch_tokens: int = typer.Option(32_768, help="Token budget of one dynamic batch."),
        max_wait_ms: float = typer.Option(2.0, help="Wait for more requests up to this long."),
        max_queue: int = typer.Option(256, help="Requests that may wait; beyond: 503."),
        max_documents: int = typer.Option(1000, help="Most documents per request."),
        max_document_chars: int = typer.Option(32_000, help="Most characters per document."),
        max_request_chars: int = typer.Option(2_000_000, help="Most characters per request."),
        max_body_bytes: int = typer.Option(8 * 1024 * 1024, help="Largest request body."),
        header_timeout: float = typer.Option(
            10.0, help="Seconds a client may take to send its headers (then 408)."
        ),
        body_timeout: float = typer.Option(
            60.0, help="Seconds a client may take to send its body (then 408)."
        ),
        exact_usage: bool = typer.Option(
            False, help="Count usage tokens with the tokenizer (slower) instead of estimating."
        ),
        api_key: str = typer.Option(
            None,
            envvar="RAG_RERANK_API_KEY",
            show_default=False,
            help="Require 'Authorization: Bearer KEY' on the rerank endpoints.",
        ),
        graceful_timeout: int = typer.Option(
            30, help="Seconds to let in-flight requests finish on shutdown."
        ),
        drain_delay: float = typer.Option(
            0.0,
            help="On shutdown, keep answering /health with 503 for at least this many seconds "
            "before closing the port (lets load balancers notice).",
        ),
        access_log: bool = typer.Option(False, help="Log every request (uvicorn access log)."),
        chunking: bool = typer.Option(
            False,
            "--chunking",
            help="Score a document longer than the model's window by its best window, as "
            "hosted rerank APIs do (default: truncate).",
        ),
        fusion: str = typer.Option(
            None,
            help="Default fusion with the first stage's order: none, rrf, "
            "'rrf:weight=0.4,k=60' or 'linear:weight=0.7,evidence=rank' (default: the model's "
            "fusion.json, which the bundled model ships). Requests may override it.",
        ),
        on_ray: bool = typer.Option(
            False,
            "--ray",
            help="Deploy on Ray Serve: each replica loads its own scorer and serves this same "
            "app (needs the ray-serve extra).",
        ),
        replicas: int = typer.Option(
            None, min=1, help="With --ray: a fixed number of replicas (default 1)."
        ),
        min_replicas: int = typer.Option(
            None, min=0, help="With --ray: autoscale, with at least this many replicas."
        ),
        max_replicas: int = typer.Option(
            None, min=1, help="With --ray: autoscale, with at most this many replicas."
        ),
        target_ongoing_requests: float = typer.Option(
            8.0,
            help="With --ray and autoscaling: requests ongoing per replica to aim at (more "
            "adds replicas, fewer removes them).",
        ),
        max_ongoing_requests: int = typer.Option(
            64, min=1, help="With --ray: most requests one replica takes at once."
        ),
        address: str = typer.Option(
            None,
            help="With --ray: Ray cluster to join ('auto', 'ray://head:10001'); default: a local "
            "Ray started for this server.",
        ),
    ) -> None:
        """Serve a reranker over HTTP (Cohere /v1 and /v2, Jina, SiliconFlow and TEI APIs).

        With ``--ray`` the same app runs on Ray Serve: ``--replicas N`` replicas, or autoscaling
        between ``--min-replicas`` and ``--max-replicas`` by requests ongoing per replica; each
        replica takes ``--threads`` CPU slots (default 1). On SIGTERM or Ctrl-C the replicas
        finish their ongoing requests (up to ``--graceful-timeout``) before they stop.
        """
        ray_only = {
            "--replicas": replicas,
            "--min-replicas": min_replicas,
            "--max-replicas": max_replicas,
            "--address": address,
        }
        if not on_ray and any(v is not None for v in ray_only.values()):
            given = [k for k, v in ray_only.items() if v is not None]
            raise typer.BadParameter(f"{', '.join(given)} need(s) --ray")
        if replicas is not None and (min_replicas is not None or max_replicas is not None):
            raise typer.BadParameter(
                "give either --replicas (a fixed number) or --min-replicas/--max-replicas "
                "(autoscaling), not both"
            )
        try:
            import uvicorn  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "rag-rerank serve needs uvicorn: pip install 'rag-rerank[server]'"
            ) from exc
        from rerank_core.app.server import ServerSettings, create_app, run_server

        try:
            settings = ServerSettings(
                model_name=model_name,
                max_documents=max_documents,
                max_document_chars=max_document_chars,
                max_request_chars=max_request_chars,
                max_body_bytes=max_body_bytes,
                batching=batching,
                max_batch_tokens=max_batch_tokens,
                max_wait_ms=max_wait_ms,
                max_queue=max_queue,
                exact_usage=exact_usage,
                header_timeout_s=header_timeout,
                body_timeout_s=body_timeout,
                drain_delay_s=drain_delay,
                api_key=api_key or None,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        # Only what was given: each backend keeps its own defaults, and one that does not take
        # an option says so instead of ignoring it.
        given = {
            "device": device,
            "dtype": dtype,
            "max_length": max_length,
            "num_threads": threads,
            "batch_size": batch_size,
            "normalize": False if raw_scores else None,
            "chunking": True if chunking else None,
            "provider": provider,
            "base_url": base_url,
            "fusion": fusion,
        }
        options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        if on_ray:
            from rerank_core.app.ray_serve import RayServeConfig

            if threads is None and _name(backend) != "http":
                # One thread per CPU slot the replica holds, so replicas do not oversubscribe.
                options["num_threads"] = 1
            autoscale = min_replicas is not None or max_replicas is not None
            low = min_replicas if min_replicas is not None else 1
            try:
                config = RayServeConfig(
                    model=model,
                    backend=_name(backend),
                    options=options,
                    settings=settings,
                    replicas=None if autoscale else (replicas or 1),
                    min_replicas=low,
                    max_replicas=max_replicas if max_replicas is not None else max(low, 1),
                    target_ongoing_requests=target_ongoing_requests,
                    max_ongoing_requests=max_ongoing_requests,
                    replica_cpus=float(threads or 1),
                    graceful_timeout_s=float(graceful_timeout),
                    host=host,
                    port=port,
                    address=address,
                )
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from exc
            _serve_on_ray(config, batching=batching)
            return
        reranker = load_backend(model, _name(backend), options)
        app_ = create_app(reranker, settings=settings)
        typer.echo(
            f"serving {app_.state.rerank_control.model_name} with the {_name(backend)} backend on "
            f"http://{host}:{port} (batching {'on' if batching else 'off'}, "
            f"auth {'on' if settings.api_key else 'off'}); docs at /docs"
        )
        run_server(
            app_,
            host=host,
            port=port,
            graceful_timeout_s=graceful_timeout,
            access_log=access_log,
            log_level="info",
        )

    _register_ray_bench(app)

    @app.command("bench-server")
    def bench_server_command(
        output: Path = typer.Option(..., "--output", "-o", help="Folder for JSON and Markdown."),
        model: str = typer.Option(None, "--model", "-m", help="Model to serve (default bundled)."),
        backends: list[BackendName] = typer.Option(
            ["torch"],
            "--backend",
            "-b",
            help="Backend of the served model; repeat to compare backends in one report.",
        ),
        concurrency: list[int] = typer.Option(
            [8, 16, 32], "--concurrency", "-c", help="Concurrent clients; repeat."
        ),
        documents: int = typer.Option(50, help="Documents per request."),
        duration: float = typer.Option(20.0, help="Seconds of load per level and mode."),
        warmup: float = typer.Option(2.0, help="Seconds of unmeasured load before each level."),
        modes: list[str] = typer.Option(
            ["batching", "no-batching"], "--mode", help="batching and/or no-batching; repeat."
        ),
        overload_clients: int = typer.Option(
            64, help="Clients for the past-capacity run (0 skips it)."
        ),
        overload_queue: int = typer.Option(4, help="Queue size of the past-capacity server."),
        device: str = typer.Option(None, help="Device of the server's model."),
        batch_size: int = typer.Option(32, help="Pairs per forward pass in the server."),
        threads: int = typer.Option(
            None, min=1, help="CPU threads of the server's model (default: torch's)."
        ),
        port: int = typer.Option(0, help="Server port (0: a free one)."),
        data: Path = typer.Option(
            None, help="TREC DL19 bm25_top100.jsonl for realistic texts (default: shared data)."
        ),
        smoke: bool = typer.Option(
            False,
            help="Check the whole run in seconds, figures meaningless: a tiny random model "
            "(unless --model), 2 clients, 1 s per run, no warm-up, 16 clients on a queue of 1 "
            "past capacity, one model thread.",
        ),
    ) -> None:
        """Load-test the server on 127.0.0.1: throughput and latency with batching on and off.

        With several ``--backend`` values every backend is served and measured in turn, under the
        same workload, in one report.
        """
        from rerank_core.app.loadtest import LoadTestConfig, run_load_test, write_report

        with tempfile.TemporaryDirectory() as tmp:
            if smoke:
                from rerank_core.app.bench_cli import build_smoke_model

                model = model or str(build_smoke_model(Path(tmp)))
                concurrency = [min([*concurrency, 2])]
                documents, duration, warmup = min(documents, 8), min(duration, 1.0), 0.0
                overload_clients = min(overload_clients, 16)
                overload_queue, threads = 1, threads or 1
            try:
                cfg = LoadTestConfig(
                    model=model,
                    backends=[_name(b) for b in dict.fromkeys(backends)],
                    concurrency=list(concurrency),
                    documents=documents,
                    duration_s=duration,
                    warmup_s=warmup,
                    modes=list(modes),
                    overload_clients=overload_clients,
                    overload_queue=overload_queue,
                    device=device,
                    batch_size=batch_size,
                    threads=threads,
                    port=port,
                    data=data,
                )
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from exc
            report = run_load_test(cfg, progress=typer.echo)
        json_path, md_path = write_report(report, output)
        typer.echo(md_path.read_text(encoding="utf-8"))
        typer.echo(f"wrote {json_path} and {md_path}")


def _register_ray_bench(app: typer.Typer) -> None:
    @app.command("bench-ray-serve")
    def bench_ray_serve_command(
        output: Path = typer.Option(Path("benchmarks"), "--output", "-o", help="Output folder."),
        model: str = typer.Option(None, "--model", "-m", help="Model to serve (default bundled)."),
        backend: BackendName = typer.Option("torch", "--backend", "-b", help="Backend."),
        threads: int = typer.Option(1, min=1, help="Model threads (and CPU slots) of the replica."),
        clients: list[int] = typer.Option([16], "--clients", "-c", help="Concurrent clients."),
        documents: int = typer.Option(20, min=1, help="Documents per request."),
        duration: float = typer.Option(20.0, help="Seconds of load per mode and client count."),
        warmup: float = typer.Option(3.0, help="Seconds of unmeasured load before each run."),
        modes: list[str] = typer.Option(
            ["batcher", "serve-batch", "none"], "--mode", help="batcher, serve-batch, none."
        ),
        max_batch_size: int = typer.Option(16, min=1, help="@serve.batch's max_batch_size."),
        name: str = typer.Option("ray_serve_batching", help="File stem of the outputs."),
    ) -> None:
        """On Ray Serve, time the app's dynamic batcher against ``@serve.batch`` (one replica)."""
        import shlex
        import sys

        from rerank_core.app.ray_serve_bench import (
            bench_to_markdown,
            run_ray_serve_bench,
            write_report,
        )

        try:
            report = run_ray_serve_bench(
                model,
                backend=_name(backend),
                threads=threads,
                clients=clients,
                documents=documents,
                duration_s=duration,
                warmup_s=warmup,
                modes=modes,
                max_batch_size=max_batch_size,
                progress=typer.echo,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        report["command"] = shlex.join(["rag-rerank", *sys.argv[1:]])
        json_path, md_path = write_report(report, output, name)
        typer.echo(bench_to_markdown(report))
        typer.echo(f"wrote {json_path} and {md_path}")


def _serve_on_ray(config: Any, *, batching: bool) -> None:
    """Run the app on Ray Serve until SIGTERM or Ctrl-C, then drain and stop."""
    import signal
    import threading

    from rerank_core.app import ray_serve

    ray_serve.require_serve()
    scale = (
        f"{config.replicas} replica(s)"
        if config.replicas is not None
        else f"{config.min_replicas}-{config.max_replicas} replicas, autoscaled at "
        f"{config.target_ongoing_requests:g} ongoing requests each"
    )
    typer.echo(f"starting Ray Serve ({scale}); each replica loads its own scorer ...")
    started = ray_serve.connect(config)
    stopping = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stopping.set())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        url = ray_serve.start(config)
        settings = config.settings
        typer.echo(
            f"serving on Ray Serve at {url} (batching {'on' if batching else 'off'}, "
            f"auth {'on' if settings is not None and settings.api_key else 'off'}); docs at /docs"
        )
        stopping.wait()
        typer.echo(
            f"draining: replicas finish their requests (up to {config.graceful_timeout_s:g} s)"
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ray_serve.stop(local_ray=started and not config.address, disconnect=started)
    typer.echo("stopped")


def load_backend(model: str | None, backend: str, options: dict[str, Any]) -> Any:
    """Build the reranker through the registry; an option the backend lacks is a usage error."""
    from rerank_core.registry import load_reranker

    try:
        return load_reranker(model, backend=backend, **options)
    except TypeError as exc:  # e.g. --dtype with an ONNX backend
        raise typer.BadParameter(f"the {backend} backend does not take that option: {exc}") from exc
    except ValueError as exc:  # e.g. --backend http without --provider
        raise typer.BadParameter(str(exc)) from exc
