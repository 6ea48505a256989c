"""The rerank server: Cohere-, Jina-, SiliconFlow- and TEI-compatible HTTP endpoints.

:func:`create_app` wraps any :class:`~rerank_core.Reranker` in a FastAPI application:

- ``POST /v1/rerank``: Cohere v1 / Jina / SiliconFlow request and response shape.
- ``POST /v2/rerank``: Cohere v2 shape (what ``cohere.ClientV2.rerank`` sends).
- ``POST /rerank``: Hugging Face text-embeddings-inference (TEI) shape.
- ``GET /health``: liveness and readiness for orchestrators; ``GET /metrics``: Prometheus text.
- ``GET /docs`` and ``GET /openapi.json``: the OpenAPI description.

Requests are validated and checked against the limits on the event loop, then queued in a bounded
queue. One batching worker takes every request waiting (up to a token budget, waiting a few
milliseconds for more), scores all their pairs with one :meth:`~rerank_core.Reranker.score_pairs`
call in a worker thread, and answers each request separately. A full queue answers 503 with
``Retry-After`` at once, so clients back off instead of timing out.

Requires the ``server`` extra: ``pip install 'rag-rerank[server]'``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rerank_core.base import Pair, Reranker

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the rerank server needs FastAPI, uvicorn and prometheus-client: "
        "pip install 'rag-rerank[server]'"
    ) from exc

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

__all__ = ["API_KEY_ENV", "ServerSettings", "create_app"]

#: Environment variable holding the bearer token clients must send (auth is off when unset).
API_KEY_ENV = "RAG_RERANK_API_KEY"

_RERANK_PATHS = frozenset({"/v1/rerank", "/v2/rerank", "/rerank"})
_METRIC_PATHS = _RERANK_PATHS | {"/health", "/metrics", "/docs", "/openapi.json"}


def _api_key_from_env() -> str | None:
    return os.environ.get(API_KEY_ENV) or None


@dataclass(frozen=True)
class ServerSettings:
    """Limits, batching and auth of the rerank server.

    Attributes:
        model_name: Name reported in responses and ``/health``; ``None`` uses the reranker's
            ``model_name``. The ``model`` field of requests is accepted and not checked (one
            server serves one model), as TEI and infinity do.
        max_documents: Most documents in one request (413 above it).
        max_document_chars: Most characters in one document, and in the query (413 above it).
        max_request_chars: Most characters in one request, query and documents together (413).
        max_body_bytes: Largest request body accepted (413 above it, before parsing).
        batching: Score concurrent requests together. ``False`` scores one request per model
            call (same queue, same limits): the baseline of the load test.
        max_batch_tokens: Token budget of one dynamic batch (estimated from characters: about
            four Latin characters or one CJK character per token, each pair capped at the
            model's window). A single request over the budget is scored alone.
        max_wait_ms: How long the batching worker waits for more requests once it has one.
        max_queue: Most requests waiting to be scored; when full, new requests get 503 with
            ``Retry-After`` immediately.
        retry_after_s: Seconds sent in ``Retry-After`` with 503 answers.
        exact_usage: Count the ``usage`` tokens with the model's tokenizer (when the reranker
            has ``count_tokens``) instead of estimating them from characters. Exact counting
            tokenizes every pair a second time, which costs throughput on fast models.
        api_key: Bearer token required on the rerank endpoints; default: the
            ``RAG_RERANK_API_KEY`` environment variable; ``None`` or empty turns auth off.
            ``/health``, ``/metrics`` and the docs stay open for orchestrators.
    """

    model_name: str | None = None
    max_documents: int = 1000
    max_document_chars: int = 32_000
    max_request_chars: int = 2_000_000
    max_body_bytes: int = 8 * 1024 * 1024
    batching: bool = True
    max_batch_tokens: int = 32_768
    max_wait_ms: float = 2.0
    max_queue: int = 256
    retry_after_s: int = 1
    exact_usage: bool = False
    api_key: str | None = field(default_factory=_api_key_from_env, repr=False)

    def __post_init__(self) -> None:
        for name in (
            "max_documents",
            "max_document_chars",
            "max_request_chars",
            "max_body_bytes",
            "max_batch_tokens",
            "max_queue",
            "retry_after_s",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServerSettings.{name} must be a positive int, got {value!r}")
        wait = self.max_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
            raise ValueError(f"ServerSettings.max_wait_ms must be a number >= 0, got {wait!r}")


# ------------------------------------------------------------------------------- errors


class _HTTPError(Exception):
    """An error answered as JSON: ``{"message", "error_type", "limit"?}``."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        *,
        limit: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.limit = limit
        self.headers = headers

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"message": self.message, "error_type": self.error_type}
        if self.limit is not None:
            body["limit"] = self.limit
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _limit_error(limit: str, message: str) -> _HTTPError:
    return _HTTPError(413, message, "limit_exceeded", limit=limit)


