"""Both adapters keep what ``Reranker.rerank`` keeps, for every cut-off and window."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rerank_core import Reranker
from tests.fakes import WordOverlap

QUERY = "what is artificial intelligence"
TEXTS = [
    "apples are red",
    "artificial intelligence is machine intelligence",
    "the weather is fine",
    "an artificial critic is writing",
]

Kept = list[tuple[int, float | None]]


def _langchain(
    scorer: Reranker, top_n: int | None, threshold: float | None, **extra: object
) -> Kept:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from langchain_rerank import CrossEncoderReranker

    docs = [Document(page_content=t, id=str(i)) for i, t in enumerate(TEXTS)]
    out = CrossEncoderReranker(
        scorer=scorer, top_n=top_n, score_threshold=threshold, **extra
    ).compress_documents(docs, QUERY)
    return [(int(d.id or -1), d.metadata.get("relevance_score")) for d in out]


def _llamaindex(
    scorer: Reranker, top_n: int | None, threshold: float | None, **extra: object
) -> Kept:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from llamaindex_rerank import CrossEncoderRerank

    nodes = [NodeWithScore(node=TextNode(text=t, id_=str(i))) for i, t in enumerate(TEXTS)]
    out = CrossEncoderRerank(
        scorer=scorer, top_n=top_n, score_threshold=threshold, **extra
    ).postprocess_nodes(nodes, query_str=QUERY)
    return [(int(n.node.node_id), n.score) for n in out]


@pytest.mark.parametrize("adapter", [_langchain, _llamaindex], ids=["langchain", "llamaindex"])
@pytest.mark.parametrize("top_n", [None, 1, 2, 10])
@pytest.mark.parametrize("threshold", [None, 0.0, 0.25, 0.5, 2.0])
@pytest.mark.parametrize("window", [None, 2])
def test_adapters_keep_what_the_core_keeps(
    adapter: Callable[[Reranker, int | None, float | None], Kept],
    top_n: int | None,
    threshold: float | None,
    window: int | None,
) -> None:
    scorer = WordOverlap(rerank_window=window)
    core = scorer.rerank(QUERY, TEXTS, top_n=top_n, score_threshold=threshold)
    assert adapter(scorer, top_n, threshold) == [(r.index, r.score) for r in core]


@pytest.mark.parametrize("adapter", [_langchain, _llamaindex], ids=["langchain", "llamaindex"])
@pytest.mark.parametrize("margin", [None, 0.0, 0.3, 1.0])
@pytest.mark.parametrize("gap", [False, True])
@pytest.mark.parametrize("top_n", [None, 1])
def test_adapters_apply_the_relative_cutoffs_as_the_core_does(
    adapter: Callable[..., Kept], margin: float | None, gap: bool, top_n: int | None
) -> None:
    scorer = WordOverlap()
    core = scorer.rerank(QUERY, TEXTS, top_n=top_n, score_margin=margin, cut_at_largest_gap=gap)
    got = adapter(scorer, top_n, None, score_margin=margin, cut_at_largest_gap=gap)
    assert got == [(r.index, r.score) for r in core]
