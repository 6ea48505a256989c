"""The RAG chain in LlamaIndex: a Chroma ``VectorStoreIndex`` with ``CrossEncoderRerank``.

Example:
    >>> from rerank_examples.common import chroma_client, build_reranker
    >>> from rerank_examples.llamaindex_chain import LlamaIndexRag, build_llm
    >>> rag = LlamaIndexRag(chroma_client("./chroma"), reranker=build_reranker(), llm=build_llm())
    >>> response = rag.query_engine.query("What is artificial intelligence?")  # doctest: +SKIP
    >>> print(response, [n.node.node_id for n in response.source_nodes])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

try:
    from llama_index.core import VectorStoreIndex, get_response_synthesizer
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import Field
    from llama_index.core.indices.query.query_transform import HyDEQueryTransform
    from llama_index.core.llms import (
        LLM,
        ChatMessage,
        ChatResponse,
        CompletionResponse,
        CompletionResponseGen,
        CustomLLM,
        LLMMetadata,
    )
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.query_engine import RetrieverQueryEngine, TransformQueryEngine
    from llama_index.core.schema import NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the LlamaIndex RAG chain needs llama-index-core: pip install 'rag-rerank[rag]'"
    ) from exc

from llamaindex_rerank import CrossEncoderRerank
from rerank_core import Reranker
from rerank_examples.common import (
    DEFAULT_COLLECTION,
    DEFAULT_RECALL_K,
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_N,
    NO_ANSWER,
    Candidate,
    ChainRun,
    LLMSettings,
    LLMUnavailableError,
    LocalChatGenerator,
    RecordingReranker,
    Stopwatch,
    classify_candidates,
    open_collection,
    shared_embedder,
)

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

logger = logging.getLogger(__name__)

__all__ = [
    "LlamaIndexRag",
    "LocalLLM",
    "MiniLMEmbedding",
    "PassageTextOnly",
    "build_embed_model",
    "build_llm",
]


class LocalLLM(CustomLLM):
    """A LlamaIndex LLM over :class:`~rerank_examples.common.LocalChatGenerator`."""

    generator: LocalChatGenerator = Field(description="The local model that writes answers.")

    @property
    def metadata(self) -> LLMMetadata:
        """SmolLM2's context window and output budget."""
        return LLMMetadata(
            context_window=8192,
            num_output=self.generator.max_new_tokens,
            model_name=self.generator.model_name,
            is_chat_model=True,
        )

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a chat with the model's own chat template."""
        chat = [{"role": m.role.value, "content": m.content or ""} for m in messages]
        return ChatResponse(
            message=ChatMessage(role="assistant", content=self.generator.generate(chat))
        )

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` as one user turn."""
        return CompletionResponse(
            text=self.generator.generate([{"role": "user", "content": prompt}])
        )

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """One chunk: the whole answer (the local model does not stream)."""
        response = self.complete(prompt, formatted=formatted)
        yield CompletionResponse(text=response.text, delta=response.text)


class PassageTextOnly(BaseNodePostprocessor):
    """Hide node metadata from the reranker, so it scores the passage text alone.

    ``CrossEncoderRerank`` scores ``MetadataMode.EMBED`` content, which would prepend
    ``source``, ``lang`` and the like; the LangChain chain scores ``page_content`` only, and
    both chains should score the same text. Returns copies; the retrieved nodes are untouched.
    """

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialisation."""
        return "PassageTextOnly"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        out = []
        for n in nodes:
            node = n.node.model_copy(deep=True)
            node.excluded_embed_metadata_keys = list(node.metadata)
            out.append(NodeWithScore(node=node, score=n.score))
        return out


class MiniLMEmbedding(BaseEmbedding):
    """LlamaIndex embeddings over :func:`~rerank_examples.common.shared_embedder`.

    The vectors ``HuggingFaceEmbedding(model_name=..., normalize=True)`` gives for
    all-MiniLM-L6-v2, without importing sentence-transformers.
    """

    model_name: str = "all-MiniLM-L6-v2"

    def _get_query_embedding(self, query: str) -> list[float]:
        return shared_embedder().embed([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return shared_embedder().embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return shared_embedder().embed(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)


def build_embed_model() -> BaseEmbedding:
    """all-MiniLM-L6-v2 from its PyPI package (no download), the model that indexed the passages."""
    return MiniLMEmbedding()


def build_llm(settings: LLMSettings | None = None) -> LLM:
    """The LLM: an OpenAI-compatible endpoint if configured, else local SmolLM2."""
    settings = settings or LLMSettings()
    if not settings.remote:
        return LocalLLM(generator=LocalChatGenerator(max_new_tokens=settings.max_tokens))
    try:
        from llama_index.llms.openai_like import OpenAILike
    except ImportError as exc:
        raise ImportError(
            "an OpenAI-compatible LLM needs llama-index-llms-openai-like: "
            "pip install 'rag-rerank[rag]'"
        ) from exc
    logger.info("LLM: %s", settings.describe())
    return OpenAILike(
        model=settings.model_name,
        api_base=settings.base_url,
        api_key=settings.api_key or "not-needed",
        is_chat_model=True,
        context_window=8192,
        max_tokens=settings.max_tokens,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
        temperature=0,
    )


def _llm_errors() -> tuple[type[BaseException], ...]:
    try:
        import openai
    except ImportError:  # pragma: no cover - openai comes with llama-index-llms-openai-like
        return ()
    return (openai.APIConnectionError, openai.APIStatusError)


class LlamaIndexRag:
    """The LlamaIndex chain: Chroma index, query engine with a reranking postprocessor.

    ``VectorStoreIndex`` on ``ChromaVectorStore`` -> query engine with
    :class:`~llamaindex_rerank.CrossEncoderRerank` as node postprocessor -> answer + sources.

    :attr:`query_engine` is the plain LlamaIndex query engine (``.query(question)`` gives a
    ``Response`` with ``source_nodes``); :meth:`run` drives the same components stage by stage
    and reports each one with its time.

    Args:
        client: Chroma client (:func:`~rerank_examples.common.chroma_client`).
        collection: Collection filled by :func:`~rerank_examples.common.index_passages`.
        reranker: Scores (question, passage) pairs.
        llm: Answers, and writes the HyDE passage.
        embed_model: Query embeddings; default :func:`build_embed_model`.
        recall_k: Passages recalled by vector search.
        top_n: Most passages handed to the LLM.
        threshold: Drop passages whose reranker probability is below this.
        hyde: Recall with a hypothetical answer (LlamaIndex ``HyDEQueryTransform``, averaged
            with the question); the reranker still scores against the real question.
        llm_settings: Only used to word errors about the endpoint (never the key).
    """

    def __init__(
        self,
        client: ClientAPI,
        *,
        collection: str = DEFAULT_COLLECTION,
        reranker: Reranker,
        llm: LLM,
        embed_model: BaseEmbedding | None = None,
        recall_k: int = DEFAULT_RECALL_K,
        top_n: int = DEFAULT_TOP_N,
        threshold: float | None = DEFAULT_THRESHOLD,
        hyde: bool = False,
        llm_settings: LLMSettings | None = None,
    ) -> None:
        from llama_index.vector_stores.chroma import ChromaVectorStore

        store = ChromaVectorStore(chroma_collection=open_collection(client, collection))
        self.index = VectorStoreIndex.from_vector_store(
            store, embed_model=embed_model or build_embed_model()
        )
        self.threshold = threshold
        self.recorder = RecordingReranker(reranker)
        self.rerank = CrossEncoderRerank(
            scorer=self.recorder, top_n=top_n, score_threshold=threshold, keep_retrieval_score=True
        )
        self.text_only = PassageTextOnly()
        self.retriever = self.index.as_retriever(similarity_top_k=recall_k)
        self.engine = RetrieverQueryEngine(
            retriever=self.retriever,
            response_synthesizer=get_response_synthesizer(llm=llm),
            node_postprocessors=[self.text_only, self.rerank],
        )
        self.hyde = HyDEQueryTransform(llm=llm, include_original=True) if hyde else None
        self.query_engine = (
            TransformQueryEngine(self.engine, self.hyde) if self.hyde else self.engine
        )
        self.settings = llm_settings or LLMSettings()

    def _llm_error(self, exc: BaseException) -> LLMUnavailableError:
        return LLMUnavailableError(
            self.settings.scrub(f"the LLM at {self.settings.describe()} failed: {exc}")
        )

    def run(self, question: str) -> ChainRun:
        """Answer ``question`` stage by stage; see :class:`~rerank_examples.common.ChainRun`."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question must be a non-empty string")
        question = question.strip()
        watch = Stopwatch()
        bundle = QueryBundle(question)
        search_text = question
        if self.hyde is not None:
            with watch("hyde"):
                try:
                    bundle = self.hyde.run(bundle)
                except _llm_errors() as exc:
                    raise self._llm_error(exc) from None
            search_text = bundle.embedding_strs[0]
        with watch("recall"):
            nodes = self.retriever.retrieve(bundle)
        recalled = [
            Candidate(
                id=n.node.node_id,
                text=n.node.get_content(),
                metadata=dict(n.node.metadata),
                # ChromaVectorStore reports exp(-distance); on a cosine collection
                # distance = 1 - cos, so this recovers the cosine similarity.
                vector_score=1.0 + math.log(n.score) if n.score else 0.0,
                recall_rank=rank,
            )
            for rank, n in enumerate(nodes, 1)
        ]
        with watch("rerank"):
            plain = self.text_only.postprocess_nodes(nodes, query_bundle=bundle)
            kept_nodes: list[NodeWithScore] = self.rerank.postprocess_nodes(
                plain, query_bundle=bundle
            )
        kept = classify_candidates(
            recalled,
            [n.node.node_id for n in kept_nodes],
            self.recorder.pop_scores(question),
            self.threshold,
        )
        answer, answered = NO_ANSWER, False
        if kept_nodes:
            with watch("generate"):
                try:
                    response = self.engine.synthesize(bundle, kept_nodes)
                except _llm_errors() as exc:
                    raise self._llm_error(exc) from None
            answer, answered = str(response).strip(), True
        return ChainRun(
            question=question,
            search_text=search_text,
            recalled=recalled,
            kept=kept,
            answer=answer,
            answered=answered,
            threshold=self.threshold,
            timings=watch.timings,
        )