def _describe_validation(errors: Sequence[Any]) -> str:
    """Turn pydantic errors into one readable line naming each bad field."""
    parts: list[str] = []
    for err in list(errors)[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        kind = err.get("type", "")
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "JSON decode error")
            return f"malformed JSON in request body: {detail}"
        if kind == "missing" and not loc:
            return "request body is required (a JSON object)"
        where = ".".join(loc) or "body"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(msg if msg.startswith(f"{where}[") else f"{where}: {msg}")
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# ------------------------------------------------------------------------------- request models


class TextDocument(BaseModel):
    """A document given as an object; ``text`` is scored, other fields are returned unchanged."""

    model_config = ConfigDict(extra="allow")

    text: StrictStr = Field(description="The text to score.")


def _check_documents(value: Any) -> Any:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of strings or {{'text': ...}} objects, got {value!r:.60}")
    if not value:
        raise ValueError("must not be empty: send at least one document")
    for i, doc in enumerate(value):
        if isinstance(doc, str):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("text"), str):
            continue
        if isinstance(doc, dict):
            raise ValueError(f"documents[{i}] is an object without a string 'text' field")
        raise ValueError(
            f"documents[{i}] must be a string or an object with a string 'text' field, "
            f"got {type(doc).__name__}"
        )
    return value


