"""The Chroma RAG chain, built twice on rag-rerank's public API: LangChain and LlamaIndex.

Recall by vector search in Chroma, rerank with a cross-encoder, drop what falls under a
relevance threshold, and let an LLM answer from the few passages that remain, citing them.
``rerank_examples.common`` holds what both chains share (corpus loading, indexing, Chroma, the
offline LLM); ``rerank_examples.langchain_chain`` and ``rerank_examples.llamaindex_chain`` hold
the chains; ``rerank_examples.remote_api`` reranks with a hosted or local rerank API.
The ``rag-rerank ask`` and ``rag-rerank index`` commands run them.
"""

from __future__ import annotations
