"""A real HTTP rerank server on 127.0.0.1 for tests: every provider's shape, and scripted faults.

The server scores with :func:`toy_score` (a stand-in model whose scores the tests can compute on
their own), returns results best first like the real services, and checks each request against
the shape of the provider it plays. Faults are queued per request with :meth:`RerankServer.plan`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def toy_score(query: str, document: str) -> float:
    """Share of the query's characters found in the document, nudged by length to break ties."""
    chars = set(query)
    return round(len(chars & set(document)) / len(chars) * 0.9 + min(len(document), 999) / 1e4, 6)


# Field names each provider's endpoint expects and answers with.
SHAPES: dict[str, dict[str, Any]] = {
    "siliconflow": {
        "path": "/rerank",
        "docs": "documents",
        "list": "results",
        "score": "relevance_score",
        "model": True,
    },
    "cohere": {
        "path": "/rerank",
        "docs": "documents",
        "list": "results",
        "score": "relevance_score",
        "model": True,
    },
    "jina": {
        "path": "/rerank",
        "docs": "documents",
        "list": "results",
        "score": "relevance_score",
        "model": True,
    },
    "tei": {"path": "/rerank", "docs": "texts", "list": None, "score": "score", "model": False},
    "infinity": {
        "path": "/rerank",
        "docs": "documents",
        "list": "results",
        "score": "relevance_score",
        "model": False,
    },
    "generic": {
        "path": "/v1/rerank",
        "docs": "documents",
        "list": "results",
        "score": "relevance_score",
        "model": False,
    },
}


@dataclass
class Fault:
    """What the server does for one request instead of (or before) answering normally."""

    status: int | None = None  # answer with this status and ``body``
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # sleep first
    drop: bool = False  # close the connection without answering
    echo: bool = False  # answer ``status`` with the request headers as the body
    respond: Callable[[dict[str, str]], bytes] | None = None  # body built from the headers
    transform: Callable[[list[dict[str, Any]]], Any] | None = None  # rewrite the results


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    started: float
    finished: float = 0.0


class RerankServer:
    """A threaded HTTP server playing ``shape``; use as a context manager."""

    def __init__(self, shape: str = "siliconflow", *, delay: float = 0.0) -> None:
        self.shape = SHAPES[shape]
        self.delay = delay
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.always: Fault | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                started = time.perf_counter()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                seen = Seen(self.path, dict(self.headers), body, started)
                with server._lock:
                    server.seen.append(seen)
                    fault = server.faults.pop(0) if server.faults else server.always
                delay = server.delay + (fault.delay if fault else 0.0)
                if delay:
                    time.sleep(delay)
                try:
                    if fault and fault.drop:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if fault and fault.echo:
                        echoed = json.dumps({"error": "denied", "headers": seen.headers})
                        self._send(fault.status or 401, echoed.encode(), fault.headers)
                        return
                    if fault and fault.respond is not None:
                        data = fault.respond(seen.headers)
                        self._send(fault.status or 500, data, fault.headers)
                        return
                    if fault and fault.status is not None:
                        self._send(fault.status, fault.body, fault.headers)
                        return
                    status, payload = server.answer(self.path, body)
                    if fault and fault.transform and status == 200:
                        payload = server.wrap(fault.transform(server.unwrap(payload)))
                    self._send(status, json.dumps(payload).encode(), {})
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (timeout tests)
                finally:
                    seen.finished = time.perf_counter()

            def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 drops simultaneous connects
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def plan(self, *faults: Fault) -> None:
        """Queue faults for the next requests, in order; later requests are answered normally."""
        with self._lock:
            self.faults.extend(faults)

    def unwrap(self, payload: Any) -> list[dict[str, Any]]:
        return payload if self.shape["list"] is None else payload[self.shape["list"]]

    def wrap(self, results: Any) -> Any:
        return results if self.shape["list"] is None else {"id": "t", self.shape["list"]: results}

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        shape = self.shape
        if path != shape["path"]:
            return 404, {"error": f"no route {path}"}
        docs = body.get(shape["docs"])
        query = body.get("query")
        if not isinstance(query, str) or not isinstance(docs, list) or not docs:
            return 422, {"error": f"needs query and {shape['docs']}"}
        if shape["model"] and not body.get("model"):
            return 400, {"error": "model is required"}
        ranked = sorted(
            ({"index": i, shape["score"]: toy_score(query, d)} for i, d in enumerate(docs)),
            key=lambda r: -r[shape["score"]],
        )
        top_n = body.get("top_n")
        if isinstance(top_n, int):
            ranked = ranked[:top_n]
        return 200, self.wrap(ranked)

    def __enter__(self) -> RerankServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
