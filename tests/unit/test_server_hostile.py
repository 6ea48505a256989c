"""The server's edge: hostile bodies, unknown routes, the OpenAPI document, TEI /info, model names
and Cohere v2 ``max_tokens_per_doc``, in process (Starlette's TestClient)."""

from __future__ import annotations

import gzip
import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from rerank_core.app.server import MAX_JSON_DEPTH, ServerSettings, create_app
from tests.fakes import WordOverlap

ERROR_KEYS = {"message", "error_type", "limit"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(tiny_scorer):
    with TestClient(create_app(tiny_scorer, settings=ServerSettings(api_key=None))) as c:
        yield c


def _documented_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) <= ERROR_KEYS and {"message", "error_type"} <= set(body), body
    return body


def _still_serving(client) -> None:
    assert client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200


# ------------------------------------------------------------------------------- hostile bodies


@pytest.mark.parametrize(
    "body",
    [
        b'{"query":"q","documents":[{"text":"a","x":NaN}],"return_documents":true}',
        b'{"query":"q","documents":["a"],"top_n":Infinity}',
        b'{"query":"q","documents":[{"text":"a","x":-Infinity}],"return_documents":true}',
    ],
)
def test_nan_and_infinity_are_refused_with_400(client, body):
    err = _documented_error(client.post("/v1/rerank", content=body, headers=JSON), 400)
    assert err["error_type"] == "invalid_request"
    assert "is not a JSON value" in err["message"]
    _still_serving(client)


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v1/rerank", '{"query": "q\\ud800", "documents": ["a"]}', "query"),
        ("/v2/rerank", '{"query": "q\\ud800", "documents": ["a"]}', "query"),
        ("/rerank", '{"query": "q\\ud800", "texts": ["a"]}', "query"),
        ("/v1/rerank", '{"query": "q", "documents": ["a", "b\\udfff"]}', "documents[1]"),
        ("/v2/rerank", '{"query": "q", "documents": [{"text": "\\ud800"}]}', "documents[0].text"),
        ("/rerank", '{"query": "q", "texts": ["a", "\\udc00z"]}', "texts[1]"),
        (
            "/v1/rerank",
            '{"query": "q", "documents": [{"text": "a", "m": {"\\ud800": 1}}], '
            '"return_documents": true}',
            "documents[0].m key",
        ),
    ],
)
def test_lone_surrogates_are_a_400_naming_the_field(client, path, payload, field):
    err = _documented_error(client.post(path, content=payload.encode(), headers=JSON), 400)
    assert err["error_type"] == "invalid_request"
    assert err["message"].startswith(f"{field} holds a lone surrogate"), err
    _still_serving(client)


def test_invalid_utf8_body(client):
    body = b'{"query": "caf\xe9", "documents": ["a"]}'
    err = _documented_error(client.post("/v1/rerank", content=body, headers=JSON), 400)
    assert "not valid UTF-8" in err["message"]


def test_integer_over_the_digit_limit(client):
    body = b'{"query": "q", "documents": ["a"], "top_n": ' + b"9" * 5000 + b"}"
    err = _documented_error(client.post("/v1/rerank", content=body, headers=JSON), 400)
    assert "number" in err["message"]
    _still_serving(client)


@pytest.mark.parametrize("depth", [40_000, MAX_JSON_DEPTH + 1])
def test_deep_nesting(client, depth):
    meta = "[" * depth + "]" * depth
    body = f'{{"query": "q", "documents": [{{"text": "a", "m": {meta}}}]}}'.encode()
    err = _documented_error(client.post("/v1/rerank", content=body, headers=JSON), 400)
    assert f"nested more than {MAX_JSON_DEPTH} levels" in err["message"]
    _still_serving(client)


def test_nesting_within_the_limit_is_echoed(client):
    meta: object = "leaf"
    for _ in range(MAX_JSON_DEPTH - 4):
        meta = {"k": meta}
    doc = {"text": "a", "m": meta}
    r = client.post("/v1/rerank", json={"query": "q", "documents": [doc], "return_documents": True})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["document"] == doc


def test_gzip_body_is_415(client):
    body = gzip.compress(json.dumps({"query": "q", "documents": ["a"]}).encode())
    headers = {**JSON, "content-encoding": "gzip"}
    err = _documented_error(client.post("/v1/rerank", content=body, headers=headers), 415)
    assert err["error_type"] == "unsupported_media_type"
    assert "gzip" in err["message"]


