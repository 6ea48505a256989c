"""``rag-rerank ask`` and ``rag-rerank index``: the Chroma RAG chain from the command line.

Registered with the ``rag-rerank`` command through the ``rag_rerank.commands`` entry point.

Exit codes: 0 answered; 1 an error the message explains (bad corpus, unreachable LLM or Chroma,
missing model); 3 no grounded answer (nothing recalled, or the threshold dropped everything).
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rerank_examples.common import Candidate, ChainRun

EXIT_ERROR = 1
EXIT_NO_ANSWER = 3

_COLLECTION_HELP = "Chroma collection."
_PERSIST_HELP = (
    "Folder of the embedded Chroma database "
    "(default $RAG_RERANK_CHROMA_DIR or ~/.cache/rag-rerank/chroma)."
)
_URL_HELP = "Chroma server URL (http://host:8000); default: embedded, in --persist-dir."
_INDEX_HELP = (
    "Index documents into Chroma; passages already there are skipped, never duplicated.\n\n"
    "A failure never changes what the collection held: the corpus is read and checked first, "
    "a run stopped midway leaves what it added and the next run adds the rest, a passage "
    "stored without its vector is written again, and --rebuild swaps the new collection in "
    "only once it is complete.\n\n"
    "Runs on one embedded folder (and ask's first-run indexing) take turns through a file lock "
    "in the folder; a second run waits and says so. A Chroma server (--chroma-url) cannot be "
    "locked from here: run one index at a time against it."
)


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _quiet_libraries() -> None:
    # Model loading progress bars and hub notices would bury the stage-by-stage output.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Idle OpenMP threads sleep instead of spinning: on a machine whose cores are busy with
    # other work, spinning made SmolLM2's decoding 4x slower (read before torch is imported).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass


def _print_model_loading() -> None:
    # The local LLM loads silently for seconds (tens the first time): say what it is doing.
    import logging

    class Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            typer.echo(record.getMessage(), err=True)  # the current stderr, under CliRunner too

    log = logging.getLogger("rerank_examples.llm_cache")
    log.handlers = [h for h in log.handlers if type(h).__name__ != "Echo"] + [Echo()]
    log.setLevel(logging.INFO)
    log.propagate = False


def _short(text: str, width: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _index_path(
    path: Path, persist_dir: Path | None, chroma_url: str | None, collection: str, rebuild: bool
) -> None:
    from tqdm import tqdm

    from rerank_examples.common import (
        chroma_client,
        discard_interrupted_rebuild,
        index_passages,
        load_corpus,
        open_collection,
        rebuild_collection,
        staging_names,
    )

    passages = load_corpus(path)  # read and check everything before touching the index
    where = chroma_url or str(persist_dir or _default_dir())
    with _write_lock(persist_dir, chroma_url):
        client = chroma_client(persist_dir, chroma_url)
        for line in discard_interrupted_rebuild(client, collection):
            typer.echo(line)
        with tqdm(total=len(passages), desc="indexing", unit="passage", leave=False) as bar:
            if rebuild:
                typer.echo(
                    f"rebuilding '{collection}' as '{staging_names(collection)[0]}'; "
                    f"'{collection}' stays as it is until the new one is complete"
                )
                report = rebuild_collection(client, collection, passages, progress=bar.update)
            else:
                col = open_collection(client, collection)
                report = index_passages(col, passages, progress=bar.update)
    if rebuild:
        typer.echo(
            f"rebuilt collection '{collection}' at {where} from {path}: "
            f"it holds {report.total_in_collection} passages"
        )
        return
    repaired = ""
    if report.repaired:
        repaired = f", {report.repaired} repaired (their vectors were missing)"
    typer.echo(
        f"indexed {path}: {report.added} new passages, {report.already_present} already present"
        f"{repaired}; collection '{collection}' at {where} holds {report.total_in_collection}"
    )


def _write_lock(persist_dir: Path | None, chroma_url: str | None) -> AbstractContextManager[None]:
    """The embedded folder's write lock (waiting with a message); nothing for a server."""
    from rerank_examples.common import index_lock

    if chroma_url:
        # A server's files are out of reach: concurrent writers there are the user's to avoid.
        return nullcontext()
    where = persist_dir or _default_dir()

    def waiting(lock_file: str) -> None:
        typer.echo(
            f"waiting: another rag-rerank process is writing to {where} (lock {lock_file})",
            err=True,
        )

    return index_lock(persist_dir, on_wait=waiting)


