"""The rerank server on a real uvicorn listening on 127.0.0.1, driven by real clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from rerank_core.app.server import ServerSettings, create_app  # noqa: E402
from tests.fakes import GatedReranker  # noqa: E402
from tests.integration.conftest import SERVER_DOCS, SERVER_KEY, SERVER_QUERY  # noqa: E402
from tests.integration.live_server import running  # noqa: E402

QUERY = SERVER_QUERY
DOCS = SERVER_DOCS
KEY = SERVER_KEY


@pytest.fixture(scope="module")
def tiny_server(tiny_scorer):
    app = create_app(tiny_scorer, settings=ServerSettings(api_key=KEY, model_name="tiny"))
    with running(app) as (url, _):
        yield url


@pytest.fixture(params=["uvicorn", "ray-serve"])
def cohere_server(request: pytest.FixtureRequest) -> str:
    """The plain server, then the same app deployed by ``serve --ray`` (skipped without Ray)."""
    return request.getfixturevalue("tiny_server" if request.param == "uvicorn" else "ray_serve_url")


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


# ------------------------------------------------------------------------------- real clients


def test_cohere_client_v1(cohere_server, tiny_scorer):
    cohere = pytest.importorskip("cohere")
    expected = tiny_scorer.score(QUERY, DOCS)
    co = cohere.Client(api_key=KEY, base_url=cohere_server, timeout=60)
    res = co.rerank(query=QUERY, documents=DOCS, top_n=3, return_documents=True, model="tiny")
    assert [r.index for r in res.results] == _order(expected)[:3]
    for r in res.results:
        assert r.relevance_score == pytest.approx(expected[r.index], rel=1e-5)
        assert r.document is not None and r.document.text == DOCS[r.index]
    objs = co.rerank(query=QUERY, documents=[{"text": d} for d in DOCS])
    assert [r.index for r in objs.results] == _order(expected)


def test_cohere_client_v2(cohere_server, tiny_scorer):
    cohere = pytest.importorskip("cohere")
    expected = tiny_scorer.score(QUERY, DOCS)
    co = cohere.ClientV2(api_key=KEY, base_url=cohere_server, timeout=60)
    res = co.rerank(model="tiny", query=QUERY, documents=DOCS, top_n=2)
    assert [r.index for r in res.results] == _order(expected)[:2]
    assert [r.relevance_score for r in res.results] == pytest.approx(
        sorted(expected, reverse=True)[:2], rel=1e-5
    )


def test_cohere_client_errors(cohere_server):
    cohere = pytest.importorskip("cohere")
    from cohere.errors import BadRequestError, UnauthorizedError

    with pytest.raises(UnauthorizedError) as wrong:
        cohere.Client(api_key="wrong", base_url=cohere_server, timeout=60).rerank(
            query=QUERY, documents=DOCS
        )
    assert wrong.value.body["message"] == "invalid API key"
    with pytest.raises(BadRequestError) as empty:
        cohere.ClientV2(api_key=KEY, base_url=cohere_server, timeout=60).rerank(
            model="tiny", query=QUERY, documents=[]
        )
    assert "must not be empty" in empty.value.body["message"]


def test_tei_client(tiny_server, tiny_scorer):
    """The PyPI ``tei-client`` reads ``/info`` first, then reranks through ``/rerank``."""
    tei_client = pytest.importorskip("tei_client")
    expected = tiny_scorer.score(QUERY, DOCS)
    client = tei_client.HttpClient(
        tiny_server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    assert client.health()
    info = client.info()
    assert info.server_model_type == tei_client.ModelType.Reranker
    assert info.server_model_id == "tiny"
    result = client.rerank(QUERY, DOCS, return_text=True)
    assert [r.index for r in result.ranks] == _order(expected)
    for r in result.ranks:
        assert r.score == pytest.approx(expected[r.index], rel=1e-5)
        assert r.text == DOCS[r.index]


def test_raw_tei_request(tiny_server, tiny_scorer):
    expected = tiny_scorer.score(QUERY, DOCS)
    r = httpx.post(
        f"{tiny_server}/rerank",
        json={"query": QUERY, "texts": DOCS, "return_text": True, "truncate": True},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()] == _order(expected)
    assert [x["text"] for x in r.json()] == [DOCS[i] for i in _order(expected)]


def test_raw_jina_style_request_and_bad_ones(tiny_server):
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=tiny_server, headers=auth, timeout=60) as http:
        ok = http.post("/v1/rerank", json={"model": "x", "query": QUERY, "documents": DOCS})
        assert ok.status_code == 200
        assert ok.json()["usage"]["total_tokens"] > 0
        bad = http.post("/v1/rerank", content=b"{", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "malformed JSON" in bad.json()["message"]
        huge = http.post("/v1/rerank", json={"query": "q", "documents": ["x" * 40_000]})
        assert huge.status_code == 413 and huge.json()["limit"] == "max_document_chars"
        many = http.post("/v1/rerank", json={"query": "q", "documents": ["x"] * 1001})
        assert many.status_code == 413 and many.json()["limit"] == "max_documents"
        assert http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
        assert http.get("/health").json()["status"] == "ok"


# ------------------------------------------------------------------------------- queue and batching


async def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def _queue_depth(http: httpx.AsyncClient) -> int:
    return int((await http.get("/health")).json()["queue_depth"])


@pytest.mark.parametrize("batching", [True, False])
async def test_dynamic_batching_merges_waiting_requests(batching):
    model = GatedReranker()
    app = create_app(model, settings=ServerSettings(api_key=None, batching=batching))
    with running(app) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            first = asyncio.create_task(
                http.post("/v1/rerank", json={"query": "q", "documents": ["a" * 9]})
            )
            await _wait_for(model.entered.is_set)
            bodies = [{"query": f"q{i}", "documents": ["b" * i, "c" * (10 - i)]} for i in (1, 2, 3)]
            rest = [asyncio.create_task(http.post("/v1/rerank", json=b)) for b in bodies]
            while await _queue_depth(http) < 3:
                await asyncio.sleep(0.01)
            model.gate.set()
            answers = [await first] + [await t for t in rest]
            metrics = (await http.get("/metrics")).text
    assert [a.status_code for a in answers] == [200] * 4
    for body, answer in zip(bodies, answers[1:], strict=True):  # each got its own scores back
        docs = body["documents"]
        got = {x["index"]: x["relevance_score"] for x in answer.json()["results"]}
        assert got == {i: float(len(d)) for i, d in enumerate(docs)}
    if batching:
        assert model.calls == [1, 6]
        assert "rag_rerank_batch_requests_sum 4.0" in metrics
    else:
        assert model.calls == [1, 2, 2, 2]
        assert "rag_rerank_batch_requests_count 4.0" in metrics


async def test_full_queue_answers_503_fast_and_recovers():
    model = GatedReranker()
    settings = ServerSettings(api_key=None, max_queue=1, retry_after_s=3)
    with running(create_app(model, settings=settings)) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            body = {"query": "q", "documents": ["doc"]}
            first = asyncio.create_task(http.post("/v1/rerank", json=body))
            await _wait_for(model.entered.is_set)
            second = asyncio.create_task(http.post("/v1/rerank", json=body))
            while await _queue_depth(http) < 1:
                await asyncio.sleep(0.01)
            # the model is held until after this answer: it came without waiting for a slot
            busy = await http.post("/v1/rerank", json=body)
            model.gate.set()
            assert (await first).status_code == 200
            assert (await second).status_code == 200
            after = await http.post("/v1/rerank", json=body)
            metrics = (await http.get("/metrics")).text
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "3"
    assert busy.json()["limit"] == "max_queue"
    assert after.status_code == 200
    assert 'status="503"' in metrics


async def test_graceful_shutdown_finishes_in_flight_requests():
    model = GatedReranker()
    with running(create_app(model, settings=ServerSettings(api_key=None))) as (url, server):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            pending = asyncio.create_task(
                http.post("/v1/rerank", json={"query": "q", "documents": ["a", "bb"]})
            )
            await _wait_for(model.entered.is_set)
            server.should_exit = True  # what SIGTERM does
            await asyncio.sleep(0.3)
            assert not pending.done()
            model.gate.set()
            answer = await pending
    assert answer.status_code == 200
    assert [x["index"] for x in answer.json()["results"]] == [1, 0]


async def _poll_health(url: str, status: int) -> httpx.Response:
    """GET /health on fresh connections (as a probe does) until it answers ``status``."""
    deadline = time.monotonic() + 20
    while True:
        async with httpx.AsyncClient(base_url=url, timeout=10) as probe:
            r = await probe.get("/health")
        if r.status_code == status or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.02)


async def test_health_answers_503_while_draining():
    """SIGTERM with a request in flight: the port stays open, probes see 503 draining."""
    model = GatedReranker()
    with running(create_app(model, settings=ServerSettings(api_key=None))) as (url, server):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            pending = asyncio.create_task(
                http.post("/v1/rerank", json={"query": "q", "documents": ["a", "bb"]})
            )
            await _wait_for(model.entered.is_set)
            server.should_exit = True  # what SIGTERM does
            health = await _poll_health(url, 503)
            async with httpx.AsyncClient(base_url=url, timeout=10) as late:
                refused = await late.post("/v1/rerank", json={"query": "q", "documents": ["c"]})
            assert not pending.done()
            model.gate.set()
            answer = await pending
    assert health.status_code == 503
    assert health.json()["status"] == "draining"
    assert refused.status_code == 503
    assert refused.json()["error_type"] == "unavailable"
    assert refused.headers["retry-after"] == "1"
    assert answer.status_code == 200


async def test_drain_delay_keeps_answering_health_when_idle():
    settings = ServerSettings(api_key=None, drain_delay_s=1.0)
    with running(create_app(GatedReranker(), settings=settings)) as (url, server):
        assert (await _poll_health(url, 200)).status_code == 200
        server.should_exit = True
        health = await _poll_health(url, 503)
    assert (health.status_code, health.json()["status"]) == (503, "draining")


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"server kept a stalled connection open; got {data!r}") from None
        if not chunk:
            return data
        data += chunk


def _json_tail(reply: bytes) -> dict:
    return json.loads(reply.partition(b"\r\n\r\n")[2])


def test_slow_clients_are_answered_408_and_disconnected():
    settings = ServerSettings(api_key=None, header_timeout_s=0.5, body_timeout_s=0.5)
    with running(create_app(GatedReranker(), settings=settings)) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        address = (host, int(port))
        replies = []
        for sent in (
            b"",  # connects and says nothing
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Ty",  # stops inside the headers
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"query": ',  # stops inside the body
        ):
            with socket.create_connection(address, timeout=15) as sock:
                sock.sendall(sent)
                replies.append(_read_until_closed(sock))
        model_ok = httpx.post(f"{url}/health", timeout=10)
    for reply in replies:
        assert reply.startswith(b"HTTP/1.1 408"), reply
    limits = [_json_tail(r)["limit"] for r in replies]
    assert limits == ["header_timeout_s", "header_timeout_s", "body_timeout_s"]
    assert all(_json_tail(r)["error_type"] == "timeout" for r in replies)
    assert model_ok.status_code == 405  # still serving: /health takes GET only


def test_scoring_failure_is_a_500_and_server_survives():
    class Flaky(GatedReranker):
        def _score_pairs(self, pairs):
            if any(d == "boom" for _, d in pairs):
                raise RuntimeError("model exploded")
            return [1.0] * len(pairs)

    with running(create_app(Flaky(), settings=ServerSettings(api_key=None))) as (url, _):
        bad = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["boom"]})
        good = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["fine"]})
    assert bad.status_code == 500
    assert "model exploded" in bad.json()["message"]
    assert good.status_code == 200


# ------------------------------------------------------------------------------- the load tester


@pytest.mark.slow
def test_bench_server_smoke(tiny_model_dir, tmp_path):
    """``rag-rerank bench-server --smoke``: the real load test end to end, in seconds."""
    import json

    from typer.testing import CliRunner

    from rerank_core.app.cli import _register, app

    _register()
    out = tmp_path / "bench"
    args = ["bench-server", "--smoke", "--model", str(tiny_model_dir), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "server_bench.json").read_text(encoding="utf-8"))
    cfg = report["config"]
    assert (cfg["concurrency"], cfg["duration_s"], cfg["warmup_s"]) == ([2], 1.0, 0.0)
    assert cfg["threads"] == 1 and report["environment"]["server_threads"] == 1
    assert {r["mode"] for r in report["runs"]} == {"batching", "no-batching"}
    for run in report["runs"]:
        assert run["ok"] > 0 and run["failed"] == 0
        assert run["mean_requests_per_batch"] >= 1.0  # read back from the server's /metrics
    assert "2" in report["batching_speedup"]["torch"]
    assert {r["backend"] for r in report["runs"]} == {"torch"}
    # Past capacity: only 200 and 503 (no transport errors, no 500), and the server lives on.
    over = report["overload"]
    assert set(over["statuses"]) <= {"200", "503"}
    assert over["statuses"].get("503", 0) > 0, over  # the queue of one was really overrun
    assert over["p99_503_ms"] is not None
    assert sum(over["statuses"].values()) == over["requests"]
    assert over["healthy_after"] == 200
    assert over["peak_rss_mb"] < 1.5 * max(r["peak_rss_mb"] for r in report["runs"])
    assert over["clean_exit"], over["exit_code"]
    md = (out / "server_bench.md").read_text(encoding="utf-8")
    assert "torch threads 1," in md and "| backend | clients | batching |" in md
    assert "Past capacity (torch, 16 clients" in md


def test_a_chunking_server_scores_long_documents_by_their_best_window(tiny_model_dir):
    from rerank_core import CrossEncoderScorer

    chunked = CrossEncoderScorer(str(tiny_model_dir), device="cpu", chunking=True)
    truncated = CrossEncoderScorer(str(tiny_model_dir), device="cpu")
    docs = ["bananas " * 300 + DOCS[0], DOCS[1]]
    expected = chunked.score(QUERY, docs)
    assert expected[0] != pytest.approx(truncated.score(QUERY, docs)[0], abs=1e-6)
    with running(create_app(chunked, settings=ServerSettings(api_key=None))) as (url, _):
        body = {"query": QUERY, "documents": docs}
        results = httpx.post(f"{url}/v1/rerank", json=body, timeout=60).json()["results"]
    served = {r["index"]: r["relevance_score"] for r in results}
    assert served == {i: pytest.approx(s, abs=1e-5) for i, s in enumerate(expected)}
