"""``rag-rerank bench``: pairs/s, latency, cold start and memory of each backend and model."""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path

import typer


def build_smoke_model(dest: Path) -> Path:
    """Save a tiny random BERT cross-encoder (all-MiniLM-L6-v2's tokenizer) to ``dest``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rerank_core.app.evaluate import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    config.num_labels = 1  # one relevance logit, like every cross-encoder the bench times
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    return dest


def register(app: typer.Typer) -> None:
    """Add ``bench`` to ``app``."""

    @app.command("bench")
    def bench_command(
        model: list[str] = typer.Option(
            [],
            "--model",
            "-m",
            help="Cross-encoder folder or id; repeat (default: every bundled model).",
        ),
        backend: list[str] = typer.Option(
            [], "--backend", "-b", help="Backend to time; repeat (default: all known)."
        ),
        data: Path = typer.Option(
            None,
            help="Rerank file with real passages (default: trec-dl19/bm25_top100.jsonl in the "
            "data folder, when present).",
        ),
        length: list[int] = typer.Option(
            [32, 128, 256, 512], "--length", help="Synthetic pair length in tokens; repeat."
        ),
        synthetic: bool = typer.Option(
            True, help="Time the synthetic inputs of --length too (--no-synthetic: DL19 only)."
        ),
        candidates: list[int] = typer.Option([20, 50, 100], help="Candidates per query; repeat."),
        queries: int = typer.Option(10, help="Timed queries per row."),
        warmup: int = typer.Option(1, help="Untimed queries first."),
        device: str = typer.Option("cpu", help="Torch device for every backend."),
        dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
        batch_size: int = typer.Option(
            None, help="Batch size of rag-rerank's scorers (default: each backend's; 16 for ONNX)."
        ),
        max_length: int = typer.Option(None, help="Token window (default: the model's)."),
        threads: int = typer.Option(
            None, help="Threads per backend, torch or ONNX Runtime (default: physical cores)."
        ),
        isolate: bool = typer.Option(True, help="Run each backend in its own process."),
        fastest: bool = typer.Option(
            True, help="Add the fastest-path row (model, backend and window below)."
        ),
        fastest_model: str = typer.Option(
            None, help="Model of the fastest path (default: the listed one with fewest layers)."
        ),
        fastest_backend: str = typer.Option("onnx-int8", help="Backend of the fastest path."),
        fastest_window: int = typer.Option(
            50,
            help="Rerank window of the fastest path; 0 reranks all (50 keeps 93 % of the "
            "bundled model's nDCG@10 gain on DL19 with onnx-int8).",
        ),
        smoke: bool = typer.Option(
            False, help="Quick check on a tiny random model: 2 queries, lengths 32 and 128."
        ),
        out: Path = typer.Option(Path("benchmarks"), "--out", "-o", help="Output folder."),
        name: str = typer.Option("bench", help="File stem of the outputs."),
    ) -> None:
        """Time the per-document loop, sentence-transformers and rag-rerank on the same inputs.

        Each backend runs in its own process: the report gives its cold start (process start
        to the first score) and peak memory, and p50/p95 latency per candidate count, for
        every model given (default: every bundled model), plus a fastest-path row.
        """
        from rerank_core.app.bench import (
            FastestPath,
            bench_to_markdown,
            bundled_models,
            run_bench,
            save_bench,
        )
        from rerank_core.app.data import data_root

        if data is None:
            root = data_root()
            candidate = root / "trec-dl19" / "bm25_top100.jsonl" if root else None
            data = candidate if candidate and candidate.is_file() else None
        with tempfile.TemporaryDirectory() as tmp:
            if smoke:
                queries, warmup, length = min(queries, 2), min(warmup, 1), [32, 128]
                model = model or [str(build_smoke_model(Path(tmp)))]
            if model:
                from rerank_core.cross_encoder import bundled_model_path

                model = [str(bundled_model_path(m) or m) for m in model]
            if not model:
                try:
                    model = [str(p) for p in bundled_models()]
                except FileNotFoundError as exc:
                    raise typer.BadParameter(f"{exc}; or pass --model or --smoke") from exc
            path = None
            if fastest:
                path = FastestPath(fastest_model, fastest_backend, fastest_window or None)
            try:
                report = run_bench(
                    model,
                    backends=backend or None,
                    data=data,
                    lengths=length if synthetic else [],
                    candidates=candidates,
                    queries=queries,
                    warmup=warmup,
                    device=device,
                    dtype=dtype,
                    batch_size=batch_size,
                    max_length=max_length,
                    threads=threads,
                    isolate=isolate,
                    fastest=path,
                    command=shlex.join(["rag-rerank", *sys.argv[1:]]),
                )
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from exc
        paths = save_bench(report, out, name)
        typer.echo(bench_to_markdown(report))
        for kind, path in paths.items():
            typer.echo(f"{kind}: {path}")
