"""HTTPReranker without a network: configuration, batching, response checks, key hygiene."""

from __future__ import annotations

import copy
import email.utils
import pickle
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
    _BearerAuth,
    _parse_retry_after,
)

pytestmark = pytest.mark.disable_socket

KEY = "sk-unit-9f8e7d6c5b"


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in PROVIDERS.values():
        for var in spec.key_env:
            monkeypatch.delenv(var, raising=False)


def authorization(reranker: HTTPReranker) -> str | None:
    """The Authorization header the reranker's clients put on a request."""
    if reranker._api_key is None:
        return None
    flow = _BearerAuth(reranker._api_key).auth_flow(httpx.Request("POST", reranker.url))
    return next(flow).headers.get("Authorization")


def read(reranker: HTTPReranker, response: httpx.Response, n: int, attempt: int) -> list[float]:
    """Check a complete, already-read answer as the streaming path does."""
    return reranker._answer(
        response.status_code, response.headers, response.content, True, n, attempt
    )


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
    assert authorization(reranker) == f"Bearer {KEY}"


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
    scores = read(reranker, _response(payload), 3, 1)
    assert scores == [0.5, 0.0, 0.9]
    assert all(type(s) is float for s in scores)


def test_parse_tei_bare_list() -> None:
    reranker = HTTPReranker("tei")
    scores = read(
        reranker, _response([{"index": 1, "score": -2.5}, {"index": 0, "score": 3}]), 2, 1
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
        read(reranker, _response(payload), 2, 3)
    assert isinstance(info.value, ScoringError)
    assert info.value.attempts == 3 and info.value.provider == "siliconflow"


def test_status_errors_carry_status_retry_after_and_redacted_body() -> None:
    reranker = HTTPReranker("siliconflow", api_key=KEY)
    response = httpx.Response(503, text=f"down, token {KEY}", headers={"Retry-After": "7"})
    with pytest.raises(RemoteRerankError) as info:
        read(reranker, response, 1, 2)
    err = info.value
    assert (err.status, err.retry_after, err.retryable, err.attempts) == (503, 7.0, True, 2)
    assert KEY not in str(err) and "***" in str(err)
    assert str(err).startswith("siliconflow: HTTP 503") and str(err).endswith("(after 2 attempts)")
    with pytest.raises(RemoteRerankError) as info:
        read(reranker, httpx.Response(422, text="bad field"), 1, 1)
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


def test_the_key_is_held_masked_never_plain() -> None:
    reranker = HTTPReranker("jina", api_key=KEY)
    state = vars(reranker)
    assert repr(reranker._api_key) == "_Secret('***')" and str(reranker._api_key) == repr(
        reranker._api_key
    )
    for text in (
        repr(state),
        str(state),
        repr(reranker),
        repr(reranker.describe()),
        repr(reranker.identity()),
        reranker.score_id,
    ):
        assert KEY not in text and KEY[:6] not in text
    assert authorization(reranker) == f"Bearer {KEY}"
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(reranker._api_key)


def test_pickling_drops_the_key_and_reads_it_from_the_environment_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reranker = HTTPReranker("cohere", api_key=KEY, timeout=7, max_response_bytes=1000)
    data = pickle.dumps(reranker)
    assert KEY.encode() not in data and KEY[:6].encode() not in data
    with pytest.raises(ValueError, match=r"never pickled.*CO_API_KEY or COHERE_API_KEY"):
        pickle.loads(data)
    monkeypatch.setenv("COHERE_API_KEY", "env-key-of-the-worker")
    clone = pickle.loads(data)
    assert authorization(clone) == "Bearer env-key-of-the-worker"
    assert clone.score_id == reranker.score_id
    assert (clone.timeout, clone.max_response_bytes, clone.url) == (7.0, 1000, reranker.url)


def test_pickling_a_keyless_self_hosted_reranker_round_trips() -> None:
    reranker = HTTPReranker("tei", base_url="http://127.0.0.1:9", truncate=True)
    clone = pickle.loads(pickle.dumps(reranker))
    assert clone.score_id == reranker.score_id and authorization(clone) is None


def test_a_key_without_an_environment_variable_refuses_to_be_pickled() -> None:
    reranker = HTTPReranker("generic", base_url="http://127.0.0.1:9", api_key=KEY)
    with pytest.raises(TypeError, match="never pickled") as info:
        pickle.dumps(reranker)
    assert KEY not in str(info.value)


def test_copies_keep_the_key_and_get_their_own_connections() -> None:
    reranker = HTTPReranker("generic", base_url="http://127.0.0.1:9", api_key=KEY)
    for clone in (copy.copy(reranker), copy.deepcopy(reranker)):
        assert authorization(clone) == f"Bearer {KEY}"
        assert clone.score_id == reranker.score_id
        assert clone._lock is not reranker._lock and clone._aclients is not reranker._aclients


def test_excerpt_redacts_before_cutting_and_drops_a_key_cut_by_an_earlier_limit() -> None:
    reranker = HTTPReranker("jina", api_key=KEY)
    # The key straddles the 300-character cut: masked whole, never cut in two.
    text = "e" * 295 + KEY + " tail"
    assert reranker._excerpt(text) == "e" * 295 + "*** t..."
    # Text that stops inside the key (a read limit) loses that partial key too.
    assert reranker._excerpt("head " + KEY[:7], complete=False) == "head"
    # The key as a JSON string echo spells it is masked as well.
    slashed = HTTPReranker("jina", api_key="sk/ab/cd")
    assert slashed._excerpt('{"auth": "Bearer sk\\/ab\\/cd"}') == '{"auth": "Bearer ***"}'


@pytest.mark.parametrize("value", [0, -1, 1.5, True, None])
def test_max_response_bytes_must_be_a_positive_int(value: object) -> None:
    with pytest.raises(ValueError, match="max_response_bytes"):
        HTTPReranker("tei", max_response_bytes=value)  # type: ignore[arg-type]
