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
