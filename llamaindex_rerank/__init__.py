"""LlamaIndex integration: a node postprocessor backed by any rag-rerank reranker."""

from __future__ import annotations

from llamaindex_rerank.postprocessor import CrossEncoderRerank

__all__ = ["CrossEncoderRerank"]
