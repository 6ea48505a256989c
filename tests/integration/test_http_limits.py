"""HTTPReranker against hostile servers on 127.0.0.1: key echoes, dribbled and oversized answers.

The servers here speak raw HTTP over a socket, so they can do what a well-behaved framework
would not: send a reply one byte at a time, put the request's key into a malformed status line,
or stream far more than any rerank answer needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable

import pytest

pytest.importorskip("httpx")

from rerank_core import HTTPReranker
from rerank_core.http import RemoteRerankError, RemoteResponseError, RemoteTimeoutError
from tests.integration.rerank_http_server import Fault, RerankServer, toy_score

QUERY = "what is artificial intelligence?"
DOCS = [
    "Artificial intelligence is a branch of computer science.",
    "Apples are a fruit rich in vitamins.",
    "Machine learning is a subfield of artificial intelligence.",
]
EXPECTED = [toy_score(QUERY, d) for d in DOCS]
KEY = "sk-LEAKCA7d1e9f3b5c2a8e6d4f0b"
PIECES = {KEY[i : i + 6] for i in range(len(KEY) - 5)}  # no 6 characters of it may show


def answer_body() -> bytes:
    results = [{"index": i, "relevance_score": s} for i, s in enumerate(EXPECTED)]
    return json.dumps({"results": results}).encode()


class RawServer:
    """A TCP server on 127.0.0.1 answering each HTTP request with ``reply(server, conn, headers)``.

    Every connection thread stops when the client goes away or the server is closed.
    """

    def __init__(self, reply: Callable[[RawServer, socket.socket, dict[str, str]], None]) -> None:
        self.reply = reply
        self.stop = threading.Event()
        self.requests = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(5)
        self._sock.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    got = conn.recv(65536)
                    if not got:
                        return
                    data += got
                head, _, rest = data.partition(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", 0))
                while len(rest) < length:
                    got = conn.recv(65536)
                    if not got:
                        return
                    rest += got
                with self._lock:
                    self.requests += 1
                self.reply(self, conn, headers)
            except OSError:
                pass  # the client hung up: what these tests expect of it

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self._lock:
            self.sent += len(data)

    def drip(self, conn: socket.socket, data: bytes, every: float) -> None:
        """Send ``data`` one byte every ``every`` seconds."""
        for i in range(len(data)):
            if self.stop.wait(every):
                raise ConnectionAbortedError("server closed")
            self.send(conn, data[i : i + 1])


def run(reranker: HTTPReranker, is_async: bool) -> list[float]:
    if is_async:
        return asyncio.run(reranker.ascore(QUERY, DOCS))
    return reranker.score(QUERY, DOCS)


def chain(exc: BaseException | None) -> list[BaseException]:
    """The exception and every one chained to it, as a traceback printer would walk them."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def shown(exc: BaseException) -> list[str]:
    """Every way an exception reaches a person or a log: str, repr, attributes, traceback."""
    texts = ["".join(traceback.format_exception(exc))]
    for link in chain(exc):
        texts += [str(link), repr(link), repr(link.args), repr(vars(link))]
    return texts


def leaks(texts: list[str]) -> list[str]:
    return sorted({piece for piece in PIECES for text in texts if piece in text})


# ----------------------------------------------------------------------------- the key


