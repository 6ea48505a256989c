"""The RAG chain in LangChain: Chroma recall -> CrossEncoderReranker -> numbered prompt -> LLM.

Example:
    >>> from rerank_examples.common import chroma_client, build_reranker
    >>> from rerank_examples.langchain_chain import build_chain, build_chat_model
    >>> chain = build_chain(
    ...     chroma_client("./chroma"),
    ...     reranker=build_reranker(),
    ...     llm=build_chat_model(),
    ... )  # doctest: +SKIP
    >>> run = chain.invoke("What is artificial intelligence?")  # doctest: +SKIP
    >>> print(run.answer, [c.label for c in run.kept])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import Runnable, RunnableLambda
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the LangChain RAG chain needs langchain-core: pip install 'rag-rerank[rag]'"
    ) from exc

from pydantic import ConfigDict, Field

from langchain_rerank import CrossEncoderReranker
from rerank_core import Reranker
from rerank_examples.common import (
    ANSWER_SYSTEM,
    DEFAULT_COLLECTION,
    DEFAULT_RECALL_K,
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_N,
    HYDE_PROMPT,
    NO_ANSWER,
    Candidate,
    ChainRun,
    LLMSettings,
    LLMUnavailableError,
    LocalChatGenerator,
    RecordingReranker,
    Stopwatch,
    classify_candidates,
    numbered_sources,
    open_collection,
    shared_embedder,
)

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from langchain_core.callbacks import CallbackManagerForLLMRun

logger = logging.getLogger(__name__)

__all__ = [
    "ANSWER_PROMPT",
    "LocalChatModel",
    "MiniLMEmbeddings",
    "build_chain",
    "build_chat_model",
    "build_embeddings",
]

#: The generation prompt: numbered sources, then the question.
ANSWER_PROMPT = ChatPromptTemplate.from_messages(
    [("system", ANSWER_SYSTEM), ("human", "Sources:\n{sources}\n\nQuestion: {question}")]
)

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


class LocalChatModel(BaseChatModel):
    """A LangChain chat model over :class:`~rerank_examples.common.LocalChatGenerator`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    generator: LocalChatGenerator = Field(description="The local model that writes answers.")

    @property
    def _llm_type(self) -> str:
        return "rag-rerank-local-gguf"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chat = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        text = self.generator.generate(chat)
        for s in stop or ():
            text = text.split(s, 1)[0]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


