"""Serve an ASGI app with a real uvicorn on a free 127.0.0.1 port, for integration tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def running(app: Any) -> Iterator[tuple[str, Any]]:
    """Serve ``app`` in a thread; yield its base URL and the ``uvicorn.Server``.

    An app made by ``create_app`` is served the way ``rag-rerank serve`` serves it
    (``build_server``: header deadline, drain on shutdown); any other ASGI app by a plain
    ``uvicorn.Server``. The server is stopped the way SIGTERM stops it (``should_exit``) when the
    block ends.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if hasattr(app.state, "rerank_control"):
        from rerank_core.app.server import build_server

        server = build_server(app, log_level="warning", graceful_timeout_s=20)
    else:
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=20)
        )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "server thread died during startup"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "server did not stop"
