"""The frameworks' own Cohere rerankers against our server on 127.0.0.1.

``langchain-cohere``'s ``CohereRerank`` and LlamaIndex's ``CohereRerank`` postprocessor
(``llama-index-postprocessor-cohere-rerank``) talk to the server exactly as they talk to Cohere, and
return the scores the in-process reranker gives.

Both packages pin the cohere SDK below the one the dev environment holds (``langchain-cohere``
0.6: ``cohere<6``; the LlamaIndex package 0.10: ``cohere<7``), so they are not in the dev group and
this module skips without them. To run it, install them beside the environment without touching
it (cohere 5.21 satisfies both)::

    pip install --no-deps --target /tmp/cohere5 cohere==5.21.1 langchain-cohere==0.6.0 \\
        llama-index-postprocessor-cohere-rerank==0.10.0
    PYTHONPATH=/tmp/cohere5 python -m pytest tests/integration/test_server_framework_clients.py
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from rerank_core import Reranker
from rerank_core.app.server import ServerSettings, create_app
from tests.integration.live_server import running
from tests.integration.test_server import DOCS, KEY, QUERY


# Session-scoped and listed first in each test, so a missing package skips before the tiny
# model is built and the server started.
@pytest.fixture(scope="session")
def langchain_cohere() -> None:
    pytest.importorskip("langchain_cohere")


@pytest.fixture(scope="session")
def llamaindex_cohere() -> None:
    pytest.importorskip("llama_index.postprocessor.cohere_rerank")


@pytest.fixture(scope="module")
def server_url(tiny_scorer: Reranker):
    app = create_app(tiny_scorer, settings=ServerSettings(api_key=KEY, model_name="tiny"))
    with running(app) as (url, _):
        yield url


def _best(scores: list[float], n: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:n]


def test_langchain_cohere_rerank(
    langchain_cohere: None, server_url: str, tiny_scorer: Reranker
) -> None:
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    expected = tiny_scorer.score(QUERY, DOCS)
    docs = [Document(page_content=d, metadata={"n": i}) for i, d in enumerate(DOCS)]
    rerank = CohereRerank(cohere_api_key=KEY, base_url=server_url, model="tiny", top_n=3)
    out = rerank.compress_documents(docs, QUERY)
    assert [d.metadata["n"] for d in out] == _best(expected, 3)
    got = [d.metadata["relevance_score"] for d in out]
    assert got == pytest.approx([expected[i] for i in _best(expected, 3)], rel=1e-5)


def test_llamaindex_cohere_rerank(
    llamaindex_cohere: None, server_url: str, tiny_scorer: Reranker
) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    expected = tiny_scorer.score(QUERY, DOCS)
    nodes = [NodeWithScore(node=TextNode(text=d, id_=f"n{i}")) for i, d in enumerate(DOCS)]
    rerank = CohereRerank(api_key=KEY, base_url=server_url, model="tiny", top_n=3, max_retries=1)
    out = rerank.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.node_id for n in out] == [f"n{i}" for i in _best(expected, 3)]
    got = [n.score for n in out]
    assert got == pytest.approx([expected[i] for i in _best(expected, 3)], rel=1e-5)