class MiniLMEmbeddings(Embeddings):
    """LangChain embeddings over :func:`~rerank_examples.common.shared_embedder`.

    The vectors ``HuggingFaceEmbeddings(model_name=..., encode_kwargs={"normalize_embeddings":
    True})`` gives for all-MiniLM-L6-v2, without importing sentence-transformers.
    """

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One normalised vector per text."""
        return shared_embedder().embed(texts)

    def embed_query(self, text: str) -> list[float]:
        """The normalised vector of ``text``."""
        return shared_embedder().embed([text])[0]


def build_embeddings() -> Embeddings:
    """all-MiniLM-L6-v2 from its PyPI package (no download), the model that indexed the passages."""
    return MiniLMEmbeddings()


def build_chat_model(settings: LLMSettings | None = None) -> BaseChatModel:
    """The chat model: an OpenAI-compatible endpoint if configured, else local SmolLM2."""
    settings = settings or LLMSettings()
    if not settings.remote:
        return LocalChatModel(generator=LocalChatGenerator(max_new_tokens=settings.max_tokens))
    try:
        from langchain_openai import ChatOpenAI
    except ImportError as exc:
        raise ImportError(
            "an OpenAI-compatible LLM needs langchain-openai: pip install 'rag-rerank[rag]'"
        ) from exc
    logger.info("LLM: %s", settings.describe())
    return ChatOpenAI(
        base_url=settings.base_url,
        api_key=settings.api_key or "not-needed",  # type: ignore[arg-type]  # SecretStr coerced
        model=settings.model_name,
        max_completion_tokens=settings.max_tokens,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
        temperature=0,
    )


def _llm_errors() -> tuple[type[BaseException], ...]:
    try:
        import openai
    except ImportError:  # pragma: no cover - openai comes with langchain-openai
        return ()
    return (openai.APIConnectionError, openai.APIStatusError)


def build_chain(
    client: ClientAPI,
    *,
    collection: str = DEFAULT_COLLECTION,
    reranker: Reranker,
    llm: BaseChatModel,
    embeddings: Embeddings | None = None,
    recall_k: int = DEFAULT_RECALL_K,
    top_n: int = DEFAULT_TOP_N,
    threshold: float | None = DEFAULT_THRESHOLD,
    hyde: bool = False,
    llm_settings: LLMSettings | None = None,
) -> Runnable[str, ChainRun]:
    """Build the chain as one LCEL runnable: question in, :class:`ChainRun` out.

    Stages: (HyDE: the LLM writes a hypothetical answer) -> recall the ``recall_k`` nearest
    passages from Chroma -> :class:`~langchain_rerank.CrossEncoderReranker` scores them against
    the real question, drops those under ``threshold`` and keeps ``top_n`` -> a prompt with the
    kept passages as numbered sources -> ``llm`` -> the answer, citing [1], [2], ...
    When nothing survives, the LLM is not called and the answer says so.

    Args:
        client: Chroma client (:func:`~rerank_examples.common.chroma_client`).
        collection: Collection filled by :func:`~rerank_examples.common.index_passages`.
        reranker: Scores (question, passage) pairs; its ``rerank_window`` limits how many of
            the recalled passages are scored.
        llm: Chat model that answers (and writes the HyDE passage).
        embeddings: Query embeddings; default :func:`build_embeddings`.
        recall_k: Passages recalled by vector search.
        top_n: Most passages handed to the LLM.
        threshold: Drop passages whose reranker probability is below this; ``None`` keeps all.
        hyde: Recall with the mean embedding of a hypothetical answer and the question.
        llm_settings: Only used to word errors about the endpoint (never the key).
    """
    from langchain_chroma import Chroma

    embeddings = embeddings or build_embeddings()
    open_collection(client, collection)  # creates it with cosine distance when new
    store = Chroma(
        client=client,
        collection_name=collection,
        embedding_function=embeddings,
    )
    recorder = RecordingReranker(reranker)
    compressor = CrossEncoderReranker(scorer=recorder, top_n=top_n, score_threshold=threshold)
    answer_chain = ANSWER_PROMPT | llm | StrOutputParser()
    hyde_chain = (
        ChatPromptTemplate.from_messages([("human", HYDE_PROMPT)]) | llm | StrOutputParser()
    )
    settings = llm_settings or LLMSettings()

    def call_llm(runnable: Runnable[dict[str, str], str], inputs: dict[str, str]) -> str:
        try:
            return runnable.invoke(inputs)
        except _llm_errors() as exc:
            raise LLMUnavailableError(
                settings.scrub(f"the LLM at {settings.describe()} failed: {exc}")
            ) from None

    def start(question: str) -> dict[str, Any]:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question must be a non-empty string")
        return {"question": question.strip(), "watch": Stopwatch()}

    def hyde_stage(state: dict[str, Any]) -> dict[str, Any]:
        if not hyde:
            return {**state, "search_text": state["question"], "vector": None}
        with state["watch"]("hyde"):
            passage = call_llm(hyde_chain, {"question": state["question"]})
            vectors = embeddings.embed_documents([passage])
            vectors.append(embeddings.embed_query(state["question"]))
            mean = [sum(xs) / len(xs) for xs in zip(*vectors, strict=True)]
        return {**state, "search_text": passage, "vector": mean}

    def recall_stage(state: dict[str, Any]) -> dict[str, Any]:
        with state["watch"]("recall"):
            vector = state["vector"] or embeddings.embed_query(state["question"])
            hits = store.similarity_search_by_vector_with_relevance_scores(vector, k=recall_k)
        recalled = [
            Candidate(
                id=str(doc.id),
                text=doc.page_content,
                metadata=dict(doc.metadata),
                vector_score=1.0 - float(distance),  # cosine collection: distance = 1 - cos
                recall_rank=rank,
            )
            for rank, (doc, distance) in enumerate(hits, 1)
        ]
        return {**state, "recalled": recalled, "documents": [doc for doc, _ in hits]}

    def rerank_stage(state: dict[str, Any]) -> dict[str, Any]:
        documents: Sequence[Document] = state["documents"]
        with state["watch"]("rerank"):
            kept_docs = compressor.compress_documents(documents, state["question"])
        kept = classify_candidates(
            state["recalled"],
            [str(d.id) for d in kept_docs],
            recorder.pop_scores(state["question"]),
            threshold,
        )
        return {**state, "kept": kept}

    def generate_stage(state: dict[str, Any]) -> ChainRun:
        kept: list[Candidate] = state["kept"]
        answer, answered = NO_ANSWER, False
        if kept:
            with state["watch"]("generate"):
                answer = call_llm(
                    answer_chain,
                    {
                        "sources": numbered_sources([c.text for c in kept]),
                        "question": state["question"],
                    },
                )
            answered = True
        return ChainRun(
            question=state["question"],
            search_text=state["search_text"],
            recalled=state["recalled"],
            kept=kept,
            answer=answer,
            answered=answered,
            threshold=threshold,
            timings=state["watch"].timings,
        )

    chain = (
        RunnableLambda(start)
        | RunnableLambda(hyde_stage)
        | RunnableLambda(recall_stage)
        | RunnableLambda(rerank_stage)
        | RunnableLambda(generate_stage)
    )
    return chain.with_config(run_name="rag-rerank-chain")
