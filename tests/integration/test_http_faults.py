"""HTTPReranker under faults, against real HTTP servers on 127.0.0.1.

Each fault says what the reranker does: retry and succeed, or raise a clear error naming the
provider with the HTTP status and the number of attempts made.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import socket
import time

import pytest

pytest.importorskip("httpx")

from rerank_core import HTTPReranker, ScoringError
from rerank_core.http import RemoteRerankError, RemoteResponseError, RemoteTimeoutError
from tests.integration.rerank_http_server import Fault, RerankServer, toy_score

QUERY = "what is artificial intelligence?"
DOCS = [
    "Artificial intelligence is a branch of computer science.",
    "Apples are a fruit rich in vitamins.",
    "Machine learning is a subfield of artificial intelligence.",
    "The weather is nice today.",
    "Deep learning imitates the networks of the brain.",
]
KEY = "sk-secret-KEY-5f1d2c3b4a"
EXPECTED = [toy_score(QUERY, d) for d in DOCS]


def make(server: RerankServer, provider: str = "siliconflow", **kwargs) -> HTTPReranker:
    options = {"api_key": KEY, "base_url": server.url, "backoff": 0.01, "max_attempts": 3}
    options.update(kwargs)
    return HTTPReranker(provider, **options)


# ----------------------------------------------------------------------------- timeouts


def test_slow_server_past_the_timeout_raises_without_retrying() -> None:
    with RerankServer() as server:
        server.always = Fault(delay=3.0)
        reranker = make(server, timeout=0.3)
        with pytest.raises(RemoteTimeoutError) as info:
            reranker.score(QUERY, DOCS)
        # gave up while the server was still working on its answer
        assert server.seen[0].finished == 0.0
    assert info.value.attempts == 1 and info.value.status is None
    assert "siliconflow" in str(info.value) and "0.3 s" in str(info.value)
    assert len(server.seen) == 1


async def test_slow_server_past_the_timeout_async() -> None:
    with RerankServer() as server:
        server.always = Fault(delay=1.5)
        with pytest.raises(RemoteTimeoutError):
            await make(server, timeout=0.3).ascore(QUERY, DOCS)


# ----------------------------------------------------------------------------- retried faults


@pytest.mark.parametrize("is_async", [False, True])
def test_429_with_retry_after_is_honoured_then_succeeds(is_async: bool) -> None:
    with RerankServer() as server:
        server.plan(
            Fault(status=429, body=b'{"error":"rate limited"}', headers={"Retry-After": "1"})
        )
        reranker = make(server, backoff=0.01)
        scores = (
            asyncio.run(reranker.ascore(QUERY, DOCS)) if is_async else reranker.score(QUERY, DOCS)
        )
    assert scores == pytest.approx(EXPECTED, rel=1e-6)
    assert len(server.seen) == 2
    assert server.seen[1].started - server.seen[0].started >= 0.95  # waited as told


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_transient_status_then_success(status: int) -> None:
    with RerankServer() as server:
        server.plan(Fault(status=status, body=b"busy"))
        scores = make(server).score(QUERY, DOCS)
    assert scores == pytest.approx(EXPECTED, rel=1e-6)
    assert len(server.seen) == 2


async def test_500_then_success_async() -> None:
    with RerankServer("cohere") as server:
        server.plan(Fault(status=500), Fault(status=503))
        results = await make(server, "cohere").arerank(QUERY, DOCS, top_n=1)
    assert results[0].index == max(range(5), key=EXPECTED.__getitem__)
    assert len(server.seen) == 3


@pytest.mark.parametrize("is_async", [False, True])
def test_500_forever_fails_after_max_attempts(is_async: bool) -> None:
    with RerankServer() as server:
        server.always = Fault(status=500, body=b'{"message":"internal error"}')
        reranker = make(server, max_attempts=4)
        with pytest.raises(RemoteRerankError) as info:
            if is_async:
                asyncio.run(reranker.ascore(QUERY, DOCS))
            else:
                reranker.score(QUERY, DOCS)
    err = info.value
    assert (err.status, err.attempts, err.provider) == (500, 4, "siliconflow")
    assert "after 4 attempts" in str(err) and "internal error" in str(err)
    assert len(server.seen) == 4


def test_dropped_connection_is_retried() -> None:
    with RerankServer("tei") as server:
        server.plan(Fault(drop=True))
        scores = make(server, "tei").score(QUERY, DOCS)
    assert scores == pytest.approx(EXPECTED, rel=1e-6)
    assert len(server.seen) == 2


def test_dropped_connection_forever_fails_with_attempt_count() -> None:
    with RerankServer("tei") as server:
        server.always = Fault(drop=True)
        with pytest.raises(RemoteRerankError) as info:
            make(server, "tei", max_attempts=2).score(QUERY, DOCS)
    assert info.value.attempts == 2 and info.value.status is None
    assert "connection" in str(info.value) and "tei" in str(info.value)


def test_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reranker = HTTPReranker("generic", base_url=f"http://127.0.0.1:{port}", backoff=0.01)
    with pytest.raises(RemoteRerankError) as info:
        reranker.score(QUERY, DOCS)
    assert info.value.attempts == 4
    assert "ConnectError" in str(info.value)


# ----------------------------------------------------------------------------- not retried


def test_client_errors_are_not_retried() -> None:
    with RerankServer() as server:
        server.always = Fault(status=400, body=b'{"message":"documents must not be empty"}')
        with pytest.raises(RemoteRerankError) as info:
            make(server).score(QUERY, DOCS)
    assert info.value.status == 400 and info.value.attempts == 1
    assert "documents must not be empty" in str(info.value)
    assert len(server.seen) == 1


def test_unauthorised_names_the_key_variable() -> None:
    with RerankServer() as server:
        server.always = Fault(status=401, body=b'{"message":"invalid token"}')
        with pytest.raises(RemoteRerankError, match="SILICONFLOW_API_KEY"):
            make(server).score(QUERY, DOCS)


def test_retry_after_beyond_the_limit_fails_at_once() -> None:
    with RerankServer() as server:
        server.always = Fault(status=429, headers={"Retry-After": "120"})
        start = time.perf_counter()
        with pytest.raises(RemoteRerankError) as info:
            make(server, max_retry_after=5).score(QUERY, DOCS)
    assert time.perf_counter() - start < 60  # did not sleep the 120 s it was told
    assert info.value.retry_after == pytest.approx(120) and info.value.attempts == 1
    assert "120 s" in str(info.value)


# ----------------------------------------------------------------------------- bad answers


def _drop_last(results: list[dict]) -> list[dict]:
    return results[:-1]


def _index_out_of_range(results: list[dict]) -> list[dict]:
    results[0]["index"] = 99
    return results


def _index_missing(results: list[dict]) -> list[dict]:
    del results[1]["index"]
    return results


def _index_repeated(results: list[dict]) -> list[dict]:
    results[1]["index"] = results[0]["index"]
    return results


def _score_nan(results: list[dict]) -> list[dict]:
    results[2]["relevance_score"] = math.nan
    return results


def _score_string(results: list[dict]) -> list[dict]:
    results[0]["relevance_score"] = "0.9"
    return results


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (_drop_last, "4 results for 5 documents"),
        (_index_out_of_range, "out-of-range index 99"),
        (_index_missing, "missing or out-of-range index None"),
        (_index_repeated, "repeats index"),
        (_score_nan, "no finite 'relevance_score'"),
        (_score_string, "no finite 'relevance_score'"),
        (lambda results: {"unexpected": True}, "'results' is not a list"),
    ],
)
def test_bad_results_raise_naming_the_provider(transform, message: str) -> None:
    with RerankServer("jina") as server:
        server.always = Fault(transform=transform)
        with pytest.raises(RemoteResponseError, match=message) as info:
            make(server, "jina").score(QUERY, DOCS)
    assert isinstance(info.value, ScoringError)
    assert str(info.value).startswith("jina: ")
    assert len(server.seen) == 1  # a well-formed but wrong answer is not retried


def test_malformed_json_raises() -> None:
    with RerankServer("tei") as server:
        server.always = Fault(status=200, body=b'[{"index": 0, "score": 0.5')
        with pytest.raises(RemoteResponseError, match="not valid JSON") as info:
            make(server, "tei").score(QUERY, DOCS)
    assert info.value.provider == "tei" and info.value.status == 200


async def test_wrong_count_async() -> None:
    with RerankServer("tei") as server:
        server.always = Fault(transform=_drop_last)
        with pytest.raises(RemoteResponseError, match="the response has 4 results"):
            await make(server, "tei").arerank(QUERY, DOCS)


# ----------------------------------------------------------------------------- the key


def test_key_never_appears_in_logs_errors_or_repr(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    texts: list[str] = []
    with RerankServer() as server:
        reranker = make(server, timeout=0.5)
        texts += [repr(reranker), str(reranker.describe())]
        server.plan(Fault(status=500), Fault(drop=True))
        reranker.score(QUERY, DOCS)  # retried twice, then fine
        for fault in (
            Fault(echo=True, status=401),  # a server that echoes the request headers
            Fault(status=500, body=f"upstream rejected Bearer {KEY}".encode()),
            Fault(status=200, body=f"<html>{KEY}".encode()),
            Fault(delay=1.0),
        ):
            server.always = fault
            with pytest.raises(RemoteRerankError) as sync_info:
                reranker.score(QUERY, DOCS)
            with pytest.raises(RemoteRerankError) as async_info:
                asyncio.run(reranker.ascore(QUERY, DOCS))
            for err in (sync_info.value, async_info.value):
                texts += [str(err), repr(err), repr(err.args), repr(vars(err))]
    assert server.seen[0].headers["Authorization"] == f"Bearer {KEY}"  # it was sent
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert any("***" in t for t in texts)  # the echoed key was redacted, not dropped silently
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert not [t for t in texts if KEY in t]


# ----------------------------------------------------------------------------- real async


async def test_concurrent_areranks_overlap_and_the_loop_stays_responsive() -> None:
    delay = 0.5
    gc.collect()  # a full collection mid-test is a pause of its own, not the client's
    with RerankServer(delay=delay) as server:
        reranker = make(server)
        # Warm the connection pool: ten connections, so the measured part reuses them.
        await asyncio.gather(*(reranker.arerank(QUERY, DOCS) for _ in range(10)))

        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.01)
                ticks.append(time.perf_counter())

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(
            *(reranker.arerank(f"{QUERY} {i}", DOCS, top_n=2) for i in range(10))
        )
        stop.set()
        await tick
        await reranker.aclose()
    assert all(len(r) == 2 for r in results)
    # Checked by order of events, not by durations (which depend on the machine's load): the
    # calls were in the server at the same time, and the loop kept running while they were.
    calls = server.seen[10:]
    assert len(calls) == 10
    overlapping = sum(1 for s in calls if s.started < calls[0].finished)
    assert overlapping >= 5
    # A blocking client would hold the loop for each whole request: no tick inside any of them.
    held = [s for s in calls if any(s.started < t < s.finished for t in ticks)]
    assert len(held) >= 5, "the event loop did not run while requests were in flight"
