"""Runnable examples: the Chroma RAG chains on LangChain and LlamaIndex."""

from __future__ import annotations
