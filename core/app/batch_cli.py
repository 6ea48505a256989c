"""``rag-rerank batch``: rerank a dataset on a pool of Ray actors (Ray Data)."""

from __future__ import annotations

from pathlib import Path

import typer


def _backend_names() -> list[str]:
    from rerank_core.registry import backend_names

    return backend_names()


def register(app: typer.Typer) -> None:
    """Add ``batch`` to ``app``."""

    @app.command("batch")
    def batch_command(
        data: Path = typer.Argument(
            ...,
            exists=True,
            help="JSON lines or Parquet: one row per query {qid, query, candidates: [{docid, "
            "text, score?}]} or one row per pair {qid, query, docid, text, score?}.",
        ),
        out: Path = typer.Option(
            ..., "--out", "-o", help="Output file, .parquet or .jsonl (one row per pair)."
        ),
        model: str = typer.Option(
            None, "--model", "-m", help="Cross-encoder folder or id (default: the bundled model)."
        ),
        backend: str = typer.Option(
            "torch",
            "--backend",
            "-b",
            help=f"Backend: {', '.join(_backend_names())} (http: set --provider).",
        ),
        actors: int = typer.Option(1, "--actors", help="Actors, each holding one scorer."),
        threads_per_actor: int = typer.Option(
            1, "--threads-per-actor", help="CPU threads (and Ray CPU slots) per actor."
        ),
        gpus_per_actor: float = typer.Option(
            0.0, "--gpus-per-actor", help="GPUs per actor (device cuda when above 0)."
        ),
        batch_size: int = typer.Option(32, help="Pairs per forward pass."),
        max_length: int = typer.Option(None, help="Tokens per pair (default: the model's)."),
        chunking: bool = typer.Option(
            False,
            "--chunking",
            help="Score long passages by their best overlapping window instead of truncating.",
        ),
        device: str = typer.Option(None, help="Torch device in each actor (default: best)."),
        provider: str = typer.Option(
            None, help="--backend http: the API (cohere, jina, tei, infinity, generic, ...)."
        ),
        base_url: str = typer.Option(None, help="--backend http: the API's base URL."),
        queries_per_batch: int = typer.Option(
            8, help="Queries per actor call; their pairs are scored together."
        ),
        address: str = typer.Option(
            None,
            "--address",
            help="Ray cluster to join ('auto', 'ray://head:10001'); default: a local Ray "
            "started for this run.",
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an existing output (never appended to)."
        ),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="Keep what an earlier (finished, failed or killed) run into the output wrote "
            "and score only the rest; every pair ends up in the output once.",
        ),
        output_format: str = typer.Option(
            None, "--format", help="parquet or jsonl (default: by the output's suffix)."
        ),
        fusion: str = typer.Option(
            None,
            help="Rank a rerank file's candidates by the reranker fused with their first-stage "
            "order: none, rrf, 'linear:weight=0.5,evidence=rank' (default: the model's "
            "fusion.json, which the bundled model ships). Pairs input is ranked by score.",
        ),
        calibration: str = typer.Option(
            None,
            help="A calibration file to apply, or 'none' for raw scores (default: the "
            "calibration.json beside a local model, which the bundled model ships).",
        ),
    ) -> None:
        """Score every query-passage pair with one scorer per Ray actor; write score and rank."""
        from rerank_core.app.batch import rerank_dataset

        if backend not in _backend_names():
            raise typer.BadParameter(
                f"unknown --backend {backend!r}; known: {', '.join(_backend_names())}"
            )
        options: dict[str, object] = {"batch_size": batch_size}
        if fusion is not None:
            options["fusion"] = fusion
        if calibration is not None:
            options["calibration"] = False if calibration == "none" else calibration
        if backend == "http":
            options.update({k: v for k, v in (("provider", provider), ("base_url", base_url)) if v})
        else:
            options["chunking"] = chunking
            if max_length is not None:
                options["max_length"] = max_length
            if device is not None:
                options["device"] = device
        try:
            summary = rerank_dataset(
                data,
                out,
                model=model,
                backend=backend,
                actors=actors,
                threads_per_actor=threads_per_actor,
                gpus_per_actor=gpus_per_actor,
                queries_per_batch=queries_per_batch,
                options=options,
                output_format=output_format,
                overwrite=overwrite,
                resume=resume,
                address=address,
                progress=True,
            )
        except (ValueError, FileExistsError, FileNotFoundError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        carried = f", {summary.carried} carried over from the earlier run" if resume else ""
        typer.echo(
            f"wrote {summary.pairs} scored pairs to {summary.output} in {summary.seconds:.1f} s "
            f"({summary.pairs_per_second:.1f} pairs/s, {summary.actors} actor(s), "
            f"{summary.layout} layout{carried})"
        )
        typer.echo(f"model: {summary.model}")

    @app.command("batch-bench")
    def batch_bench_command(
        model: str = typer.Option(
            None,
            "--model",
            "-m",
            help="Cross-encoder folder or id (default: a tiny random model built on the spot, "
            "so a million pairs finish in minutes; pass the real model for real rates).",
        ),
        backend: str = typer.Option("torch", "--backend", "-b", help="Backend of every runner."),
        pairs: int = typer.Option(1_000_000, help="Pairs of the memory run (0 skips it)."),
        compare_pairs: int = typer.Option(
            20_000, help="Pairs of the in-process vs 1 vs 2 actors comparison (0 skips it)."
        ),
        candidates: int = typer.Option(100, help="Candidates per synthetic query."),
        words: int = typer.Option(40, help="Words per synthetic passage."),
        actors: int = typer.Option(2, help="Actors of the memory run."),
        threads: int = typer.Option(1, help="Threads of the in-process scorer and per actor."),
        batch_size: int = typer.Option(32, help="Pairs per forward pass."),
        workdir: Path = typer.Option(
            None, help="Folder for the synthetic inputs and outputs (default: a temporary one)."
        ),
        out: Path = typer.Option(Path("benchmarks"), "--out", "-o", help="Output folder."),
        name: str = typer.Option("batch_bench", help="File stem of the outputs."),
    ) -> None:
        """Batch throughput against the in-process scorer, and peak memory on 1M pairs."""
        import json
        import shlex
        import sys
        import tempfile

        from rerank_core.app.batch_bench import batch_bench_to_markdown, run_batch_bench

        if backend not in _backend_names():
            raise typer.BadParameter(f"unknown --backend {backend!r}")
        with tempfile.TemporaryDirectory() as tmp:
            if model is None:
                from rerank_core.app.bench_cli import build_smoke_model

                model = str(build_smoke_model(Path(tmp) / "tiny-model"))
            report = run_batch_bench(
                model,
                backend=backend,
                pairs=pairs,
                compare_pairs=compare_pairs,
                candidates=candidates,
                words=words,
                actors=actors,
                threads=threads,
                batch_size=batch_size,
                workdir=workdir or Path(tmp) / "work",
                command=shlex.join(["rag-rerank", *sys.argv[1:]]),
            )
            if report["model"].endswith("tiny-model"):
                report["model"] = "tiny random BERT cross-encoder (hidden 32, 2 layers)"
        out.mkdir(parents=True, exist_ok=True)
        md = batch_bench_to_markdown(report)
        (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (out / f"{name}.md").write_text(md, encoding="utf-8")
        typer.echo(md)
        typer.echo(f"wrote {out / name}.json and .md")
