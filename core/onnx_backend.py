"""Cross-encoder scoring with ONNX Runtime: fp32 with fused kernels, or dynamic int8.

The Hugging Face model is exported to ONNX once, run through ONNX Runtime's transformer optimizer
(fused embedding + layer norm, attention, bias + GELU and skip + layer norm kernels) and, for
``quantize="int8"``, quantised dynamically (int8 weights, activations quantised per batch at run
time, which uses VNNI / AMX-INT8 where the CPU has them). On an x86 CPU without those the int8
weights get 7 bits (``reduce_range``) so ONNX Runtime's 16-bit intermediate sums cannot saturate
(see :mod:`rerank_core.cpu`). The files are cached beside the model
(``<model>/onnx/``) or, when that folder is read-only or the model is a hub id, under
``cache_dir`` (default ``~/.cache/rag-rerank/onnx``), and re-used while the model's config and
weights (hashed by content) and the export recipe are unchanged.

Scoring an exported model needs only ``onnxruntime`` and ``tokenizers``: the config is read as
JSON and the tokenizer straight from ``tokenizer.json``
(:class:`~rerank_core.fast_tokenizer.FastTokenizer`), so neither torch nor transformers is
imported. Only an export (a model without a matching ONNX file yet) loads them. The bundled model
ships its int8 export (``rag-rerank export-onnx`` makes it), so ``backend="onnx-int8"`` on it
never needs torch.

Needs the ``onnx`` extra: ``pip install 'rag-rerank[onnx]'``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rerank_core.cpu import int8_kernel, u8s8_can_saturate
from rerank_core.cross_encoder import default_model_path
from rerank_core.encoding import TokenizedReranker
from rerank_core.readability import DEFAULT_UNREADABLE_LIMIT

logger = logging.getLogger(__name__)

__all__ = [
    "OnnxCrossEncoderScorer",
    "default_onnx_cache_dir",
    "export_onnx",
    "onnx_differences",
    "onnx_fingerprint",
]

_INSTALL_HINT = "pip install 'rag-rerank[onnx]'"
# Bump when the export recipe changes, so exports made by an older recipe (the shipped one
# included) no longer match and are rebuilt.
_RECIPE = "3"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Model types whose attention and layer-norm patterns ONNX Runtime's optimizer can fuse.
_FUSABLE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet"}
# The files an export is made from; the tokenizer's files do not change the graph.
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"the ONNX Runtime backend needs onnxruntime: {_INSTALL_HINT}") from exc
    return onnxruntime


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # the exporter and the quantiser need it; scoring does not
        raise ImportError(f"exporting a model to ONNX needs onnx: {_INSTALL_HINT}") from exc
    return onnx


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


def onnx_fingerprint(source: str | os.PathLike[str], revision: str | None = None) -> str:
    """A hash of what an export of ``source`` is made from: its config, weights and the recipe.

    A local folder is hashed by the content of ``config.json`` and its weight files (not by
    path, size or time), so an export shipped inside the package still matches after it is
    installed elsewhere, and a changed weight file never matches an old export. A hub id is
    hashed by name and revision.
    """
    h = hashlib.sha256(f"recipe {_RECIPE}\n".encode())
    folder = Path(source)
    if not folder.is_dir():
        h.update(f"hub {source}@{revision}".encode())
        return h.hexdigest()[:16]
    weights = sorted(
        f for f in folder.iterdir() if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES)
    )
    for f in [folder / "config.json", *weights]:
        if not f.is_file():
            continue
        h.update(f"{f.name}\n".encode())
        with f.open("rb") as stream:
            while block := stream.read(1 << 20):
                h.update(block)
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


def _hub_file(source: str, name: str, hub: Mapping[str, Any]) -> Path | None:
    """``name`` from a local folder, or downloaded from the hub; ``None`` if there is none."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(
            hf_hub_download(
                source,
                name,
                revision=hub.get("revision"),
                local_files_only=bool(hub.get("local_files_only")),
            )
        )
    except EntryNotFoundError:
        return None


def _read_config(source: str, hub: Mapping[str, Any]) -> dict[str, Any]:
    path = _hub_file(source, "config.json", hub)
    if path is None:
        raise ValueError(f"{source} has no config.json: not a Hugging Face model")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config


def _num_labels(config: Mapping[str, Any]) -> int:
    """Transformers' rule: the size of ``id2label``, else ``num_labels``, else 2."""
    if isinstance(config.get("id2label"), Mapping) and config["id2label"]:
        return len(config["id2label"])
    return int(config.get("num_labels", 2))