@pytest.mark.parametrize("is_async", [False, True])
def test_a_key_echoed_across_the_excerpt_cut_leaks_no_part_of_it(
    is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The key starts 292 characters in, so the 300-character excerpt cuts it after 8: a cut
    # before redaction would show "sk-LEAKC" in the error and in each retry's log line.
    def echo(headers: dict[str, str]) -> bytes:
        return ("e" * 285 + headers["Authorization"] + " was refused").encode()

    caplog.set_level(logging.WARNING, logger="rerank_core.http")
    with RerankServer() as server:
        server.always = Fault(status=500, respond=echo)
        reranker = HTTPReranker("siliconflow", api_key=KEY, base_url=server.url, backoff=0.01)
        with pytest.raises(RemoteRerankError) as info:
            run(reranker, is_async)
    err = info.value
    assert (err.status, err.attempts) == (500, 4)
    assert server.seen[0].headers["Authorization"] == f"Bearer {KEY}"  # it was sent
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 3
    assert leaks(shown(err) + retries + [caplog.text]) == []
    assert "eeeeBearer *** was ..." in str(err)  # redacted first, then cut after the mask


@pytest.mark.parametrize("is_async", [False, True])
def test_a_key_in_a_malformed_status_line_leaks_no_part_of_it(
    is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The HTTP parser quotes the bad status line in its error, key and all; the retry log line,
    # the error and every exception chained to it must not.
    def bad_status_line(server: RawServer, conn: socket.socket, headers: dict[str, str]) -> None:
        line = b"HTTP/1.1 2x0 " + b"e" * 239 + headers["authorization"].encode()
        server.send(conn, line + b"\r\nContent-Length: 0\r\n\r\n")

    caplog.set_level(logging.WARNING, logger="rerank_core.http")
    with RawServer(bad_status_line) as server:
        reranker = HTTPReranker(
            "siliconflow", api_key=KEY, base_url=server.url, backoff=0.01, max_attempts=2
        )
        with pytest.raises(RemoteRerankError) as info:
            run(reranker, is_async)
    err = info.value
    assert err.attempts == 2 and "RemoteProtocolError" in str(err)
    assert server.requests == 2
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1
    assert leaks(shown(err) + retries + [caplog.text]) == []


def test_no_client_or_attribute_holds_the_plain_key_after_requests() -> None:
    with RerankServer() as server:
        reranker = HTTPReranker("siliconflow", api_key=KEY, base_url=server.url)
        reranker.score(QUERY, DOCS)
        asyncio.run(reranker.ascore(QUERY, DOCS))
        texts = [repr(vars(reranker)), repr(reranker), repr(reranker.describe())]
        texts += [repr(reranker.identity()), reranker.score_id]
        clients = list(reranker._aclients.values())
        texts += [repr(vars(c)) + repr(c.headers) for c in clients]
        reranker.close()
    assert [s.headers["Authorization"] for s in server.seen] == [f"Bearer {KEY}"] * 2
    assert clients and leaks(texts) == []


def test_an_unpickled_reranker_reads_its_key_again_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SILICONFLOW_API_KEY", raising=False)
    with RerankServer() as server:
        reranker = HTTPReranker("siliconflow", api_key=KEY, base_url=server.url)
        reranker.score(QUERY, DOCS)  # live connections are not pickled either
        data = pickle.dumps(reranker)
        monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-worker-env-key")
        clone = pickle.loads(data)
        assert clone.score(QUERY, DOCS) == pytest.approx(EXPECTED, rel=1e-6)
    assert leaks([repr(data)]) == [] and KEY.encode() not in data
    assert clone.score_id == reranker.score_id
    assert server.seen[1].headers["Authorization"] == "Bearer sk-worker-env-key"


# ----------------------------------------------------------------------------- the deadline


def drip_headers(server: RawServer, conn: socket.socket, headers: dict[str, str]) -> None:
    # 15 bytes at 0.8 s each: 12 s to send the status line, each read well inside any timeout.
    body = answer_body()
    server.drip(conn, b"HTTP/1.1 200 OK", every=0.8)
    server.send(conn, b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def drip_body(server: RawServer, conn: socket.socket, headers: dict[str, str]) -> None:
    body = answer_body()
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
    server.drip(conn, body[:15], every=0.8)
    server.send(conn, body[15:])


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("reply", [drip_headers, drip_body], ids=["headers", "body"])
def test_timeout_is_a_deadline_for_a_dribbling_server(reply, is_async: bool) -> None:
    with RawServer(reply) as server:
        reranker = HTTPReranker("siliconflow", api_key=KEY, base_url=server.url, timeout=2.0)
        start = time.perf_counter()
        with pytest.raises(RemoteTimeoutError) as info:
            run(reranker, is_async)
        elapsed = time.perf_counter() - start
    # A bound on the deadline itself, loose enough for a busy machine: the server would take
    # 12 s, and a per-read timeout would wait for all of it.
    assert elapsed < 6.0, f"a 2 s deadline took {elapsed:.1f} s"
    assert "2 s deadline" in str(info.value) and info.value.attempts == 1
    assert server.requests == 1


@pytest.mark.parametrize("is_async", [False, True])
def test_a_retry_whose_wait_would_pass_the_deadline_is_not_made(is_async: bool) -> None:
    with RerankServer() as server:
        server.always = Fault(status=503, body=b"busy", headers={"Retry-After": "1.5"})
        reranker = HTTPReranker(
            "siliconflow", api_key=KEY, base_url=server.url, timeout=2.0, max_attempts=4
        )
        with pytest.raises(RemoteRerankError) as info:
            run(reranker, is_async)
    err = info.value
    # 0 s: 503, wait 1.5 s (ends inside the deadline); 1.5 s: 503, a second wait would end at
    # 3 s, past it: the 503 is raised at once instead of a timeout later.
    assert (err.status, err.attempts, len(server.seen)) == (503, 2, 2)
    assert "not retried" in str(err) and "2 s deadline" in str(err)


# ----------------------------------------------------------------------------- the size cap


def endless(server: RawServer, conn: socket.socket, headers: dict[str, str]) -> None:
    """A 200 answer of 64 MiB, chunked, so no length warns the client in advance."""
    server.send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
    for _ in range(1024):
        if server.stop.is_set():
            return
        server.send(conn, chunk)
    server.send(conn, b"0\r\n\r\n")


@pytest.mark.parametrize("is_async", [False, True])
def test_an_oversized_answer_is_refused_while_streaming(is_async: bool) -> None:
    cap = 1024 * 1024
    with RawServer(endless) as server:
        reranker = HTTPReranker(
            "siliconflow", api_key=KEY, base_url=server.url, max_response_bytes=cap
        )
        tracemalloc.start()
        try:
            with pytest.raises(RemoteResponseError) as info:
                run(reranker, is_async)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        sent = server.sent
    assert "larger than max_response_bytes=1,048,576" in str(info.value)
    assert info.value.status == 200 and info.value.attempts == 1 and server.requests == 1
    # Reading it all would have held 64 MiB; the client stopped after the cap, so the server
    # could send little more than the cap plus the sockets' buffers.
    assert peak < 16 * cap, f"peak Python allocation {peak / cap:.1f} MiB"
    assert sent < 32 * cap, f"server sent {sent / cap:.1f} MiB before the client hung up"


def test_an_answer_declaring_too_many_bytes_is_refused_before_reading() -> None:
    def declares_a_lot(server: RawServer, conn: socket.socket, headers: dict[str, str]) -> None:
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n")
        server.stop.wait(10)  # never sends the body: the client must not wait for it

    with RawServer(declares_a_lot) as server:
        reranker = HTTPReranker("siliconflow", api_key=KEY, base_url=server.url, timeout=5)
        with pytest.raises(RemoteResponseError, match="declares 104,857,600 bytes") as info:
            reranker.score(QUERY, DOCS)
    assert "max_response_bytes=8,388,608" in str(info.value)  # the documented default
    assert server.requests == 1


def test_an_oversized_error_answer_still_reports_its_status() -> None:
    def big_error(server: RawServer, conn: socket.socket, headers: dict[str, str]) -> None:
        body = b"upstream failed: " + b"x" * (4 * 1024 * 1024)
        server.send(conn, b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n" % len(body))
        server.send(conn, body)

    with RawServer(big_error) as server:
        reranker = HTTPReranker(
            "siliconflow", api_key=KEY, base_url=server.url, max_attempts=2, backoff=0.01
        )
        with pytest.raises(RemoteRerankError) as info:
            reranker.score(QUERY, DOCS)
    err = info.value
    assert (err.status, err.attempts, server.requests) == (502, 2, 2)  # retried as any 502
    assert "upstream failed: xxx" in str(err) and len(str(err)) < 600


@pytest.mark.parametrize("is_async", [False, True])
def test_the_deadline_covers_every_request_of_a_split_call(is_async: bool) -> None:
    docs = [f"document {i} about intelligence" for i in range(4)]
    with RerankServer("tei", delay=0.6) as server:
        reranker = HTTPReranker(
            "tei",
            base_url=server.url,
            timeout=1.5,
            max_documents_per_request=1,
            max_concurrency=1,
        )
        # Each request (0.6 s) fits in 1.5 s; the four of them, one after another, do not.
        with pytest.raises(RemoteTimeoutError, match=r"1\.5 s deadline"):
            if is_async:
                asyncio.run(reranker.ascore(QUERY, docs))
            else:
                reranker.score(QUERY, docs)
    assert 2 <= len(server.seen) <= 3
