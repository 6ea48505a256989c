"""Local cross-encoder scoring with Hugging Face transformers and torch."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rerank_core.causal_lm import detect_family
from rerank_core.encoding import TokenizedReranker
from rerank_core.readability import DEFAULT_UNREADABLE_LIMIT

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_DIR",
    "CrossEncoderScorer",
    "bundled_model_path",
    "cpu_supports_bf16",
    "default_model_path",
    "pick_device",
]

#: The reranker that ships inside the package (used when no model is named).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "rag-rerank-minilm-l6"


def bundled_model_path(name: str | os.PathLike[str]) -> Path | None:
    """Folder of the reranker shipped in the package under ``name``, else ``None``.

    Names are the folders of ``rerank_core/models`` (``rag-rerank-minilm-l6`` is the default
    model). A name that is also an existing local path, or that looks like a path or a hub id,
    is left to be that.
    """
    text = os.fspath(name)
    if os.path.exists(text) or "/" in text or "\\" in text or text.startswith("."):
        return None
    folder = DEFAULT_MODEL_DIR.parent / text
    return folder if (folder / "config.json").is_file() else None


def default_model_path() -> Path:
    """Path of the bundled default reranker.

    Raises:
        FileNotFoundError: the package was installed without its model files.
    """
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the bundled reranker is missing from {DEFAULT_MODEL_DIR}; reinstall rag-rerank, "
            "or pass a Hugging Face id or a local folder as model_name_or_path"
        )
    return DEFAULT_MODEL_DIR


def pick_device(device: str | None = None) -> str:
    """Return ``device`` if given, else the best available: ``cuda``, then ``mps``, then ``cpu``."""
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix kernels (AVX512-BF16 or AMX) that torch can use."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _resolve_autocast(autocast: str | torch.dtype | None, device: str) -> torch.dtype | None:
    import torch

    if autocast is None or autocast is False:
        return None
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16}
    names["fp16"] = torch.float16
    dtype = autocast if isinstance(autocast, torch.dtype) else names.get(str(autocast).lower())
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast must be 'bfloat16', 'float16' or None, got {autocast!r}")
    if device == "cpu" and dtype == torch.bfloat16 and not cpu_supports_bf16():
        logger.warning("this CPU has no native bf16 kernels: bf16 autocast will be slow")
    return dtype


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    import torch

    if dtype is None or dtype == "auto":
        # Half precision only where it is fast and standard; CPU stays exact by default.
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    try:
        return names[str(dtype).lower()]
    except KeyError:
        raise ValueError(
            f"dtype must be one of {sorted(names)}, 'auto', a torch.dtype or None; got {dtype!r}"
        ) from None


class CrossEncoderScorer(TokenizedReranker):
    """Score ``(query, passage)`` pairs with a Hugging Face sequence-classification reranker.

    Works with any cross-encoder whose head gives one relevance logit per pair
    (``cross-encoder/ms-marco-MiniLM-L6-v2``, ``BAAI/bge-reranker-base``,
    ``BAAI/bge-reranker-v2-m3``, ...) or two labels (the second one read as "relevant").
    Hub ids and local folders both work; once the files are in the local cache or a folder,
    no network is needed (set ``HF_HUB_OFFLINE=1`` to make sure nothing is tried).

    Scores match ``sentence_transformers.CrossEncoder.predict`` on the same weights: with
    ``normalize=True`` (default) the sigmoid of the logit, a probability in [0, 1] on which a
    threshold such as 0.3 is meaningful; with ``normalize=False`` the raw logit. For two-label
    models the normalised score is the softmax probability of label 1 and the raw score the logit
    difference ``l1 - l0`` (whose sigmoid is that probability).

    Each call tokenizes its pairs once, sorts them by token length and packs batches under a
    budget of padded tokens (``max_batch_tokens``), each padded to its own longest pair. Only the
    passage is truncated to fit ``max_length`` (the query too, only when it alone is longer than
    the window), unless ``chunking=True`` splits long passages into windows. Inference runs
    under ``torch.inference_mode``. One instance may be shared across threads: a lock serialises
    the forward pass, and torch uses all cores inside each call.

    Speed on CPU comes from precision more than from batching: ``autocast="bfloat16"`` runs the
    matrix products in bf16 (AMX / AVX512-BF16 kernels) while weights, layer norms and softmax
    stay fp32, so scores stay close to fp32. The default stays fp32, exact to the reference.

    Args:
        model_name_or_path: Hugging Face id or local folder; ``None`` loads the reranker bundled
            with the package (English; see its model card).
        device: ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``; ``None`` picks the best available.
        max_length: Token window per pair; ``None`` uses the model's own limit.
        batch_size: Most model inputs per forward pass.
        max_batch_tokens: Most padded tokens per forward pass; ``None`` caps by ``batch_size``
            only.
        normalize: Probabilities (``True``) or raw logits (``False``).
        dtype: Weight dtype: ``None``/``"auto"`` (fp16 on CUDA, fp32 elsewhere), ``"float32"``,
            ``"float16"``, ``"bfloat16"`` or a ``torch.dtype``.
        autocast: Run the forward pass under ``torch.autocast`` in ``"bfloat16"`` or
            ``"float16"``; ``None`` (default) does not.
        chunking: Score passages longer than the window by their best overlapping window
            instead of truncating them; see :attr:`last_chunk_stats`.
        chunk_overlap: Tokens shared by consecutive windows; ``None`` uses
            ``min(32, max_length // 4)``.
        max_chunks: Most windows scored per passage; ``None`` scores all.
        num_threads: Set torch's intra-op threads (process-wide, as torch keeps one pool).
            ``None`` keeps torch's default, one per physical core, which is right for this
            workload: hyper-threads add contention, not throughput.
        rerank_window: See :class:`~rerank_core.Reranker`.
        should_rerank: See :class:`~rerank_core.Reranker`.
        unreadable_limit: Share of ``[UNK]`` tokens above which a text counts as unreadable
            for the model; see :class:`~rerank_core.encoding.TokenizedReranker`.
        strict_readability: Raise instead of warning on unreadable text.
        local_files_only: Never contact the hub (defaults to ``HF_HUB_OFFLINE``).
        revision: Hub revision (branch, tag or commit) to load.
        trust_remote_code: Passed to transformers, for models with custom code.
        model_kwargs: Extra keyword arguments for ``AutoModelForSequenceClassification``.
        tokenizer_kwargs: Extra keyword arguments for ``AutoTokenizer``.

    Example:
        >>> scorer = CrossEncoderScorer()  # the bundled model, no download
        >>> scorer.rerank("what is a reranker?", ["A reranker scores...", "Apples are..."])
        [RerankResult(index=0, score=0.93..., document='A reranker scores...'), ...]
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        max_batch_tokens: int | None = 16384,
        normalize: bool = True,
        dtype: str | torch.dtype | None = None,
        autocast: str | torch.dtype | None = None,
        chunking: bool = False,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        num_threads: int | None = None,
        rerank_window: int | None = None,
        unreadable_limit: float = DEFAULT_UNREADABLE_LIMIT,
        strict_readability: bool = False,
        should_rerank: Any = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
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
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        source = str(model_name_or_path) if model_name_or_path else str(default_model_path())
        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
        if num_threads is not None:
            if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
                raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
            torch.set_num_threads(num_threads)
        self.model_name = source
        self.device = pick_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.autocast = _resolve_autocast(autocast, self.device)
        self.normalize = normalize

        hub_kwargs: dict[str, Any] = {
            "local_files_only": local_files_only,
            "revision": revision,
            "trust_remote_code": trust_remote_code,
        }
        tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs, **(tokenizer_kwargs or {}))
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=self.dtype, output_loading_info=True, **hub_kwargs, **(model_kwargs or {})
        )
        untrained = [k for k in info.get("missing_keys", ()) if "classifier" in k or "score" in k]
        llm_family = detect_family(source)
        if llm_family is not None:
            # These models read a prompt template that plain (query, passage) pairs lack.
            hint = (
                f"{source} is a {llm_family} LLM reranker: it needs its prompt template, which "
                "CrossEncoderScorer does not apply; load it with backend='causal-lm' "
                "(rerank_core.causal_lm.CausalLMReranker)"
            )
            if untrained:
                raise ValueError(hint)
            logger.warning("%s, or its scores are wrong", hint)
        if untrained:
            raise ValueError(
                f"{source} has no trained classification head (missing {sorted(untrained)[:3]}): "
                "it is an encoder, not a reranker. Fine-tune it first with `rag-rerank train`, "
                "or use a cross-encoder such as cross-encoder/ms-marco-MiniLM-L6-v2."
            )
        self.num_labels = int(model.config.num_labels)
        if self.num_labels not in (1, 2):
            raise ValueError(
                f"{source} is a {self.num_labels}-label classifier; a reranker needs one "
                "relevance logit per pair (or two labels, the second meaning relevant)"
            )
        self.model = model.to(self.device).eval()
        self._setup_encoding(
            tokenizer, max_length, getattr(model.config, "max_position_embeddings", None)
        )
        if self.device.startswith("cuda"):
            self._pad_multiple = 8  # tensor-core friendly shapes
        self._lock = threading.Lock()
        self._torch = torch
        logger.info(
            "loaded reranker %s on %s (%s%s, max_length=%d, labels=%d, threads=%d)",
            source,
            self.device,
            str(self.dtype).removeprefix("torch."),
            f", autocast {str(self.autocast).removeprefix('torch.')}" if self.autocast else "",
            self.max_length,
            self.num_labels,
            torch.get_num_threads(),
        )

    def _forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        inputs = {k: torch.from_numpy(v).to(self.device) for k, v in features.items()}
        with self._lock, torch.inference_mode():
            if self.autocast is not None:
                device_type = self.device.split(":")[0]
                with torch.autocast(device_type=device_type, dtype=self.autocast):
                    logits = self.model(**inputs, return_dict=True).logits
            else:
                logits = self.model(**inputs, return_dict=True).logits
            return logits.float().cpu().numpy()

    def identity(self) -> dict[str, Any]:
        """Adds the precision: weight dtype, autocast dtype and the kind of device."""
        return {
            **super().identity(),
            "backend": "torch",
            "device_type": self.device.split(":")[0],
            "dtype": str(self.dtype).removeprefix("torch."),
            "autocast": str(self.autocast).removeprefix("torch.") if self.autocast else None,
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description: model, device, dtype, window and scale."""
        return {
            **super().describe(),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "autocast": str(self.autocast).removeprefix("torch.") if self.autocast else None,
        }