def _load_tokenizer(source: str, hub: Mapping[str, Any], input_names: Sequence[str]) -> Any:
    """The model's tokenizer from ``tokenizer.json``, without transformers when it has one."""
    from rerank_core.fast_tokenizer import FastTokenizer

    path = _hub_file(source, "tokenizer.json", hub)
    if path is not None:
        for extra in ("tokenizer_config.json", "special_tokens_map.json"):
            _hub_file(source, extra, hub)  # a hub download lands beside tokenizer.json
        return FastTokenizer.from_folder(path.parent, model_input_names=input_names)
    logger.info("%s has no tokenizer.json; using transformers' tokenizer", source)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, **hub)


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class _Recipe:
    """What one export is: which model, and how it is optimised and quantised."""

    source: str
    config: Mapping[str, Any]
    hub: Mapping[str, Any]
    optimize: bool
    quantize: str | None
    reduce_range: bool | None

    @property
    def variant(self) -> str:
        if self.quantize is None:
            return "fp32"
        return "int8-reduce-range" if self.reduce_range else "int8"

    def fp32(self) -> _Recipe:
        return _Recipe(self.source, self.config, self.hub, self.optimize, None, None)

    def conditions(self, stamp: str) -> dict[str, Any]:
        """The metadata an existing export must carry to be re-used."""
        meta: dict[str, Any] = {"fingerprint": stamp, "optimized": self.optimize}
        if self.quantize == "int8":
            meta["reduce_range"] = self.reduce_range
        return meta


def _matches(target: Path, recipe: _Recipe, stamp: str) -> bool:
    meta_path = target.with_suffix(".json")
    if not (target.is_file() and meta_path.is_file()):
        return False
    try:
        made = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    wanted = recipe.conditions(stamp)
    return isinstance(made, dict) and {k: made.get(k) for k in wanted} == wanted


def _find_export(dirs: Sequence[Path], recipe: _Recipe, stamp: str) -> Path | None:
    for folder in dirs:
        target = folder / f"model-{recipe.variant}.onnx"
        if _matches(target, recipe, stamp):
            logger.debug("re-using %s", target)
            return target
    return None


