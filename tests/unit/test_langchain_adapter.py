"""Contract tests of the LangChain compressor (in-process scorer, no model, no network)."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document

from langchain_rerank import CrossEncoderReranker
from tests.unit.test_base import WordOverlap

QUERY = "what is artificial intelligence"


def _docs() -> list[Document]:
    texts = [
        ("apples are red", {"src": "fruit", "tags": ["a"]}),
        ("artificial intelligence is machine intelligence", {"src": "ai", "tags": ["b"]}),
        ("the weather is fine", {"src": "weather", "tags": ["c"]}),
        ("an artificial critic is writing", {"src": "review", "tags": []}),
    ]
    return [Document(page_content=t, metadata=m, id=f"doc-{i}") for i, (t, m) in enumerate(texts)]


def test_orders_scores_and_keeps_ids_and_metadata() -> None:
    docs = _docs()
    out = CrossEncoderReranker(scorer=WordOverlap(), top_n=None).compress_documents(docs, QUERY)
    assert [d.id for d in out] == ["doc-1", "doc-3", "doc-2", "doc-0"]
    scores = [d.metadata["relevance_score"] for d in out]
    assert scores == sorted(scores, reverse=True)
    assert all(type(s) is float for s in scores)
    for d in out:
        original = next(o for o in docs if o.id == d.id)
        assert d.page_content == original.page_content
        assert {k: v for k, v in d.metadata.items() if k != "relevance_score"} == original.metadata


def test_top_n_and_threshold() -> None:
    docs = _docs()
    assert len(CrossEncoderReranker(scorer=WordOverlap()).compress_documents(docs, QUERY)) == 3
    out = CrossEncoderReranker(
        scorer=WordOverlap(), top_n=None, score_threshold=0.5
    ).compress_documents(docs, QUERY)
    assert [d.id for d in out] == ["doc-1", "doc-3"]
    assert all(d.metadata["relevance_score"] >= 0.5 for d in out)


def test_inputs_are_not_mutated() -> None:
    docs = _docs()
    before = copy.deepcopy(docs)
    out = CrossEncoderReranker(scorer=WordOverlap(), top_n=None).compress_documents(docs, QUERY)
    assert docs == before
    assert all("relevance_score" not in d.metadata for d in docs)
    out[0].metadata["tags"].append("changed")  # outputs do not share nested metadata
    assert docs == before


def test_empty_input() -> None:
    scorer = WordOverlap()
    assert CrossEncoderReranker(scorer=scorer).compress_documents([], QUERY) == []
    assert scorer.calls == []


async def test_async_agrees_with_sync() -> None:
    r = CrossEncoderReranker(scorer=WordOverlap(), top_n=2, score_threshold=0.1)
    docs = _docs()
    assert await r.acompress_documents(docs, QUERY) == r.compress_documents(docs, QUERY)


def test_window_leaves_tail_unscored() -> None:
    r = CrossEncoderReranker(scorer=WordOverlap(rerank_window=2), top_n=None)
    out = r.compress_documents(_docs(), QUERY)
    assert [d.id for d in out] == ["doc-1", "doc-0", "doc-2", "doc-3"]
    assert "relevance_score" not in out[2].metadata


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_retriever_start(self, serialized: Any, query: str, **kwargs: Any) -> None:
        self.events.append(("start", query))

    def on_retriever_end(self, documents: Any, **kwargs: Any) -> None:
        self.events.append(("end", [d.id for d in documents]))

    def on_retriever_error(self, error: BaseException, **kwargs: Any) -> None:
        self.events.append(("error", type(error).__name__))


def test_callbacks_see_start_end_and_errors() -> None:
    rec = Recorder()
    r = CrossEncoderReranker(scorer=WordOverlap(), top_n=1)
    r.compress_documents(_docs(), QUERY, callbacks=[rec])
    assert rec.events == [("start", QUERY), ("end", ["doc-1"])]
    with pytest.raises(ValueError):
        r.compress_documents(_docs(), "", callbacks=[rec])
    assert rec.events[-1] == ("error", "ValueError")


async def test_async_callbacks() -> None:
    rec = Recorder()
    r = CrossEncoderReranker(scorer=WordOverlap(), top_n=1)
    await r.acompress_documents(_docs(), QUERY, callbacks=[rec])
    assert rec.events == [("start", QUERY), ("end", ["doc-1"])]


# ------------------------------------------------------------------ fields and serialization


def test_unknown_fields_are_refused() -> None:
    from pydantic import ValidationError

    from langchain_rerank import RerankRetriever
    from tests.fakes import KeywordRetriever

    with pytest.raises(ValidationError, match="top_k"):
        CrossEncoderReranker(scorer=WordOverlap(), top_k=5)
    with pytest.raises(ValidationError, match="top_n"):
        RerankRetriever(
            base_retriever=KeywordRetriever(documents=_docs()), reranker=WordOverlap(), top_n=2
        )
    with pytest.raises(ValidationError, match="score_threshold"):
        CrossEncoderReranker(scorer=WordOverlap(), score_threshold=float("nan"))


def test_dumpd_records_settings_and_the_scorers_identity() -> None:
    from langchain_core.load import dumpd

    scorer = WordOverlap()
    record = dumpd(CrossEncoderReranker(scorer=scorer, top_n=2, score_threshold=0.25))
    assert record["type"] == "constructor"
    assert record["id"] == ["langchain_rerank", "CrossEncoderReranker"]
    assert record["kwargs"]["top_n"] == 2
    assert record["kwargs"]["score_threshold"] == 0.25
    assert record["kwargs"]["scorer"]["identity"] == scorer.identity()
    assert record["kwargs"]["scorer"]["model_name"] == "word-overlap"
    assert json.loads(json.dumps(record)) == record


def test_a_serialized_scorer_is_refused_with_a_hint() -> None:
    from langchain_core.load import dumpd

    kwargs = dumpd(CrossEncoderReranker(scorer=WordOverlap()))["kwargs"]
    with pytest.raises(ValueError, match=r"from_model"):
        CrossEncoderReranker(**kwargs)


def test_from_model_refuses_a_scorer_and_an_unknown_backend() -> None:
    with pytest.raises(TypeError, match="scorer="):
        CrossEncoderReranker.from_model(scorer=WordOverlap())
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        CrossEncoderReranker.from_model(backend="nope")


# ------------------------------------------------------------------ policy and empty results


async def test_nothing_passes_the_threshold_returns_empty_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = CrossEncoderReranker(scorer=WordOverlap(), score_threshold=0.9)
    with caplog.at_level(logging.INFO, logger="langchain_rerank"):
        assert r.compress_documents(_docs(), QUERY) == []
        assert await r.acompress_documents(_docs(), QUERY) == []
    messages = [rec.getMessage() for rec in caplog.records if rec.name.startswith("langchain")]
    assert len(messages) == 2
    assert "none of 4 candidates reached score_threshold=0.9" in messages[0]
    assert "best score 0.75" in messages[0]
    assert "'probability' scale" in messages[0]


def test_an_empty_input_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    r = CrossEncoderReranker(scorer=WordOverlap(), score_threshold=0.9)
    with caplog.at_level(logging.INFO, logger="langchain_rerank"):
        assert r.compress_documents([], QUERY) == []
    assert not [rec for rec in caplog.records if rec.name.startswith("langchain")]


# ------------------------------------------------------------------ RerankRetriever


def _retriever(**kw: Any) -> tuple[Any, list[Document]]:
    from langchain_rerank import RerankRetriever
    from tests.fakes import KeywordRetriever

    docs = _docs()
    base = KeywordRetriever(documents=docs, k=4)
    return RerankRetriever(
        base_retriever=base, reranker=kw.pop("reranker", WordOverlap()), **kw
    ), docs


def test_retriever_returns_the_best_k_as_new_documents() -> None:
    retriever, docs = _retriever(k=2)
    before = copy.deepcopy(docs)
    out = retriever.invoke(QUERY)
    assert [d.id for d in out] == ["doc-1", "doc-3"]
    assert [d.metadata["relevance_score"] for d in out] == [0.75, 0.5]
    assert out[0].metadata["src"] == "ai" and out[0].page_content == docs[1].page_content
    out[0].metadata["tags"].append("changed")
    assert docs == before
    assert [d.id for d in retriever.invoke(QUERY, k=3)] == ["doc-1", "doc-3", "doc-2"]
    with pytest.raises(ValueError, match="k must be a positive int"):
        retriever.invoke(QUERY, k=0)


def test_retriever_equals_contextual_compression() -> None:
    pytest.importorskip("langchain_classic")
    from langchain_classic.retrievers import ContextualCompressionRetriever

    retriever, _ = _retriever(k=3, score_threshold=0.1)
    ccr = ContextualCompressionRetriever(
        base_compressor=CrossEncoderReranker(scorer=WordOverlap(), top_n=3, score_threshold=0.1),
        base_retriever=retriever.base_retriever,
    )
    assert retriever.invoke(QUERY) == ccr.invoke(QUERY)


async def test_retriever_async_agrees_and_empty_threshold_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    retriever, _ = _retriever(k=3)
    assert await retriever.ainvoke(QUERY) == retriever.invoke(QUERY)
    strict, _ = _retriever(k=3, score_threshold=0.8)
    with caplog.at_level(logging.INFO, logger="langchain_rerank"):
        assert await strict.ainvoke(QUERY) == []
    assert any("RerankRetriever: none of 4 candidates" in r.getMessage() for r in caplog.records)


class _SyncForbidden(WordOverlap):
    def rerank(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the async path called the sync rerank")


async def test_retriever_ainvoke_uses_the_async_paths() -> None:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun

    from langchain_rerank import RerankRetriever
    from tests.fakes import KeywordRetriever

    class AsyncOnly(KeywordRetriever):
        def _get_relevant_documents(
            self, query: str, *, run_manager: Any, **kwargs: Any
        ) -> list[Document]:
            raise AssertionError("the async path called the sync retriever")

        async def _aget_relevant_documents(
            self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
        ) -> list[Document]:
            return self.documents

    retriever = RerankRetriever(
        base_retriever=AsyncOnly(documents=_docs()), reranker=_SyncForbidden(), k=1
    )
    assert [d.id for d in await retriever.ainvoke(QUERY)] == ["doc-1"]


class RunRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.runs: list[tuple[str, Any, Any]] = []

    def on_retriever_start(
        self, serialized: Any, query: str, *, run_id: Any, parent_run_id: Any = None, **kw: Any
    ) -> None:
        self.runs.append((kw.get("name") or "", run_id, parent_run_id))


async def test_retriever_callbacks_see_the_base_retriever_as_a_child() -> None:
    retriever, _ = _retriever(k=2)
    for call in (retriever.invoke, retriever.ainvoke):
        rec = RunRecorder()
        result = call(QUERY, config={"callbacks": [rec]})
        if not isinstance(result, list):
            await result
        (outer, outer_id, outer_parent), (inner, _, inner_parent) = rec.runs
        assert (outer, outer_parent) == ("RerankRetriever", None)
        assert (inner, inner_parent) == ("KeywordRetriever", outer_id)
