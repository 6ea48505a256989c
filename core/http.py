"""Hosted and self-hosted rerank APIs behind the :class:`~rerank_core.Reranker` interface.

One class, :class:`HTTPReranker`, talks to every supported service. What differs between them
(URL, request field names, response layout, limits, key variable) lives in one table,
:data:`PROVIDERS`, so adding a service means adding a row, not a branch.

Every request has a deadline (``timeout=``) covering the whole exchange, its retries and the
waits between them. Connect errors, dropped connections, 408, 429 and 5xx are retried with
exponential backoff and jitter (or exactly the server's ``Retry-After``); other 4xx are not.
Answers are read as a stream and capped at ``max_response_bytes``. A response whose results do
not give one finite score for each document sent raises :class:`RemoteResponseError` naming the
provider. The API key is sent only in the ``Authorization`` header: it is never logged, never
appears in a repr, an error message or the object's attributes, and is never pickled.
"""

from __future__ import annotations

import asyncio
import copy
import email.utils
import json
import logging
import math
import os
import ssl
import threading
import time
import weakref
from collections.abc import Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from rerank_core import __version__
from rerank_core.base import Batch, Pair, Reranker, RerankerError, ScoringError, _batch_of
from rerank_core.validation import check_positive_int

try:
    import httpx
    from tenacity import (
        AsyncRetrying,
        RetryCallState,
        stop_after_attempt,
        wait_exponential_jitter,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "HTTPReranker needs httpx and tenacity: pip install 'rag-rerank[remote]'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

__all__ = [
    "PROVIDERS",
    "HTTPReranker",
    "ProviderSpec",
    "RemoteRerankError",
    "RemoteResponseError",
    "RemoteTimeoutError",
]

_USER_AGENT = f"rag-rerank/{__version__}"
_BODY_EXCERPT = 300  # characters of a server's text kept in an error message
_ERROR_BODY_BYTES = 64 * 1024  # most of an error answer read: enough for its message
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024


_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def _shared_ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes a noticeable fraction of a second; every client shares one.
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context()
        return _ssl_context


class _Secret:
    """An API key that never shows itself: its repr is masked and it refuses to be pickled.

    The plain value is read only where a request header is built, so ``vars()`` of the reranker,
    error reporters that capture locals, and debuggers see ``_Secret('***')``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('***')"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("an API key is never pickled")

    def __copy__(self) -> _Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Secret:
        return self


class _BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer`` to each request, so no client holds the plain key."""

    def __init__(self, secret: _Secret) -> None:
        self._secret = secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._secret.reveal()}"
        yield request


