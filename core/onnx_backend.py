"""Cross-encoder scoring with ONNX Runtime: fp32 with fused kernels, or dynamic int8.

The Hugging Face model is exported to ONNX once, run through ONNX Runtime's transformer optimizer
(fused embedding + layer norm, attention, bias + GELU and skip + layer norm kernels) and, for
``quantize="int8"``, quantised dynamically (int8 weights, activations quantised per batch at run
time, which uses VNNI / AMX-INT8 where the CPU has them). On an x86 CPU without those the int8
weights get 7 bits (``reduce_range``) so ONNX Runtime's 16-bit intermediate sums cannot saturate
(see :mod:`rerank_core.cpu`). The files are cached beside the model
(``<model>/onnx/``) or, when that folder is read-only or the model is a hub id, under
``cache_dir`` (default ``~/.cache/rag-rerank/onnx``), and re-used while the weights are unchanged.

Needs the ``onnx`` extra: ``pip install 'rag-rerank[onnx]'``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rerank_core.cpu import int8_kernel, u8s8_can_saturate
from rerank_core.cross_encoder import default_model_path
from rerank_core.encoding import TokenizedReranker
from rerank_core.readability import DEFAULT_UNREADABLE_LIMIT

logger = logging.getLogger(__name__)

__all__ = ["OnnxCrossEncoderScorer", "default_onnx_cache_dir"]

_INSTALL_HINT = "pip install 'rag-rerank[onnx]'"
# Bump when the export recipe changes, so cached files made by an older recipe are rebuilt.
_RECIPE = "3"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Model types whose attention and layer-norm patterns ONNX Runtime's optimizer can fuse.
_FUSABLE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet"}


def _import_onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401  # needed by the exporter and the quantiser
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            f"the ONNX Runtime backend needs onnxruntime and onnx: {_INSTALL_HINT}"
        ) from exc
    return onnxruntime


def default_onnx_cache_dir() -> Path:
    """Where exports go when the model folder is read-only: ``$RAG_RERANK_CACHE/onnx``.

    ``RAG_RERANK_CACHE`` defaults to ``$XDG_CACHE_HOME/rag-rerank`` (``~/.cache/rag-rerank``).
    """
    root = os.environ.get("RAG_RERANK_CACHE")
    if root:
        return Path(root) / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rag-rerank" / "onnx"


def _physical_cores() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return os.cpu_count() or 1


def _fingerprint(source: str, revision: str | None) -> str:
    """A hash of what the export depends on: the model's files and the export recipe."""
    h = hashlib.sha256(f"{_RECIPE}|{source}|{revision}".encode())
    folder = Path(source)
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.suffix in {".json", ".safetensors", ".bin", ".txt", ".model"} and f.is_file():
                st = f.stat()
                h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _providers_for(device: str | None, ort: Any) -> list[Any]:
    if device is None or device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = str(device).partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N' for ONNX, got {device!r}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValueError(
            f"device={device!r} needs ONNX Runtime's CUDA provider: pip install onnxruntime-gpu"
        )
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


