"""The rerank server: Cohere-, Jina-, SiliconFlow- and TEI-compatible HTTP endpoints.

:func:`create_app` wraps any :class:`~rerank_core.Reranker` in a FastAPI application:

- ``POST /v1/rerank``: Cohere v1 / Jina / SiliconFlow request and response shape.
- ``POST /v2/rerank``: Cohere v2 shape (what ``cohere.ClientV2.rerank`` sends).
- ``POST /rerank``: Hugging Face text-embeddings-inference (TEI) shape; ``GET /info`` answers
  TEI's model description, so TEI clients (``tei-client``) work unchanged.
- ``GET /health``: liveness and readiness for orchestrators; ``GET /metrics``: Prometheus text.
- ``GET /docs`` and ``GET /openapi.json``: the OpenAPI description, which states every rule the
  server enforces (non-blank query, at least one document, the size limits, the bearer scheme
  when an API key is set).

Every error, whatever raised it (a bad field, malformed JSON, an unknown path, a wrong method, a
size limit, a slow client), is answered as JSON ``{"message", "error_type", "limit"?}`` with a 4xx
status (5xx only for a failed model call or a draining server).

Requests are validated and checked against the limits on the event loop, then queued in a bounded
queue. One batching worker takes every request waiting (up to a token budget, waiting a few
milliseconds for more), scores all their pairs with one :meth:`~rerank_core.Reranker.score_pairs`
call in a worker thread, and answers each request separately. A full queue answers 503 with
``Retry-After`` at once, so clients back off instead of timing out.

:func:`run_server` serves the app with uvicorn, adding what uvicorn leaves out: a deadline for a
request's headers (slow clients do not hold sockets forever) and a drain on SIGTERM during which
the listening socket stays open, ``/health`` answers 503 ``draining`` and in-flight requests
finish.

Requires the ``server`` extra: ``pip install 'rag-rerank[server]'``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import os
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from rerank_core.base import Pair, Reranker
from rerank_core.fusion import Fusion
from rerank_core.validation import check_number, check_positive_int, check_text

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse, Response
    from fastapi.routing import APIRoute
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
    from pydantic import (
        BaseModel,
        ConfigDict,
        Field,
        StrictBool,
        StrictFloat,
        StrictInt,
        StrictStr,
        field_validator,
    )
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the rerank server needs FastAPI, uvicorn and prometheus-client: "
        "pip install 'rag-rerank[server]'"
    ) from exc

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

__all__ = ["API_KEY_ENV", "ServerSettings", "build_server", "create_app", "run_server"]

#: Environment variable holding the bearer token clients must send (auth is off when unset).
API_KEY_ENV = "RAG_RERANK_API_KEY"

_RERANK_PATHS = frozenset({"/v1/rerank", "/v2/rerank", "/rerank"})
_METRIC_PATHS = _RERANK_PATHS | {"/health", "/info", "/metrics", "/docs", "/openapi.json"}
#: Deepest nesting of arrays and objects accepted in a request body.
MAX_JSON_DEPTH = 64


def _api_key_from_env() -> str | None:
    return os.environ.get(API_KEY_ENV) or None


@dataclass(frozen=True)
class ServerSettings:
    """Limits, batching, timeouts and auth of the rerank server.

    Attributes:
        model_name: Name reported in responses, ``/health`` and ``/info``; ``None`` uses the
            reranker's ``model_name`` shortened to its last path component when it is a local
            folder (the server never shows where the model lives on disk). The ``model`` field of
            requests is accepted and not checked (one server serves one model), as TEI and
            infinity do.
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
        header_timeout_s: Most seconds a client may take to send a request's headers, counted
            from the connection (or from the first byte of a later request on a kept-alive
            one); past it the server answers 408 and closes the connection. Applied by
            :func:`run_server`.
        body_timeout_s: Most seconds a client may take to send a request's body once its
            headers arrived; past it the answer is 408 (``limit: body_timeout_s``) and the
            connection is closed.
        drain_delay_s: On shutdown, keep accepting connections for at least this long (answering
            ``/health`` with 503 ``draining`` and new rerank requests with 503) so load balancers
            that poll ``/health`` stop routing here; the drain lasts longer while requests are
            still being scored (up to the graceful-shutdown timeout).
        api_key: Bearer token required on the rerank endpoints; default: the
            ``RAG_RERANK_API_KEY`` environment variable; ``None`` or empty turns auth off.
            ``/health``, ``/info``, ``/metrics`` and the docs stay open for orchestrators.
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
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    drain_delay_s: float = 0.0
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
            check_positive_int(f"ServerSettings.{name}", getattr(self, name), allow_none=False)
        for name in ("max_wait_ms", "drain_delay_s"):
            check_number(f"ServerSettings.{name}", getattr(self, name), minimum=0, allow_none=False)
        for name in ("header_timeout_s", "body_timeout_s"):
            value = check_number(
                f"ServerSettings.{name}", getattr(self, name), minimum=0, allow_none=False
            )
            if not value:
                raise ValueError(f"ServerSettings.{name} must be above 0, got {value!r}")