def test_unknown_path_wrong_method_and_trailing_slash(client):
    missing = _documented_error(client.get("/nope"), 404)
    assert missing["error_type"] == "not_found"
    wrong = client.get("/v1/rerank")
    err = _documented_error(wrong, 405)
    assert err["error_type"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"
    slash = client.post(
        "/v1/rerank/", json={"query": "q", "documents": ["a"]}, follow_redirects=False
    )
    err = _documented_error(slash, 404)
    assert "did you mean /v1/rerank" in err["message"]
    put = client.put("/health")
    assert _documented_error(put, 405)["error_type"] == "method_not_allowed"


def test_non_json_content_type_is_a_400(client):
    r = client.post("/v1/rerank", content=b"query=q", headers={"content-type": "text/plain"})
    assert _documented_error(r, 400)["error_type"] == "invalid_request"


# ------------------------------------------------------------------------------- compatibility


def test_documents_as_one_string_on_v1(client, tiny_scorer):
    doc = "A reranker scores passages."
    payload = {"query": "what is a reranker?", "documents": doc, "return_documents": True}
    r = client.post("/v1/rerank", json=payload)
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert result["index"] == 0
    assert result["document"] == {"text": doc}
    expected = tiny_scorer.score("what is a reranker?", [doc])[0]
    assert result["relevance_score"] == pytest.approx(expected, rel=1e-5)
    # Cohere v2 takes a list only.
    v2 = client.post("/v2/rerank", json={"query": "q", "documents": doc})
    assert "documents must be a list" in _documented_error(v2, 400)["message"]


def test_info_has_tei_shape(client, tiny_scorer, tiny_model_dir):
    info = client.get("/info").json()
    required = {
        "model_id",
        "model_dtype",
        "model_type",
        "max_concurrent_requests",
        "max_input_length",
        "max_batch_tokens",
        "max_client_batch_size",
        "auto_truncate",
        "tokenization_workers",
        "version",
    }
    assert required <= set(info)
    assert {"sha", "docker_label", "model_sha", "max_batch_requests"} <= set(info)
    assert set(info["model_type"]) == {"reranker"}
    assert info["model_type"]["reranker"]["label2id"] == {"LABEL_0": 0}
    assert info["model_id"] == tiny_model_dir.name
    assert info["model_dtype"] == "float32"
    assert info["max_input_length"] == tiny_scorer.max_length


def test_model_name_never_shows_a_local_path(tiny_scorer, tiny_model_dir):
    assert tiny_scorer.model_name == str(tiny_model_dir)  # the absolute folder
    payload = {"query": "q", "documents": ["a"]}
    with TestClient(create_app(tiny_scorer, settings=ServerSettings(api_key=None))) as c:
        names = [c.get("/health").json()["model"]]
        names += [c.post(p, json=payload).json()["model"] for p in ("/v1/rerank", "/v2/rerank")]
    assert names == [tiny_model_dir.name] * 3
    settings = ServerSettings(api_key=None, model_name="my-reranker")
    with TestClient(create_app(tiny_scorer, settings=settings)) as c:
        assert c.get("/health").json()["model"] == "my-reranker"


# ------------------------------------------------------------------------------- max_tokens_per_doc


LONG = [
    "Cross-encoders read the query and the passage together. " * 8,
    "Bananas are yellow and rich in potassium, grown in warm places. " * 8,
    "A reranker reorders candidates found by a first-stage retriever. " * 8,
]


def test_max_tokens_per_doc_truncates_each_document(client, tiny_scorer):
    query = "how do rerankers work?"
    n = 5

    def scores(extra: dict) -> dict[int, float]:
        r = client.post("/v2/rerank", json={"query": query, "documents": LONG, **extra})
        assert r.status_code == 200, r.text
        return {x["index"]: x["relevance_score"] for x in r.json()["results"]}

    full, cut = scores({}), scores({"max_tokens_per_doc": n})
    assert all(abs(full[i] - cut[i]) > 1e-6 for i in range(len(LONG)))
    tok = tiny_scorer.tokenizer
    by_hand = [tok.decode(tok(d, add_special_tokens=False)["input_ids"][:n]) for d in LONG]
    assert all(len(tok(d, add_special_tokens=False)["input_ids"]) == n for d in by_hand)
    expected = tiny_scorer.score(query, by_hand)
    assert cut == {i: pytest.approx(s, rel=1e-5) for i, s in enumerate(expected)}
    # A limit above every document's length changes nothing.
    assert scores({"max_tokens_per_doc": 10_000}) == pytest.approx(full, rel=1e-5)


@pytest.mark.parametrize("value", [True, 0, -3, 2.5, "4"])
def test_max_tokens_per_doc_must_be_a_positive_int(client, value):
    payload = {"query": "q", "documents": ["a"], "max_tokens_per_doc": value}
    r = client.post("/v2/rerank", json=payload)
    assert "max_tokens_per_doc" in _documented_error(r, 400)["message"]


def test_max_tokens_per_doc_refused_without_a_tokenizer():
    app = create_app(WordOverlap(), settings=ServerSettings(api_key=None))
    with TestClient(app) as c:
        r = c.post("/v2/rerank", json={"query": "q", "documents": ["ab"], "max_tokens_per_doc": 4})
        ok = c.post("/v2/rerank", json={"query": "q", "documents": ["ab"]})
        spec = c.get("/openapi.json").json()
    err = _documented_error(r, 400)
    assert "max_tokens_per_doc is not available" in err["message"]
    assert ok.status_code == 200
    props = spec["components"]["schemas"]["RerankRequestV2"]["properties"]
    assert "max_tokens_per_doc" not in props  # the schema says what this server takes


# ------------------------------------------------------------------------------- OpenAPI


def _spec(tiny_scorer, **settings) -> dict:
    with TestClient(create_app(tiny_scorer, settings=ServerSettings(**settings))) as c:
        return c.get("/openapi.json").json()


def test_openapi_states_the_rules(tiny_scorer):
    spec = _spec(tiny_scorer, api_key=None, max_documents=7, max_document_chars=99)
    text = json.dumps(spec)
    assert '"422"' not in text and "HTTPValidationError" not in text
    assert "securitySchemes" not in spec["components"]
    models = spec["components"]["schemas"]
    v1 = models["RerankRequestV1"]["properties"]
    query = v1["query"]
    assert query["minLength"] == 1 and query["maxLength"] == 99
    import re

    visible = re.compile(query["pattern"])
    assert visible.search("a") and visible.search("  日 ")
    assert not visible.search(" \t\u200b\ufeff\u00a0")
    arrays = [b for b in v1["documents"]["anyOf"] if b.get("type") == "array"]
    assert arrays[0]["minItems"] == 1 and arrays[0]["maxItems"] == 7
    assert any(b.get("type") == "string" for b in v1["documents"]["anyOf"])
    top_n = next(b for b in v1["top_n"]["anyOf"] if b.get("type") == "integer")
    assert top_n["minimum"] == 1
    v2 = models["RerankRequestV2"]["properties"]
    assert v2["documents"]["minItems"] == 1
    mt = v2["max_tokens_per_doc"]["anyOf"]
    assert {b.get("type") for b in mt} == {"integer", "null"}
    assert models["RerankRequestTEI"]["properties"]["raw_scores"]["enum"] == [False]
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        responses = spec["paths"][path]["post"]["responses"]
        assert "401" not in responses and {"200", "400", "413"} <= set(responses)
        assert "security" not in spec["paths"][path]["post"]


def test_openapi_with_an_api_key_declares_bearer_auth(tiny_scorer):
    spec = _spec(tiny_scorer, api_key="k")
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        op = spec["paths"][path]["post"]
        assert op["security"] == [{"bearerAuth": []}]
        assert "401" in op["responses"]
    assert "security" not in spec["paths"]["/health"]["get"]


def test_integral_numbers_are_integers_and_booleans_are_not(client):
    ok = client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"], "top_n": 1.0})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 1
    for bad in (True, 1.5):
        r = client.post("/v1/rerank", json={"query": "q", "documents": ["a"], "top_n": bad})
        assert "top_n" in _documented_error(r, 400)["message"]


def test_tei_truncation_direction(client):
    body = {"query": "q", "texts": ["a"], "truncation_direction": "Right"}
    assert client.post("/rerank", json=body).status_code == 200
    left = client.post("/rerank", json={**body, "truncation_direction": "Left"})
    assert "truncation_direction" in _documented_error(left, 400)["message"]
