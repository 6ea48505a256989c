"""A score's identity: every setting that changes a score changes it, and caches key on it.

Each backend is built once with defaults, then once per score-affecting setting changed; every
identity must differ from the default one (and settings that only change speed must not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rerank_core import CachedReranker, HTTPReranker, ScoreCache, load_reranker


def _ids(build: Any, variants: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: build(**options).score_id for name, options in variants.items()}


def _assert_all_differ(ids: dict[str, str]) -> None:
    base = ids["default"]
    same = [name for name, value in ids.items() if name != "default" and value == base]
    assert same == [], f"these settings change scores but not the identity: {same}"


TORCH_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "logits": {"normalize": False},
    "max_length": {"max_length": 64},
    "chunking": {"chunking": True},
    "dtype": {"dtype": "bfloat16"},
    "autocast": {"autocast": "bfloat16"},
}


def test_torch_identity_covers_every_score_setting(tiny_model_dir: Path) -> None:
    def build(**options: Any) -> Any:
        return load_reranker(tiny_model_dir, backend="torch", device="cpu", **options)

    _assert_all_differ(_ids(build, TORCH_VARIANTS))
    chunked = {
        "default": {"chunking": True},
        "overlap": {"chunking": True, "chunk_overlap": 4},
        "max_chunks": {"chunking": True, "max_chunks": 2},
    }
    _assert_all_differ(_ids(build, chunked))
    # Speed settings leave scores (and so the identity) alone.
    assert build(batch_size=4, max_batch_tokens=512).score_id == build().score_id
    assert build(rerank_window=3).score_id == build().score_id
    # A different model is a different identity.
    assert load_reranker(backend="torch", device="cpu").score_id != build().score_id


def test_onnx_identity_covers_every_score_setting(tiny_model_dir: Path) -> None:
    pytest.importorskip("onnxruntime")

    def build(**options: Any) -> Any:
        return load_reranker(tiny_model_dir, backend="onnx", **options)

    variants = {
        "default": {},
        "int8": {"quantize": "int8"},
        "logits": {"normalize": False},
        "max_length": {"max_length": 64},
        "chunking": {"chunking": True},
    }
    _assert_all_differ(_ids(build, variants))
    torch_id = load_reranker(tiny_model_dir, backend="torch", device="cpu").score_id
    assert build().score_id != torch_id
    assert build(num_threads=1).score_id == build().score_id


def test_http_identity_covers_every_score_setting() -> None:
    def build(**options: Any) -> HTTPReranker:
        provider = options.pop("provider", "tei")
        return HTTPReranker(provider, **options)

    variants: dict[str, dict[str, Any]] = {
        "default": {},
        "raw_scores": {"raw_scores": True},
        "truncate": {"truncate": True},
        "direction": {"truncation_direction": "Left"},
        "base_url": {"base_url": "http://127.0.0.1:9999"},
        "path": {"path": "/v2/rerank"},
        "extra_body": {"extra_body": {"mode": "fast"}},
        "provider": {"provider": "infinity", "base_url": "http://127.0.0.1:8080"},
    }
    _assert_all_differ(_ids(build, variants))
    cohere = {
        "default": {"provider": "cohere", "api_key": "k"},
        "model": {"provider": "cohere", "api_key": "k", "model": "rerank-english-v3.0"},
        "max_tokens": {"provider": "cohere", "api_key": "k", "max_tokens_per_doc": 256},
    }
    _assert_all_differ(_ids(build, cohere))
    # Neither the key nor speed settings belong to the identity.
    a = build(provider="cohere", api_key="key-one", max_concurrency=1, timeout=5.0)
    b = build(provider="cohere", api_key="key-two", max_concurrency=8, timeout=50.0)
    assert a.score_id == b.score_id
    assert "key-one" not in a.score_id


def test_raw_scores_are_logits_and_the_cache_keeps_them_apart() -> None:
    probabilities = HTTPReranker("tei")
    logits = HTTPReranker("tei", raw_scores=True)
    assert (probabilities.score_scale, logits.score_scale) == ("probability", "logit")
    shared = ScoreCache(100)
    a = CachedReranker(probabilities, cache=shared)
    b = CachedReranker(logits, cache=shared)
    assert ScoreCache.key(a._scorer_id, "q", "d") != ScoreCache.key(b._scorer_id, "q", "d")


def test_the_cache_wrapper_keeps_the_inner_identity(tiny_model_dir: Path) -> None:
    inner = load_reranker(tiny_model_dir, backend="torch", device="cpu")
    cached = load_reranker(tiny_model_dir, backend="torch", device="cpu", cache_entries=10)
    assert isinstance(cached, CachedReranker)
    assert cached.score_id == inner.score_id
    assert cached.score_scale == inner.score_scale == "probability"
