"""Local cross-encoder scoring with Hugging Face transformers and torch."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_core.base import Pair, Reranker

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL_DIR", "CrossEncoderScorer", "default_model_path", "pick_device"]

#: The reranker that ships inside the package (used when no model is named).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "rag-rerank-minilm-l6"

# Tokenizers report a huge sentinel when a model sets no maximum length.
_NO_LIMIT = 100_000


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


class CrossEncoderScorer(Reranker):
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

    Pairs are sorted by length and padded per batch; only the passage is truncated to fit
    ``max_length`` (the query too, only when it alone is longer than the window). Inference
    runs under ``torch.inference_mode``. One instance may be shared across threads: a lock
    serialises the tokenizer and the forward pass, and torch uses all cores inside each call.

    Args:
        model_name_or_path: Hugging Face id or local folder; ``None`` loads the reranker bundled
            with the package (English; see its model card).
        device: ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``; ``None`` picks the best available.
        max_length: Token window per pair; ``None`` uses the model's own limit.
        batch_size: Pairs per forward pass.
        normalize: Probabilities (``True``) or raw logits (``False``).
        dtype: ``None``/``"auto"`` (fp16 on CUDA, fp32 elsewhere), ``"float32"``, ``"float16"``,
            ``"bfloat16"`` or a ``torch.dtype``.
        rerank_window: See :class:`~rerank_core.Reranker`.
        should_rerank: See :class:`~rerank_core.Reranker`.
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
        normalize: bool = True,
        dtype: str | torch.dtype | None = None,
        rerank_window: int | None = None,
        should_rerank: Any = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, rerank_window=rerank_window, should_rerank=should_rerank
        )
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        source = str(model_name_or_path) if model_name_or_path else str(default_model_path())
        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
        self.model_name = source
        self.device = pick_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.normalize = normalize

        hub_kwargs: dict[str, Any] = {
            "local_files_only": local_files_only,
            "revision": revision,
            "trust_remote_code": trust_remote_code,
        }
        self.tokenizer = AutoTokenizer.from_pretrained(
            source, **hub_kwargs, **(tokenizer_kwargs or {})
        )
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=self.dtype, output_loading_info=True, **hub_kwargs, **(model_kwargs or {})
        )
        untrained = [k for k in info.get("missing_keys", ()) if "classifier" in k or "score" in k]
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
        self.max_length = max_length or self._model_max_length()
        self._lock = threading.Lock()
        self._torch = torch
        logger.info(
            "loaded reranker %s on %s (%s, max_length=%d, labels=%d)",
            source,
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.max_length,
            self.num_labels,
        )

    def _model_max_length(self) -> int:
        limits = [int(self.tokenizer.model_max_length)]
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions:
            limits.append(int(positions))
        sane = [n for n in limits if 0 < n < _NO_LIMIT]
        return min(sane) if sane else 512

    def _encode(self, pairs: Sequence[Pair]) -> Any:
        queries = [q for q, _ in pairs]
        docs = [d for _, d in pairs]
        kwargs: dict[str, Any] = {
            "padding": True,
            "max_length": self.max_length,
            "return_tensors": "pt",
        }
        try:
            return self.tokenizer(queries, docs, truncation="only_second", **kwargs)
        except Exception:  # the query alone overflows the window: cut it too, rather than fail
            logger.debug("query longer than max_length=%d; truncating both", self.max_length)
            return self.tokenizer(queries, docs, truncation="longest_first", **kwargs)

    def _logits_to_scores(self, logits: torch.Tensor) -> list[float]:
        torch = self._torch
        logits = logits.float()
        if self.num_labels == 1:
            raw = logits[:, 0]
            scores = torch.sigmoid(raw) if self.normalize else raw
        elif self.normalize:
            scores = torch.softmax(logits, dim=-1)[:, 1]
        else:
            scores = logits[:, 1] - logits[:, 0]
        return [float(s) for s in scores.cpu().tolist()]

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        with self._lock, self._torch.inference_mode():
            features = self._encode(pairs).to(self.device)
            logits = self.model(**features, return_dict=True).logits
            return self._logits_to_scores(logits)

    def count_tokens(self, pairs: Sequence[Pair]) -> list[int]:
        """Tokens the model reads for each pair, after truncation to ``max_length``.

        Used for usage reporting (the rerank server) and for sizing work; no model call.

        Returns:
            One ``int`` per pair, special tokens included, in input order.
        """
        if not pairs:
            return []
        queries = [q for q, _ in pairs]
        docs = [d for _, d in pairs]
        kwargs: dict[str, Any] = {"max_length": self.max_length, "return_attention_mask": False}
        with self._lock:
            try:
                encoded = self.tokenizer(queries, docs, truncation="only_second", **kwargs)
            except Exception:  # query alone overflows the window, as in _encode
                encoded = self.tokenizer(queries, docs, truncation="longest_first", **kwargs)
        return [len(ids) for ids in encoded["input_ids"]]

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description: model, device, dtype, window and scale."""
        return {
            **super().describe(),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_length": self.max_length,
            "normalize": self.normalize,
        }
