"""Small real stand-ins shared by tests: each does its job for real, only smaller."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever


class KeywordRetriever(BaseRetriever):
    """A first-stage LangChain retriever: the ``k`` documents sharing most words with the query.

    Ties keep corpus order and documents sharing no word still count, so it always returns
    ``min(k, len(documents))``. It returns its own ``Document`` objects (as an in-memory store
    does), so a test can check that whoever consumes them leaves them alone. ``k`` can also be
    given per call, as LangChain's vector-store retrievers allow.
    """

    documents: list[Document]
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        words = set(query.lower().split())
        order = sorted(
            range(len(self.documents)),
            key=lambda i: -len(words & set(self.documents[i].page_content.lower().split())),
        )
        return [self.documents[i] for i in order[: kwargs.get("k", self.k)]]
