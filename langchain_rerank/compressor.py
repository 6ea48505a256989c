"""``CrossEncoderReranker``: a LangChain ``BaseDocumentCompressor`` over a rag-rerank scorer."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "langchain_rerank needs langchain-core: pip install 'rag-rerank[langchain]'"
    ) from exc

from pydantic import ConfigDict, Field

from rerank_core import Reranker, RerankResult

__all__ = ["CrossEncoderReranker"]

SCORE_KEY = "relevance_score"


class CrossEncoderReranker(BaseDocumentCompressor):
    """Rerank retrieved documents with a cross-encoder (or any :class:`rerank_core.Reranker`).

    Returns new ``Document`` objects, best first, each with the score in
    ``metadata["relevance_score"]``; ``id``, ``page_content`` and all other metadata are kept and
    the caller's documents are never modified. When the scorer's policy leaves a document unscored
    (outside its ``rerank_window``, or skipped by its gate) it follows in its original order
    without a ``relevance_score``.

    Example:
        >>> from langchain_classic.retrievers import ContextualCompressionRetriever
        >>> from rerank_core import CrossEncoderScorer
        >>> reranker = CrossEncoderReranker(scorer=CrossEncoderScorer(), top_n=3)
        >>> retriever = ContextualCompressionRetriever(
        ...     base_compressor=reranker, base_retriever=vectorstore.as_retriever(k=50)
        ... )  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    scorer: Reranker = Field(description="The reranker that scores (query, document) pairs.")
    top_n: int | None = Field(
        default=3, ge=1, description="Documents to return, best first; None returns all."
    )
    score_threshold: float | None = Field(
        default=None, description="Drop documents scoring below this; None keeps all."
    )

    @classmethod
    def from_model(
        cls, model_name_or_path: str | None = None, **kwargs: Any
    ) -> CrossEncoderReranker:
        """Build from a model id or folder (``None``: the bundled model); kwargs go to the fields.

        Keyword arguments that are not fields of this class go to
        :class:`rerank_core.CrossEncoderScorer`.
        """
        from rerank_core import CrossEncoderScorer

        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.model_fields}
        return cls(scorer=CrossEncoderScorer(model_name_or_path, **kwargs), **fields)

    def _serialized(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "kwargs": self.scorer.describe()}

    def _to_documents(
        self, documents: Sequence[Document], results: list[RerankResult]
    ) -> list[Document]:
        out = []
        for r in results:
            doc = documents[r.index]
            metadata = copy.deepcopy(doc.metadata)
            if r.score is not None:
                metadata[SCORE_KEY] = r.score
            out.append(doc.model_copy(update={"metadata": metadata}))
        return out

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; see the class docstring."""
        manager = CallbackManager.configure(inheritable_callbacks=callbacks)
        run = manager.on_retriever_start(self._serialized(), query, name=type(self).__name__)
        try:
            texts = [d.page_content for d in documents]
            results = self.scorer.rerank(
                query, texts, top_n=self.top_n, score_threshold=self.score_threshold
            )
            out = self._to_documents(documents, results)
        except BaseException as exc:
            run.on_retriever_error(exc)
            raise
        run.on_retriever_end(out)
        return out

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async twin of :meth:`compress_documents`; scoring never blocks the event loop."""
        manager = AsyncCallbackManager.configure(inheritable_callbacks=callbacks)
        run = await manager.on_retriever_start(self._serialized(), query, name=type(self).__name__)
        try:
            texts = [d.page_content for d in documents]
            results = await self.scorer.arerank(
                query, texts, top_n=self.top_n, score_threshold=self.score_threshold
            )
            out = self._to_documents(documents, results)
        except BaseException as exc:
            await run.on_retriever_error(exc)
            raise
        await run.on_retriever_end(out)
        return out
