"""HTTPReranker without a network: configuration, batching, response checks, key hygiene."""

from __future__ import annotations

import email.utils
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("httpx")

import httpx

from rerank_core import HTTPReranker, Reranker, ScoringError
from rerank_core.http import (
    PROVIDERS,
    RemoteRerankError,
    RemoteResponseError,
    _parse_retry_after,
)

pytestmark = pytest.mark.disable_socket

KEY = "sk-unit-9f8e7d6c5b"


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in PROVIDERS.values():
        for var in spec.key_env:
            monkeypatch.delenv(var, raising=False)


def test_it_is_a_reranker_and_exported_lazily() -> None:
    import rerank_core

    assert "HTTPReranker" in rerank_core.__all__
    assert issubclass(HTTPReranker, Reranker)


def test_every_preset_builds_with_a_key() -> None:
    for name, spec in PROVIDERS.items():
        reranker = HTTPReranker(name, api_key=KEY, base_url=spec.base_url or "http://127.0.0.1:1")
        assert reranker.url.endswith(spec.path)
        assert reranker.batch_size == spec.max_documents


def test_hosted_presets_need_a_key_and_name_the_variable() -> None:
    with pytest.raises(ValueError, match="SILICONFLOW_API_KEY"):
        HTTPReranker("siliconflow")
    with pytest.raises(ValueError, match="CO_API_KEY or COHERE_API_KEY"):
        HTTPReranker("cohere")
    HTTPReranker("tei")  # self-hosted: no key needed


def test_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    reranker = HTTPReranker("cohere")
    assert reranker._headers()["Authorization"] == f"Bearer {KEY}"


def test_key_is_not_in_repr_describe_or_public_attributes() -> None:
    reranker = HTTPReranker("jina", api_key=KEY)
    public = {k: v for k, v in vars(reranker).items() if not k.startswith("_")}
    for text in (repr(reranker), str(reranker.describe()), repr(public)):
        assert KEY not in text
    assert reranker._redact(f"echo Bearer {KEY}!") == "echo Bearer ***!"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"provider": "openai"}, "unknown provider 'openai'"),
        ({"provider": "generic"}, "base_url is required"),
        ({"provider": "tei", "base_url": "localhost:8080"}, "http:// or https://"),
        ({"provider": "tei", "model": "bge"}, "serves one model"),
        ({"provider": "tei", "timeout": 0}, "timeout"),
        ({"provider": "tei", "timeout": float("inf")}, "timeout"),
        ({"provider": "tei", "max_attempts": 0}, "max_attempts"),
        ({"provider": "tei", "max_concurrency": True}, "max_concurrency"),
        ({"provider": "tei", "max_documents_per_request": -1}, "max_documents_per_request"),
        ({"provider": "tei", "max_documents_per_request": 0}, "max_documents_per_request"),
        ({"provider": "cohere", "api_key": KEY, "truncate": True}, "cohere does not take truncate"),
        ({"provider": "jina", "api_key": KEY, "overlap_tokens": 10}, "jina does not take"),
        ({"provider": "siliconflow", "api_key": KEY, "max_chunks_per_doc": -2}, "non-negative"),
        ({"provider": "tei", "truncate": "yes"}, "truncate must be a bool"),
        ({"provider": "tei", "extra_body": {"texts": []}}, "extra_body may not set"),
        ({"provider": "siliconflow", "api_key": ""}, "api_key must be a non-empty"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        HTTPReranker(**kwargs)


def test_instruction_only_for_models_that_use_it() -> None:
    with pytest.raises(ValueError, match="BAAI/bge-reranker-v2-m3 would ignore it"):
        HTTPReranker("siliconflow", api_key=KEY, instruction="按相关性排序")
    reranker = HTTPReranker(
        "siliconflow", api_key=KEY, model="Qwen/Qwen3-Reranker-4B", instruction="按相关性排序"
    )
    assert reranker._body("q", ["a"])["instruction"] == "按相关性排序"


def test_batch_plan_groups_by_query_and_respects_the_limit() -> None:
    reranker = HTTPReranker("tei", max_documents_per_request=2)
    pairs = [("a", "1"), ("b", "2"), ("a", "3"), ("a", "4"), ("b", "5"), ("a", "6"), ("a", "7")]
    plan = [list(b.indices) for b in reranker._prepare(pairs)]
    assert plan == [[0, 2], [3, 5], [6], [1, 4]]
    assert sorted(i for batch in plan for i in batch) == list(range(len(pairs)))
    for batch in plan:
        assert len({pairs[i][0] for i in batch}) == 1


def test_one_request_never_mixes_queries() -> None:
    with pytest.raises(ValueError, match="one query"):
        HTTPReranker("tei")._split([("a", "1"), ("b", "2")])


def test_body_asks_for_every_score_and_no_texts_back() -> None:
    reranker = HTTPReranker("infinity", raw_scores=True, extra_body={"user": "u1"})
    assert reranker._body("q", ["x", "y", "z"]) == {
        "user": "u1",
        "query": "q",
        "documents": ["x", "y", "z"],
        "top_n": 3,
        "return_documents": False,
        "raw_scores": True,
    }


def _response(payload: object, status: int = 200) -> httpx.Response:
    if isinstance(payload, bytes):
        return httpx.Response(status, content=payload)
    return httpx.Response(status, json=payload)


def test_parse_maps_indices_back_to_input_order() -> None:
    reranker = HTTPReranker("cohere", api_key=KEY)
    payload = {
        "results": [
            {"index": 2, "relevance_score": 0.9},
            {"index": 0, "relevance_score": 0.5},
            {"index": 1, "relevance_score": 0},
        ]
    }
    scores = reranker._read(_response(payload), 3, 1)
    assert scores == [0.5, 0.0, 0.9]
    assert all(type(s) is float for s in scores)


def test_parse_tei_bare_list() -> None:
    reranker = HTTPReranker("tei")
    scores = reranker._read(
        _response([{"index": 1, "score": -2.5}, {"index": 0, "score": 3}]), 2, 1
    )
    assert scores == [3.0, -2.5]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"results": []}, "0 results for 2 documents"),
        ({"results": [{"index": 0, "relevance_score": 1}] * 2}, "repeats index 0"),
        ({"results": [{"index": -1, "relevance_score": 1}] * 2}, "out-of-range index -1"),
        ({"results": [{"index": True, "relevance_score": 1}] * 2}, "out-of-range index True"),
        ({"results": [{"index": 0}, {"index": 1}]}, "no finite 'relevance_score': None"),
        (b'{"results": [{"index": 0, "relevance_score": Infinity}, {"index": 1}]}', "no finite"),
        ({"results": "nope"}, "'results' is not a list"),
        ([1, 2], "'results' is not a list"),
    ],
)
def test_parse_rejects_incomplete_or_bad_results(payload: object, message: str) -> None:
    reranker = HTTPReranker("siliconflow", api_key=KEY)
    with pytest.raises(RemoteResponseError, match=re.escape(message)) as info:
        reranker._read(_response(payload), 2, 3)
    assert isinstance(info.value, ScoringError)
    assert info.value.attempts == 3 and info.value.provider == "siliconflow"