class _LoopThread:
    """One event loop in a daemon thread, on which the sync path's requests run.

    A blocking httpx request cannot be stopped from outside: its timeouts apply to each socket
    operation, so a server that sends one byte at a time keeps it alive for ever. A request on an
    event loop can be cancelled at any point, so running the sync path here gives both paths the
    same wall-clock deadline with public APIs only. Started on the first sync request; a forked
    child starts its own.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def started(self) -> asyncio.AbstractEventLoop | None:
        """The loop if it runs already (never starts it)."""
        return self._loop

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="rag-rerank-http", daemon=True
                ).start()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and wait for it; an interrupted wait cancels it."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise


class _Deadline:
    """The deadline of one call, shared by all its requests; it starts with the first of them.

    Starting it there, not when the call begins, keeps one-time setup (loading the CA bundle,
    building the first client) out of the time the server is given.
    """

    __slots__ = ("_at", "_lock", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at: float | None = None
        self._lock = threading.Lock()

    def at(self) -> float:
        """The deadline as a ``time.monotonic()`` value, started on the first call."""
        with self._lock:
            if self._at is None:
                self._at = time.monotonic() + self.seconds
            return self._at


_RUNNER = _LoopThread()
_NOT_JSON = object()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RUNNER._reset)


# --------------------------------------------------------------------------- provider table


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """Request and response shape of one rerank service.

    Attributes:
        name: Preset name passed to :class:`HTTPReranker`.
        base_url: Default base URL; ``None`` means the caller must give one.
        path: Path of the rerank endpoint under the base URL.
        key_env: Environment variables read, in order, when no key is passed.
        key_required: Whether a request without a key is refused before it is sent.
        default_model: Model sent when none is given; ``None`` sends no model field.
        model_field: Request field naming the model; ``None`` when the service has none.
        documents_field: Request field holding the document texts.
        results_field: Response field holding the result list; ``None`` for a bare list.
        score_field: Field of each result holding the score.
        top_n_field: Request field for the number of results, set to every document sent so
            that each document comes back with a score; ``None`` when the service has none.
        return_documents_field: Request flag asking for the texts back, sent as ``false``
            because the caller's documents stay on this side; ``None`` when there is none.
        max_documents: Most documents sent in one request; bigger inputs are split.
        options: Optional request fields this service accepts (see :class:`HTTPReranker`).
        instruction_models: Model-name prefixes that use ``instruction``.
        score_scale: What the default scores mean, for the docs and ``describe()``.
        scale: The default scores' scale, one of :data:`~rerank_core.base.SCORE_SCALES`;
            ``raw_scores=True`` turns a ``"probability"`` preset into ``"logit"``.
    """

    name: str
    base_url: str | None
    path: str
    key_env: tuple[str, ...]
    key_required: bool
    default_model: str | None
    model_field: str | None
    documents_field: str
    results_field: str | None
    score_field: str
    top_n_field: str | None
    return_documents_field: str | None
    max_documents: int
    options: frozenset[str] = field(default_factory=frozenset)
    instruction_models: tuple[str, ...] = ()
    score_scale: str = "relevance in [0, 1]"
    scale: str = "probability"


#: Every supported service, by preset name. Document limits marked "conservative" are not
#: published by the service; pass ``max_documents_per_request`` to change them.
PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec(
            name="siliconflow",
            base_url="https://api.siliconflow.cn/v1",
            path="/rerank",
            key_env=("SILICONFLOW_API_KEY",),
            key_required=True,
            default_model="BAAI/bge-reranker-v2-m3",
            model_field="model",
            documents_field="documents",
            results_field="results",
            score_field="relevance_score",
            top_n_field="top_n",
            return_documents_field="return_documents",
            max_documents=100,  # conservative
            options=frozenset({"instruction", "max_chunks_per_doc", "overlap_tokens"}),
            instruction_models=("Qwen/Qwen3-Reranker",),
        ),
        ProviderSpec(
            name="cohere",
            base_url="https://api.cohere.com/v2",
            path="/rerank",
            key_env=("CO_API_KEY", "COHERE_API_KEY"),
            key_required=True,
            default_model="rerank-v3.5",
            model_field="model",
            documents_field="documents",
            results_field="results",
            score_field="relevance_score",
            top_n_field="top_n",
            return_documents_field=None,
            max_documents=1000,  # the service's long-standing recommended maximum
            options=frozenset({"max_tokens_per_doc"}),
        ),
        ProviderSpec(
            name="jina",
            base_url="https://api.jina.ai/v1",
            path="/rerank",
            key_env=("JINA_API_KEY",),
            key_required=True,
            default_model="jina-reranker-v2-base-multilingual",
            model_field="model",
            documents_field="documents",
            results_field="results",
            score_field="relevance_score",
            top_n_field="top_n",
            return_documents_field="return_documents",
            max_documents=1000,  # conservative
        ),
        ProviderSpec(
            name="tei",
            base_url="http://127.0.0.1:8080",
            path="/rerank",
            key_env=(),
            key_required=False,
            default_model=None,
            model_field=None,
            documents_field="texts",
            results_field=None,
            score_field="score",
            top_n_field=None,
            return_documents_field="return_text",
            max_documents=32,  # the server's default --max-client-batch-size
            options=frozenset({"truncate", "raw_scores", "truncation_direction"}),
            score_scale="sigmoid probability in [0, 1] (raw logit with raw_scores=True)",
        ),
        ProviderSpec(
            name="infinity",
            base_url="http://127.0.0.1:7997",
            path="/rerank",
            key_env=("INFINITY_API_KEY",),
            key_required=False,
            default_model=None,
            model_field="model",
            documents_field="documents",
            results_field="results",
            score_field="relevance_score",
            top_n_field="top_n",
            return_documents_field="return_documents",
            max_documents=1000,  # conservative
            options=frozenset({"raw_scores"}),
            score_scale="sigmoid probability in [0, 1] (raw logit with raw_scores=True)",
        ),
        ProviderSpec(
            name="generic",
            base_url=None,
            path="/v1/rerank",
            key_env=(),
            key_required=False,
            default_model=None,
            model_field="model",
            documents_field="documents",
            results_field="results",
            score_field="relevance_score",
            top_n_field="top_n",
            return_documents_field=None,
            max_documents=1000,
            score_scale="as the server defines it",
            scale="unknown",
        ),
    )
}

_OPTION_NAMES = (
    "instruction",
    "max_chunks_per_doc",
    "overlap_tokens",
    "max_tokens_per_doc",
    "truncate",
    "raw_scores",
    "truncation_direction",
)


# --------------------------------------------------------------------------- errors


class RemoteRerankError(RerankerError):
    """A rerank API call failed.

    Attributes:
        provider: Preset name of the service.
        status: HTTP status of the last response, ``None`` when none came back.
        attempts: How many requests were made before giving up.
        retry_after: Seconds the server asked to wait, when it said.
    """

    def __init__(
        self,
        detail: str,
        *,
        provider: str,
        status: int | None = None,
        attempts: int = 1,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.provider = provider
        self.status = status
        self.attempts = attempts
        self.retry_after = retry_after
        self.retryable = retryable

    def __str__(self) -> str:
        tries = f"{self.attempts} attempt" + ("" if self.attempts == 1 else "s")
        return f"{self.provider}: {self.detail} (after {tries})"


class RemoteTimeoutError(RemoteRerankError):
    """The service did not answer within the timeout (not retried: a slow server gets slower)."""


class RemoteResponseError(RemoteRerankError, ScoringError):
    """The service answered 2xx with something that is not one finite score per document."""


# --------------------------------------------------------------------------- helpers


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _check_option(name: str, value: Any) -> None:
    if value is None:
        return
    if name in ("max_chunks_per_doc", "overlap_tokens", "max_tokens_per_doc"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
    elif name in ("truncate", "raw_scores"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool or None, got {value!r}")
    elif not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")


# --------------------------------------------------------------------------- the reranker


class HTTPReranker(Reranker):
    """Rerank through a hosted or self-hosted rerank API, with sync and truly async paths.

    Presets (see :data:`PROVIDERS`): ``"siliconflow"``, ``"cohere"`` (v2 API), ``"jina"``,
    ``"tei"`` (Hugging Face text-embeddings-inference), ``"infinity"``, and ``"generic"``: any
    Cohere-shaped ``/v1/rerank`` endpoint at ``base_url`` (such as ``rag-rerank serve``).

    Each request asks for a score for every document it carries (``top_n`` = documents sent),
    so the result is checked to be complete; the caller's ``top_n`` and ``score_threshold`` are
    then applied by :meth:`rerank`. Inputs larger than the service's per-request limit are split
    per query, sent concurrently (at most ``max_concurrency`` at a time) and merged back in input
    order. Scores are plain floats on the service's scale (a probability in [0, 1] for the
    hosted presets' defaults).

    Args:
        provider: Preset name.
        model: Model to ask for; default: the preset's (``BAAI/bge-reranker-v2-m3`` on
            SiliconFlow, ``rerank-v3.5`` on Cohere, ``jina-reranker-v2-base-multilingual`` on
            Jina; none for self-hosted servers, which serve their own).
        api_key: Secret key; default: the preset's environment variable
            (``SILICONFLOW_API_KEY``, ``CO_API_KEY`` or ``COHERE_API_KEY``, ``JINA_API_KEY``,
            ``INFINITY_API_KEY``). Sent as a bearer token only.
        base_url: Service root, overriding the preset's (required for ``"generic"``).
        path: Endpoint path under ``base_url``, overriding the preset's.
        timeout: Deadline in seconds for a whole call (:meth:`score`, :meth:`rerank`,
            :meth:`score_pairs` and their async twins): from its first request to the last byte
            of the last answer, every request it is split into, every retry and every wait
            between retries included (one-time setup, such as loading the CA bundle on a
            process's first call, is not counted). It is not a limit per socket operation,
            which a server sending one byte at a time would never reach. Past it the call's
            requests are abandoned and :class:`RemoteTimeoutError` is raised; a retry whose
            wait would end past it is not made, and the error that called for it is raised at
            once.
        max_response_bytes: Largest answer accepted, in bytes after decompression (default
            8 MiB; a full answer for 1,000 documents is well under 100 KiB). Answers are read
            as a stream: one that declares or sends more raises :class:`RemoteResponseError`
            as soon as that is known, without reading the rest.
        max_attempts: Requests made at most for one batch, the first included.
        backoff: First backoff in seconds; it doubles each retry, plus up to ``backoff`` of
            random jitter.
        max_backoff: Longest backoff in seconds.
        max_retry_after: Longest ``Retry-After`` honoured; a server asking for more fails at
            once with :class:`RemoteRerankError` carrying ``retry_after``.
        max_documents_per_request: Documents per request; default: the preset's limit.
        max_concurrency: Requests in flight at once for one call.
        instruction: Task instruction, for models that use one (SiliconFlow documents it for
            Qwen3-Reranker models); refused for other models, which would ignore it.
        max_chunks_per_doc: SiliconFlow: chunks a long document is split into.
        overlap_tokens: SiliconFlow: tokens shared by neighbouring chunks.
        max_tokens_per_doc: Cohere: tokens of a document kept before truncation.
        truncate: TEI: truncate inputs longer than the model's limit instead of failing.
        raw_scores: TEI, infinity: return raw logits instead of sigmoid probabilities.
        truncation_direction: TEI: ``"Left"`` or ``"Right"``.
        extra_body: Further request fields, sent as given (they may not replace the query,
            documents, model or top_n fields).
        rerank_window: See :class:`~rerank_core.Reranker`.
        should_rerank: See :class:`~rerank_core.Reranker`.

    Raises:
        ValueError: unknown preset, missing required key or base URL, an option the service or
            model does not take, or a bad number.

    Example:
        >>> from rerank_core import HTTPReranker
        >>> reranker = HTTPReranker("siliconflow")  # key from SILICONFLOW_API_KEY
        >>> results = await reranker.arerank(query, docs, top_n=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        provider: str = "siliconflow",
        *,
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        path: str | None = None,
        timeout: float = 30.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_attempts: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        max_retry_after: float = 60.0,
        max_documents_per_request: int | None = None,
        max_concurrency: int = 4,
        instruction: str | None = None,
        max_chunks_per_doc: int | None = None,
        overlap_tokens: int | None = None,
        max_tokens_per_doc: int | None = None,
        truncate: bool | None = None,
        raw_scores: bool | None = None,
        truncation_direction: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        rerank_window: int | None = None,
        should_rerank: Callable[[str], bool] | None = None,
    ) -> None:
        spec = PROVIDERS.get(provider) if isinstance(provider, str) else None
        if spec is None:
            raise ValueError(f"unknown provider {provider!r}; choose one of {sorted(PROVIDERS)}")
        self.spec = spec
        self.provider = spec.name

        per_request = max_documents_per_request
        if per_request is None:
            per_request = spec.max_documents
        elif isinstance(per_request, bool) or not isinstance(per_request, int) or per_request < 1:
            raise ValueError(
                f"max_documents_per_request must be a positive int or None, got {per_request!r}"
            )
        super().__init__(
            batch_size=per_request,
            max_concurrency=max_concurrency,
            rerank_window=rerank_window,
            should_rerank=should_rerank,
        )
        check_positive_int("max_attempts", max_attempts, allow_none=False)
        for name, number in (
            ("timeout", timeout),
            ("backoff", backoff),
            ("max_backoff", max_backoff),
            ("max_retry_after", max_retry_after),
        ):
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ValueError(f"{name} must be a number of seconds, got {number!r}")
            if not math.isfinite(number) or number < 0 or (name == "timeout" and number == 0):
                raise ValueError(f"{name} must be a finite, non-negative number, got {number!r}")
        self.timeout = float(timeout)
        self.max_response_bytes = check_positive_int(
            "max_response_bytes", max_response_bytes, allow_none=False
        )
        self.max_attempts = max_attempts
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retry_after = float(max_retry_after)

        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ValueError(f"model must be a non-empty string or None, got {model!r}")
        if model is not None and spec.model_field is None:
            raise ValueError(f"{spec.name}: the server serves one model; do not pass model")
        self.model = model or spec.default_model
        self.model_name = f"{spec.name}:{self.model}" if self.model else spec.name

        root = base_url or spec.base_url
        if not root:
            raise ValueError(f"{spec.name}: base_url is required (for example http://host:8000)")
        if not isinstance(root, str) or not root.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {root!r}")
        self.url = root.rstrip("/") + "/" + (path or spec.path).lstrip("/")

        self._api_key = self._resolve_key(api_key)

        options: dict[str, Any] = {
            "instruction": instruction,
            "max_chunks_per_doc": max_chunks_per_doc,
            "overlap_tokens": overlap_tokens,
            "max_tokens_per_doc": max_tokens_per_doc,
            "truncate": truncate,
            "raw_scores": raw_scores,
            "truncation_direction": truncation_direction,
        }
        self.options: dict[str, Any] = {}
        for name in _OPTION_NAMES:
            value = options[name]
            if value is None:
                continue
            _check_option(name, value)
            if name not in spec.options:
                accepted = ", ".join(sorted(spec.options)) or "none"
                raise ValueError(f"{spec.name} does not take {name}; options it takes: {accepted}")
            self.options[name] = value
        if instruction is not None and not (
            self.model and self.model.startswith(spec.instruction_models)
        ):
            raise ValueError(
                f"{spec.name}: instruction is used only by models starting with "
                f"{', '.join(spec.instruction_models)}; {self.model} would ignore it"
            )
        reserved = {spec.documents_field, "query"} | {
            f for f in (spec.model_field, spec.top_n_field) if f
        }
        extra = dict(extra_body or {})
        clash = sorted(reserved & extra.keys())
        if clash:
            raise ValueError(f"extra_body may not set {clash}; they are filled in per request")
        self.extra_body = extra

        self._init_clients()

    def _init_clients(self) -> None:
        self._lock = threading.Lock()
        # An AsyncClient belongs to the event loop it runs on: one per live loop (the sync
        # path's requests run on the loop of ``_RUNNER``).
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._aclients = weakref.WeakKeyDictionary()

    # ----------------------------------------------------------------- copies and pickling

    _UNCOPIED = ("_lock", "_aclients", "_api_key")

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the key and the connections: the key is never pickled.

        An unpickled reranker reads its key again from the preset's environment variables
        (``SILICONFLOW_API_KEY``, ...), as a new one built without ``api_key=`` would; so a
        worker process needs that variable set. A reranker holding a key for a preset with no
        such variable (``"tei"``, ``"generic"``) refuses to be pickled: build it in the worker.
        ``copy.copy`` and ``copy.deepcopy`` keep the key (nothing leaves the process).
        """
        if self._api_key is not None and not self.spec.key_env:
            raise TypeError(
                f"cannot pickle an HTTPReranker for {self.provider!r} holding an API key: the key "
                "is never pickled and this preset has no environment variable to read it from "
                "again; build the reranker in the process that uses it"
            )
        state = {k: v for k, v in vars(self).items() if k not in self._UNCOPIED}
        state["_had_key"] = self._api_key is not None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        had_key = state.pop("_had_key", False)
        self.__dict__.update(state)
        self._init_clients()
        self._api_key = self._key_from_env()
        if had_key and self._api_key is None:
            raise ValueError(
                f"{self.provider}: the API key is never pickled and none was found here: set "
                + " or ".join(self.spec.key_env)
                + " in this process"
            )

    def __copy__(self) -> HTTPReranker:
        new = object.__new__(type(self))
        new.__dict__.update({k: v for k, v in vars(self).items() if k not in self._UNCOPIED})
        new._init_clients()
        new._api_key = self._api_key
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> HTTPReranker:
        new = object.__new__(type(self))
        memo[id(self)] = new
        for k, v in vars(self).items():
            if k not in self._UNCOPIED:
                setattr(new, k, copy.deepcopy(v, memo))
        new._init_clients()
        new._api_key = self._api_key
        return new

    # ----------------------------------------------------------------- configuration

    def _resolve_key(self, api_key: str | None) -> _Secret | None:
        spec = self.spec
        if api_key is not None:
            if not isinstance(api_key, str) or not api_key.strip():
                raise ValueError("api_key must be a non-empty string or None")
            return _Secret(api_key.strip())
        secret = self._key_from_env()
        if secret is None and spec.key_required:
            raise ValueError(
                f"{spec.name} needs an API key: pass api_key= or set " + " or ".join(spec.key_env)
            )
        return secret

    def _key_from_env(self) -> _Secret | None:
        for var in self.spec.key_env:
            value = os.environ.get(var, "").strip()
            if value:
                return _Secret(value)
        return None

    def _redact(self, text: str) -> str:
        """Remove the key from text that came from the server (some echo request headers).

        Always applied to the whole text before it is cut, so a cut never leaves part of a key.
        """
        if self._api_key is not None:
            key = self._api_key.reveal()
            # As sent, and as JSON echoes of the header may spell it (``/`` escaped or not).
            for form in sorted(
                {key, json.dumps(key)[1:-1], key.replace("/", "\\/")}, key=len, reverse=True
            ):
                text = text.replace(form, "***")
        return text

    def _excerpt(self, text: str, *, complete: bool = True) -> str:
        """``text`` redacted, then cut to a few hundred characters for an error message.

        ``complete=False`` says ``text`` is the start of something longer: a key cut by that
        earlier boundary is dropped as well.
        """
        text = self._redact(text)
        if not complete and self._api_key is not None:
            key = self._api_key.reveal()
            for k in range(min(len(key) - 1, len(text)), 0, -1):
                if text.endswith(key[:k]):
                    text = text[:-k]
                    break
        text = text.strip()
        if len(text) > _BODY_EXCERPT:
            text = text[:_BODY_EXCERPT] + "..."
        return text

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        spec = self.spec
        body: dict[str, Any] = dict(self.extra_body)
        if spec.model_field and self.model:
            body[spec.model_field] = self.model
        body["query"] = query
        body[spec.documents_field] = documents
        if spec.top_n_field:
            body[spec.top_n_field] = len(documents)
        if spec.return_documents_field:
            body[spec.return_documents_field] = False
        body.update(self.options)
        return body

    # ----------------------------------------------------------------- batching

    def _prepare(self, pairs: Sequence[Pair]) -> list[Batch]:
        """One request per query and chunk of at most ``batch_size`` documents, input order."""
        by_query: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(i)
        size = self.batch_size
        deadline = _Deadline(self.timeout)  # one for the whole call: see ``timeout``
        return [
            _batch_of(pairs, indices[start : start + size], deadline)
            for indices in by_query.values()
            for start in range(0, len(indices), size)
        ]

    def _split(self, pairs: Sequence[Pair]) -> tuple[str, list[str]]:
        queries = {q for q, _ in pairs}
        if len(queries) != 1:
            raise ValueError(f"one request carries one query; got {len(queries)} queries")
        return pairs[0][0], [d for _, d in pairs]

    # ----------------------------------------------------------------- one request

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        return _RUNNER.run(self._request(pairs, _Deadline(self.timeout)))

    def _score_batch(self, batch: Batch) -> list[float]:
        return _RUNNER.run(self._request(batch.pairs, self._deadline_of(batch)))

    async def _ascore_batch(self, batch: Batch) -> list[float]:
        return await self._request(batch.pairs, self._deadline_of(batch))

    def _deadline_of(self, batch: Batch) -> _Deadline:
        # _prepare gives every batch of a call the call's deadline.
        if isinstance(batch.payload, _Deadline):
            return batch.payload
        return _Deadline(self.timeout)

    async def _request(self, pairs: Sequence[Pair], deadline: _Deadline) -> list[float]:
        """One request with its retries, all before the call's deadline."""
        query, documents = self._split(pairs)
        body = self._body(query, documents)
        client = await self._async_client()
        at = deadline.at()
        made = [0]  # requests started, for the error message
        remaining = at - time.monotonic()
        if remaining > 0:
            try:
                return await asyncio.wait_for(
                    self._attempts(client, body, len(documents), at, made), remaining
                )
            except asyncio.TimeoutError:
                pass
        # Raised outside the handler, so no exception (nor the request it holds) is chained.
        raise self._deadline_error(made[0])

    async def _attempts(
        self,
        client: httpx.AsyncClient,
        body: dict[str, Any],
        n: int,
        deadline: float,
        made: list[int],
    ) -> list[float]:
        async for attempt in AsyncRetrying(**self._retry_policy(deadline)):
            with attempt:
                made[0] = attempt.retry_state.attempt_number
                return await self._attempt(client, body, n, made[0], deadline)
        raise AssertionError("unreachable: the retry loop returns or raises")

    async def _attempt(
        self, client: httpx.AsyncClient, body: dict[str, Any], n: int, number: int, deadline: float
    ) -> list[float]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._deadline_error(number)
        failure: RemoteRerankError
        try:
            # Each socket operation may use what is left; wait_for in _request ends the rest.
            async with client.stream("POST", self.url, json=body, timeout=remaining) as response:
                raw, complete = await self._receive(response, number)
        except httpx.HTTPError as exc:
            failure = self._transport_error(exc, number)
        else:
            return self._answer(response.status_code, response.headers, raw, complete, n, number)
        raise failure

    async def _receive(self, response: httpx.Response, attempt: int) -> tuple[bytes, bool]:
        """The answer's bytes, read up to the cap, and whether they are all of it.

        A 2xx answer over ``max_response_bytes`` raises; of an error answer only the start is
        kept, for its message.
        """
        status = response.status_code
        ok = 200 <= status < 300
        limit = self.max_response_bytes if ok else min(self.max_response_bytes, _ERROR_BODY_BYTES)
        declared = response.headers.get("Content-Length", "").strip()
        if ok and declared.isdigit() and int(declared) > limit:
            raise self._too_large(f"it declares {int(declared):,} bytes", status, attempt)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                if ok:
                    raise self._too_large(f"more than {limit:,} bytes arrived", status, attempt)
                chunks.append(chunk[: len(chunk) - (size - limit)])
                return b"".join(chunks), False
            chunks.append(chunk)
        return b"".join(chunks), True

    def _too_large(self, what: str, status: int, attempt: int) -> RemoteResponseError:
        return self._bad(
            f"response from {self.url} is larger than max_response_bytes="
            f"{self.max_response_bytes:,} ({what}); stopped reading it",
            status,
            attempt,
        )

    def _retry_policy(self, deadline: float) -> dict[str, Any]:
        backoff = wait_exponential_jitter(
            initial=self.backoff, max=self.max_backoff, jitter=self.backoff
        )
        planned: dict[int, float] = {}  # attempt number -> wait chosen before retrying it

        def should_retry(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, RemoteRerankError) or not exc.retryable:
                return False
            if exc.retry_after is not None and exc.retry_after > self.max_retry_after:
                return False
            if state.attempt_number >= self.max_attempts:
                return False
            delay = exc.retry_after if exc.retry_after is not None else float(backoff(state))
            if time.monotonic() + delay >= deadline:
                exc.detail += (
                    f"; not retried: waiting {delay:.2f} s would pass the "
                    f"{self.timeout:g} s deadline (timeout=)"
                )
                exc.args = (exc.detail,)
                return False
            planned[state.attempt_number] = delay
            return True

        def wait(state: RetryCallState) -> float:
            return planned.get(state.attempt_number, 0.0)

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            # ``detail`` holds server text only redacted and cut (see _excerpt).
            detail = exc.detail if isinstance(exc, RemoteRerankError) else type(exc).__name__
            logger.warning(
                "%s: %s; retrying in %.2f s (attempt %d of %d)",
                self.provider,
                detail,
                delay,
                state.attempt_number + 1,
                self.max_attempts,
            )

        return {
            "stop": stop_after_attempt(self.max_attempts),
            "wait": wait,
            "retry": should_retry,
            "before_sleep": log_retry,
            "reraise": True,
        }

    def _deadline_error(self, attempt: int) -> RemoteTimeoutError:
        return RemoteTimeoutError(
            f"no complete answer from {self.url} within the {self.timeout:g} s deadline "
            "(timeout=, which covers the whole request with its retries)",
            provider=self.provider,
            attempts=attempt,
        )

    def _transport_error(self, exc: httpx.HTTPError, attempt: int) -> RemoteRerankError:
        if isinstance(exc, httpx.TimeoutException):
            # Every operation was given only what was left of the deadline.
            return self._deadline_error(attempt)
        kind = type(exc).__name__
        # Some messages quote what the server sent (h11 quotes a malformed status line).
        reason = self._excerpt(str(exc)) or kind
        # Connect failures and dropped connections: reranking has no side effects, so a
        # retried POST is safe.
        return RemoteRerankError(
            f"connection to {self.url} failed: {kind}: {reason}",
            provider=self.provider,
            attempts=attempt,
            retryable=isinstance(exc, httpx.TransportError),
        )

    def _answer(
        self,
        status: int,
        headers: httpx.Headers,
        raw: bytes,
        complete: bool,
        n_documents: int,
        attempt: int,
    ) -> list[float]:
        """Scores from an answer's status, headers and (possibly only the start of its) body."""
        if status >= 400 or status < 200:
            excerpt = self._excerpt(raw.decode("utf-8", "replace"), complete=complete)
            retry_after = _parse_retry_after(headers.get("Retry-After"))
            retryable = status in (408, 429) or status >= 500
            hint = ""
            if status in (401, 403):
                names = " or ".join(self.spec.key_env) or "api_key="
                hint = f"; check the API key ({names})"
            if retry_after is not None and retry_after > self.max_retry_after:
                hint += (
                    f"; the server asked to wait {retry_after:g} s, more than "
                    f"max_retry_after={self.max_retry_after:g} s"
                )
            raise RemoteRerankError(
                f"HTTP {status} from {self.url}: {excerpt or '(empty body)'}{hint}",
                provider=self.provider,
                status=status,
                attempts=attempt,
                retry_after=retry_after,
                retryable=retryable,
            )
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            payload = _NOT_JSON
        if payload is _NOT_JSON:
            excerpt = self._excerpt(raw.decode("utf-8", "replace"))
            raise self._bad(f"response is not valid JSON: {excerpt!r}", status, attempt)
        return self._parse(payload, n_documents, status, attempt)

    def _bad(self, detail: str, status: int, attempt: int) -> RemoteResponseError:
        return RemoteResponseError(detail, provider=self.provider, status=status, attempts=attempt)

    def _parse(self, payload: Any, n: int, status: int, attempt: int) -> list[float]:
        spec = self.spec
        where = "the response" if spec.results_field is None else f"'{spec.results_field}'"
        items = payload
        if spec.results_field is not None:
            items = payload.get(spec.results_field) if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise self._bad(f"{where} is not a list of results", status, attempt)
        if len(items) != n:
            raise self._bad(
                f"{where} has {len(items)} results for {n} documents sent", status, attempt
            )
        scores: list[float | None] = [None] * n
        for k, item in enumerate(items):
            index = item.get("index") if isinstance(item, dict) else None
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
                raise self._bad(
                    f"result {k} has a missing or out-of-range index {index!r} "
                    f"(expected 0..{n - 1})",
                    status,
                    attempt,
                )
            if scores[index] is not None:
                raise self._bad(f"result {k} repeats index {index}", status, attempt)
            score = item.get(spec.score_field)
            if (
                isinstance(score, bool)
                or not isinstance(score, (int, float))
                or not math.isfinite(score)
            ):
                raise self._bad(
                    f"result {k} (index {index}) has no finite '{spec.score_field}': {score!r}",
                    status,
                    attempt,
                )
            scores[index] = float(score)
        return [float(s) for s in scores if s is not None]

    # ----------------------------------------------------------------- clients

    async def _async_client(self) -> httpx.AsyncClient:
        """This event loop's pooled client, built in a worker thread the first time.

        Building one loads the CA bundle (once per process) and sets up its transport: tenths
        of a second that would otherwise stall the loop.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._aclients.get(loop)
        if client is not None and not client.is_closed:
            return client
        built = await asyncio.to_thread(self._new_client)
        with self._lock:
            client = self._aclients.get(loop)
            if client is None or client.is_closed:
                self._aclients[loop] = client = built
        if client is not built:  # another task of this loop was first
            await built.aclose()
        return client

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            headers={"User-Agent": _USER_AGENT},
            auth=None if self._api_key is None else _BearerAuth(self._api_key),
            verify=_shared_ssl_context(),
        )

    def _pop_sync_client(self) -> tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None:
        loop = _RUNNER.started()
        if loop is None:
            return None
        with self._lock:
            client = self._aclients.pop(loop, None)
        return None if client is None else (loop, client)

    def close(self) -> None:
        """Close the pooled sync connections (the object stays usable; it reconnects)."""
        popped = self._pop_sync_client()
        if popped is not None:
            _RUNNER.run(popped[1].aclose())

    async def aclose(self) -> None:
        """Close this event loop's async connections, and the sync ones."""
        with self._lock:
            client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        popped = self._pop_sync_client()
        if popped is not None:
            loop, sync_client = popped
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(sync_client.aclose(), loop))

    def __enter__(self) -> HTTPReranker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> HTTPReranker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------- description

    def __repr__(self) -> str:
        return f"HTTPReranker(provider={self.provider!r}, model={self.model!r}, url={self.url!r})"

    @property
    def score_scale(self) -> str:
        """The preset's scale; ``"logit"`` when ``raw_scores=True`` asks for raw logits."""
        return "logit" if self.options.get("raw_scores") else self.spec.scale

    def identity(self) -> dict[str, Any]:
        """Service, endpoint, model and every request option: each can change scores."""
        return {
            **super().identity(),
            "provider": self.provider,
            "url": self.url,
            "remote_model": self.model,
            "options": dict(sorted(self.options.items())),
            "extra_body": self.extra_body,
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description (never the key) for logs and events."""
        return {
            "class": type(self).__name__,
            "model_name": self.model_name,
            "provider": self.provider,
            "model": self.model,
            "url": self.url,
            "score_scale": self.score_scale,
            "score_meaning": self.spec.score_scale,
        }
