"""HTTPReranker against real HTTP servers on 127.0.0.1, one per provider shape."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("httpx")

from rerank_core import HTTPReranker, RerankResult
from tests.integration.rerank_http_server import RerankServer, toy_score

QUERY = "什么是人工智能？"
PASSAGES = [
    "人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。",
    "苹果是一种水果，富含维生素和纤维，有助于健康。",
    "机器学习是人工智能的一个重要子领域，它使计算机能够从数据中学习并做出预测或决策。",
    "今天天气很好，适合户外活动。",
    "深度学习是机器学习的一个分支，它模仿人脑神经网络的工作方式。",
]
KEY = "sk-test-0123456789abcdef"
PROVIDERS = ["siliconflow", "cohere", "jina", "tei", "infinity", "generic"]


def make(provider: str, url: str, **kwargs) -> HTTPReranker:
    return HTTPReranker(provider, api_key=KEY, base_url=url, **kwargs)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_scores_match_the_server_in_input_order(provider: str) -> None:
    with RerankServer(provider) as server, make(provider, server.url) as reranker:
        scores = reranker.score(QUERY, PASSAGES)
    assert scores == pytest.approx([toy_score(QUERY, p) for p in PASSAGES], rel=1e-6)
    assert all(type(s) is float for s in scores)
    (seen,) = server.seen
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    docs_field = "texts" if provider == "tei" else "documents"
    assert seen.body[docs_field] == PASSAGES
    assert seen.body["query"] == QUERY


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_async_rerank_matches_sync(provider: str) -> None:
    with RerankServer(provider) as server:
        async with make(provider, server.url) as reranker:
            got = await reranker.arerank(QUERY, PASSAGES, top_n=3)
        sync = make(provider, server.url).rerank(QUERY, PASSAGES, top_n=3)
    assert got == sync
    expected = sorted(range(5), key=lambda i: -toy_score(QUERY, PASSAGES[i]))[:3]
    assert [r.index for r in got] == expected
    assert all(isinstance(r, RerankResult) and r.document == PASSAGES[r.index] for r in got)


def test_request_fields_per_provider() -> None:
    bodies = {}
    for provider in PROVIDERS:
        with RerankServer(provider) as server:
            make(provider, server.url).score(QUERY, PASSAGES[:2])
            bodies[provider] = server.seen[0].body
    assert bodies["siliconflow"] == {
        "model": "BAAI/bge-reranker-v2-m3",
        "query": QUERY,
        "documents": PASSAGES[:2],
        "top_n": 2,
        "return_documents": False,
    }
    assert bodies["cohere"] == {
        "model": "rerank-v3.5",
        "query": QUERY,
        "documents": PASSAGES[:2],
        "top_n": 2,
    }
    assert bodies["jina"]["model"] == "jina-reranker-v2-base-multilingual"
    assert bodies["tei"] == {"query": QUERY, "texts": PASSAGES[:2], "return_text": False}
    assert "model" not in bodies["infinity"] and "model" not in bodies["generic"]


def test_long_document_options_are_passed_through() -> None:
    with RerankServer("siliconflow") as server:
        make(
            "siliconflow",
            server.url,
            model="Qwen/Qwen3-Reranker-8B",
            instruction="按相关性排序",
            max_chunks_per_doc=4,
            overlap_tokens=40,
        ).score(QUERY, PASSAGES)
    body = server.seen[0].body
    assert body["instruction"] == "按相关性排序"
    assert (body["max_chunks_per_doc"], body["overlap_tokens"]) == (4, 40)
    assert body["model"] == "Qwen/Qwen3-Reranker-8B"
    with RerankServer("tei") as server:
        make("tei", server.url, truncate=True, raw_scores=True).score(QUERY, PASSAGES)
    assert server.seen[0].body["truncate"] is True and server.seen[0].body["raw_scores"] is True


@pytest.mark.parametrize("is_async", [False, True])
def test_big_inputs_are_split_sent_concurrently_and_merged(is_async: bool) -> None:
    docs = [f"文档 {i}：" + "人工智能" * (i % 4) + "天气" * (i % 3) for i in range(23)]
    with RerankServer("tei", delay=0.2) as server:
        reranker = make("tei", server.url, max_documents_per_request=5, max_concurrency=3)
        if is_async:
            scores = asyncio.run(reranker.ascore(QUERY, docs))
        else:
            scores = reranker.score(QUERY, docs)
    assert scores == pytest.approx([toy_score(QUERY, d) for d in docs], rel=1e-6)
    sizes = sorted(len(s.body["texts"]) for s in server.seen)
    assert sizes == [3, 5, 5, 5, 5]
    sent = sorted(t for s in server.seen for t in s.body["texts"])
    assert sent == sorted(docs)  # every document sent exactly once
    # At most 3 in flight at once, and more than one: they overlapped.
    events = sorted([(s.started, 1) for s in server.seen] + [(s.finished, -1) for s in server.seen])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert 2 <= peak <= 3


def test_pairs_of_several_queries_go_one_request_per_query() -> None:
    pairs = [
        ("苹果", "苹果是一种水果"),
        ("天气", "今天天气很好"),
        ("苹果", "机器学习"),
        ("天气", "x"),
    ]
    with RerankServer("cohere") as server:
        scores = make("cohere", server.url).score_pairs(pairs)
    assert scores == pytest.approx([toy_score(q, d) for q, d in pairs], rel=1e-6)
    assert sorted((s.body["query"], tuple(s.body["documents"])) for s in server.seen) == [
        ("天气", ("今天天气很好", "x")),
        ("苹果", ("苹果是一种水果", "机器学习")),
    ]


def test_env_key_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JINA_API_KEY", "jina-env-key")
    with RerankServer("jina") as server:
        HTTPReranker("jina", base_url=server.url).score(QUERY, PASSAGES[:1])
    assert server.seen[0].headers["Authorization"] == "Bearer jina-env-key"


def test_self_hosted_without_key_sends_no_authorization() -> None:
    with RerankServer("tei") as server:
        HTTPReranker("tei", base_url=server.url).score(QUERY, PASSAGES[:1])
    assert "Authorization" not in server.seen[0].headers


def test_langchain_adapter_takes_it_unchanged() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from langchain_rerank import CrossEncoderReranker

    docs = [Document(page_content=p, id=f"d{i}", metadata={"n": i}) for i, p in enumerate(PASSAGES)]
    before = [d.model_dump() for d in docs]
    with RerankServer("siliconflow") as server:
        compressor = CrossEncoderReranker(scorer=make("siliconflow", server.url), top_n=2)
        out = compressor.compress_documents(docs, QUERY)
        aout = asyncio.run(compressor.acompress_documents(docs, QUERY))
    assert [d.id for d in out] == [d.id for d in aout]
    best = max(range(5), key=lambda i: toy_score(QUERY, PASSAGES[i]))
    assert out[0].id == f"d{best}" and out[0].metadata["n"] == best
    assert out[0].metadata["relevance_score"] == pytest.approx(toy_score(QUERY, PASSAGES[best]))
    assert [d.model_dump() for d in docs] == before


def test_llamaindex_adapter_takes_it_unchanged() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from llamaindex_rerank import CrossEncoderRerank

    nodes = [
        NodeWithScore(node=TextNode(text=p, id_=f"n{i}"), score=0.5) for i, p in enumerate(PASSAGES)
    ]
    with RerankServer("infinity") as server:
        post = CrossEncoderRerank(scorer=make("infinity", server.url), top_n=2)
        out = post.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    best = max(range(5), key=lambda i: toy_score(QUERY, PASSAGES[i]))
    assert out[0].node.node_id == f"n{best}"
    assert out[0].score == pytest.approx(toy_score(QUERY, PASSAGES[best]))
    assert json.dumps([n.score for n in out])  # plain floats serialise
    assert all(n.score == 0.5 for n in nodes)


def test_one_reranker_serves_several_event_loops() -> None:
    from concurrent.futures import ThreadPoolExecutor

    expected = [toy_score(QUERY, p) for p in PASSAGES]
    with RerankServer("generic") as server:
        reranker = make("generic", server.url)
        first = asyncio.run(reranker.ascore(QUERY, PASSAGES))
        second = asyncio.run(reranker.ascore(QUERY, PASSAGES))  # a new loop, a new client
        with ThreadPoolExecutor(4) as pool:
            threaded = list(
                pool.map(lambda _: asyncio.run(reranker.ascore(QUERY, PASSAGES)), range(8))
            )
    for scores in [first, second, *threaded]:
        assert scores == pytest.approx(expected, rel=1e-6)
    assert len(server.seen) == 10
