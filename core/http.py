"""Hosted and self-hosted rerank APIs behind the :class:`~rerank_core.Reranker` interface.

One class, :class:`HTTPReranker`, talks to every supported service. What differs between them
(URL, request field names, response layout, limits, key variable) lives in one table,
:data:`PROVIDERS`, so adding a service means adding a row, not a branch.

Every request has a timeout. Connect errors, dropped connections, 408, 429 and 5xx are retried
with exponential backoff and jitter (or exactly the server's ``Retry-After``); other 4xx are not.
A response whose results do not give one finite score for each document sent raises
:class:`RemoteResponseError` naming the provider. The API key is sent only in the
``Authorization`` header: it is never logged and never appears in a repr or an error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import ssl
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rerank_core.base import Batch, Pair, Reranker, RerankerError, ScoringError, _batch_of
from rerank_core.validation import check_positive_int

try:
    import httpx
    from tenacity import (
        AsyncRetrying,
        RetryCallState,
        Retrying,
        retry_if_exception,
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

__all__ = [
    "PROVIDERS",
    "HTTPReranker",
    "ProviderSpec",
    "RemoteRerankError",
    "RemoteResponseError",
    "RemoteTimeoutError",
]

_USER_AGENT = "rag-rerank/0.1.0"
_BODY_EXCERPT = 300


_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def _shared_ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes a noticeable fraction of a second; every client shares one.
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context()
        return _ssl_context


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
        timeout: Seconds allowed for each request (connect, read, write, pool).
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

        self.__api_key = self._resolve_key(api_key)

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

        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        # An AsyncClient belongs to the event loop it runs on: one per live loop.
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._aclients = weakref.WeakKeyDictionary()

    # ----------------------------------------------------------------- configuration

    def _resolve_key(self, api_key: str | None) -> str | None:
        spec = self.spec
        if api_key is not None:
            if not isinstance(api_key, str) or not api_key.strip():
                raise ValueError("api_key must be a non-empty string or None")
            return api_key.strip()
        for var in spec.key_env:
            value = os.environ.get(var, "").strip()
            if value:
                return value
        if spec.key_required:
            raise ValueError(
                f"{spec.name} needs an API key: pass api_key= or set " + " or ".join(spec.key_env)
            )
        return None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
        if self.__api_key:
            headers["Authorization"] = f"Bearer {self.__api_key}"
        return headers

    def _redact(self, text: str) -> str:
        """Remove the key from text that came from the server (some echo request headers)."""
        if self.__api_key:
            text = text.replace(self.__api_key, "***")
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
        return [
            _batch_of(pairs, indices[start : start + size])
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
        query, documents = self._split(pairs)
        body = self._body(query, documents)
        for attempt in Retrying(**self._retry_policy()):
            with attempt:
                number = attempt.retry_state.attempt_number
                try:
                    response = self._sync_client().post(self.url, json=body)
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc, number) from None
                return self._read(response, len(documents), number)
        raise AssertionError("unreachable: the retry loop returns or raises")

    async def _ascore_batch(self, batch: Batch) -> list[float]:
        query, documents = self._split(batch.pairs)
        body = self._body(query, documents)
        async for attempt in AsyncRetrying(**self._retry_policy()):
            with attempt:
                number = attempt.retry_state.attempt_number
                try:
                    response = await self._async_client().post(self.url, json=body)
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc, number) from None
                return self._read(response, len(documents), number)
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _retry_policy(self) -> dict[str, Any]:
        backoff = wait_exponential_jitter(
            initial=self.backoff, max=self.max_backoff, jitter=self.backoff
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after", None)
            return float(retry_after) if retry_after is not None else float(backoff(state))

        def should_retry(exc: BaseException) -> bool:
            if not isinstance(exc, RemoteRerankError) or not exc.retryable:
                return False
            return exc.retry_after is None or exc.retry_after <= self.max_retry_after

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
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
            "retry": retry_if_exception(should_retry),
            "before_sleep": log_retry,
            "reraise": True,
        }

    def _transport_error(self, exc: httpx.HTTPError, attempt: int) -> RemoteRerankError:
        kind = type(exc).__name__
        reason = self._redact(str(exc))[:_BODY_EXCERPT] or kind
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return RemoteTimeoutError(
                f"no answer from {self.url} within {self.timeout:g} s ({kind})",
                provider=self.provider,
                attempts=attempt,
            )
        # Connect failures and dropped connections: reranking has no side effects, so a
        # retried POST is safe.
        return RemoteRerankError(
            f"connection to {self.url} failed: {kind}: {reason}",
            provider=self.provider,
            attempts=attempt,
            retryable=isinstance(exc, httpx.TransportError),
        )

    def _read(self, response: httpx.Response, n_documents: int, attempt: int) -> list[float]:
        status = response.status_code
        if status >= 400 or status < 200:
            excerpt = self._redact(response.text[:_BODY_EXCERPT]).strip()
            retry_after = _parse_retry_after(response.headers.get("Retry-After"))
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
            payload = response.json()
        except ValueError:
            excerpt = self._redact(response.text[:_BODY_EXCERPT]).strip()
            raise self._bad(f"response is not valid JSON: {excerpt!r}", status, attempt) from None
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

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None or self._client.is_closed:
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout),
                    headers=self._headers(),
                    verify=_shared_ssl_context(),
                )
            return self._client

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._aclients.get(loop)
            if client is None or client.is_closed:
                client = httpx.AsyncClient(
                    timeout=httpx.Timeout(self.timeout),
                    headers=self._headers(),
                    verify=_shared_ssl_context(),
                )
                self._aclients[loop] = client
            return client

    def close(self) -> None:
        """Close the pooled sync connections (the object stays usable; it reconnects)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    async def aclose(self) -> None:
        """Close this event loop's async connections, and the sync ones."""
        with self._lock:
            client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()

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
            "score_scale": self.spec.score_scale,
        }