class OnnxCrossEncoderScorer(TokenizedReranker):
    """Score ``(query, passage)`` pairs with ONNX Runtime, from a Hugging Face cross-encoder.

    Same scores and the same interface as :class:`~rerank_core.CrossEncoderScorer` (fp32 agrees
    with it within 1e-4), the same tokenize-once, token-budget batching and the same optional
    long-passage windows. ``quantize="int8"`` trades a little score precision for speed: rankings
    stay close to fp32 while individual scores shift slightly.

    The first use of a model exports it (tens of seconds for a MiniLM); later uses load the cached
    file in about a second. ONNX Runtime needs no torch at scoring time, but the export does.

    Args:
        model_name_or_path: Hugging Face id or local folder; ``None`` uses the bundled reranker.
        quantize: ``None`` for fp32, ``"int8"`` for dynamic int8 quantisation.
        reduce_range: With ``quantize="int8"``, quantise weights to 7 bits instead of 8.
            ``None`` (default) chooses by CPU: ``True`` on an x86 CPU without VNNI or AMX-INT8
            (AVX2 only, or AVX-512 without VNNI), where ONNX Runtime's int8 kernel adds pairs of
            products in saturating 16-bit integers and 8-bit weights can overflow them;
            ``False`` elsewhere, where the extra bit halves the weight rounding error. Either
            way the integer sums are exact, so the setting, not the CPU, decides the scores: a
            full-range export on a CPU that could saturate runs on ONNX Runtime's exact (slower)
            U8U8 kernel (``session.x64quantprecision``). The setting is part of the export's
            file name and metadata and of :meth:`identity`.
        cache_dir: Where to keep the exported files when the model folder is read-only or a hub
            id; default :func:`default_onnx_cache_dir`. A writable model folder gets them in
            ``<model>/onnx/``.
        max_length: Token window per pair; ``None`` uses the model's own limit.
        batch_size: Most model inputs per run.
        max_batch_tokens: Most padded tokens per run; ``None`` caps by ``batch_size`` only.
        normalize: Probabilities (``True``) or raw logits (``False``).
        chunking: Score long passages by their best overlapping window instead of truncating.
        chunk_overlap: Tokens shared by consecutive windows; ``None`` uses
            ``min(32, max_length // 4)``.
        max_chunks: Most windows scored per passage; ``None`` scores all.
        num_threads: ONNX Runtime intra-op threads; ``None`` uses one per physical core.
        providers: ONNX Runtime execution providers; default: from ``device``.
        device: ``None`` or ``"cpu"`` runs on ``CPUExecutionProvider``; ``"cuda"`` or
            ``"cuda:N"`` on ``CUDAExecutionProvider`` (needs ``onnxruntime-gpu``). Ignored when
            ``providers`` is given.
        optimize: Fuse kernels with ONNX Runtime's transformer optimizer (BERT-family models).
        rerank_window: See :class:`~rerank_core.Reranker`.
        should_rerank: See :class:`~rerank_core.Reranker`.
        unreadable_limit: Share of ``[UNK]`` tokens above which a text counts as unreadable
            for the model; see :class:`~rerank_core.encoding.TokenizedReranker`.
        strict_readability: Raise instead of warning on unreadable text.
        local_files_only: Never contact the hub (defaults to ``HF_HUB_OFFLINE``).
        revision: Hub revision to load.

    Raises:
        ImportError: the ``onnx`` extra is not installed.

    Example:
        >>> scorer = OnnxCrossEncoderScorer(quantize="int8")  # doctest: +SKIP
        >>> scorer.rerank("what is a reranker?", docs, top_n=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] | None = None,
        *,
        quantize: Literal["int8"] | None = None,
        reduce_range: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        max_batch_tokens: int | None = 16384,
        normalize: bool = True,
        chunking: bool = False,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        num_threads: int | None = None,
        providers: Sequence[str] | None = None,
        device: str | None = None,
        optimize: bool = True,
        rerank_window: int | None = None,
        unreadable_limit: float = DEFAULT_UNREADABLE_LIMIT,
        strict_readability: bool = False,
        should_rerank: Callable[[str], bool] | None = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            chunking=chunking,
            chunk_overlap=chunk_overlap,
            max_chunks=max_chunks,
            rerank_window=rerank_window,
            should_rerank=should_rerank,
            unreadable_limit=unreadable_limit,
            strict_readability=strict_readability,
        )
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
        if reduce_range is not None and not isinstance(reduce_range, bool):
            raise TypeError(f"reduce_range must be a bool or None, got {reduce_range!r}")
        if reduce_range is not None and quantize is None:
            raise ValueError("reduce_range applies to quantize='int8' only")
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        ort = _import_onnxruntime()
        from transformers import AutoConfig, AutoTokenizer

        source = str(model_name_or_path) if model_name_or_path else str(default_model_path())
        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
        hub = {"local_files_only": local_files_only, "revision": revision}
        self.model_name = source
        self.quantize = quantize
        self.reduce_range: bool | None = None
        if quantize == "int8":
            self.reduce_range = u8s8_can_saturate() if reduce_range is None else reduce_range
        self.normalize = normalize
        self._hub = hub
        config = AutoConfig.from_pretrained(source, **hub)
        self._config = config
        self.num_labels = int(config.num_labels)
        if self.num_labels not in (1, 2):
            raise ValueError(
                f"{source} is a {self.num_labels}-label classifier; a reranker needs one "
                "relevance logit per pair (or two labels, the second meaning relevant)"
            )
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
        self._setup_encoding(
            tokenizer, max_length, getattr(config, "max_position_embeddings", None)
        )
        self.optimize = optimize and config.model_type in _FUSABLE
        self.onnx_path = self._ensure_exported(
            source, Path(cache_dir) if cache_dir else None, revision
        )

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = num_threads or _physical_cores()
        options.inter_op_num_threads = 1
        if self.reduce_range is False and u8s8_can_saturate():
            # 8-bit weights on a CPU whose U8S8 kernel saturates: ONNX Runtime's documented
            # switch to its exact U8U8 kernel (no effect on VNNI / AMX CPUs)
            options.add_session_config_entry("session.x64quantprecision", "1")
        self.num_threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(
            str(self.onnx_path),
            sess_options=options,
            providers=list(providers) if providers else _providers_for(device, ort),
        )
        self._input_names = {i.name for i in self.session.get_inputs()}
        logger.info(
            "loaded ONNX reranker %s (%s, %s, threads=%d, max_length=%d)",
            source,
            self._variant(),
            self.onnx_path,
            self.num_threads,
            self.max_length,
        )

    # ----------------------------------------------------------------- export cache

    def _variant(self) -> str:
        if self.quantize is None:
            return "fp32"
        return "int8-reduce-range" if self.reduce_range else "int8"

    def _export_dir(self, source: str, cache_dir: Path | None) -> Path:
        folder = Path(source)
        if cache_dir is None and _writable(folder):
            return folder / "onnx"
        safe = re.sub(r"[^A-Za-z0-9._-]+", "--", folder.name if folder.is_dir() else source)
        digest = hashlib.sha256(str(folder.resolve() if folder.is_dir() else source).encode())
        return (cache_dir or default_onnx_cache_dir()) / f"{safe}-{digest.hexdigest()[:8]}"

    def _ensure_exported(self, source: str, cache_dir: Path | None, revision: str | None) -> Path:
        out_dir = self._export_dir(source, cache_dir)
        stamp = _fingerprint(source, revision)
        variant = self._variant()
        target = out_dir / f"model-{variant}.onnx"
        meta_path = out_dir / f"model-{variant}.json"
        meta: dict[str, Any] = {"fingerprint": stamp, "optimized": self.optimize, "source": source}
        if self.quantize == "int8":
            meta["reduce_range"] = self.reduce_range
        if target.is_file() and meta_path.is_file():
            try:
                made = json.loads(meta_path.read_text())
                made.pop("int8_kernel", None)  # where it was made: a record, not a condition
                if made == meta:
                    logger.debug("re-using %s", target)
                    return target
            except (OSError, ValueError):
                pass
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.quantize == "int8":
            fp32 = self._ensure_fp32(source, out_dir, stamp, revision)
            self._quantize(fp32, target)
            meta["int8_kernel"] = int8_kernel()
        else:
            self._export_fp32(source, target)
        meta_path.write_text(json.dumps(meta))
        return target

    def _ensure_fp32(self, source: str, out_dir: Path, stamp: str, revision: str | None) -> Path:
        target = out_dir / "model-fp32.onnx"
        meta_path = out_dir / "model-fp32.json"
        meta = {"fingerprint": stamp, "optimized": self.optimize, "source": source}
        try:
            if target.is_file() and json.loads(meta_path.read_text()) == meta:
                return target
        except (OSError, ValueError):
            pass
        self._export_fp32(source, target)
        meta_path.write_text(json.dumps(meta))
        return target

    def _export_fp32(self, source: str, target: Path) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        logger.info("exporting %s to ONNX at %s (once; later loads re-use it)", source, target)
        try:  # eager attention exports to the pattern the optimizer fuses into one kernel
            model = AutoModelForSequenceClassification.from_pretrained(
                source, attn_implementation="eager", dtype=torch.float32, **self._hub
            )
        except (ValueError, TypeError):
            model = AutoModelForSequenceClassification.from_pretrained(
                source, dtype=torch.float32, **self._hub
            )
        model.eval()
        names = [n for n in _INPUTS if n in ("input_ids", "attention_mask") or self._type_ids]

        class _Logits(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: torch.Tensor) -> torch.Tensor:
                return self.inner(**dict(zip(names, args, strict=True))).logits

        sample = tuple(torch.ones(2, 16, dtype=torch.long) for _ in names)
        axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["logits"] = {0: "batch"}
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            raw = Path(tmp) / "raw.onnx"
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(
                    _Logits(model),
                    sample,
                    str(raw),
                    input_names=names,
                    output_names=["logits"],
                    dynamic_axes=axes,
                    opset_version=17,
                    dynamo=False,
                )
            final = raw
            if self.optimize:
                final = Path(tmp) / "optimized.onnx"
                try:
                    self._fuse(raw, final)
                except Exception as exc:  # fusion is a speed-up; the plain export still scores
                    logger.warning(
                        "ONNX Runtime could not fuse %s (%s); using it unfused", source, exc
                    )
                    final = raw
            os.replace(final, target)

    def _fuse(self, raw: Path, out: Path) -> None:
        from onnxruntime.transformers.optimizer import optimize_model

        config = self._config
        model_type = "bert" if config.model_type != "distilbert" else "distilbert"
        optimized = optimize_model(
            str(raw),
            model_type=model_type,
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            opt_level=0,  # graph fusions only; the session applies its own at load time
        )
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        logger.info("fused ONNX kernels: %s", fused)
        optimized.save_model_to_file(str(out))

    def _quantize(self, fp32: Path, target: Path) -> None:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        logger.info(
            "quantising %s to int8 at %s (reduce_range=%s; this CPU's int8 kernel: %s)",
            fp32,
            target,
            self.reduce_range,
            int8_kernel(),
        )
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / "int8.onnx"
            quantize_dynamic(
                str(fp32),
                str(out),
                weight_type=QuantType.QInt8,
                # one scale per output column: half the score error of one scale per matrix
                # (mean |logit change| 0.15 against 0.31 on SQuAD dev pairs), at the same speed
                per_channel=True,
                reduce_range=bool(self.reduce_range),
                # the fused kernels are outside ONNX's shape inference: say their type is float
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            os.replace(out, target)

    # ----------------------------------------------------------------- scoring

    def _forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v for k, v in features.items() if k in self._input_names}
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits)

    def identity(self) -> dict[str, Any]:
        """Adds the runtime, precision and export recipe, each of which moves scores slightly."""
        return {
            **super().identity(),
            "backend": "onnxruntime",
            "quantize": self.quantize,
            "int8_reduce_range": self.reduce_range,
            "optimize": self.optimize,
            "recipe": _RECIPE,
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description: model, precision, ONNX file and threads."""
        return {
            **super().describe(),
            "backend": "onnxruntime",
            "quantize": self.quantize,
            "int8_reduce_range": self.reduce_range,
            "onnx_path": str(self.onnx_path),
            "num_threads": self.num_threads,
        }
