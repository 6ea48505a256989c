"""rag-rerank's framework-free core: rerankers, their results and the policy around them.

Importing this package is cheap: torch and transformers load only when a model does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rerank_core.base import Pair, Reranker, RerankerError, RerankResult, ScoringError

if TYPE_CHECKING:
    from rerank_core.cache import CachedReranker, CacheInfo, ScoreCache
    from rerank_core.cascade import CascadeReranker
    from rerank_core.causal_lm import CausalLMReranker, PromptTemplate
    from rerank_core.cross_encoder import CrossEncoderScorer, default_model_path
    from rerank_core.fusion import Fusion
    from rerank_core.http import HTTPReranker
    from rerank_core.onnx_backend import OnnxCrossEncoderScorer
    from rerank_core.registry import BACKENDS, load_reranker

__all__ = [
    "BACKENDS",
    "CacheInfo",
    "CachedReranker",
    "CascadeReranker",
    "CausalLMReranker",
    "CrossEncoderScorer",
    "Fusion",
    "HTTPReranker",
    "OnnxCrossEncoderScorer",
    "Pair",
    "PromptTemplate",
    "RerankResult",
    "Reranker",
    "RerankerError",
    "ScoreCache",
    "ScoringError",
    "default_model_path",
    "load_reranker",
]

__version__ = "0.1.0"

_LAZY = {
    "CrossEncoderScorer": "rerank_core.cross_encoder",
    "CausalLMReranker": "rerank_core.causal_lm",
    "PromptTemplate": "rerank_core.causal_lm",
    "default_model_path": "rerank_core.cross_encoder",
    "HTTPReranker": "rerank_core.http",
    "Fusion": "rerank_core.fusion",
    "OnnxCrossEncoderScorer": "rerank_core.onnx_backend",
    "CacheInfo": "rerank_core.cache",
    "CachedReranker": "rerank_core.cache",
    "ScoreCache": "rerank_core.cache",
    "CascadeReranker": "rerank_core.cascade",
    "BACKENDS": "rerank_core.registry",
    "load_reranker": "rerank_core.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rerank_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
