"""The rerank server's HTTP contract, in process (Starlette's TestClient, no sockets)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from rerank_core.app.server import ServerSettings, create_app

QUERY = "what is a reranker?"
DOCS = [
    "A reranker scores each candidate passage against the query.",
    "Apples grow on trees in temperate climates.",
    "重排序模型对候选段落打分。",
    "Cross-encoders read the query and the passage together.",
]


@pytest.fixture(scope="module")
def client(tiny_scorer):
    with TestClient(create_app(tiny_scorer, settings=ServerSettings(api_key=None))) as c:
        yield c


@pytest.fixture(scope="module")
def expected(tiny_scorer) -> list[float]:
    return tiny_scorer.score(QUERY, DOCS)


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def test_v1_shape_scores_and_order(client, expected):
    r = client.post("/v1/rerank", json={"model": "any", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == _order(expected)
    for x in body["results"]:
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], rel=1e-5)
        assert "document" not in x
    assert body["usage"]["total_tokens"] > 0
    assert body["meta"]["api_version"]["version"] == "1"
    assert body["model"]


def test_v1_top_n_and_documents_objects_kept(client, expected):
    docs = [{"text": d, "id": f"doc-{i}", "meta": {"n": i}} for i, d in enumerate(DOCS)]
    sent = json.loads(json.dumps(docs))
    r = client.post(
        "/v1/rerank",
        json={"query": QUERY, "documents": docs, "top_n": 2, "return_documents": True},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == _order(expected)[:2]
    for x in results:
        assert x["document"] == docs[x["index"]]  # every field comes back unchanged
    assert docs == sent


def test_v1_strings_with_return_documents(client):
    r = client.post(
        "/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": True}
    )
    assert {x["document"]["text"] for x in r.json()["results"]} == set(DOCS)


def test_v2_shape(client, expected):
    r = client.post(
        "/v2/rerank", json={"model": "m", "query": QUERY, "documents": DOCS, "top_n": 3}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == _order(expected)[:3]
    assert body["meta"]["api_version"]["version"] == "2"
    assert all(set(x) == {"index", "relevance_score"} for x in body["results"])


def test_tei_shape(client, expected):
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body] == _order(expected)
    for x in body:
        assert x["score"] == pytest.approx(expected[x["index"]], rel=1e-5)
        assert x["text"] == DOCS[x["index"]]


def test_tei_raw_scores_refused_on_probability_server(client):
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
    assert r.status_code == 400
    assert "raw_scores" in r.json()["message"]


def test_tei_on_raw_server(tiny_model_dir):
    from rerank_core import CrossEncoderScorer

    raw = CrossEncoderScorer(str(tiny_model_dir), device="cpu", normalize=False)
    logits = raw.score(QUERY, DOCS)
    with TestClient(create_app(raw, settings=ServerSettings(api_key=None))) as c:
        got = c.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
        probs = c.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert {x["index"]: x["score"] for x in got} == pytest.approx(dict(enumerate(logits)))
    sig = {i: 1 / (1 + math.exp(-v)) for i, v in enumerate(logits)}
    assert {x["index"]: x["score"] for x in probs} == pytest.approx(sig, rel=1e-6)


BAD = [
    ("{not json", 400, "malformed JSON"),
    ("", 400, "request body is required"),
    ("[1, 2]", 400, "valid dictionary"),
    ('{"query": 3, "documents": ["a"]}', 400, "query"),
    ('{"query": "  ", "documents": ["a"]}', 400, "query must have visible text"),
    ('{"query": "\\u200b", "documents": ["a"]}', 400, "query must have visible text"),
    ('{"query": "q"}', 400, "documents: Field required"),
    ('{"query": "q", "documents": []}', 400, "must not be empty"),
    ('{"query": "q", "documents": 5}', 400, "documents must be a string, or a list"),
    ('{"query": "q", "documents": ["a", 5]}', 400, "documents[1] must be a string"),
    ('{"query": "q", "documents": [{"title": "x"}]}', 400, "without a string 'text'"),
    ('{"query": "q", "documents": ["a"], "top_n": 0}', 400, "top_n"),
    ('{"query": "q", "documents": ["a"], "top_n": "2"}', 400, "top_n"),
    ('{"query": "q", "documents": ["a"], "return_documents": "yes"}', 400, "return_documents"),
    ('{"query": "q", "documents": ["a"], "rank_fields": ["title"]}', 400, "rank_fields"),
]


@pytest.mark.parametrize(("body", "status", "fragment"), BAD)
def test_bad_requests_get_clear_errors_and_server_keeps_serving(client, body, status, fragment):
    r = client.post("/v1/rerank", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    assert err["error_type"] == "invalid_request"
    assert fragment in err["message"]
    assert client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200


def test_tei_bad_request(client):
    r = client.post("/rerank", json={"query": "q", "texts": []})
    assert r.status_code == 400
    assert "texts" in r.json()["message"]


@pytest.fixture(scope="module")
def limited(tiny_scorer):
    settings = ServerSettings(
        api_key=None,
        max_documents=3,
        max_document_chars=50,
        max_request_chars=120,
        max_body_bytes=2000,
    )
    with TestClient(create_app(tiny_scorer, settings=settings)) as c:
        yield c


@pytest.mark.parametrize(
    ("payload", "limit"),
    [
        ({"query": "q", "documents": ["a", "b", "c", "d"]}, "max_documents"),
        ({"query": "q", "documents": ["a", "x" * 51]}, "max_document_chars"),
        ({"query": "q" * 51, "documents": ["a"]}, "max_document_chars"),
        ({"query": "q", "documents": ["x" * 45, "y" * 45, "z" * 45]}, "max_request_chars"),
        ({"query": "q", "documents": ["x" * 3000]}, "max_body_bytes"),
    ],
)
def test_limits_answer_413_naming_the_limit(limited, payload, limit):
    r = limited.post("/v1/rerank", json=payload)
    assert r.status_code == 413, r.text
    err = r.json()
    assert err["limit"] == limit
    assert limit in err["message"]
    assert limited.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200


def test_body_limit_without_content_length(limited):
    def chunks():
        yield b'{"query": "q", "documents": ["'
        for _ in range(10):
            yield b"x" * 500
        yield b'"]}'

    r = limited.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["limit"] == "max_body_bytes"


def test_auth(tiny_scorer, monkeypatch):
    monkeypatch.setenv("RAG_RERANK_API_KEY", "s3cret-key")
    payload = {"query": "q", "documents": ["a"]}
    with TestClient(create_app(tiny_scorer)) as c:  # key read from the environment
        missing = c.post("/v1/rerank", json=payload)
        wrong = c.post("/v1/rerank", json=payload, headers={"Authorization": "Bearer nope"})
        basic = c.post("/rerank", json=payload, headers={"Authorization": "Basic s3cret-key"})
        bad_json = c.post("/v2/rerank", content="{", headers={"content-type": "application/json"})
        ok = c.post("/v1/rerank", json=payload, headers={"Authorization": "Bearer s3cret-key"})
        health = c.get("/health")
    for r in (missing, wrong, basic, bad_json):
        assert r.status_code == 401
        assert r.json()["error_type"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in missing.json()["message"]
    assert "s3cret" not in wrong.text
    assert ok.status_code == 200
    assert health.status_code == 200


def test_health_metrics_and_docs(client):
    client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    client.post("/v1/rerank", json={"query": QUERY, "documents": []})
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["queue_capacity"] == 256
    text = client.get("/metrics").text
    assert 'rag_rerank_http_requests_total{method="POST",path="/v1/rerank",status="200"}' in text
    assert 'status="400"' in text
    assert "rag_rerank_http_request_duration_seconds_bucket" in text
    assert "rag_rerank_batch_pairs_count" in text
    assert "rag_rerank_batch_requests_count" in text
    assert "rag_rerank_queue_depth 0.0" in text
    spec = client.get("/openapi.json").json()
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/health", "/metrics"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_exact_usage_counts_tokens(tiny_scorer):
    settings = ServerSettings(api_key=None, exact_usage=True)
    with TestClient(create_app(tiny_scorer, settings=settings)) as c:
        body = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
    assert body["usage"]["total_tokens"] == sum(
        tiny_scorer.count_tokens([(QUERY, d) for d in DOCS])
    )


def test_settings_and_arguments_are_checked(tiny_scorer):
    with pytest.raises(ValueError, match="max_documents"):
        ServerSettings(max_documents=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        ServerSettings(max_wait_ms=-1)
    with pytest.raises(TypeError, match="Reranker"):
        create_app(object())  # type: ignore[arg-type]
    assert "s3cret" not in repr(ServerSettings(api_key="s3cret"))