# ------------------------------------------------------------------------------- errors


class _HTTPError(HTTPException):
    """An error answered as JSON: ``{"message", "error_type", "limit"?}``.

    A subclass of FastAPI's ``HTTPException`` so that FastAPI lets it through unchanged when it
    is raised while the body is parsed.
    """

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        *,
        limit: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.limit = limit

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"message": self.message, "error_type": self.error_type}
        if self.limit is not None:
            body["limit"] = self.limit
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _limit_error(limit: str, message: str) -> _HTTPError:
    return _HTTPError(413, message, "limit_exceeded", limit=limit)


def _invalid(message: str) -> _HTTPError:
    return _HTTPError(400, message, "invalid_request")


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
        parts.append(msg if msg.startswith(where.split(".")[0]) else f"{where}: {msg}")
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# ------------------------------------------------------------------------------- strict JSON


class _BadConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


def _parse_json(body: bytes) -> Any:
    """Parse a request body as strict JSON (RFC 8259) or raise a 400 naming the problem.

    Python's parser accepts ``NaN`` and ``Infinity``, which no JSON encoder can write back; it
    raises ``RecursionError`` on deep nesting and ``ValueError`` on integers over 4,300 digits.
    Each of those, invalid UTF-8, too deep nesting and a lone surrogate anywhere in the body
    becomes a 400 here instead of a 500 later.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(
            f"request body is not valid UTF-8 (byte {exc.start}): send JSON encoded as UTF-8"
        ) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except _BadConstant as exc:
        raise _invalid(
            f"malformed JSON in request body: {exc} is not a JSON value (send null or a number)"
        ) from None
    except json.JSONDecodeError as exc:
        raise _invalid(f"malformed JSON in request body: {exc}") from None
    except RecursionError:
        raise _invalid(f"request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:  # an integer literal longer than Python's digit limit
        raise _invalid(f"request body holds a number that cannot be read: {exc}") from None
    _check_json_value(value)
    return value


def _check_json_value(root: Any) -> None:
    """Refuse nesting deeper than :data:`MAX_JSON_DEPTH` and strings that are not valid text."""
    stack: list[tuple[str, Any, int]] = [("body", root, 0)]
    while stack:
        where, value, depth = stack.pop()
        if isinstance(value, str):
            _check_str(where, value)
        elif isinstance(value, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise _invalid(f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_str(f"{where} key", key)
                    name = key if where == "body" else f"{where}.{key}"
                    stack.append((name, item, depth + 1))
            else:
                stack.extend((f"{where}[{i}]", item, depth + 1) for i, item in enumerate(value))


def _check_str(where: str, value: str) -> None:
    try:
        check_text(where, value)
    except ValueError as exc:
        raise _invalid(str(exc)) from None


class _JSONRequest(Request):
    """A request whose :meth:`json` is :func:`_parse_json`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = _parse_json(await self.body())
        return self._json


