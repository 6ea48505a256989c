"""``CrossEncoderReranker``: a LangChain ``BaseDocumentCompressor`` over a rag-rerank scorer."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
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

__all__ = ["CrossEncoderReranker"]

logger = logging.getLogger(__name__)


class CrossEncoderReranker(ScorerRecord, RankingFields, BaseDocumentCompressor):
    """Rerank retrieved documents with a cross-encoder (or any :class:`rerank_core.Reranker`).

    Returns new ``Document`` objects, best first, each with the score in
    ``metadata["relevance_score"]``; ``id``, ``page_content`` and all other metadata are kept and
    the caller's documents are never modified. When the scorer's policy leaves a document unscored
    (outside its ``rerank_window``, or skipped by its gate) it follows in its original order
    without a ``relevance_score``. When no document reaches ``score_threshold`` the result is
    empty and the ``langchain_rerank.compressor`` logger says why at INFO (candidates, best score,
    threshold, score scale).

    Unknown fields are refused (``top_k=5`` is a ``ValidationError``, not a silent default).
    ``langchain_core.load.dumpd`` gives a constructor record whose ``scorer`` is the scorer's
    description and identity: it says which reranker scored; it cannot be loaded back into a
    model (rebuild with :meth:`from_model`).

    ``ContextualCompressionRetriever`` takes no ``k``: the number of documents it returns is this
    compressor's ``top_n``. For a retriever that honours LangChain's ``k`` (and passes LangChain's
    standard retriever tests), use :class:`langchain_rerank.RerankRetriever`:
    ``RerankRetriever(base_retriever=base, reranker=scorer, k=3)`` returns what
    ``ContextualCompressionRetriever(base_compressor=CrossEncoderReranker(scorer=scorer, top_n=3),
    base_retriever=base)`` returns.

    Example:
        >>> from langchain_classic.retrievers import ContextualCompressionRetriever
        >>> reranker = CrossEncoderReranker.from_model(
        ...     backend="onnx-int8", top_n=3
        ... )  # doctest: +SKIP
        >>> retriever = ContextualCompressionRetriever(
        ...     base_compressor=reranker,
        ...     base_retriever=vectorstore.as_retriever(search_kwargs={"k": 50}),
        ... )  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    scorer: Reranker = Field(description="The reranker that scores (query, document) pairs.")
    top_n: int | None = Field(
        default=3, ge=1, description="Documents to return, best first; None returns all."
    )

    @classmethod
    def from_model(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        backend: str = "auto",
        **options: Any,
    ) -> CrossEncoderReranker:
        """Build the scorer with :func:`rerank_core.registry.load_reranker` and wrap it.

        Args:
            model: Hugging Face id or local folder; ``None`` uses the bundled reranker.
            backend: A registered backend (``"torch"``, ``"torch-bf16"``, ``"onnx"``,
                ``"onnx-int8"``, ``"causal-lm"``, ...) or ``"auto"`` (default: ``causal-lm`` for
                LLM rerankers, ``torch`` otherwise).
            **options: Fields of this class (``top_n``, ``score_threshold``) set them; every
                other option goes to the backend (``device``, ``batch_size``, ``cache_entries``,
                ``rerank_window``, ...).

        Raises:
            ValueError: unknown backend.
            TypeError: an option neither this class nor the backend knows.

        Example:
            >>> CrossEncoderReranker.from_model(backend="onnx-int8", top_n=5)  # doctest: +SKIP
        """
        scorer, fields = shared.from_model_parts(
            cls.model_fields, model, backend, options, owner=cls.__name__
        )
        return cls(scorer=scorer, **fields)

    # ----------------------------------------------------------------- compressing

    def _cut(self) -> shared.Cut:
        return shared.Cut.of(self, logger)

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; see the class docstring."""
        manager = CallbackManager.configure(inheritable_callbacks=callbacks)
        run = manager.on_retriever_start(dict(self.to_json()), query, name=type(self).__name__)
        try:
            first = first_stage_of(documents, self.first_stage_score_key)
            results = self._cut().rerank(self.scorer, query, texts_of(documents), first)
            out = to_documents(documents, results)
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
        run = await manager.on_retriever_start(
            dict(self.to_json()), query, name=type(self).__name__
        )
        try:
            first = first_stage_of(documents, self.first_stage_score_key)
            results = await self._cut().arerank(self.scorer, query, texts_of(documents), first)
            out = to_documents(documents, results)
        except BaseException as exc:
            await run.on_retriever_error(exc)
            raise
        await run.on_retriever_end(out)
        return out