def _default_dir() -> Path:
    from rerank_examples.common import default_persist_dir

    return default_persist_dir()


def _print_run(
    run: ChainRun,
    *,
    top_k_shown: int,
    reranker_name: str,
    llm_name: str,
    load_s: float,
    llm_load_s: float | None = None,
    score_scale: str = "probability",
    readability_warning: str | None = None,
    fusion: str | None = None,
) -> None:
    echo = typer.echo
    t = run.timings
    if "hyde" in t:
        echo(f"\n== HyDE: hypothetical answer used for recall ({t['hyde']:.2f} s)")
        echo(f"   {_short(run.search_text, 200)}")
    echo(
        f"\n== 1. Recall: {len(run.recalled)} candidates by vector search, cosine similarity "
        f"({t.get('recall', 0.0):.2f} s)"
    )
    for c in run.recalled[:top_k_shown]:
        echo(f"  {c.recall_rank:>3}. {c.vector_score:6.3f}  {_short(c.text)}")
    if len(run.recalled) > top_k_shown:
        echo(f"       … {len(run.recalled) - top_k_shown} more (--show to list more)")
    reranked = run.reranked
    echo(
        f"\n== 2. Rerank: {len(reranked)} scored by {reranker_name} "
        f"({t.get('rerank', 0.0):.2f} s); relevance = {score_scale}"
    )
    if fusion:
        echo(
            f"   kept in the order of the relevance fused with the recall rank ({fusion}), "
            "so a cut passage may score above a kept one"
        )
    if readability_warning:
        typer.secho(f"   warning: {readability_warning}", fg=typer.colors.YELLOW)
    for i, c in enumerate(reranked[:top_k_shown], 1):
        mark = {"kept": "keep", "below_threshold": "drop", "beyond_top_n": "cut "}[c.status]
        echo(
            f"  {i:>3}. {c.relevance_score:6.3f}  {mark}  "
            f"(recall #{c.recall_rank:<2}) {_short(c.text, 78)}"
        )
    if len(reranked) > top_k_shown:
        echo(f"       … {len(reranked) - top_k_shown} more")
    dropped = run.with_status("below_threshold")
    threshold = "none" if run.threshold is None else f"{run.threshold:g}"
    echo(f"\n== 3. Threshold {threshold}: dropped {len(dropped)} of {len(reranked)} scored")
    for c in dropped:
        echo(f"       {c.relevance_score:6.3f}  {_short(c.text, 84)}")
    cut = run.with_status("beyond_top_n")
    if cut:
        echo(
            f"   beyond top_n (above the threshold, not sent): {', '.join(_label(c) for c in cut)}"
        )
    unscored = run.with_status("outside_window")
    if unscored:
        echo(f"   outside the rerank window (not scored, not sent): {len(unscored)}")
    if run.answered:
        loaded = f", of which model load {llm_load_s:.2f} s" if llm_load_s else ""
        echo(f"\n== 4. Answer by {llm_name} ({t.get('generate', 0.0):.2f} s{loaded})")
    else:
        echo("\n== 4. Answer: the LLM was not asked, no source is left")
    echo(run.answer)
    if run.kept:
        echo("\nSources:")
        for i, c in enumerate(run.kept, 1):
            rel = "unscored" if c.relevance_score is None else f"{c.relevance_score:.3f}"
            echo(f"  [{i}] {_label(c)} (relevance {rel}): {_short(c.text, 70)}")
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
    echo(f"\nTime: load {load_s:.2f} s; {stages}; total {load_s + sum(t.values()):.2f} s")


def _readability_warning(reranker: Any, texts: list[str]) -> str | None:
    from rerank_core.base import RerankerWrapper
    from rerank_core.encoding import TokenizedReranker

    while isinstance(reranker, RerankerWrapper):  # the cache or the calibration around a model
        reranker = reranker.inner
    report = reranker.last_readability if isinstance(reranker, TokenizedReranker) else None
    if report is None or report.ok:
        return None
    return report.message(Path(reranker.model_name).name, texts)


