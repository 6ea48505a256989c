"""``rag-rerank eval``: ranking quality of the first stage, rerankers, windows and thresholds."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

DEFAULT_CACHE = Path.home() / ".cache" / "rag-rerank" / "chroma"


def _parse_models(items: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name or item, item
        if not name or not path:
            raise typer.BadParameter(f"--model takes PATH or NAME=PATH, got {item!r}")
        if name in models:
            raise typer.BadParameter(f"two models are called {name!r}; name them NAME=PATH")
        models[name] = path
    return models


def register(app: typer.Typer) -> None:
    """Add ``eval`` to ``app``."""
    from rerank_core.registry import BACKENDS, backend_names, load_reranker

    BACKEND_LIST = ", ".join(backend_names())  # read by the option's help

    @app.command("eval")
    def eval_command(
        data: Path = typer.Argument(
            ...,
            exists=True,
            help="A BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or a rerank file "
            "(JSON lines {qid, query, candidates: [{docid, text, label?}]}).",
        ),
        qrels: Path = typer.Option(
            None, "--qrels", exists=True, help="TREC qrels for a rerank file (default: its labels)."
        ),
        model: list[str] = typer.Option(
            [],
            "--model",
            "-m",
            help="Cross-encoder to evaluate, PATH or NAME=PATH; repeat. "
            "Default: the bundled model, when installed.",
        ),
        bi_encoder: bool = typer.Option(
            True, help="Also re-score with the all-MiniLM-L6-v2 bi-encoder (cosine), the baseline."
        ),
        window: list[int] = typer.Option([], "--window", "-w", help="Rerank window K; repeat."),
        threshold: list[float] = typer.Option(
            [], "--threshold", "-t", help="Score threshold; repeat."
        ),
        fusion: list[str] = typer.Option(
            [],
            "--fusion",
            "-f",
            help="Also rank by a fusion with the first stage (rrf, 'rrf:weight=0.4,k=60', "
            "'linear:weight=0.7,evidence=rank'); repeat. The model's own fusion (the bundled "
            "model ships one) always gets a row.",
        ),
        depth: int = typer.Option(None, help="Use the first N candidates of a rerank file."),
        top_k: int = typer.Option(100, help="BEIR: candidates recalled from Chroma per query."),
        split: str = typer.Option("test", help="BEIR: qrels split."),
        max_queries: int = typer.Option(None, help="BEIR: evaluate only the first N queries."),
        cache_dir: Path = typer.Option(
            DEFAULT_CACHE,
            help="BEIR: where the embedded corpus is kept between runs.",
        ),
        recall_at: list[int] = typer.Option([10, 100], help="Recall@k cut-offs; repeat."),
        relevance_level: int = typer.Option(
            1, help="Lowest grade counted relevant by MRR, Recall and hit@1 (TREC DL uses 2)."
        ),
        backend: list[str] = typer.Option(
            [],
            "--backend",
            "-b",
            help=f"Backend for every model, one of {BACKEND_LIST}; repeat to "
            "compare them. Default: torch. With http, --model names the remote model "
            "(default: the provider's).",
        ),
        provider: str = typer.Option(
            None, help="--backend http: cohere, jina, siliconflow, tei, infinity or generic."
        ),
        base_url: str = typer.Option(
            None, help="--backend http: the service root, e.g. http://127.0.0.1:8000."
        ),
        device: str = typer.Option(None, help="Device for the cross-encoders (default: best)."),
        batch_size: int = typer.Option(32, help="Pairs per forward pass."),
        max_length: int = typer.Option(None, help="Token window per pair (default: model's)."),
        chunking: bool = typer.Option(
            False, help="Score long passages as overlapping windows and keep the best window."
        ),
        out: Path = typer.Option(Path("eval-results"), "--out", "-o", help="Output folder."),
        name: str = typer.Option(None, help="File stem of the outputs (default: data name)."),
    ) -> None:
        """Measure nDCG@10, MRR@10, Recall@k, hit@1 and latency; write JSON, Markdown, PNG."""
        from rerank_core.app import evaluate as ev
        from rerank_core.base import Reranker

        rerankers: dict[str, Reranker | str] = {}
        bi = ev.BiEncoderScorer(device=device) if bi_encoder else None
        if bi is not None:
            rerankers["bi-encoder"] = bi
        names = list(dict.fromkeys(backend or ["torch"]))
        unknown = sorted(set(names) - set(BACKENDS))
        if unknown:
            raise typer.BadParameter(f"unknown --backend {unknown}; known: {backend_names()}")
        models = _parse_models(model)
        if not models and any(BACKENDS[b].local for b in names):
            from rerank_core.cross_encoder import DEFAULT_MODEL_DIR

            if (DEFAULT_MODEL_DIR / "config.json").is_file():
                models = {"rag-rerank-minilm-l6": str(DEFAULT_MODEL_DIR)}
            else:
                typer.echo("no --model given and no bundled model installed: baselines only")
        scorer_kwargs = {
            "device": device,
            "batch_size": batch_size,
            "max_length": max_length,
            "chunking": chunking,
        }
        local_options = {k: v for k, v in scorer_kwargs.items() if v is not None}
        remote_options = {k: v for k, v in (("provider", provider), ("base_url", base_url)) if v}
        for b in names:
            spec = BACKENDS[b]
            targets: dict[str, str | None] = dict(models)
            if not spec.local and not targets:
                targets = {provider or "remote": None}
            options = local_options if spec.local else remote_options
            for label, path in targets.items():
                key = label if len(names) == 1 else f"{label} [{b}]"
                try:
                    rerankers[key] = load_reranker(path, backend=b, **options)
                except (ValueError, TypeError, ImportError, OSError) as exc:
                    raise typer.BadParameter(
                        f"cannot build the {b} reranker {label}: {exc}"
                    ) from None
        common = {
            "windows": window,
            "thresholds": threshold,
            "fusions": fusion,
            "recall_at": recall_at,
            "relevance_level": relevance_level,
            "scorer_kwargs": scorer_kwargs,
            "progress": True,
        }
        try:
            if data.is_dir():
                report = ev.evaluate_beir(
                    data,
                    rerankers,
                    split=split,
                    top_k=top_k,
                    cache_dir=cache_dir,
                    max_queries=max_queries,
                    embedder=bi,
                    **common,
                )
            else:
                report = ev.evaluate_rerank_file(
                    data, qrels, rerankers, depth=depth, first_stage_name="first stage", **common
                )
        except (ValueError, FileNotFoundError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        report.info["command"] = shlex.join(["rag-rerank", *sys.argv[1:]])
        stem = name or (data.name if data.is_dir() else data.parent.name or data.stem)
        paths = report.save(out, stem)
        typer.echo(report.to_markdown())
        for kind, path in paths.items():
            typer.echo(f"{kind}: {path}")
