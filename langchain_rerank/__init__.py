"""LangChain integration: a document compressor backed by any rag-rerank reranker."""

from __future__ import annotations

from langchain_rerank.compressor import CrossEncoderReranker

__all__ = ["CrossEncoderReranker"]
