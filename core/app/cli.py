"""The ``rag-rerank`` command line: each command lives in its own module, loaded lazily."""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="rag-rerank",
    help="Cross-encoder reranking for RAG: ask, index, train, eval, bench, serve, batch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module registers its commands with ``register(app)`` and imports heavy libraries inside
# the command functions, so ``rag-rerank --help`` stays fast.
COMMAND_MODULES = [
    "rerank_core.app.train_cli",
    "rerank_core.app.eval_cli",
    "rerank_core.app.calibrate_cli",
    "rerank_core.app.fusion_cli",
    "rerank_core.app.bench_cli",
    "rerank_core.app.cascade_cli",
    "rerank_core.app.export_cli",
    "rerank_core.app.serve_cli",
    "rerank_core.app.batch_cli",
]

#: Entry-point group through which other packages add commands (the RAG chain adds ``ask`` and
#: ``index`` this way), so the library never imports them by name.
COMMAND_GROUP = "rag_rerank.commands"


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(app)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
    debug: bool = typer.Option(False, "--debug", help="Log at DEBUG level."),
) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Entry point of the ``rag-rerank`` script."""
    _register()
    app()


if __name__ == "__main__":
    main()