def test_status_errors_carry_status_retry_after_and_redacted_body() -> None:
    reranker = HTTPReranker("siliconflow", api_key=KEY)
    response = httpx.Response(503, text=f"down, token {KEY}", headers={"Retry-After": "7"})
    with pytest.raises(RemoteRerankError) as info:
        reranker._read(response, 1, 2)
    err = info.value
    assert (err.status, err.retry_after, err.retryable, err.attempts) == (503, 7.0, True, 2)
    assert KEY not in str(err) and "***" in str(err)
    assert str(err).startswith("siliconflow: HTTP 503") and str(err).endswith("(after 2 attempts)")
    with pytest.raises(RemoteRerankError) as info:
        reranker._read(httpx.Response(422, text="bad field"), 1, 1)
    assert info.value.retryable is False


def test_retry_after_parsing() -> None:
    assert _parse_retry_after("3") == 3.0
    assert _parse_retry_after(" 0.5 ") == 0.5
    assert _parse_retry_after(None) is None
    assert _parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (_parse_retry_after(later) or 0) <= 31


def test_empty_input_sends_nothing() -> None:
    reranker = HTTPReranker("tei")
    assert reranker.score("q", []) == []
    assert reranker.rerank("q", []) == []


def test_remote_extra_named_in_the_import_message_exists() -> None:
    source = Path(__file__).resolve().parents[2] / "core" / "http.py"
    named = set(re.findall(r"rag-rerank\[(\w+)\]", source.read_text(encoding="utf-8")))
    pyproject = (source.parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert named == {"remote"}
    for extra in named:
        assert re.search(rf"^{extra} = \[", pyproject, re.MULTILINE)