class _JSONRoute(APIRoute):
    """Route that parses bodies with :func:`_parse_json` (FastAPI's custom-request pattern)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return route


# ------------------------------------------------------------------------------- request models


@functools.cache
def _visible_pattern() -> str:
    r"""A regular expression matching one character that :func:`is_blank` calls visible.

    Written out as explicit ranges (not ``\s``), because regex dialects disagree on what
    whitespace is; astral characters are written literally, which Python, Rust and JavaScript
    (with the ``u`` flag) all read the same way.
    """
    ranges: list[list[int]] = []
    for cp in range(0x110000):
        ch = chr(cp)
        if ch.isspace() or unicodedata.category(ch) == "Cf":
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])

    def esc(cp: int) -> str:
        return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)

    return "[^" + "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges) + "]"


def _query_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = _visible_pattern()


def _integral(value: Any) -> Any:
    # JSON has one number type: 5.0 is the integer 5 (JSON Schema agrees), true is not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_query(value: Any) -> Any:
    if isinstance(value, str):
        check_text("query", value, allow_blank=False)
    return value


def _document_error(i: int, doc: Any) -> str | None:
    if isinstance(doc, str) or (isinstance(doc, dict) and isinstance(doc.get("text"), str)):
        return None
    if isinstance(doc, dict):
        return f"documents[{i}] is an object without a string 'text' field"
    return (
        f"documents[{i}] must be a string or an object with a string 'text' field, "
        f"got {type(doc).__name__}"
    )


def _check_document_list(value: Any, *, single: bool) -> Any:
    if single and isinstance(value, str):
        return value
    if not isinstance(value, list):
        kinds = "a string, or a list of strings or {'text': ...} objects"
        what = kinds if single else "a list of strings or {'text': ...} objects"
        raise ValueError(f"documents must be {what}, got {value!r:.60}")
    if not value:
        raise ValueError("documents must not be empty: send at least one document")
    for i, doc in enumerate(value):
        problem = _document_error(i, doc)
        if problem:
            raise ValueError(problem)
    return value


class FusionRequest(BaseModel):
    """A request's fusion with the first stage (see ``rerank_core.Fusion``)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["none", "rrf", "linear"] = Field(
        description="`none`: the model's order; `rrf`: weighted reciprocal rank fusion; "
        "`linear`: the model's probability mixed with the first stage's evidence."
    )
    weight: StrictFloat | StrictInt = Field(
        0.5, ge=0, le=1, description="The model's share (1: the model alone; 0: the first stage)."
    )
    k: StrictFloat | StrictInt = Field(60.0, ge=0, le=1e9, description="`rrf`: the rank offset.")
    evidence: Literal["auto", "rank"] = Field(
        "auto",
        description="`linear`: `rank` uses the documents' order; `auto` uses their "
        "`first_stage_score` when every document carries one, else their order.",
    )
    rank_scale: StrictFloat | StrictInt = Field(
        10.0, gt=0, le=1e9, description="`linear` on ranks: how fast the rank evidence decays."
    )

    def to_fusion(self) -> Fusion | None:
        """The library's :class:`~rerank_core.Fusion`; ``None`` for ``method='none'``."""
        return Fusion.parse(self.model_dump())


def _fusion_field() -> Any:
    return Field(
        None,
        description="Fusion with the first stage for this request, such as "
        '`{"method": "rrf", "weight": 0.4}`; default: the server\'s (`GET /health`). Ranks come '
        "from the order of the documents: send them best first. Results keep the model's score "
        "and add `fused_score`.",
    )


class TextDocument(BaseModel):
    """A document given as an object; ``text`` is scored, other fields are returned unchanged."""

    model_config = ConfigDict(extra="allow")

    text: StrictStr = Field(description="The text to score.")
    first_stage_score: Annotated[StrictFloat | StrictInt, Field(allow_inf_nan=False)] | None = (
        Field(
            None,
            description="The first stage's score of this document (higher is better), for "
            "fusions that use scores.",
        )
    )


_Query = Annotated[
    StrictStr,
    Field(
        min_length=1,
        description="The search query: at least one visible character (whitespace and "
        "zero-width characters alone are refused).",
        json_schema_extra=_query_schema,
    ),
]
_TopN = Annotated[
    StrictInt | None,
    Field(description="Return only the best N results; default all.", ge=1),
]
_DocumentList = Annotated[list[StrictStr | TextDocument], Field(min_length=1)]


class RerankRequestV1(BaseModel):
    """``POST /v1/rerank`` body (Cohere v1, Jina and SiliconFlow clients send this shape)."""

    model: StrictStr | None = Field(None, description="Accepted for compatibility; not checked.")
    query: _Query
    documents: _DocumentList | StrictStr = Field(
        description="Candidate texts, as strings or objects with a `text` field; a single "
        "string is one document (SiliconFlow's `string | array`)."
    )
    top_n: _TopN = None
    return_documents: StrictBool | None = Field(
        None, description="Include each document in its result (default false)."
    )
    rank_fields: Annotated[list[Literal["text"]], Field(min_length=1, max_length=1)] | None = Field(
        None, description="Only `['text']`: the `text` field is what is scored."
    )
    max_chunks_per_doc: StrictInt | None = Field(
        None,
        ge=1,
        description="Accepted for compatibility; the server truncates long documents, or "
        "chunks them when started with --chunking.",
    )

    fusion: FusionRequest | None = _fusion_field()

    _query = field_validator("query", mode="before")(_check_query)
    _ints = field_validator("top_n", "max_chunks_per_doc", mode="before")(_integral)

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, value: Any) -> Any:
        return _check_document_list(value, single=True)


