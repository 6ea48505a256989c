"""``rag-rerank train`` and ``rag-rerank export``."""

from __future__ import annotations

from pathlib import Path

import typer


def _teachers(names: list[str]) -> str | list[str] | None:
    """``--teacher`` values as the config takes them: one name, a list (ensemble) or none."""
    if "none" in names:
        if len(names) > 1:
            raise typer.BadParameter("--teacher none cannot be combined with other teachers")
        return None
    return names[0] if len(names) == 1 else names


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app``."""

    @app.command("train")
    def train_command(
        output_dir: Path = typer.Option(..., "--output", "-o", help="Run folder (checkpoints)."),
        data: list[Path] = typer.Option(
            [],
            "--data",
            "-d",
            help="Training set folder or JSONL; repeat. Default: all sets "
            "under $RAG_RERANK_DATA/train.",
        ),
        base_model: str = typer.Option(
            None, help="Encoder or cross-encoder to start from (default all-MiniLM-L6-v2)."
        ),
        teacher: list[str] = typer.Option(
            ["base"],
            help="Model to distil: 'base' (the base model as a bi-encoder), 'default' (the "
            "packaged all-MiniLM-L6-v2 bi-encoder, to go on from a cross-encoder), a bi-encoder "
            "or cross-encoder folder, a bundled reranker's name (rag-rerank-minilm-l6), 'bm25', "
            "or 'none' (labels only). Repeat for an ensemble teacher (scores standardised per "
            "group, then summed with --teacher-weight).",
        ),
        teacher_weight: list[float] = typer.Option(
            [], help="Weight of each --teacher in an ensemble, in the same order (default equal)."
        ),
        keep_layers: str = typer.Option(
            None,
            help="Student made of these encoder layers of --base-model, e.g. 0,2,4 (default: all).",
        ),
        max_steps: int = typer.Option(3000, help="Optimizer steps."),
        groups_per_step: int = typer.Option(6, help="Queries per step."),
        group_size: int = typer.Option(8, help="Passages per query: 1 positive + negatives."),
        max_length: int = typer.Option(128, help="Tokens per (query, passage) pair."),
        learning_rate: float = typer.Option(5e-5, help="Peak learning rate (linear decay)."),
        warmup_steps: int = typer.Option(100, help="Steps of linear warm-up to the peak rate."),
        label_weight: float = typer.Option(1 / 3, help="Weight of the label in the target."),
        temperature: float = typer.Option(
            None,
            help="Teacher softmax temperature (default: 0.05 for a bi-encoder, 1 for logits or "
            "BM25, 0.5 for an ensemble's standardised scores).",
        ),
        mix: list[str] = typer.Option(
            [],
            help="Share of groups per set, NAME=WEIGHT; repeat. Default: squad .45, "
            "medquad .3, selqa .22, trecqa .03 (or by size for other sets).",
        ),
        eval_steps: int = typer.Option(250, help="Validation nDCG@10 every N steps."),
        save_steps: int = typer.Option(250, help="Checkpoint every N steps."),
        seed: int = typer.Option(42, help="Seed for sampling, mining and the data order."),
        bf16: bool = typer.Option(None, help="bf16 autocast (default: where supported)."),
        resume: bool = typer.Option(True, help="Resume from the last checkpoint in --output."),
        val_data: Path = typer.Option(None, help="Set folder with dev.jsonl.gz for validation."),
        export: Path = typer.Option(None, help="Also export the final model here (fp16)."),
    ) -> None:
        """Fine-tune a cross-encoder on {query, positives, negatives} data."""
        from rerank_core.app.train import DEFAULT_MIX, TrainConfig, export_model, train

        shares = dict(DEFAULT_MIX)
        for item in mix:
            name, _, weight = item.partition("=")
            try:
                shares[name] = float(weight)
            except ValueError:
                raise typer.BadParameter(f"--mix takes NAME=WEIGHT, got {item!r}") from None
        try:
            layers = [int(x) for x in keep_layers.split(",")] if keep_layers else None
        except ValueError:
            raise typer.BadParameter(f"--keep-layers takes 0,2,4; got {keep_layers!r}") from None
        cfg = TrainConfig(
            output_dir=str(output_dir),
            data=[str(p) for p in data],
            mix=shares,
            base_model=base_model,
            teacher=_teachers(teacher),
            teacher_weights=list(teacher_weight) or None,
            temperature=temperature,
            keep_layers=layers,
            label_weight=label_weight,
            max_steps=max_steps,
            groups_per_step=groups_per_step,
            group_size=group_size,
            max_length=max_length,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            eval_steps=eval_steps,
            save_steps=save_steps,
            seed=seed,
            bf16=bf16,
            resume=resume,
            val_data=str(val_data) if val_data else None,
        )
        final = train(cfg)
        typer.echo(f"trained model: {final}")
        if export:
            typer.echo(f"exported: {export_model(final, export, max_length=max_length)}")

    @app.command("export")
    def export_command(
        checkpoint: Path = typer.Argument(..., help="Checkpoint or model folder."),
        dest: Path = typer.Argument(..., help="Folder to write."),
        dtype: str = typer.Option("float16", help="Weight dtype: float16, bfloat16, float32."),
        max_length: int = typer.Option(None, help="Set the tokenizer's model_max_length."),
    ) -> None:
        """Write a checkpoint as a compact Hugging Face folder for CrossEncoderScorer."""
        from rerank_core.app.train import export_model

        typer.echo(str(export_model(checkpoint, dest, dtype=dtype, max_length=max_length)))
