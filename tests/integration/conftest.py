"""One Ray runtime per test session, shared by the Ray Data batch tests and Ray Serve.

Ray takes tens of seconds to start on a busy 2-core machine, so it starts once, on first use,
with small fixed resources, and Ray Serve (when a test needs it) starts once on that same
runtime. Both skip with the extra to install when it is absent.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import pytest

#: Bearer key and model name of the test servers (the plain one in test_server.py too).
SERVER_KEY = "test-key-123"

# One query and its passages for the HTTP servers' tests (English, Chinese, off-topic).
SERVER_QUERY = "how do cross-encoders rerank passages?"
SERVER_DOCS = [
    "Cross-encoders read the query and passage together and output a relevance score.",
    "The Eiffel Tower is in Paris.",
    "交叉编码器同时读取查询和段落。",
    "Rerankers reorder the candidates a first-stage retriever found.",
    "Bananas are rich in potassium.",
]
RAY_START_TIMEOUT_S = 300


def bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``fn`` in a thread; fail the test if it takes longer than ``timeout`` seconds."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(fn).result(timeout=timeout)
    except FutureTimeout:
        pytest.fail(f"{what} did not finish within {timeout} s")
    finally:
        pool.shutdown(wait=False)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """A local Ray for the whole session: 2 batch actors, Ray Data's re-blocking slot, 1 replica."""
    ray = pytest.importorskip(
        "ray", reason="the ray extra is not installed: pip install 'rag-rerank[ray]'"
    )
    # In the main thread: Ray installs signal handlers there.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_serve_url(ray_session: Any, tiny_model_dir: Path) -> Iterator[str]:
    """``serve --ray``'s deployment of the tiny model (one replica) on the session's Ray."""
    try:
        from rerank_core.app.ray_serve import require_serve

        require_serve()
    except ImportError:
        pytest.skip("the ray-serve extra is not installed: pip install 'rag-rerank[ray-serve]'")
    from rerank_core.app.ray_serve import RayServeConfig, start, stop
    from rerank_core.app.server import ServerSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = RayServeConfig(
        model=str(tiny_model_dir),
        backend="torch",
        options={"device": "cpu", "num_threads": 1},
        settings=ServerSettings(api_key=SERVER_KEY, model_name="tiny"),
        replicas=1,
        graceful_timeout_s=10.0,
        port=port,
    )
    url = bounded(lambda: start(config), RAY_START_TIMEOUT_S, "starting Ray Serve")
    try:
        yield url
    finally:
        bounded(lambda: stop(local_ray=True), 60, "stopping Ray Serve")