def _make_export(recipe: _Recipe, out_dir: Path, stamp: str) -> Path:
    """Export (and quantise) into ``out_dir``, re-using an fp32 export already there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"model-{recipe.variant}.onnx"
    meta: dict[str, Any] = {**recipe.conditions(stamp), "recipe": _RECIPE}
    meta["model"] = Path(recipe.source).name if Path(recipe.source).is_dir() else recipe.source
    if recipe.quantize == "int8":
        fp32 = _find_export([out_dir], recipe.fp32(), stamp) or _make_export(
            recipe.fp32(), out_dir, stamp
        )
        _quantize(recipe, fp32, target)
        meta["int8_kernel"] = int8_kernel()  # where it was made: a record, not a condition
    else:
        _export_fp32(recipe, target)
    target.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return target


def _export_fp32(recipe: _Recipe, target: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _import_onnx()
    source, hub = recipe.source, dict(recipe.hub)
    logger.info("exporting %s to ONNX at %s (once; later loads re-use it)", source, target)
    try:  # eager attention exports to the pattern the optimizer fuses into one kernel
        model = AutoModelForSequenceClassification.from_pretrained(
            source, attn_implementation="eager", dtype=torch.float32, **hub
        )
    except (ValueError, TypeError):
        model = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=torch.float32, **hub
        )
    model.eval()
    type_ids = "token_type_ids" in AutoTokenizer.from_pretrained(source, **hub).model_input_names
    names = [n for n in _INPUTS if n in ("input_ids", "attention_mask") or type_ids]

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
        if recipe.optimize:
            final = Path(tmp) / "optimized.onnx"
            try:
                _fuse(recipe, raw, final)
            except Exception as exc:  # fusion is a speed-up; the plain export still scores
                logger.warning("ONNX Runtime could not fuse %s (%s); using it unfused", source, exc)
                final = raw
        os.replace(final, target)


def _fuse(recipe: _Recipe, raw: Path, out: Path) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    config = recipe.config
    model_type = "bert" if config.get("model_type") != "distilbert" else "distilbert"
    heads = config.get("num_attention_heads", config.get("n_heads"))
    hidden = config.get("hidden_size", config.get("dim"))
    optimized = optimize_model(
        str(raw),
        model_type=model_type,
        num_heads=int(heads or 0),
        hidden_size=int(hidden or 0),
        opt_level=0,  # graph fusions only; the session applies its own at load time
    )
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    logger.info("fused ONNX kernels: %s", fused)
    optimized.save_model_to_file(str(out))


def _quantize(recipe: _Recipe, fp32: Path, target: Path) -> None:
    onnx = _import_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger.info(
        "quantising %s to int8 at %s (reduce_range=%s; this CPU's int8 kernel: %s)",
        fp32,
        target,
        recipe.reduce_range,
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
            reduce_range=bool(recipe.reduce_range),
            # the fused kernels are outside ONNX's shape inference: say their type is float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        os.replace(out, target)


def _hub_options(local_files_only: bool | None, revision: str | None) -> dict[str, Any]:
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    return {"local_files_only": local_files_only, "revision": revision}


def export_onnx(
    model_name_or_path: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    quantize: Literal["int8"] | None = None,
    reduce_range: bool = False,
    optimize: bool = True,
    local_files_only: bool | None = None,
    revision: str | None = None,
) -> Path:
    """Export a Hugging Face cross-encoder to ONNX in ``out_dir``, always afresh.

    Writes ``model-<variant>.onnx`` (``fp32``, ``int8`` or ``int8-reduce-range``) and its
    ``.json`` metadata, the files :class:`OnnxCrossEncoderScorer` looks for in ``<model>/onnx/``
    and its cache. An int8 export also leaves ``model-fp32.onnx`` there, or re-uses one already
    there that was made from the same weights by the same recipe. Needs torch and transformers.
    The export is deterministic: the same model, recipe and library versions give the same
    bytes. ``rag-rerank export-onnx`` runs this, and makes the bundled model's shipped
    int8 file with it.

    Args:
        model_name_or_path: Hugging Face id or local folder; ``None``: the bundled reranker.
        out_dir: Folder to write into.
        quantize: ``None`` for fp32, ``"int8"`` for dynamic int8.
        reduce_range: With ``"int8"``: 7-bit weights, safe on every x86 int8 kernel.
        optimize: Fuse kernels with ONNX Runtime's transformer optimizer (BERT-family models).
        local_files_only: Never contact the hub (defaults to ``HF_HUB_OFFLINE``).
        revision: Hub revision.

    Returns:
        The path of the ONNX file of the asked variant.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    _import_onnxruntime()
    source = str(model_name_or_path) if model_name_or_path else str(default_model_path())
    hub = _hub_options(local_files_only, revision)
    config = _read_config(source, hub)
    recipe = _Recipe(
        source,
        config,
        hub,
        optimize and config.get("model_type") in _FUSABLE,
        quantize,
        bool(reduce_range) if quantize == "int8" else None,
    )
    stamp = onnx_fingerprint(source, revision)
    out = Path(out_dir)
    (out / f"model-{recipe.variant}.json").unlink(missing_ok=True)  # never re-use the target
    return _make_export(recipe, out, stamp)


