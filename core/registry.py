"""Pick a local backend by name: ``load_reranker(model, backend="onnx-int8")``.

=============  ==============================================================================
backend        what runs
=============  ==============================================================================
``torch``      :class:`~rerank_core.CrossEncoderScorer`, fp32 on CPU (exact), fp16 on CUDA
``torch-bf16`` the same under bf16 autocast: several times faster on CPUs with AMX/AVX512-BF16
``onnx``       :class:`~rerank_core.OnnxCrossEncoderScorer`, fp32 with fused kernels
``onnx-int8``  the same, dynamically quantised to int8 (fastest on CPU)
=============  ==============================================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from rerank_core.base import Reranker

__all__ = ["BACKENDS", "load_reranker"]


def _torch(model: str | None, **kwargs: Any) -> Reranker:
    from rerank_core.cross_encoder import CrossEncoderScorer

    return CrossEncoderScorer(model, **kwargs)


def _torch_bf16(model: str | None, **kwargs: Any) -> Reranker:
    from rerank_core.cross_encoder import CrossEncoderScorer, pick_device

    device = pick_device(kwargs.get("device"))
    if device.startswith("cuda") or device == "mps":
        kwargs.setdefault("dtype", "bfloat16")
    else:
        kwargs.setdefault("autocast", "bfloat16")
    return CrossEncoderScorer(model, **kwargs)


def _onnx(model: str | None, **kwargs: Any) -> Reranker:
    from rerank_core.onnx_backend import OnnxCrossEncoderScorer

    return OnnxCrossEncoderScorer(model, **kwargs)


def _onnx_int8(model: str | None, **kwargs: Any) -> Reranker:
    from rerank_core.onnx_backend import OnnxCrossEncoderScorer

    kwargs.setdefault("quantize", "int8")
    return OnnxCrossEncoderScorer(model, **kwargs)


def _causal_lm(model: str | None, **kwargs: Any) -> Reranker:
    from rerank_core.causal_lm import CausalLMReranker

    return CausalLMReranker(model or "", **kwargs)


#: Backend name -> constructor taking ``(model_name_or_path, **kwargs)``.
BACKENDS: dict[str, Callable[..., Reranker]] = {
    "torch": _torch,
    "torch-bf16": _torch_bf16,
    "onnx": _onnx,
    "onnx-int8": _onnx_int8,
    "causal-lm": _causal_lm,
}


def load_reranker(
    model_name_or_path: str | os.PathLike[str] | None = None,
    *,
    backend: str = "torch",
    cache_entries: int | None = None,
    **kwargs: Any,
) -> Reranker:
    """Load a local cross-encoder with the named backend.

    Args:
        model_name_or_path: Hugging Face id or local folder; ``None`` uses the bundled reranker.
        backend: One of :data:`BACKENDS`: ``"torch"``, ``"torch-bf16"``, ``"onnx"``,
            ``"onnx-int8"``.
        cache_entries: Wrap the scorer in a :class:`~rerank_core.CachedReranker` holding at most
            this many scores; ``None`` (default) caches nothing.
        **kwargs: Passed to the backend's constructor (``device``, ``batch_size``,
            ``max_batch_tokens``, ``chunking``, ``num_threads``, ...).

    Returns:
        A :class:`~rerank_core.Reranker`.

    Raises:
        ValueError: ``backend`` is not a known name.
        ImportError: the backend's extra is missing (the message names it).

    Example:
        >>> scorer = load_reranker(backend="onnx-int8", cache_entries=10_000)  # doctest: +SKIP
    """
    try:
        make = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}") from None
    model = str(model_name_or_path) if model_name_or_path else None
    scorer = make(model, **kwargs)
    if cache_entries is not None:
        from rerank_core.cache import CachedReranker

        scorer = CachedReranker(scorer, max_entries=cache_entries)
    return scorer