def _check_query(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _check_top_n(value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"must be a positive integer, got {value!r}")
    return value


class RerankRequestV1(BaseModel):
    """``POST /v1/rerank`` body (Cohere v1, Jina and SiliconFlow clients send this shape)."""

    model: StrictStr | None = Field(None, description="Accepted for compatibility; not checked.")
    query: StrictStr = Field(description="The search query.")
    documents: list[StrictStr | TextDocument] = Field(
        description="Candidate texts, as strings or objects with a `text` field."
    )
    top_n: int | None = Field(None, description="Return only the best N results; default all.")
    return_documents: StrictBool | None = Field(
        None, description="Include each document in its result (default false)."
    )
    rank_fields: list[StrictStr] | None = Field(
        None, description="Only `['text']` is supported: the `text` field is what is scored."
    )
    max_chunks_per_doc: int | None = Field(
        None,
        description="Accepted for compatibility; the server truncates long documents, or "
        "chunks them when started with --chunking.",
    )

    _documents = field_validator("documents", mode="before")(_check_documents)
    _query = field_validator("query", mode="before")(_check_query)
    _top_n = field_validator("top_n", mode="before")(_check_top_n)

    @field_validator("rank_fields")
    @classmethod
    def _only_text(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and value != ["text"]:
            raise ValueError(f"only ['text'] is supported, got {value!r}")
        return value


class RerankRequestV2(BaseModel):
    """``POST /v2/rerank`` body (Cohere v2: ``cohere.ClientV2.rerank``)."""

    model: StrictStr | None = Field(None, description="Accepted for compatibility; not checked.")
    query: StrictStr = Field(description="The search query.")
    documents: list[StrictStr | TextDocument] = Field(description="Candidate texts.")
    top_n: int | None = Field(None, description="Return only the best N results; default all.")
    max_tokens_per_doc: int | None = Field(
        None, description="Accepted; documents are truncated to the model's window."
    )

    _documents = field_validator("documents", mode="before")(_check_documents)
    _query = field_validator("query", mode="before")(_check_query)
    _top_n = field_validator("top_n", mode="before")(_check_top_n)


class RerankRequestTEI(BaseModel):
    """``POST /rerank`` body (Hugging Face text-embeddings-inference)."""

    query: StrictStr = Field(description="The search query.")
    texts: list[StrictStr] = Field(description="Candidate texts.")
    raw_scores: StrictBool = Field(
        False, description="Raw logits instead of sigmoid probabilities."
    )
    return_text: StrictBool = Field(False, description="Include each text in its result.")
    truncate: StrictBool | None = Field(
        None, description="Accepted; texts are always truncated to the model's window."
    )

    _query = field_validator("query", mode="before")(_check_query)

    @field_validator("texts", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("must not be empty: send at least one text")
        return value


class ResultDocument(BaseModel):
    """The document echoed in a result."""

    text: str


class RerankResultV1(BaseModel):
    """One ranked document."""

    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(description="Score on the server's scale (default [0, 1]).")
    document: ResultDocument | None = Field(None, description="Present when asked for.")


class Usage(BaseModel):
    """Tokens read by the model (Jina / SiliconFlow style)."""

    total_tokens: int
    prompt_tokens: int


class RerankResponseV1(BaseModel):
    """Response of ``/v1/rerank`` (and ``/v2/rerank``, without documents)."""

    id: str
    model: str
    results: list[RerankResultV1]
    usage: Usage
    meta: dict[str, Any]


class RerankResultTEI(BaseModel):
    """One TEI result."""

    index: int
    score: float
    text: str | None = None


class ErrorBody(BaseModel):
    """Every error answer."""

    message: str = Field(description="What was wrong and what to do.")
    error_type: str = Field(description="invalid_request, limit_exceeded, unauthorized, ...")
    limit: str | None = Field(None, description="The setting that was exceeded, if any.")


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed JSON or invalid fields."},
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    413: {"model": ErrorBody, "description": "Over a size limit (named in `limit`)."},
    503: {"model": ErrorBody, "description": "Queue full or shutting down; see Retry-After."},
}


# ------------------------------------------------------------------------------- metrics


class _Metrics:
    """Prometheus metrics in a registry of this app's own (several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rag_rerank_http_requests",
            "HTTP requests by path, method and status.",
            ["path", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "rag_rerank_http_request_duration_seconds",
            "Time from request to response, by path.",
            ["path"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.batch_pairs = Histogram(
            "rag_rerank_batch_pairs",
            "(query, document) pairs per model call.",
            buckets=(1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=r,
        )
        self.batch_requests = Histogram(
            "rag_rerank_batch_requests",
            "Requests scored together in one model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "rag_rerank_batch_duration_seconds",
            "Time of one model call.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.queue_depth = Gauge(
            "rag_rerank_queue_depth", "Requests waiting to be scored.", registry=r
        )
        self.queue_capacity = Gauge(
            "rag_rerank_queue_capacity", "Most requests that may wait.", registry=r
        )
        self.documents = Counter("rag_rerank_documents", "Documents scored.", registry=r)
        self.tokens = Counter("rag_rerank_tokens", "Tokens read by the model.", registry=r)


# ------------------------------------------------------------------------------- batching


def _estimate_tokens(text: str) -> int:
    # Bytes beyond one per character come from non-ASCII text (2 extra per CJK character), which
    # tokenizes at about one token per character; Latin text runs about four characters a token.
    chars = len(text)
    wide = (len(text.encode("utf-8")) - chars) // 2
    return (chars - wide) // 4 + wide + 1


class _QueueFull(Exception):
    pass


class _Draining(Exception):
    pass


@dataclass(eq=False)
class _Job:
    pairs: list[Pair]
    cost: int
    future: asyncio.Future[tuple[list[float], list[int]]]


class _Batcher:
    """One worker that merges queued requests into model calls and answers each one."""

    def __init__(self, reranker: Reranker, settings: ServerSettings, metrics: _Metrics) -> None:
        self.reranker = reranker
        self.settings = settings
        self.metrics = metrics
        window = getattr(reranker, "max_length", None)
        self._window = window if isinstance(window, int) and window > 0 else None
        counter = getattr(reranker, "count_tokens", None) if settings.exact_usage else None
        self._count_tokens: Callable[[Sequence[Pair]], list[int]] | None = (
            counter if callable(counter) else None
        )
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.draining = False

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.settings.max_queue)
        # One thread: the model runs one batch at a time, the event loop stays free.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-rerank-score")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rag-rerank-batcher")
        self.metrics.queue_depth.set_function(lambda: self.depth)
        self.metrics.queue_capacity.set(self.settings.max_queue)

    async def stop(self) -> None:
        self.draining = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(_Draining())
        if self._executor is not None:
            # A model call already running cannot be interrupted; do not block the loop on it.
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _estimate(self, pairs: Sequence[Pair]) -> list[int]:
        cap = self._window
        counts = [_estimate_tokens(q) + _estimate_tokens(d) for q, d in pairs]
        return counts if cap is None else [min(n, cap) for n in counts]

    async def score(self, pairs: list[Pair]) -> tuple[list[float], list[int]]:
        """Queue ``pairs`` for scoring; return their scores and token counts, in order."""
        if self.draining or self._queue is None:
            raise _Draining()
        future: asyncio.Future[tuple[list[float], list[int]]] = (
            asyncio.get_running_loop().create_future()
        )
        try:
            self._queue.put_nowait(_Job(pairs, sum(self._estimate(pairs)), future))
        except asyncio.QueueFull:
            raise _QueueFull() from None
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        budget = self.settings.max_batch_tokens
        wait = self.settings.max_wait_ms / 1000.0
        held: _Job | None = None
        while True:
            first = held if held is not None else await queue.get()
            held = None
            batch = [first]
            cost = first.cost
            if self.settings.batching:
                deadline = loop.time() + wait
                while cost < budget:
                    try:
                        job = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        try:
                            job = await asyncio.wait_for(queue.get(), remaining)
                        except asyncio.TimeoutError:
                            break
                    if cost + job.cost > budget:
                        held = job  # first in the next batch, so order is kept
                        break
                    batch.append(job)
                    cost += job.cost
            await self._score_batch(batch)

    async def _score_batch(self, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.future.done()]  # skip clients that went away
        if not live:
            return
        pairs = [pair for job in live for pair in job.pairs]
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            scores, tokens = await loop.run_in_executor(self._executor, self._score_sync, pairs)
        except Exception as exc:
            logger.exception("scoring a batch of %d pairs failed", len(pairs))
            for job in live:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_pairs.observe(len(pairs))
        self.metrics.batch_requests.observe(len(live))
        self.metrics.documents.inc(len(pairs))
        self.metrics.tokens.inc(sum(tokens))
        start = 0
        for job in live:
            end = start + len(job.pairs)
            if not job.future.done():
                job.future.set_result((scores[start:end], tokens[start:end]))
            start = end

    def _score_sync(self, pairs: list[Pair]) -> tuple[list[float], list[int]]:
        scores = self.reranker.score_pairs(pairs)
        if self._count_tokens is not None:
            tokens = list(self._count_tokens(pairs))
        else:
            tokens = self._estimate(pairs)
        return scores, tokens


# ------------------------------------------------------------------------------- middleware


class _Guard:
    """Pure ASGI middleware: metrics for every request, auth and the body-size limit."""

    def __init__(self, app: ASGIApp, *, settings: ServerSettings, metrics: _Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        key = settings.api_key
        self._key = key.encode("utf-8") if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        label = path if path in _METRIC_PATHS else "other"
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            error = self._check_auth(scope) if path in _RERANK_PATHS else None
            if error is None and scope["method"] == "POST":
                error, receive = await self._read_body(scope, receive)
            if error is not None:
                await error.response()(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)

    def _check_auth(self, scope: Scope) -> _HTTPError | None:
        if self._key is None:
            return None
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        headers = {"WWW-Authenticate": 'Bearer realm="rag-rerank"'}
        if not header or scheme.lower() != b"bearer" or not token.strip():
            return _HTTPError(
                401,
                "missing API key: send the header 'Authorization: Bearer <key>'",
                "unauthorized",
                headers=headers,
            )
        if not hmac.compare_digest(token.strip(), self._key):
            return _HTTPError(401, "invalid API key", "unauthorized", headers=headers)
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[_HTTPError | None, Receive]:
        limit = self.settings.max_body_bytes
        too_big = _limit_error(
            "max_body_bytes", f"request body is larger than max_body_bytes={limit} bytes"
        )
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return too_big, receive
                except ValueError:
                    return _HTTPError(400, "invalid Content-Length header", "invalid_request"), (
                        receive
                    )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_big, receive
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay


# ------------------------------------------------------------------------------- the app


def _order(scores: Sequence[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep input order


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def create_app(reranker: Reranker, *, settings: ServerSettings | None = None) -> FastAPI:
    """Build the rerank server around ``reranker``.

    Args:
        reranker: Any reranker; its scores are returned on its own scale (for
            :class:`~rerank_core.CrossEncoderScorer` with ``normalize=True``, the default,
            probabilities in [0, 1], as Cohere returns). The server scores every document:
            the reranker's ``rerank_window`` and ``should_rerank`` policy is not applied.
        settings: Limits, batching and auth; default :class:`ServerSettings` (which reads
            ``RAG_RERANK_API_KEY``).

    Returns:
        A FastAPI application; serve it with uvicorn (``rag-rerank serve`` does).

    Example:
        >>> import uvicorn
        >>> from rerank_core import CrossEncoderScorer
        >>> app = create_app(CrossEncoderScorer())  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    if not isinstance(reranker, Reranker):
        raise TypeError(f"reranker must be a rerank_core.Reranker, got {type(reranker).__name__}")
    settings = settings if settings is not None else ServerSettings()
    if not isinstance(settings, ServerSettings):
        raise TypeError(f"settings must be a ServerSettings, got {type(settings).__name__}")
    model_name = settings.model_name or reranker.model_name
    scale = reranker.score_scale
    metrics = _Metrics()
    batcher = _Batcher(reranker, settings, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        logger.info(
            "rerank server ready: model=%s batching=%s queue=%d auth=%s",
            model_name,
            settings.batching,
            settings.max_queue,
            "on" if settings.api_key else "off",
        )
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; anything still queued is told.
            await batcher.stop()
            logger.info("rerank server stopped")

    app = FastAPI(
        title="rag-rerank server",
        version=_version(),
        description=(
            "Cross-encoder reranking over HTTP, compatible with Cohere (v1 and v2), Jina, "
            "SiliconFlow and Hugging Face TEI clients. Send `Authorization: Bearer <key>` when "
            f"the server was started with {API_KEY_ENV}."
        ),
        lifespan=lifespan,
    )
    app.add_middleware(_Guard, settings=settings, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _HTTPError(400, _describe_validation(exc.errors()), "invalid_request").response()

    @app.exception_handler(_HTTPError)
    async def _http_error(_: Request, exc: _HTTPError) -> JSONResponse:
        return exc.response()

    async def run(query: str, texts: list[str]) -> tuple[list[float], list[int]]:
        _check_limits(settings, query, texts)
        try:
            return await batcher.score([(query, t) for t in texts])
        except _QueueFull:
            raise _HTTPError(
                503,
                f"server busy: {settings.max_queue} requests are already queued; retry after "
                f"{settings.retry_after_s}s or add replicas",
                "overloaded",
                limit="max_queue",
                headers={"Retry-After": str(settings.retry_after_s)},
            ) from None
        except _Draining:
            raise _HTTPError(
                503,
                "server is shutting down; retry on another replica",
                "unavailable",
                headers={"Retry-After": str(settings.retry_after_s)},
            ) from None
        except Exception as exc:
            raise _HTTPError(500, f"scoring failed: {exc}", "internal") from exc

    def meta(version: str, tokens: int) -> dict[str, Any]:
        return {
            "api_version": {"version": version},
            "billed_units": {"search_units": 1},
            "tokens": {"input_tokens": tokens, "output_tokens": 0},
        }

    @app.post(
        "/v1/rerank",
        response_model=RerankResponseV1,
        responses=_ERROR_RESPONSES,
        summary="Rerank (Cohere v1 / Jina / SiliconFlow shape)",
    )
    async def rerank_v1(body: RerankRequestV1) -> JSONResponse:
        docs = body.documents
        texts = [d if isinstance(d, str) else d.text for d in docs]
        scores, tokens = await run(body.query, texts)
        order = _order(scores)[: body.top_n]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if body.return_documents:
                doc = docs[i]
                item["document"] = {"text": doc} if isinstance(doc, str) else doc.model_dump()
            results.append(item)
        used = sum(tokens)
        return JSONResponse(
            {
                "id": str(uuid.uuid4()),
                "model": model_name,
                "results": results,
                "usage": {"total_tokens": used, "prompt_tokens": used},
                "meta": meta("1", used),
            }
        )

    @app.post(
        "/v2/rerank",
        response_model=RerankResponseV1,
        responses=_ERROR_RESPONSES,
        summary="Rerank (Cohere v2 shape)",
    )
    async def rerank_v2(body: RerankRequestV2) -> JSONResponse:
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        scores, tokens = await run(body.query, texts)
        order = _order(scores)[: body.top_n]
        used = sum(tokens)
        return JSONResponse(
            {
                "id": str(uuid.uuid4()),
                "model": model_name,
                "results": [{"index": i, "relevance_score": scores[i]} for i in order],
                "usage": {"total_tokens": used, "prompt_tokens": used},
                "meta": meta("2", used),
            }
        )

    @app.post(
        "/rerank",
        response_model=list[RerankResultTEI],
        responses=_ERROR_RESPONSES,
        summary="Rerank (Hugging Face TEI shape)",
    )
    async def rerank_tei(body: RerankRequestTEI) -> JSONResponse:
        if body.raw_scores and scale == "probability":
            raise _HTTPError(
                400,
                "raw_scores=true is not available: this server returns probabilities; start it "
                "with `rag-rerank serve --raw-scores` for logits",
                "invalid_request",
            )
        scores, _ = await run(body.query, body.texts)
        if not body.raw_scores and scale == "logit":
            scores = [_sigmoid(s) for s in scores]
        out = []
        for i in _order(scores):
            item: dict[str, Any] = {"index": i, "score": scores[i]}
            if body.return_text:
                item["text"] = body.texts[i]
            out.append(item)
        return JSONResponse(out)

    @app.get("/health", summary="Liveness and readiness")
    async def health() -> JSONResponse:
        ok = batcher.alive and not batcher.draining
        return JSONResponse(
            {
                "status": "ok" if ok else "draining" if batcher.draining else "down",
                "model": model_name,
                "score_scale": scale,
                "batching": settings.batching,
                "queue_depth": batcher.depth,
                "queue_capacity": settings.max_queue,
            },
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _check_limits(settings: ServerSettings, query: str, texts: list[str]) -> None:
    if len(texts) > settings.max_documents:
        raise _limit_error(
            "max_documents",
            f"{len(texts)} documents is more than max_documents={settings.max_documents}; "
            "split the request",
        )
    per_doc = settings.max_document_chars
    if len(query) > per_doc:
        raise _limit_error(
            "max_document_chars",
            f"query has {len(query)} characters, more than max_document_chars={per_doc}",
        )
    total = len(query)
    for i, text in enumerate(texts):
        if len(text) > per_doc:
            raise _limit_error(
                "max_document_chars",
                f"documents[{i}] has {len(text)} characters, more than "
                f"max_document_chars={per_doc}; split or shorten it",
            )
        total += len(text)
    if total > settings.max_request_chars:
        raise _limit_error(
            "max_request_chars",
            f"request has {total} characters, more than "
            f"max_request_chars={settings.max_request_chars}; split the request",
        )


def _version() -> str:
    from rerank_core import __version__

    return __version__