class RerankRequestV2(BaseModel):
    """``POST /v2/rerank`` body (Cohere v2: ``cohere.ClientV2.rerank``)."""

    model: StrictStr | None = Field(None, description="Accepted for compatibility; not checked.")
    query: _Query
    documents: _DocumentList = Field(description="Candidate texts.")
    top_n: _TopN = None
    max_tokens_per_doc: StrictInt | None = Field(
        None,
        ge=1,
        description="Truncate each document to this many tokens (the model's tokenizer's) "
        "before scoring, as Cohere does. Servers whose reranker has no tokenizer refuse it.",
    )

    fusion: FusionRequest | None = _fusion_field()

    _query = field_validator("query", mode="before")(_check_query)
    _ints = field_validator("top_n", "max_tokens_per_doc", mode="before")(_integral)

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, value: Any) -> Any:
        return _check_document_list(value, single=False)


class RerankRequestTEI(BaseModel):
    """``POST /rerank`` body (Hugging Face text-embeddings-inference)."""

    query: _Query
    texts: Annotated[list[StrictStr], Field(min_length=1)] = Field(description="Candidate texts.")
    raw_scores: StrictBool = Field(
        False, description="Raw logits instead of sigmoid probabilities."
    )
    return_text: StrictBool = Field(False, description="Include each text in its result.")
    truncate: StrictBool | None = Field(
        None, description="Accepted; texts are always truncated to the model's window."
    )
    truncation_direction: Literal["Right"] = Field(
        "Right", description="Only `Right`: a long text keeps its beginning."
    )
    fusion: FusionRequest | None = _fusion_field()

    _query = field_validator("query", mode="before")(_check_query)

    @field_validator("texts", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("texts must not be empty: send at least one text")
        return value


class ResultDocument(BaseModel):
    """The document echoed in a result (an object document comes back with all its fields)."""

    model_config = ConfigDict(extra="allow")

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


class Health(BaseModel):
    """``/health`` answer."""

    status: Literal["ok", "draining", "down"]
    model: str
    score_scale: str
    fusion: str = Field(
        description="The default fusion with the first stage ('none': score order)."
    )
    batching: bool
    queue_depth: int
    queue_capacity: int


class TEIClassifierModel(BaseModel):
    """TEI's description of a classifier or reranker head."""

    id2label: dict[str, str]
    label2id: dict[str, int]


class TEIInfo(BaseModel):
    """``/info`` answer, in TEI's shape."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: dict[Literal["reranker"], TEIClassifierModel]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None
    docker_label: str | None


class ErrorBody(BaseModel):
    """Every error answer."""

    message: str = Field(description="What was wrong and what to do.")
    error_type: str = Field(
        description="invalid_request, limit_exceeded, unauthorized, not_found, "
        "method_not_allowed, unsupported_media_type, timeout, overloaded, unavailable, internal"
    )
    limit: str | None = Field(None, description="The setting that was exceeded, if any.")


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed JSON or invalid fields."},
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    408: {"model": ErrorBody, "description": "The body was not received in time."},
    413: {"model": ErrorBody, "description": "Over a size limit (named in `limit`)."},
    415: {"model": ErrorBody, "description": "A Content-Encoding other than identity."},
    500: {"model": ErrorBody, "description": "The model call failed."},
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


class _TokenTruncator:
    """Cut texts to their first N tokens of a Hugging Face tokenizer, keeping the text as sent.

    A fast tokenizer's offsets give the exact character where token N ends, so the kept text is
    a prefix of the original; a slow tokenizer's first N tokens are decoded instead.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str], limit: int) -> list[str]:
        tok = self.tokenizer
        limit = min(limit, 1 << 30)  # no body holds more tokens; larger overflows the tokenizer
        kwargs: dict[str, Any] = {"add_special_tokens": False}
        if getattr(tok, "truncation_side", "right") == "right":
            kwargs.update(truncation=True, max_length=limit + 1)  # +1: tell "exactly N" from "more"
        if getattr(tok, "is_fast", False):
            offsets = tok(texts, return_offsets_mapping=True, **kwargs)["offset_mapping"]
            return [
                text if len(spans) <= limit else text[: spans[limit - 1][1]]
                for text, spans in zip(texts, offsets, strict=True)
            ]
        ids = tok(texts, **kwargs)["input_ids"]
        return [
            text if len(row) <= limit else tok.decode(row[:limit])
            for text, row in zip(texts, ids, strict=True)
        ]


class _QueueFull(Exception):
    pass


class _Draining(Exception):
    pass


@dataclass(eq=False)
class _Job:
    pairs: list[Pair]
    cost: int
    future: asyncio.Future[tuple[list[float], list[int]]]
    max_doc_tokens: int | None = None


class _Batcher:
    """One worker that merges queued requests into model calls and answers each one."""

    def __init__(
        self,
        reranker: Reranker,
        settings: ServerSettings,
        metrics: _Metrics,
        truncator: _TokenTruncator | None,
    ) -> None:
        self.reranker = reranker
        self.settings = settings
        self.metrics = metrics
        self.truncator = truncator
        window = getattr(reranker, "max_length", None)
        self.window: int | None = window if isinstance(window, int) and window > 0 else None
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
        self.draining = False
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
        cap = self.window
        counts = [_estimate_tokens(q) + _estimate_tokens(d) for q, d in pairs]
        return counts if cap is None else [min(n, cap) for n in counts]

    async def score(
        self, pairs: list[Pair], max_doc_tokens: int | None = None
    ) -> tuple[list[float], list[int]]:
        """Queue ``pairs`` for scoring; return their scores and token counts, in order.

        ``max_doc_tokens`` cuts each document to that many tokens first (needs a truncator).
        """
        if self.draining or self._queue is None:
            raise _Draining()
        future: asyncio.Future[tuple[list[float], list[int]]] = (
            asyncio.get_running_loop().create_future()
        )
        job = _Job(pairs, sum(self._estimate(pairs)), future, max_doc_tokens)
        try:
            self._queue.put_nowait(job)
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
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            scores, tokens = await loop.run_in_executor(self._executor, self._score_sync, live)
        except Exception as exc:
            logger.exception("scoring a batch of %d requests failed", len(live))
            for job in live:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_pairs.observe(len(scores))
        self.metrics.batch_requests.observe(len(live))
        self.metrics.documents.inc(len(scores))
        self.metrics.tokens.inc(sum(tokens))
        start = 0
        for job in live:
            end = start + len(job.pairs)
            if not job.future.done():
                job.future.set_result((scores[start:end], tokens[start:end]))
            start = end

    def _score_sync(self, jobs: list[_Job]) -> tuple[list[float], list[int]]:
        # Runs in the one scoring thread, so the tokenizer is never used by two calls at once.
        pairs: list[Pair] = []
        for job in jobs:
            if job.max_doc_tokens is None or self.truncator is None:
                pairs.extend(job.pairs)
                continue
            docs = self.truncator([d for _, d in job.pairs], job.max_doc_tokens)
            pairs.extend((q, d) for (q, _), d in zip(job.pairs, docs, strict=True))
        if self.reranker.scores_depend_on_call:
            # A cascade ranks the candidates of one call together: keep requests apart.
            scores, start = [], 0
            for job in jobs:
                end = start + len(job.pairs)
                scores += self.reranker.score_pairs(pairs[start:end])
                start = end
        else:
            scores = self.reranker.score_pairs(pairs)
        if self._count_tokens is not None:
            tokens = list(self._count_tokens(pairs))
        else:
            tokens = self._estimate(pairs)
        return scores, tokens


# ------------------------------------------------------------------------------- middleware


class _InFlight:
    """Rerank requests being handled now (the drain waits for them)."""

    def __init__(self) -> None:
        self.count = 0


class _Guard:
    """Pure ASGI middleware: metrics, auth, Content-Encoding, body size and body deadline."""

    def __init__(
        self, app: ASGIApp, *, settings: ServerSettings, metrics: _Metrics, inflight: _InFlight
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.inflight = inflight
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
        counted = path in _RERANK_PATHS
        if counted:
            self.inflight.count += 1

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            error = self._check_auth(scope) if path in _RERANK_PATHS else None
            if error is None and scope["method"] == "POST":
                error = self._check_encoding(scope)
                if error is None:
                    error, receive = await self._read_body(scope, receive)
            if error is not None:
                await error.response()(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            if counted:
                self.inflight.count -= 1
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

    @staticmethod
    def _check_encoding(scope: Scope) -> _HTTPError | None:
        for name, value in scope["headers"]:
            if name == b"content-encoding":
                coding = value.decode("latin-1").strip().lower()
                if coding not in ("", "identity"):
                    return _HTTPError(
                        415,
                        f"Content-Encoding {coding!r} is not supported: send the body "
                        "uncompressed (identity)",
                        "unsupported_media_type",
                    )
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
                    return _invalid("invalid Content-Length header"), receive
        timeout = self.settings.body_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                slow = _HTTPError(
                    408,
                    f"request body not received within body_timeout_s={timeout:g} seconds",
                    "timeout",
                    limit="body_timeout_s",
                    headers={"Connection": "close"},
                )
                return slow, receive
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


def _first_stage_of(docs: Sequence[str | TextDocument]) -> list[float] | None:
    """The documents' first-stage scores when every one carries a score, else ``None``."""
    values = [None if isinstance(d, str) else d.first_stage_score for d in docs]
    if any(v is None for v in values):
        return None
    return [float(v) for v in values if v is not None]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def public_model_name(name: str) -> str:
    """The name to show for a model: a local folder's last component, a hub id unchanged.

    Example:
        >>> public_model_name("/srv/models/ms-marco-MiniLM-L6-v2")
        'ms-marco-MiniLM-L6-v2'
        >>> public_model_name("BAAI/bge-reranker-base")
        'BAAI/bge-reranker-base'
    """
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or "\\" in name
    if looks_local or path.exists():
        return path.name or name
    return name


@dataclass
class _Control:
    """What :func:`run_server` needs from an app: its settings and a way to drain it."""

    settings: ServerSettings
    batcher: _Batcher
    inflight: _InFlight
    model_name: str

    async def drain(self, timeout_s: float | None, stop: Callable[[], bool]) -> None:
        """Refuse new work (health 503) and wait for in-flight requests, up to ``timeout_s``."""
        self.batcher.draining = True
        logger.info("draining: /health answers 503, %d request(s) in flight", self.inflight.count)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not stop():
            elapsed = loop.time() - started
            if timeout_s is not None and elapsed >= timeout_s:
                logger.warning("drain timed out with %d request(s) in flight", self.inflight.count)
                break
            if self.inflight.count == 0 and elapsed >= self.settings.drain_delay_s:
                break
            await asyncio.sleep(0.02)


def create_app(reranker: Reranker, *, settings: ServerSettings | None = None) -> FastAPI:
    """Build the rerank server around ``reranker``.

    Args:
        reranker: Any reranker; its scores are returned on its own scale (for
            :class:`~rerank_core.CrossEncoderScorer` with ``normalize=True``, the default,
            probabilities in [0, 1], as Cohere returns). The server scores every document:
            the reranker's ``rerank_window`` and ``should_rerank`` policy is not applied.
            Cohere v2's ``max_tokens_per_doc`` is honoured with the reranker's Hugging Face
            ``tokenizer`` (the local cross-encoders have one) and refused with 400 otherwise.
        settings: Limits, batching, timeouts and auth; default :class:`ServerSettings` (which
            reads ``RAG_RERANK_API_KEY``).

    Returns:
        A FastAPI application; serve it with :func:`run_server` (``rag-rerank serve`` does), or
        any ASGI server (then without the header deadline and the health-visible drain).

    Example:
        >>> from rerank_core import load_reranker
        >>> app = create_app(load_reranker(backend="onnx-int8"))  # doctest: +SKIP
        >>> run_server(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    if not isinstance(reranker, Reranker):
        raise TypeError(f"reranker must be a rerank_core.Reranker, got {type(reranker).__name__}")
    settings = settings if settings is not None else ServerSettings()
    if not isinstance(settings, ServerSettings):
        raise TypeError(f"settings must be a ServerSettings, got {type(settings).__name__}")
    model_name = settings.model_name or public_model_name(reranker.model_name)
    scale = reranker.score_scale
    tokenizer = getattr(reranker, "tokenizer", None)
    truncator = _TokenTruncator(tokenizer) if callable(tokenizer) else None
    metrics = _Metrics()
    batcher = _Batcher(reranker, settings, metrics, truncator)
    inflight = _InFlight()

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
            # In-flight requests have finished (or the graceful timeout passed); anything still
            # queued is told the server is going away.
            await batcher.stop()
            logger.info("rerank server stopped")

    app = FastAPI(
        title="rag-rerank server",
        version=_version(),
        description=(
            "Cross-encoder reranking over HTTP, compatible with Cohere (v1 and v2), Jina, "
            "SiliconFlow and Hugging Face TEI clients. Send `Authorization: Bearer <key>` when "
            f"the server was started with {API_KEY_ENV}. Every error is "
            "`{message, error_type, limit?}`."
        ),
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.router.route_class = _JSONRoute
    app.add_middleware(_Guard, settings=settings, metrics=metrics, inflight=inflight)
    app.state.rerank_control = _Control(settings, batcher, inflight, model_name)

    @app.exception_handler(RequestValidationError)
    async def _invalid_fields(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(_describe_validation(exc.errors())).response()

    @app.exception_handler(_HTTPError)
    async def _http_error(_: Request, exc: _HTTPError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path, method = request.url.path, request.method
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            known = {r.path for r in app.routes if isinstance(r, APIRoute)} | {"/docs"}
            hint = ""
            if path.rstrip("/") in known and path != path.rstrip("/"):
                hint = f"; did you mean {path.rstrip('/')} (no trailing slash)?"
            error = _HTTPError(404, f"no endpoint at {path}{hint}; see /docs", "not_found")
        elif exc.status_code == 405:
            allowed = headers.get("Allow", "")
            error = _HTTPError(
                405,
                f"{method} is not allowed on {path}; use {allowed}",
                "method_not_allowed",
                headers=headers,
            )
        else:
            kind = "internal" if exc.status_code >= 500 else "invalid_request"
            error = _HTTPError(exc.status_code, str(exc.detail), kind, headers=headers)
        return error.response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error: %r", exc)
        return _HTTPError(500, f"internal error ({type(exc).__name__})", "internal").response()

    async def run(
        query: str, texts: list[str], max_doc_tokens: int | None = None
    ) -> tuple[list[float], list[int]]:
        _check_limits(settings, query, texts)
        try:
            return await batcher.score([(query, t) for t in texts], max_doc_tokens)
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

    def ranking(
        scores: list[float], asked: FusionRequest | None, first: list[float] | None
    ) -> tuple[list[int], list[float] | None]:
        """The result order, and the fused values when a fusion applies."""
        how = reranker.fusion if asked is None else asked.to_fusion()
        if how is None:
            return _order(scores), None
        if how.method == "linear" and how.evidence == "score" and first is None:
            raise _invalid(
                f"this server's fusion {how.spec()!r} needs a first_stage_score on every "
                "document (send documents as objects with one), or send a fusion"
            )
        fused = how.fuse(scores, scale=scale, first_stage_scores=first)
        return _order(fused), fused

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
        docs = [body.documents] if isinstance(body.documents, str) else body.documents
        texts = [d if isinstance(d, str) else d.text for d in docs]
        scores, tokens = await run(body.query, texts)
        order, fused = ranking(scores, body.fusion, _first_stage_of(docs))
        results = []
        for i in order[: body.top_n]:
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if fused is not None:
                item["fused_score"] = fused[i]
            if body.return_documents:
                doc = docs[i]
                item["document"] = (
                    {"text": doc} if isinstance(doc, str) else doc.model_dump(exclude_unset=True)
                )
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
        if body.max_tokens_per_doc is not None and truncator is None:
            raise _invalid(
                f"max_tokens_per_doc is not available: this server's reranker "
                f"({type(reranker).__name__}) has no tokenizer to count tokens with; leave it "
                "out (documents are truncated to the model's window)"
            )
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        scores, tokens = await run(body.query, texts, body.max_tokens_per_doc)
        order, fused = ranking(scores, body.fusion, _first_stage_of(body.documents))
        used = sum(tokens)
        results = []
        for i in order[: body.top_n]:
            item = {"index": i, "relevance_score": scores[i]}
            if fused is not None:
                item["fused_score"] = fused[i]
            results.append(item)
        return JSONResponse(
            {
                "id": str(uuid.uuid4()),
                "model": model_name,
                "results": results,
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
            raise _invalid(
                "raw_scores=true is not available: this server returns probabilities; start it "
                "with `rag-rerank serve --raw-scores` for logits"
            )
        scores, _ = await run(body.query, body.texts)
        order, fused = ranking(scores, body.fusion, None)
        if not body.raw_scores and scale == "logit":
            scores = [_sigmoid(s) for s in scores]
        out = []
        for i in order:
            item: dict[str, Any] = {"index": i, "score": scores[i]}
            if fused is not None:
                item["fused_score"] = fused[i]
            if body.return_text:
                item["text"] = body.texts[i]
            out.append(item)
        return JSONResponse(out)

    @app.get(
        "/health",
        summary="Liveness and readiness",
        response_model=Health,
        responses={503: {"model": Health, "description": "Draining (shutting down) or down."}},
    )
    async def health() -> JSONResponse:
        ok = batcher.alive and not batcher.draining
        return JSONResponse(
            {
                "status": "ok" if ok else "draining" if batcher.draining else "down",
                "model": model_name,
                "score_scale": scale,
                "fusion": "none" if reranker.fusion is None else reranker.fusion.spec(),
                "batching": settings.batching,
                "queue_depth": batcher.depth,
                "queue_capacity": settings.max_queue,
            },
            status_code=200 if ok else 503,
        )

    identity = reranker.identity()
    info = {
        "model_id": model_name,
        "model_sha": None,
        "model_dtype": str(identity.get("dtype") or identity.get("quantize") or "float32"),
        "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
        "max_concurrent_requests": settings.max_queue,
        "max_input_length": batcher.window or settings.max_document_chars,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_batch_requests": None,
        "max_client_batch_size": settings.max_documents,
        "auto_truncate": True,
        "tokenization_workers": 1,
        "version": _version(),
        "sha": None,
        "docker_label": None,
    }

    @app.get("/info", summary="Served model (TEI's /info shape)", response_model=TEIInfo)
    async def tei_info() -> JSONResponse:
        return JSONResponse(info)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _describe_server(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                ),
                settings,
                can_truncate=truncator is not None,
                probabilities=scale == "probability",
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _describe_server(
    schema: dict[str, Any], settings: ServerSettings, *, can_truncate: bool, probabilities: bool
) -> dict[str, Any]:
    """Make FastAPI's OpenAPI document state what this server really accepts and answers."""
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            responses = op.get("responses", {})
            responses.pop("422", None)  # validation errors are answered 400
            if path in _RERANK_PATHS:
                if settings.api_key:
                    op["security"] = [{"bearerAuth": []}]
                else:
                    responses.pop("401", None)
    components = schema.setdefault("components", {})
    models = components.get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        models.pop(unused, None)
    if settings.api_key:
        components["securitySchemes"] = {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": f"The key the server was started with ({API_KEY_ENV}).",
            }
        }
    most, chars = settings.max_documents, settings.max_document_chars
    for name, docs in (
        ("RerankRequestV1", "documents"),
        ("RerankRequestV2", "documents"),
        ("RerankRequestTEI", "texts"),
    ):
        props = models.get(name, {}).get("properties", {})
        if "query" in props:
            props["query"]["maxLength"] = chars
        if docs in props:
            _cap(props[docs], most, chars)
    text = models.get("TextDocument", {}).get("properties", {}).get("text")
    if text is not None:
        text["maxLength"] = chars
    if not can_truncate:
        models.get("RerankRequestV2", {}).get("properties", {}).pop("max_tokens_per_doc", None)
    raw = models.get("RerankRequestTEI", {}).get("properties", {}).get("raw_scores")
    if raw is not None and probabilities:
        raw["enum"] = [False]
        raw["description"] = "Only false: this server returns probabilities."
    return schema


def _cap(prop: dict[str, Any], max_items: int, max_chars: int) -> None:
    """Add ``maxItems`` to the array branches of ``prop`` and ``maxLength`` to its strings."""
    for branch in [prop, *prop.get("anyOf", [])]:
        if branch.get("type") == "array":
            branch["maxItems"] = max_items
            items = branch.get("items", {})
            for item in [items, *items.get("anyOf", [])]:
                if item.get("type") == "string":
                    item["maxLength"] = max_chars
        elif branch.get("type") == "string":
            branch["maxLength"] = max_chars


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


# ------------------------------------------------------------------------------- serving


def _timeout_body(seconds: float) -> bytes:
    body = json.dumps(
        {
            "message": f"request headers not received within header_timeout_s={seconds:g} seconds",
            "error_type": "timeout",
            "limit": "header_timeout_s",
        }
    ).encode("utf-8")
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _with_header_timeout(base: Any, seconds: float) -> Any:
    """A subclass of uvicorn's HTTP protocol that closes connections slow to send headers.

    uvicorn bounds only idle kept-alive connections; a client that connects and sends nothing,
    or sends half a request line and stops, holds its socket forever. The deadline is armed when
    the connection opens and when a later request on it starts arriving, and disarmed when the
    request's headers are complete (the body has :attr:`ServerSettings.body_timeout_s`).
    """
    reply = _timeout_body(seconds)

    class _HeaderDeadline(base):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._awaiting_headers():
                self._cancel_header_timer()
            elif self._header_timer is None:
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete)

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(seconds, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.write(reply)
                self.transport.close()

    return _HeaderDeadline


def build_server(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    graceful_timeout_s: int = 30,
    access_log: bool = False,
    log_level: str = "info",
) -> uvicorn.Server:
    """A ``uvicorn.Server`` for an app made by :func:`create_app`, with two additions.

    - A header deadline (:attr:`ServerSettings.header_timeout_s`): a client that connects and
      stalls is answered 408 and disconnected.
    - A drain on shutdown (SIGTERM, or ``server.should_exit = True``): the listening socket stays
      open while in-flight requests finish (up to ``graceful_timeout_s``, and for at least
      :attr:`ServerSettings.drain_delay_s`); meanwhile ``/health`` answers 503 ``draining`` and
      new rerank requests 503 with ``Retry-After``. Then uvicorn's own graceful shutdown runs.

    Call ``.run()`` on the result (or ``.run(sockets=[sock])`` for a socket bound elsewhere).
    """
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    control: _Control = app.state.rerank_control
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_with_header_timeout(AutoHTTPProtocol, control.settings.header_timeout_s),
        timeout_graceful_shutdown=graceful_timeout_s,
        access_log=access_log,
        log_level=log_level,
    )

    class _DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            await control.drain(graceful_timeout_s, lambda: bool(self.force_exit))
            await super().shutdown(sockets=sockets)

    return _DrainingServer(config)


def run_server(app: FastAPI, **kwargs: Any) -> None:
    """Serve ``app`` until SIGTERM/SIGINT; ``kwargs`` as for :func:`build_server`."""
    build_server(app, **kwargs).run()
