"""``rag-rerank bench-cascade``: quality and strong-stage cost of a cascade on a rerank file."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add ``bench-cascade`` to ``app``."""

    @app.command("bench-cascade")
    def bench_cascade_command(
        data: Path = typer.Option(
            None,
            help="Rerank file (JSON lines {qid, query, candidates}); default: "
            "trec-dl19/bm25_top100.jsonl in the data folder.",
        ),
        qrels: Path = typer.Option(None, help="TREC qrels (default: qrels.txt beside --data)."),
        model: str = typer.Option(
            None, "--model", "-m", help="Strong stage's model (default: the bundled model)."
        ),
        backend: str = typer.Option("torch", "--backend", "-b", help="Strong stage's backend."),
        max_length: int = typer.Option(None, help="Strong stage's window (default: model's)."),
        fast_model: str = typer.Option(
            None, help="Fast stage's model (default: the strong stage's model)."
        ),
        fast_backend: str = typer.Option("onnx-int8", help="Fast stage's backend."),
        fast_max_length: int = typer.Option(64, help="Fast stage's token window."),
        k: list[int] = typer.Option([10, 20, 30, 50], "-k", help="Cascade depth K; repeat."),
        windows: bool = typer.Option(
            True, help="Also rank with the strong stage on the first stage's top K."
        ),
        timed: list[int] = typer.Option(
            [], "--timed", help="Cascade depth K to rerun uncached, timed for real; repeat."
        ),
        relevance_level: int = typer.Option(2, help="Lowest relevant grade (TREC DL: 2)."),
        max_queries: int = typer.Option(None, help="Use the first N judged queries only."),
        device: str = typer.Option("cpu", help="Device of both stages."),
        out: Path = typer.Option(Path("benchmarks"), "--out", "-o", help="Output folder."),
        name: str = typer.Option("cascade-dl19", help="File stem of the outputs."),
    ) -> None:
        """Compare a fast-then-strong cascade with the strong model alone and a rerank window.

        With the defaults, the bundled model stands in for both stages: int8 ONNX at 64 tokens
        as the fast stage, fp32 torch at its full window as the strong one.
        """
        from rerank_core.app.cascade_bench import (
            cascade_to_markdown,
            run_cascade_bench,
            save_cascade_bench,
        )
        from rerank_core.app.data import data_root
        from rerank_core.registry import load_reranker

        if data is None:
            root = data_root()
            data = root / "trec-dl19" / "bm25_top100.jsonl" if root else None
            if data is None or not data.is_file():
                raise typer.BadParameter("no --data given and no trec-dl19 in the data folder")
        qrels = qrels or data.parent / "qrels.txt"
        if not qrels.is_file():
            raise typer.BadParameter(f"no qrels at {qrels}: pass --qrels")
        strong_options: dict[str, Any] = {"device": device}
        if max_length is not None:
            strong_options["max_length"] = max_length
        try:
            fast = load_reranker(
                fast_model or model, backend=fast_backend, device=device, max_length=fast_max_length
            )
            strong = load_reranker(model, backend=backend, **strong_options)
            report = run_cascade_bench(
                data,
                qrels,
                fast,
                strong,
                ks=k,
                windows=windows,
                timed=timed,
                relevance_level=relevance_level,
                max_queries=max_queries,
                setup={
                    "fast": f"{fast_model or model or 'bundled model'} [{fast_backend}], "
                    f"max_length {getattr(fast, 'max_length', fast_max_length)}",
                    "strong": f"{model or 'bundled model'} [{backend}], "
                    f"max_length {getattr(strong, 'max_length', max_length)}",
                },
                command=shlex.join(["rag-rerank", *sys.argv[1:]]),
                progress=True,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        paths = save_cascade_bench(report, out, name)
        typer.echo(cascade_to_markdown(report))
        for kind, path in paths.items():
            typer.echo(f"{kind}: {path}")
