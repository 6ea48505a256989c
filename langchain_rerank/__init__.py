"""LangChain integration: a document compressor and a reranking retriever over rag-rerank."""

from __future__ import annotations

try:
    import langchain_core  # noqa: F401  (one clear message for the whole package)
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "langchain_rerank needs langchain-core: pip install 'rag-rerank[langchain]'"
    ) from exc

from langchain_rerank.compressor import CrossEncoderReranker
from langchain_rerank.retriever import RerankRetriever

__all__ = ["CrossEncoderReranker", "RerankRetriever"]
