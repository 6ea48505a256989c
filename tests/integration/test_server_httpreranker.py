"""``HTTPReranker`` against a real ``rag-rerank`` server on 127.0.0.1.

The server runs the tiny model under uvicorn with auth on (key from ``RAG_RERANK_API_KEY``); the
client reaches it through three presets: ``cohere`` (``/v2/rerank``), ``generic`` (Cohere-shaped
``/v1/rerank``) and ``tei`` (``/rerank``). Every score must equal what a local
``CrossEncoderScorer`` on the same weights gives for the same pair.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from rerank_core import CrossEncoderScorer, HTTPReranker, RerankResult
from rerank_core.app.server import API_KEY_ENV, ServerSettings, create_app
from rerank_core.http import RemoteRerankError
from tests.integration.live_server import running

KEY = "rr-test-key-5f2c9a"
WRONG = "rr-wrong-key-77d1e0"
QUERY = "how does a cross-encoder rerank passages?"
DOCS = [
    "Cross-encoders read the query and passage together and output a relevance score.",
    "The Eiffel Tower is in Paris.",
    "交叉编码器同时读取查询和段落。",
    "Rerankers reorder the candidates a first-stage retriever found.",
    "Bananas are rich in potassium.",
    "The Eiffel Tower is in Paris.",  # a duplicate is scored and returned like any other
    "A passage that goes on for a while about vector search, recall, latency and rerankers. " * 3,
]
# (preset, how the base URL is given, path it reaches): what a user would write for each.
PRESETS = [
    pytest.param("cohere", "/v2", "/v2/rerank", id="cohere-v2"),
    pytest.param("generic", "", "/v1/rerank", id="generic-v1"),
    pytest.param("tei", "", "/rerank", id="tei"),
]
TOLERANCE = 1e-5  # float32 on CPU; the server batches and pads differently from a local call


@pytest.fixture(scope="module")
def server_url(tiny_model_dir: Path) -> Iterator[str]:
    """The server on its own copy of the tiny model, key read from the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(API_KEY_ENV, KEY)
        settings = ServerSettings(model_name="tiny")
    assert settings.api_key == KEY
    scorer = CrossEncoderScorer(str(tiny_model_dir), device="cpu")
    with running(create_app(scorer, settings=settings)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def local(tiny_scorer: CrossEncoderScorer) -> list[float]:
    """The reference: the same weights scored in process."""
    return tiny_scorer.score(QUERY, DOCS)


def _reranker(preset: str, server_url: str, prefix: str, **kwargs) -> HTTPReranker:
    kwargs.setdefault("api_key", KEY)
    return HTTPReranker(preset, base_url=server_url + prefix, backoff=0.01, **kwargs)


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def _check_results(results: list[RerankResult], local: list[float], top_n: int) -> None:
    assert [r.index for r in results] == _order(local)[:top_n]
    for r in results:
        assert r.document == DOCS[r.index]
        assert type(r.score) is float
        assert r.score == pytest.approx(local[r.index], abs=TOLERANCE)


@pytest.mark.parametrize(("preset", "prefix", "path"), PRESETS)
def test_sync_scores_equal_the_local_model(
    server_url: str, local: list[float], preset: str, prefix: str, path: str
) -> None:
    with _reranker(preset, server_url, prefix) as reranker:
        assert reranker.url == server_url + path
        scores = reranker.score(QUERY, DOCS)
        top3 = reranker.rerank(QUERY, DOCS, top_n=3)
        everything = reranker.rerank(QUERY, DOCS)
    assert all(type(s) is float for s in scores)
    assert scores == pytest.approx(local, abs=TOLERANCE)
    assert 0.0 <= min(scores) and max(scores) <= 1.0  # the server's default: probabilities
    _check_results(top3, local, 3)
    _check_results(everything, local, len(DOCS))


@pytest.mark.parametrize(("preset", "prefix", "path"), PRESETS)
async def test_async_rerank_equals_the_local_model_and_sync(
    server_url: str, local: list[float], preset: str, prefix: str, path: str
) -> None:
    async with _reranker(preset, server_url, prefix) as reranker:
        top2 = await reranker.arerank(QUERY, DOCS, top_n=2)
        scores = await reranker.ascore(QUERY, DOCS)
    _check_results(top2, local, 2)
    assert scores == pytest.approx(local, abs=TOLERANCE)
    with _reranker(preset, server_url, prefix) as reranker:
        assert reranker.rerank(QUERY, DOCS, top_n=2) == top2


async def test_requests_split_over_the_preset_limit_map_back(
    server_url: str, tiny_scorer: CrossEncoderScorer
) -> None:
    # TEI takes 32 texts per request: 70 go out as three requests, merged in input order.
    docs = [f"{DOCS[i % len(DOCS)]} (copy {i})" for i in range(70)]
    expected = tiny_scorer.score(QUERY, docs)
    async with _reranker("tei", server_url, "") as reranker:
        got = await reranker.arerank(QUERY, docs, top_n=10)
    assert [r.index for r in got] == _order(expected)[:10]
    assert [r.document for r in got] == [docs[r.index] for r in got]
    assert [r.score for r in got] == pytest.approx([expected[r.index] for r in got], abs=TOLERANCE)


def test_cohere_key_from_its_environment_variable(
    server_url: str, local: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    monkeypatch.setenv("CO_API_KEY", KEY)
    with HTTPReranker("cohere", base_url=f"{server_url}/v2") as reranker:
        assert reranker.score(QUERY, DOCS) == pytest.approx(local, abs=TOLERANCE)


def _assert_no_key(exc: BaseException, reranker: HTTPReranker) -> None:
    shown = "".join(traceback.format_exception(exc)) + repr(exc) + repr(reranker)
    shown += repr(reranker.describe())
    assert KEY not in shown
    assert WRONG not in shown


@pytest.mark.parametrize(("preset", "prefix", "path"), PRESETS)
async def test_wrong_key_is_a_clear_401_without_the_key(
    server_url: str, preset: str, prefix: str, path: str
) -> None:
    reranker = _reranker(preset, server_url, prefix, api_key=WRONG)
    with pytest.raises(RemoteRerankError) as sync_error:
        reranker.rerank(QUERY, DOCS, top_n=3)
    async with reranker:
        with pytest.raises(RemoteRerankError) as async_error:
            await reranker.arerank(QUERY, DOCS, top_n=3)
    for info in (sync_error, async_error):
        err = info.value
        assert (err.provider, err.status, err.attempts) == (preset, 401, 1)  # not retried
        text = str(err)
        assert text.startswith(f"{preset}: HTTP 401 from {server_url}{path}")
        assert "invalid API key" in text  # the server's own message
        assert "check the API key" in text
        _assert_no_key(err, reranker)
    if preset == "cohere":
        assert "CO_API_KEY or COHERE_API_KEY" in str(sync_error.value)


@pytest.mark.parametrize("preset", ["generic", "tei"])
def test_missing_key_is_a_clear_401(server_url: str, preset: str) -> None:
    with HTTPReranker(preset, base_url=server_url) as reranker:
        with pytest.raises(RemoteRerankError) as info:
            reranker.score(QUERY, DOCS)
    assert info.value.status == 401
    assert "missing API key" in str(info.value)
    assert str(info.value).startswith(f"{preset}: HTTP 401")
    _assert_no_key(info.value, reranker)
