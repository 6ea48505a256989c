"""The one factory: ``load_reranker(model, backend=...)`` builds every reranker the product has.

Every entry point (the CLI commands, the server, the adapters' ``from_model``, the RAG chain)
builds its reranker here, and every ``--backend`` choice comes from :data:`BACKENDS`. A new
backend is one module plus one :class:`Backend` row below; it is then usable everywhere.

==============  =================================================================================
backend         what runs
==============  =================================================================================
``torch``       :class:`~rerank_core.CrossEncoderScorer`, fp32 on CPU (exact), fp16 on CUDA
``torch-bf16``  the same under bf16 autocast: several times faster on CPUs with AMX/AVX512-BF16
``onnx``        :class:`~rerank_core.OnnxCrossEncoderScorer`, fp32 with fused kernels
``onnx-int8``   the same, dynamically quantised to int8 (fastest on CPU)
``causal-lm``   :class:`~rerank_core.CausalLMReranker`: LLM rerankers that answer yes or no
                (Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2) with their templates
``http``        :class:`~rerank_core.HTTPReranker`: a hosted or self-hosted rerank API
                (``provider=`` one of :data:`~rerank_core.http.PROVIDERS`)
==============  =================================================================================

``backend="auto"`` (the default) picks ``causal-lm`` for a model whose name or local config
identifies an LLM reranker family, and ``torch`` for everything else.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_core.base import Reranker
from rerank_core.fusion import FUSION_FILE, Fusion

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "Backend", "backend_names", "detect_backend", "load_reranker"]


@dataclass(frozen=True, slots=True)
class Backend:
    """One way of building a reranker.

    Attributes:
        name: The name users pass as ``backend=`` / ``--backend``.
        build: ``build(model, **options) -> Reranker``; ``model`` is a Hugging Face id or local
            folder (``None``: the bundled model) for local backends, the remote model name for
            ``http``.
        summary: One line for help texts.
        extra: The optional dependency group it needs beyond the core, if any (``"onnx"``:
            ``pip install 'rag-rerank[onnx]'``).
        local: Whether it runs a model in this process (``False`` for remote APIs).
        precision: What its matrix products run in (``"fp32"``, ``"bf16"``, ``"int8"``);
            ``None`` when it follows the ``dtype`` option.
    """

    name: str
    build: Callable[..., Reranker]
    summary: str
    extra: str | None = None
    local: bool = True
    precision: str | None = None

    def __call__(self, model: str | None, **options: Any) -> Reranker:
        """Build the reranker: ``build(model, **options)``."""
        return self.build(model, **options)


def _torch(model: str | None, **options: Any) -> Reranker:
    from rerank_core.cross_encoder import CrossEncoderScorer

    return CrossEncoderScorer(model, **options)


def _torch_bf16(model: str | None, **options: Any) -> Reranker:
    from rerank_core.cross_encoder import CrossEncoderScorer, pick_device

    device = pick_device(options.get("device"))
    if device.startswith("cuda") or device == "mps":
        options.setdefault("dtype", "bfloat16")
    else:
        options.setdefault("autocast", "bfloat16")
    return CrossEncoderScorer(model, **options)


def _onnx(model: str | None, **options: Any) -> Reranker:
    from rerank_core.onnx_backend import OnnxCrossEncoderScorer

    return OnnxCrossEncoderScorer(model, **options)


def _onnx_int8(model: str | None, **options: Any) -> Reranker:
    options.setdefault("quantize", "int8")
    return _onnx(model, **options)


def _causal_lm(model: str | None, **options: Any) -> Reranker:
    from rerank_core.causal_lm import CausalLMReranker

    if not model:
        raise ValueError("backend='causal-lm' needs a model: a Hugging Face id or a local folder")
    return CausalLMReranker(model, **options)


def _http(model: str | None, **options: Any) -> Reranker:
    from rerank_core.http import HTTPReranker

    provider = options.pop("provider", None)
    if provider is None:
        raise ValueError(
            "backend='http' needs provider= (one of cohere, jina, siliconflow, tei, infinity, "
            "generic); generic also needs base_url="
        )
    return HTTPReranker(provider, model=model, **options)


#: Every backend, by name.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", _torch, "transformers + torch; fp32 on CPU (exact), fp16 on CUDA"),
        Backend(
            "torch-bf16",
            _torch_bf16,
            "torch under bf16 autocast (fast on CPUs with AMX/AVX512-BF16)",
            precision="bf16",
        ),
        Backend(
            "onnx", _onnx, "ONNX Runtime, fp32 with fused kernels", extra="onnx", precision="fp32"
        ),
        Backend(
            "onnx-int8",
            _onnx_int8,
            "ONNX Runtime, dynamic int8 (fastest on CPU)",
            extra="onnx",
            precision="int8",
        ),
        Backend(
            "causal-lm",
            _causal_lm,
            "LLM rerankers scored by their yes/no answer (Qwen3-Reranker, bge-gemma, mxbai-v2)",
        ),
        Backend(
            "http",
            _http,
            "a rerank API: provider= cohere, jina, siliconflow, tei, infinity or generic",
            extra="remote",
            local=False,
        ),
    )
}


def detect_backend(model: str | os.PathLike[str] | None) -> str:
    """The backend ``backend="auto"`` picks for ``model``: ``causal-lm`` or ``torch``.

    ``causal-lm`` when the name identifies an LLM reranker family (``Qwen/Qwen3-Reranker-0.6B``,
    ``BAAI/bge-reranker-v2-gemma``, ``mixedbread-ai/mxbai-rerank-base-v2``) or a local folder's
    ``config.json`` has one of their architectures (a sequence-classification export of them
    too: it needs their prompt template); ``torch`` otherwise.
    """
    if not model:
        return "torch"
    from rerank_core.causal_lm import _MODEL_TYPES, detect_family

    if detect_family(model):
        return "causal-lm"
    config = Path(os.fspath(model)) / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            return "torch"
        if model_type in _MODEL_TYPES:
            return "causal-lm"
    return "torch"


def backend_names(*, local: bool | None = None) -> list[str]:
    """Names of the registered backends, in registry order.

    Args:
        local: ``True`` for backends that run a model in this process, ``False`` for remote
            ones, ``None`` for all.
    """
    return [name for name, b in BACKENDS.items() if local is None or b.local == local]


def load_reranker(
    model: str | os.PathLike[str] | None = None,
    *,
    backend: str = "auto",
    cache_entries: int | None = None,
    calibration: str | os.PathLike[str] | bool | None = None,
    fusion: Fusion | str | os.PathLike[str] | bool | None = None,
    cascade: Mapping[str, Any] | None = None,
    **options: Any,
) -> Reranker:
    """Build a reranker: a local model with the named backend, or a remote rerank API.

    Args:
        model: Local backends: Hugging Face id, local folder or the name of a reranker
            bundled with the package (``"rag-rerank-minilm-l6"``: see
            :func:`~rerank_core.cross_encoder.bundled_model_path`); ``None`` uses the bundled
            default. ``http``: the remote model name (``None``: the provider's default).
        backend: One of :data:`BACKENDS` (``"torch"``, ``"torch-bf16"``, ``"onnx"``,
            ``"onnx-int8"``, ``"causal-lm"``, ``"http"``), or ``"auto"``: see
            :func:`detect_backend`.
        cache_entries: Wrap the reranker in a :class:`~rerank_core.CachedReranker` holding at
            most this many scores; ``None`` (default) caches nothing.
        calibration: Path of a :class:`~rerank_core.calibration.Calibration` to apply (any
            backend); ``None`` (default) applies the ``calibration.json`` beside a local model
            folder when there is one (the bundled model ships one); ``False`` never calibrates
            (raw scores). A calibrated reranker's scale is ``"calibrated-probability"``.
        fusion: How :meth:`~rerank_core.Reranker.rerank` combines the reranker with the first
            stage (a :class:`~rerank_core.Fusion`, a spec such as ``"rrf:weight=0.5"``, or the
            path of a ``fusion.json``); ``None`` (default) applies the ``fusion.json`` beside a
            local model folder when there is one (the bundled model ships the setting measured
            never to lose to a first stage); ``False`` or ``"none"`` orders by score alone.
        cascade: Build a :class:`~rerank_core.CascadeReranker` whose strong stage is this
            model and whose fast stage is ``{"k": 20, "model": ..., "backend": ..., **fast
            options}`` (see :func:`~rerank_core.cascade.build_cascade`); ``None`` (default)
            builds one reranker. A cascade gets a fusion only when ``fusion`` names one (a
            model's measured fusion was chosen for the model alone).
        **options: Passed to the backend's class. Local backends share ``device``,
            ``max_length``, ``batch_size``, ``max_batch_tokens``, ``normalize``, ``chunking``,
            ``num_threads``, ``rerank_window`` and ``should_rerank``; ``http`` takes
            ``provider`` (required), ``base_url``, ``api_key`` and the other
            :class:`~rerank_core.HTTPReranker` options.

    Returns:
        A :class:`~rerank_core.Reranker`.

    Raises:
        ValueError: ``backend`` is not a known name, or an option is invalid.
        TypeError: an option the backend does not take.
        ImportError: the backend's extra is missing (the message names it).

    Example:
        >>> scorer = load_reranker(backend="onnx-int8", cache_entries=10_000)  # doctest: +SKIP
        >>> remote = load_reranker(
        ...     backend="http", provider="generic", base_url="http://127.0.0.1:8000"
        ... )  # doctest: +SKIP
    """
    if cascade is not None:
        from rerank_core.cascade import build_cascade

        cascaded = build_cascade(
            model, cascade, backend=backend, cache_entries=cache_entries,
            calibration=calibration, **options,
        )  # fmt: skip
        if fusion is not None and fusion is not True:
            cascaded.fusion = model_fusion(None, fusion, local=False)
        return cascaded
    name = os.fspath(model) if model else None
    if backend == "auto":
        backend = detect_backend(name)
    spec = BACKENDS.get(backend) if isinstance(backend, str) else None
    if spec is None:
        raise ValueError(f"unknown backend {backend!r}; choose one of {backend_names()} or auto")
    if name and spec.local:
        from rerank_core.cross_encoder import bundled_model_path

        name = str(bundled_model_path(name) or name)
    reranker = spec(name, **options)
    if calibration is not False:
        from rerank_core.calibration import attach_calibration

        reranker = attach_calibration(reranker, name, calibration, local=spec.local)
    if cache_entries is not None:
        from rerank_core.cache import CachedReranker

        reranker = CachedReranker(
            reranker,
            max_entries=cache_entries,
            rerank_window=reranker.rerank_window,
            should_rerank=reranker.should_rerank,
        )
    reranker.fusion = model_fusion(name, fusion, local=spec.local)
    return reranker


def model_fusion(
    model: str | None, fusion: Fusion | str | os.PathLike[str] | bool | None, *, local: bool
) -> Fusion | None:
    """The fusion :func:`load_reranker` gives ``model`` for its ``fusion`` argument."""
    if fusion is False:
        return None
    if isinstance(fusion, Fusion) or (isinstance(fusion, str) and not fusion.endswith(".json")):
        return Fusion.parse(fusion)
    if isinstance(fusion, (str, os.PathLike)):
        return Fusion.load(fusion)
    if fusion is None or fusion is True:
        from rerank_core.calibration import _beside

        beside = _beside(model) if local else None
        path = None if beside is None else beside.with_name(FUSION_FILE)
        if path is not None and path.is_file():
            found = Fusion.load(path)
            logger.info("%s: fusion %s from %s", model or "bundled model", found, path)
            return found
        if fusion is True:
            raise FileNotFoundError(f"fusion=True but no {FUSION_FILE} beside {model or 'bundled'}")
        return None
    raise TypeError(
        f"fusion must be a Fusion, a spec, a path, True, False or None, got {type(fusion).__name__}"
    )
