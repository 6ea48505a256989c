"""``rag-rerank export-onnx``: export a cross-encoder to ONNX, or check a shipped export.

The bundled model's shipped int8 file (``core/models/rag-rerank-minilm-l6/onnx/``) is made by

    rag-rerank export-onnx

(int8 with 7-bit weights, written beside the model) and checked against a fresh export by
``rag-rerank export-onnx --check``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``export-onnx`` to ``app``."""

    @app.command("export-onnx")
    def export_onnx_command(
        model: str = typer.Argument(
            None, help="Cross-encoder folder or hub id (default: the bundled model)."
        ),
        int8: bool = typer.Option(True, "--int8/--fp32", help="Dynamic int8, or fp32."),
        reduce_range: bool = typer.Option(
            True,
            "--reduce-range/--full-range",
            help="int8 weights in 7 bits (exact on every x86 int8 kernel, AVX2 included: the "
            "setting shipped files use) or in 8 bits (less rounding; exact on AVX2-only CPUs "
            "only through ONNX Runtime's slower U8U8 kernel).",
        ),
        out: Path = typer.Option(
            None, "--out", "-o", help="Folder to write to (default: <model>/onnx)."
        ),
        check: bool = typer.Option(
            False,
            "--check",
            help="Export afresh to a temporary folder and compare it with the file in the "
            "output folder; exit 1 if the graph or any weight differs.",
        ),
    ) -> None:
        """Export a Hugging Face cross-encoder to ONNX (needs torch; scoring it later does not)."""
        from rerank_core.cross_encoder import default_model_path
        from rerank_core.onnx_backend import export_onnx, onnx_differences

        source = model or str(default_model_path())
        folder = out or Path(source) / "onnx"
        quantize = "int8" if int8 else None
        if not check:
            path = export_onnx(source, folder, quantize=quantize, reduce_range=reduce_range)
            typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
            return
        with tempfile.TemporaryDirectory() as tmp:
            fresh = export_onnx(source, tmp, quantize=quantize, reduce_range=reduce_range)
            existing = folder / fresh.name
            if not existing.is_file():
                typer.echo(f"{existing} does not exist", err=True)
                raise typer.Exit(1)
            diffs = onnx_differences(existing, fresh)
        if diffs:
            typer.echo(f"{existing} differs from a fresh export:", err=True)
            for line in diffs[:20]:
                typer.echo(f"  {line}", err=True)
            raise typer.Exit(1)
        typer.echo(f"{existing} matches a fresh export")
