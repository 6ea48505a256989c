"""LlamaIndex integration: a node postprocessor backed by any rag-rerank reranker."""

from __future__ import annotations

try:
    import llama_index.core  # noqa: F401  (one clear message for the whole package)
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "llamaindex_rerank needs llama-index-core: pip install 'rag-rerank[llamaindex]'"
    ) from exc

from llamaindex_rerank.postprocessor import CrossEncoderRerank

__all__ = ["CrossEncoderRerank"]