def _label(c: Candidate) -> str:
    return f"{c.label} [{c.id}]" if c.label != c.id else c.id


def register(app: typer.Typer) -> None:
    """Add ``ask`` and ``index`` to ``app``."""
    from rerank_core.registry import backend_names

    LOCAL_BACKENDS = ", ".join(backend_names(local=True))  # read by --backend's help

    @app.command("index", help=_INDEX_HELP)
    def index_command(
        path: Path = typer.Argument(..., help="Folder of .txt/.md files, or a .jsonl file."),
        collection: str = typer.Option(
            "rag-rerank-sample", "--collection", "-c", help=_COLLECTION_HELP
        ),
        persist_dir: Path = typer.Option(None, "--persist-dir", help=_PERSIST_HELP),
        chroma_url: str = typer.Option(
            None, "--chroma-url", envvar="RAG_RERANK_CHROMA_URL", help=_URL_HELP
        ),
        rebuild: bool = typer.Option(
            False,
            "--rebuild",
            help="Replace the collection by one built from PATH alone; the old one stays in "
            "place until the new one is complete.",
        ),
    ) -> None:
        """Index documents into Chroma; passages already there are skipped, never duplicated."""
        _quiet_libraries()
        from rerank_examples.common import ChainError

        try:
            _index_path(path, persist_dir, chroma_url, collection, rebuild)
        except (ChainError, ImportError) as exc:
            raise _fail(str(exc)) from None

    @app.command("ask")
    def ask_command(
        question: str = typer.Argument(..., help="The question to answer."),
        framework: str = typer.Option(
            "langchain", "--framework", "-f", help="Chain to run: langchain or llamaindex."
        ),
        corpus: Path = typer.Option(
            None,
            "--corpus",
            help="Index this folder or JSONL first (default: the sample corpus, "
            "when the default collection is empty).",
        ),
        collection: str = typer.Option(
            "rag-rerank-sample", "--collection", "-c", help=_COLLECTION_HELP
        ),
        persist_dir: Path = typer.Option(None, "--persist-dir", help=_PERSIST_HELP),
        chroma_url: str = typer.Option(
            None, "--chroma-url", envvar="RAG_RERANK_CHROMA_URL", help=_URL_HELP
        ),
        recall_k: int = typer.Option(
            50, "--recall-k", min=1, help="Candidates from vector search."
        ),
        rerank_window: int = typer.Option(
            None, "--rerank-window", min=1, help="Rerank only the first K recalled (default all)."
        ),
        top_n: int = typer.Option(3, "--top-n", min=1, help="Most sources given to the LLM."),
        threshold: float = typer.Option(
            0.3, "--threshold", help="Drop passages with relevance below this (0-1; -1: keep all)."
        ),
        hyde: bool = typer.Option(
            False, "--hyde", help="Recall with an LLM-written answer (HyDE)."
        ),
        reranker_model: str = typer.Option(
            None,
            "--reranker-model",
            envvar="RAG_RERANK_MODEL",
            help="Reranker: hub id or folder (default: the bundled model).",
        ),
        backend: str = typer.Option(
            "auto",
            "--backend",
            envvar="RAG_RERANK_BACKEND",
            help=f"Reranker backend: {LOCAL_BACKENDS}, or auto (causal-lm for LLM rerankers, "
            "torch otherwise).",
        ),
        chunking: bool = typer.Option(
            True,
            "--chunking/--no-chunking",
            help="Score a passage longer than the reranker's window by its best window "
            "(off: read only its start).",
        ),
        fusion: str = typer.Option(
            None,
            "--fusion",
            help="Order by the reranker fused with the recall order: none, rrf, "
            "'rrf:weight=0.4' or 'linear:weight=0.7,evidence=rank' (default: the reranker's "
            "measured setting; the bundled model ships one).",
        ),
        llm_base_url: str = typer.Option(
            None,
            "--llm-base-url",
            envvar="OPENAI_BASE_URL",
            help="OpenAI-compatible endpoint (SiliconFlow, vLLM, Ollama, OpenAI); "
            "default: local SmolLM2-135M.",
        ),
        llm_model: str = typer.Option(
            None, "--llm-model", envvar="RAG_RERANK_LLM_MODEL", help="Model at the endpoint."
        ),
        llm_api_key: str = typer.Option(
            None,
            "--llm-api-key",
            envvar="OPENAI_API_KEY",
            show_default=False,
            help="API key for the endpoint (better: set OPENAI_API_KEY).",
        ),
        max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Longest answer, tokens."),
        show: int = typer.Option(8, "--show", min=1, help="Candidates listed per stage."),
    ) -> None:
        """Answer a question from Chroma: recall, rerank, threshold, generate, with sources."""
        _quiet_libraries()
        _print_model_loading()
        from rerank_examples.common import (
            DEFAULT_COLLECTION,
            ChainError,
            LLMSettings,
            build_reranker,
            chroma_client,
            index_passages,
            load_corpus,
            open_collection,
            sample_corpus_path,
        )

        if framework not in ("langchain", "llamaindex"):
            raise _fail(f"--framework must be langchain or llamaindex, got {framework!r}")
        if not question.strip():
            raise _fail("the question is empty")
        cutoff = None if threshold < 0 else threshold
        settings = LLMSettings(llm_base_url, llm_model, llm_api_key, max_tokens=max_tokens)
        start = time.perf_counter()
        try:
            # Locked while it may write (first-run indexing, --corpus), as index is.
            with _write_lock(persist_dir, chroma_url):
                client = chroma_client(persist_dir, chroma_url)
                col = open_collection(client, collection)
                source = corpus
                if source is None and col.count() == 0:
                    if collection != DEFAULT_COLLECTION:
                        raise _fail(
                            f"collection '{collection}' is empty: fill it with "
                            f"`rag-rerank index PATH --collection {collection}`",
                            EXIT_NO_ANSWER,
                        )
                    source = sample_corpus_path()
                    where = chroma_url or persist_dir or _default_dir()
                    typer.echo(f"First run: indexing the sample corpus into {where}")
                if source is not None:
                    report = index_passages(col, load_corpus(source))
                    if report.added:
                        typer.echo(f"indexed {report.added} new passages from {source}")
            reranker = build_reranker(
                reranker_model,
                backend=backend,
                rerank_window=rerank_window,
                chunking=chunking,
                fusion=fusion,
            )
            run, llm = _run_chain(
                framework,
                client,
                collection,
                reranker,
                settings,
                recall_k,
                top_n,
                cutoff,
                hyde,
                question,
            )
        except (ChainError, ImportError) as exc:
            raise _fail(str(exc)) from None
        load_s = time.perf_counter() - start - sum(run.timings.values())
        typer.echo(f"Question: {run.question}   [{framework}]")
        _print_run(
            run,
            top_k_shown=show,
            reranker_name=Path(reranker.model_name).name,
            llm_name=settings.describe(),
            load_s=load_s,
            llm_load_s=getattr(getattr(llm, "generator", None), "load_seconds", None),
            score_scale=reranker.score_scale,
            fusion=None if reranker.fusion is None else reranker.fusion.spec(),
            readability_warning=_readability_warning(
                reranker, [run.question, *(c.text for c in run.recalled)]
            ),
        )
        if not run.recalled:
            raise _fail(f"nothing was recalled from collection '{collection}'", EXIT_NO_ANSWER)
        if not run.answered:
            raise _fail(
                f"no passage reached the relevance threshold {threshold:g}; "
                "lower --threshold, or index documents that answer the question",
                EXIT_NO_ANSWER,
            )


def _run_chain(
    framework: str,
    client: Any,
    collection: str,
    reranker: Any,
    settings: Any,
    recall_k: int,
    top_n: int,
    threshold: float | None,
    hyde: bool,
    question: str,
) -> tuple[ChainRun, Any]:
    common = {
        "collection": collection,
        "reranker": reranker,
        "recall_k": recall_k,
        "top_n": top_n,
        "threshold": threshold,
        "hyde": hyde,
        "llm_settings": settings,
    }
    if framework == "langchain":
        from rerank_examples.langchain_chain import build_chain, build_chat_model

        chat_model = build_chat_model(settings)
        chain = build_chain(client, llm=chat_model, **common)
        return chain.invoke(question), chat_model
    from rerank_examples.llamaindex_chain import LlamaIndexRag, build_llm

    llm = build_llm(settings)
    rag = LlamaIndexRag(client, llm=llm, **common)
    return rag.run(question), llm
