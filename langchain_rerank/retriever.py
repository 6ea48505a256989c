"""``RerankRetriever``: recall with any LangChain retriever, rerank, return the best ``k``."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever, RetrieverLike
from pydantic import ConfigDict, Field

from langchain_rerank._common import (
    RankingFields,
    ScorerRecord,
    first_stage_of,
    texts_of,
    to_documents,
)
from rerank_core import Reranker
from rerank_core import adapters as shared
from rerank_core.validation import check_positive_int

__all__ = ["RerankRetriever"]

logger = logging.getLogger(__name__)


class RerankRetriever(ScorerRecord, RankingFields, BaseRetriever):
    """A retriever that reranks what ``base_retriever`` recalls and returns the best ``k``.

    The base retriever sets the recall (for a vector store,
    ``store.as_retriever(search_kwargs={"k": 50})``); ``reranker`` scores every candidate and the
    ``k`` best come back as new ``Document`` objects with ``metadata["relevance_score"]``, keeping
    ``id``, ``page_content`` and all other metadata; the base retriever's documents are never
    modified. Candidates the reranker's policy leaves unscored (its ``rerank_window`` or gate)
    follow the scored ones, without a score. Documents below ``score_threshold`` are dropped;
    when none reaches it the result is empty and the ``langchain_rerank.retriever`` logger says
    why at INFO.

    ``k`` can also be given per call, ``retriever.invoke(query, k=5)``; any other keyword goes to
    the base retriever's ``invoke``. Callbacks see this retriever's run with the base retriever's
    run as its child; ``ainvoke`` awaits the base retriever's ``ainvoke`` and the reranker's
    ``arerank``, so neither blocks the event loop.

    It is the retriever form of ``ContextualCompressionRetriever(base_compressor=
    CrossEncoderReranker(scorer=reranker, top_n=k), base_retriever=base_retriever)``, which returns
    the same documents but takes no ``k`` of its own. It passes LangChain's standard
    ``RetrieversIntegrationTests``.

    Example:
        >>> from rerank_core import load_reranker
        >>> retriever = RerankRetriever(
        ...     base_retriever=store.as_retriever(search_kwargs={"k": 50}),
        ...     reranker=load_reranker(backend="onnx-int8"),
        ...     k=4,
        ... )  # doctest: +SKIP
        >>> docs = retriever.invoke("what is a cross-encoder?")  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    scorer_field: ClassVar[str] = "reranker"

    base_retriever: RetrieverLike = Field(
        description="First stage: any retriever (or runnable) from a query to documents."
    )
    reranker: Reranker = Field(description="The reranker that scores (query, document) pairs.")
    k: int = Field(default=4, ge=1, description="Documents to return, best first.")

    def _cut(self, k: int | None) -> shared.Cut:
        top_n = self.k if k is None else check_positive_int("k", k)
        return shared.Cut.of(self, logger, top_n=top_n)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        cut = self._cut(k)
        docs = self.base_retriever.invoke(
            query, config={"callbacks": run_manager.get_child()}, **kwargs
        )
        first = first_stage_of(docs, self.first_stage_score_key)
        return to_documents(docs, cut.rerank(self.reranker, query, texts_of(docs), first))

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        cut = self._cut(k)
        docs = await self.base_retriever.ainvoke(
            query, config={"callbacks": run_manager.get_child()}, **kwargs
        )
        first = first_stage_of(docs, self.first_stage_score_key)
        ranked = await cut.arerank(self.reranker, query, texts_of(docs), first)
        return to_documents(docs, ranked)
