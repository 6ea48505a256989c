"""Runnable examples of rag-rerank (installed as ``rerank_examples``)."""
