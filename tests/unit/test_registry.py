"""Choosing a backend by name, and the error when the ONNX extra is missing."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from rerank_core import BACKENDS, CachedReranker, CrossEncoderScorer, load_reranker

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]


def test_known_backends() -> None:
    assert {"torch", "torch-bf16", "onnx", "onnx-int8"} <= set(BACKENDS)


def test_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        load_reranker("x", backend="tensorrt")


def test_torch_backends(tiny_model_dir: Path) -> None:
    plain = load_reranker(tiny_model_dir, backend="torch", device="cpu")
    bf16 = load_reranker(tiny_model_dir, backend="torch-bf16", device="cpu")
    assert isinstance(plain, CrossEncoderScorer) and plain.autocast is None
    assert isinstance(bf16, CrossEncoderScorer) and bf16.describe()["autocast"] == "bfloat16"


def test_cache_entries_wraps_the_scorer(tiny_model_dir: Path) -> None:
    scorer = load_reranker(tiny_model_dir, device="cpu", cache_entries=10)
    assert isinstance(scorer, CachedReranker) and scorer.cache.max_entries == 10
    scorer.score("q", ["a", "b"])
    scorer.score("q", ["a", "b"])
    assert scorer.cache_info().hits == 2


def test_missing_onnx_extra_names_the_install_command(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'rag-rerank[onnx]'")):
        load_reranker(tiny_model_dir, backend="onnx-int8")


def test_the_onnx_extra_named_in_the_error_exists() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    source = (ROOT / "core" / "onnx_backend.py").read_text()
    named = set(re.findall(r"rag-rerank\[([a-z0-9_-]+)\]", source))
    assert named == {"onnx"}
    assert {"onnxruntime", "onnx"} <= {re.split(r"[<>=\[ ]", d)[0] for d in extras["onnx"]}


def test_a_bundled_model_is_found_by_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rerank_core.cross_encoder import DEFAULT_MODEL_DIR, bundled_model_path

    assert bundled_model_path("rag-rerank-minilm-l6") == DEFAULT_MODEL_DIR
    assert bundled_model_path("no-such-model") is None
    assert bundled_model_path("someone/rag-rerank-minilm-l6") is None  # a hub id stays one
    assert bundled_model_path("../models/rag-rerank-minilm-l6") is None
    # a local folder of the same name is that folder, not the bundled model
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rag-rerank-minilm-l6").mkdir()
    assert bundled_model_path("rag-rerank-minilm-l6") is None


def test_load_reranker_finds_a_bundled_model_by_its_name() -> None:
    from rerank_core.calibration import CalibratedReranker
    from rerank_core.cross_encoder import DEFAULT_MODEL_DIR

    named = load_reranker("rag-rerank-minilm-l6", backend="torch", device="cpu")
    # the bundled folder, with the calibration.json beside its weights, as for model=None
    assert isinstance(named, CalibratedReranker)
    assert named.inner.model_name == str(DEFAULT_MODEL_DIR)
    assert named.score("capital of France", ["Paris is the capital of France."])[0] > 0.5
