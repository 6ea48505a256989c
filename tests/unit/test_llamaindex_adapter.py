"""Contract tests of the LlamaIndex postprocessor (in-process scorer, no model, no network)."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.callbacks import CallbackManager, CBEventType
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from llamaindex_rerank import CrossEncoderRerank
from tests.unit.test_base import WordOverlap

QUERY = "what is artificial intelligence"


def _nodes() -> list[NodeWithScore]:
    texts = [
        "apples are red",
        "artificial intelligence is machine intelligence",
        "the weather is fine",
        "an artificial critic is writing",
    ]
    return [
        NodeWithScore(
            node=TextNode(text=t, id_=f"n{i}", metadata={"src": f"s{i}"}),
            score=0.9 - i * 0.1,
        )
        for i, t in enumerate(texts)
    ]


def _post(**kw: Any) -> CrossEncoderRerank:
    return CrossEncoderRerank(scorer=WordOverlap(), **kw)


def test_orders_sets_scores_and_keeps_node_ids() -> None:
    out = _post(top_n=None).postprocess_nodes(_nodes(), query_str=QUERY)
    assert [n.node.node_id for n in out] == ["n1", "n3", "n2", "n0"]
    assert [n.score for n in out] == sorted((n.score for n in out), reverse=True)
    assert all(type(n.score) is float for n in out)
    assert out[0].node.metadata == {"src": "s1"}


def test_keep_retrieval_score() -> None:
    out = _post(top_n=2, keep_retrieval_score=True).postprocess_nodes(_nodes(), query_str=QUERY)
    assert [n.node.metadata["retrieval_score"] for n in out] == pytest.approx([0.8, 0.6])


def test_top_n_and_threshold() -> None:
    assert len(_post().postprocess_nodes(_nodes(), query_str=QUERY)) == 3
    out = _post(top_n=None, score_threshold=0.5).postprocess_nodes(_nodes(), query_str=QUERY)
    assert [n.node.node_id for n in out] == ["n1", "n3"]


def test_inputs_are_not_mutated() -> None:
    nodes = _nodes()
    before = copy.deepcopy(nodes)
    out = _post(top_n=None, keep_retrieval_score=True).postprocess_nodes(nodes, query_str=QUERY)
    assert [n.score for n in nodes] == [n.score for n in before]
    assert [n.node.metadata for n in nodes] == [n.node.metadata for n in before]
    assert all(o is not n for o in out for n in nodes)


def test_empty_input_and_missing_query() -> None:
    assert _post().postprocess_nodes([], query_str=QUERY) == []
    with pytest.raises(ValueError, match="query"):
        _post().postprocess_nodes(_nodes())


async def test_async_agrees_with_sync() -> None:
    p = _post(top_n=2)
    sync = p.postprocess_nodes(_nodes(), query_str=QUERY)
    asynced = await p.apostprocess_nodes(_nodes(), query_bundle=QueryBundle(QUERY))
    assert [(n.node.node_id, n.score) for n in asynced] == [(n.node.node_id, n.score) for n in sync]


class CBRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.events: list[tuple[str, CBEventType]] = []

    def on_event_start(
        self,
        event_type: CBEventType,
        payload: Any = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        self.events.append(("start", event_type))
        return event_id

    def on_event_end(
        self, event_type: CBEventType, payload: Any = None, event_id: str = "", **kwargs: Any
    ) -> None:
        self.events.append(("end", event_type))

    def start_trace(self, trace_id: str | None = None) -> None:
        return None

    def end_trace(self, trace_id: str | None = None, trace_map: Any = None) -> None:
        return None


class EventRecorder(BaseEventHandler):
    names: list[str] = []  # noqa: RUF012  (a pydantic field, copied per instance)

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.names.append(event.class_name())


async def test_events_and_callbacks_fire() -> None:
    cb = CBRecorder()
    rec = EventRecorder(names=[])
    dispatcher = get_dispatcher("llamaindex_rerank.postprocessor")
    dispatcher.add_event_handler(rec)
    try:
        p = _post(callback_manager=CallbackManager([cb]))
        p.postprocess_nodes(_nodes(), query_str=QUERY)
        await p.apostprocess_nodes(_nodes(), query_str=QUERY)
    finally:
        dispatcher.event_handlers.remove(rec)
    assert cb.events == [("start", CBEventType.RERANKING), ("end", CBEventType.RERANKING)] * 2
    assert rec.names == ["ReRankStartEvent", "ReRankEndEvent"] * 2


# ------------------------------------------------------------------ fields and serialization


def test_unknown_fields_are_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="top_k"):
        _post(top_k=5)
    with pytest.raises(ValidationError, match="score_threshold"):
        _post(score_threshold=float("inf"))


def test_to_dict_and_to_json_describe_the_scorer() -> None:
    scorer = WordOverlap()
    post = CrossEncoderRerank(scorer=scorer, top_n=2, score_threshold=0.25)
    data = post.to_dict()
    assert data["class_name"] == "CrossEncoderRerank"
    assert (data["top_n"], data["score_threshold"], data["keep_retrieval_score"]) == (
        2,
        0.25,
        False,
    )
    assert data["scorer"]["identity"] == scorer.identity()
    assert data["scorer"]["model_name"] == "word-overlap"
    assert json.loads(post.to_json()) == data
    with pytest.raises(ValueError, match="from_model"):
        CrossEncoderRerank.from_dict(data)


def test_from_model_refuses_a_scorer_and_an_unknown_backend() -> None:
    with pytest.raises(TypeError, match="scorer="):
        CrossEncoderRerank.from_model(scorer=WordOverlap())
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        CrossEncoderRerank.from_model(backend="nope")


# ------------------------------------------------------------------ policy and empty results


async def test_nothing_passes_the_threshold_returns_empty_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    post = _post(score_threshold=0.9)
    with caplog.at_level(logging.INFO, logger="llamaindex_rerank"):
        assert post.postprocess_nodes(_nodes(), query_str=QUERY) == []
        assert await post.apostprocess_nodes(_nodes(), query_str=QUERY) == []
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("llamaindex_rerank")]
    assert len(messages) == 2
    assert messages[0].startswith("CrossEncoderRerank: none of 4 candidates reached")
    assert "score_threshold=0.9 (best score 0.75" in messages[0]
