"""``rag-rerank serve`` as users start it: a subprocess, every registry backend on offer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from rerank_core.registry import BACKENDS, load_reranker  # noqa: E402

QUERY = "how do cross-encoders rerank passages?"
DOCS = [
    "Cross-encoders read the query and passage together and output a relevance score.",
    "The Eiffel Tower is in Paris.",
    "Rerankers reorder the candidates a first-stage retriever found.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "rerank_core.app.cli", "serve", *args]
    env = {**os.environ, "COLUMNS": "400"}  # one line per option, so names are not wrapped
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def _wait_healthy(proc: subprocess.Popen, url: str, log) -> None:
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"server exited: {log.read()[-2000:]}")
        assert time.monotonic() < deadline, "server did not start"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)


def test_backend_choices_are_the_registry_list():
    help_text = _serve("--help").stdout
    for name in BACKENDS:
        assert name in help_text
    bad = _serve("--backend", "no-such-backend")
    assert bad.returncode == 2
    assert "'no-such-backend' is not one of" in bad.stderr
    for name in BACKENDS:
        assert f"'{name}'" in bad.stderr


def test_onnx_backend_refuses_torch_only_options(tiny_model_dir):
    pytest.importorskip("onnxruntime")
    bad = _serve("--backend", "onnx-int8", "--model", str(tiny_model_dir), "--dtype", "float16")
    assert bad.returncode == 2
    assert "onnx-int8 backend does not take that option" in bad.stderr


@pytest.mark.slow
def test_serve_onnx_int8(tiny_model_dir, tmp_path):
    """``serve --backend onnx-int8`` builds the reranker through the registry and serves it."""
    pytest.importorskip("onnxruntime")
    expected = load_reranker(tiny_model_dir, backend="onnx-int8").score(QUERY, DOCS)
    port = _free_port()
    log = (tmp_path / "serve.log").open("w+")
    cmd = [sys.executable, "-m", "rerank_core.app.cli", "serve", "--backend", "onnx-int8"]
    cmd += ["--model", str(tiny_model_dir), "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAG_RERANK_API_KEY": ""}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log)
        r = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCS}, timeout=60)
        info = httpx.get(f"{url}/info", timeout=10).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == tiny_model_dir.name
    served = {x["index"]: x["relevance_score"] for x in body["results"]}
    assert served == {i: pytest.approx(s, rel=1e-5) for i, s in enumerate(expected)}
    assert info["model_dtype"] == "int8"
    assert code in (0, -signal.SIGTERM)


@pytest.mark.slow
def test_serve_http_backend_relays_another_server(tiny_scorer, tmp_path):
    """``serve --backend http --provider generic --base-url URL``: a server in front of another."""
    from rerank_core.app.server import ServerSettings, create_app
    from tests.integration.live_server import running

    expected = tiny_scorer.score(QUERY, DOCS)
    upstream_app = create_app(tiny_scorer, settings=ServerSettings(api_key=None))
    with running(upstream_app) as (upstream, _):
        port = _free_port()
        log = (tmp_path / "relay.log").open("w+")
        cmd = [sys.executable, "-m", "rerank_core.app.cli", "serve", "--backend", "http"]
        cmd += ["--provider", "generic", "--base-url", upstream, "--port", str(port)]
        env = {**os.environ, "RAG_RERANK_API_KEY": ""}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, url, log)
            body = {"query": QUERY, "documents": DOCS}
            r = httpx.post(f"{url}/v1/rerank", json=body, timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            log.close()
    assert r.status_code == 200, r.text
    served = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert served == {i: pytest.approx(s, rel=1e-5) for i, s in enumerate(expected)}


def test_http_backend_without_provider_is_a_usage_error():
    bad = _serve("--backend", "http")
    assert bad.returncode == 2
    assert "provider" in bad.stderr


@pytest.mark.slow
def test_serve_picks_the_causal_lm_backend_for_an_llm_reranker(tmp_path):
    """``serve --model <Qwen3 reranker folder>`` with no --backend: auto picks causal-lm."""
    import cohere

    from tests.llm_models import build_qwen3_reranker

    folder = build_qwen3_reranker(tmp_path / "qwen3-tiny")
    expected = load_reranker(folder, device="cpu").score(QUERY, DOCS)
    port = _free_port()
    log = (tmp_path / "serve.log").open("w+")
    cmd = [sys.executable, "-m", "rerank_core.app.cli", "serve", "--model", str(folder)]
    cmd += ["--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAG_RERANK_API_KEY": ""}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log)
        r = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCS}, timeout=60)
        sdk = cohere.ClientV2(api_key="unused", base_url=url).rerank(
            model="qwen3-tiny", query=QUERY, documents=DOCS
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    assert r.status_code == 200, r.text
    served = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert served == {i: pytest.approx(s, rel=1e-5) for i, s in enumerate(expected)}
    by_sdk = {x.index: x.relevance_score for x in sdk.results}
    assert by_sdk == {i: pytest.approx(s, rel=1e-5) for i, s in enumerate(expected)}
