"""Contract tests of the LangChain compressor (in-process scorer, no model, no network)."""

from __future__ import annotations

import copy
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