class OnnxCrossEncoderScorer(TokenizedReranker):
    """Score ``(query, passage)`` pairs with ONNX Runtime, from a Hugging Face cross-encoder.

    Same scores and the same interface as :class:`~rerank_core.CrossEncoderScorer` (fp32 agrees
    with it within 1e-4), the same tokenize-once, token-budget batching and the same optional
    long-passage windows. ``quantize="int8"`` trades a little score precision for speed: rankings
    stay close to fp32 while individual scores shift slightly.

    The first use of a model exports it (tens of seconds for a MiniLM, with torch); later uses
    load the exported file in about a second and import neither torch nor transformers. The
    bundled model ships its int8 export (7-bit weights), so ``quantize="int8"`` on it never
    exports.

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
            file name and metadata and of :meth:`identity`. When only the other setting's file
            exists already (the bundled model ships ``reduce_range=True``), ``None`` takes it
            rather than export again.
        cache_dir: Where to keep the exported files when the model folder is read-only or a hub
            id; default :func:`default_onnx_cache_dir`. A writable model folder gets them in
            ``<model>/onnx/`` unless ``cache_dir`` is given. A matching export already in
            ``<model>/onnx/`` (the bundled model's shipped one) is used first either way.
        max_length: Token window per pair; ``None`` uses the model's own limit.
        batch_size: Most model inputs per run. 16 by default: ONNX Runtime's activations for a
            batch set the process's peak memory (the bundled model in ``onnx-int8`` peaked at
            242 MB scoring 100 DL19 passages with 16, 366 MB with 32, at the same speed).
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
        batch_size: int = 16,
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

        source = str(model_name_or_path) if model_name_or_path else str(default_model_path())
        hub = _hub_options(local_files_only, revision)
        self.model_name = source
        self.quantize = quantize
        self.normalize = normalize
        config = _read_config(source, hub)
        self.num_labels = _num_labels(config)
        if self.num_labels not in (1, 2):
            raise ValueError(
                f"{source} is a {self.num_labels}-label classifier; a reranker needs one "
                "relevance logit per pair (or two labels, the second meaning relevant)"
            )
        self.optimize = optimize and config.get("model_type") in _FUSABLE
        self.onnx_path, self.reduce_range = self._ensure_exported(
            source, config, hub, Path(cache_dir) if cache_dir else None, reduce_range
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
        inputs = [i.name for i in self.session.get_inputs()]
        self._input_names = set(inputs)
        tokenizer = _load_tokenizer(source, hub, list(dict.fromkeys([*inputs, "attention_mask"])))
        self._setup_encoding(tokenizer, max_length, config.get("max_position_embeddings"))
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

    @staticmethod
    def _cache_folder(source: str, cache_dir: Path | None) -> Path:
        folder = Path(source)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "--", folder.name if folder.is_dir() else source)
        digest = hashlib.sha256(str(folder.resolve() if folder.is_dir() else source).encode())
        return (cache_dir or default_onnx_cache_dir()) / f"{safe}-{digest.hexdigest()[:8]}"

    def _ensure_exported(
        self,
        source: str,
        config: Mapping[str, Any],
        hub: Mapping[str, Any],
        cache_dir: Path | None,
        reduce_range: bool | None,
    ) -> tuple[Path, bool | None]:
        """The ONNX file to load (found, or exported now) and its int8 weight range."""
        folder = Path(source)
        beside = folder / "onnx"
        cache = self._cache_folder(source, cache_dir)
        # Look beside the model first (a shipped export, or an earlier one), then in the cache.
        dirs = [beside, cache] if folder.is_dir() else [cache]
        write_to = beside if cache_dir is None and _writable(folder) else cache
        stamp = onnx_fingerprint(source, hub.get("revision"))

        def recipe(rr: bool | None) -> _Recipe:
            return _Recipe(source, config, hub, self.optimize, self.quantize, rr)

        if self.quantize != "int8":
            wanted = recipe(None)
        elif reduce_range is not None:
            wanted = recipe(reduce_range)
        else:
            # By CPU, unless only the other weight range is exported already (the bundled
            # model ships 7-bit weights): both compute exact integer sums on every CPU, so
            # re-using it beats an export that needs torch.
            preferred, other = recipe(u8s8_can_saturate()), recipe(not u8s8_can_saturate())
            wanted = preferred
            if _find_export(dirs, preferred, stamp) is None and _find_export(dirs, other, stamp):
                wanted = other
        found = _find_export(dirs, wanted, stamp)
        if found is None:
            found = _make_export(wanted, write_to, stamp)
        return found, wanted.reduce_range

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


def onnx_differences(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> list[str]:
    """How two ONNX files differ as models: opsets, inputs, outputs, nodes and initializers.

    Node names and producer metadata are ignored; initializers are compared value for value.
    An empty list means the two compute the same thing with the same weights.
    """
    onnx = _import_onnx()
    from onnx import numpy_helper

    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    diffs: list[str] = []

    def opsets(m: Any) -> list[tuple[str, int]]:
        return sorted((o.domain, o.version) for o in m.opset_import)

    def io(values: Any) -> list[bytes]:
        return [v.SerializeToString() for v in values]

    def nodes(m: Any) -> list[tuple[Any, ...]]:
        return [
            (
                n.op_type,
                n.domain,
                tuple(n.input),
                tuple(n.output),
                tuple(at.SerializeToString() for at in n.attribute),
            )
            for n in m.graph.node
        ]

    if opsets(ma) != opsets(mb):
        diffs.append(f"opsets differ: {opsets(ma)} vs {opsets(mb)}")
    if io(ma.graph.input) != io(mb.graph.input) or io(ma.graph.output) != io(mb.graph.output):
        diffs.append("graph inputs or outputs differ")
    na, nb = nodes(ma), nodes(mb)
    if na != nb:
        first = next((i for i, (x, y) in enumerate(zip(na, nb, strict=False)) if x != y), None)
        diffs.append(f"nodes differ: {len(na)} vs {len(nb)} nodes, first difference at {first}")
    ia = {t.name: numpy_helper.to_array(t) for t in ma.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in mb.graph.initializer}
    for name in sorted(ia.keys() | ib.keys()):
        if name not in ia or name not in ib:
            diffs.append(f"initializer {name} is in one file only")
        elif (
            ia[name].dtype != ib[name].dtype
            or ia[name].shape != ib[name].shape
            or ia[name].tobytes() != ib[name].tobytes()
        ):
            diffs.append(f"initializer {name} differs")
    return diffs
