"""Tokenize-once batching and long-document windows, shared by the local cross-encoder backends.

:class:`TokenizedReranker` sits between :class:`~rerank_core.Reranker` and a local backend (torch,
ONNX Runtime). Its :meth:`_prepare` tokenizes every pair of a call once, sorts the pairs by their
real token length and packs them into batches under a budget of padded tokens, so a batch of short
passages can hold many pairs and a batch of long ones few; each :class:`~rerank_core.base.Batch`
carries its token windows as a value. :meth:`_score_batch` pads each batch to its own longest pair
and calls the backend's :meth:`_forward`.

With ``chunking=True`` a passage longer than the model's window is split into overlapping token
windows (each one ``[CLS] query [SEP] window [SEP]``); every window is scored and the pair gets the
highest window score, the way hosted rerank APIs handle long documents.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rerank_core.base import Batch, Pair, Reranker, _batch_of
from rerank_core.readability import (
    DEFAULT_UNREADABLE_LIMIT,
    ReadabilityReport,
    UnreadableTextError,
    unknown_shares,
)
from rerank_core.validation import check_non_negative_int, check_number, check_positive_int

logger = logging.getLogger(__name__)

__all__ = ["ChunkStats", "TokenizedReranker"]

# Tokenizers report a huge sentinel when a model sets no maximum length.
_NO_LIMIT = 100_000

# One token window: (input_ids, token_type_ids or None).
_Window = tuple[list[int], list[int] | None]


@dataclass(frozen=True, slots=True)
class ChunkStats:
    """How the last scoring call split its passages into windows.

    Attributes:
        pairs: Pairs scored.
        windows: Model inputs scored (equal to ``pairs`` when nothing was split).
        chunked_pairs: Pairs whose passage did not fit one window and was split.
        capped_pairs: Pairs that had more windows than ``max_chunks``; only the first
            ``max_chunks`` windows of those passages were scored.
    """

    pairs: int
    windows: int
    chunked_pairs: int
    capped_pairs: int


def pack_by_tokens(
    widths: Sequence[int], rows: Sequence[int], batch_size: int, max_tokens: int | None
) -> list[list[int]]:
    """Plan batches of items, longest first, under a row cap and a padded-token budget.

    Args:
        widths: Token length of each item (its longest model input).
        rows: Model inputs each item stands for (its windows).
        batch_size: Most rows per batch.
        max_tokens: Most padded tokens (rows x longest width) per batch; ``None``: no budget.

    Returns:
        Item indices per batch; an item bigger than the budget gets a batch of its own.
    """
    order = sorted(range(len(widths)), key=lambda i: -widths[i])
    plan: list[list[int]] = []
    current: list[int] = []
    count = 0
    width = 0
    for i in order:
        new_width = max(width, widths[i])
        full = count + rows[i] > batch_size or (
            max_tokens is not None and (count + rows[i]) * new_width > max_tokens
        )
        if current and full:
            plan.append(current)
            current, count, new_width = [], 0, widths[i]
        current.append(i)
        count += rows[i]
        width = new_width
    if current:
        plan.append(current)
    return plan


class TokenizedReranker(Reranker):
    """A local reranker that tokenizes with a Hugging Face tokenizer and scores padded batches.

    Subclasses set ``self.tokenizer``, ``self.max_length``, ``self.num_labels`` and
    ``self.normalize`` (via :meth:`_setup_encoding`) and implement :meth:`_forward`.

    Args:
        batch_size: Most model inputs (pairs, or windows with chunking) per forward pass.
        max_batch_tokens: Most padded tokens per forward pass (pairs x longest pair). Short pairs
            then share bigger batches and long ones smaller, which keeps memory flat and the
            padding small. ``None`` caps by ``batch_size`` only.
        chunking: Split passages longer than the window into overlapping windows and score each
            pair by its best window. Off by default: the passage is truncated to fit.
        chunk_overlap: Tokens shared by consecutive windows; ``None`` uses
            ``min(32, max_length // 4)``.
        max_chunks: Most windows scored per passage (the first ones); ``None`` scores all.
        rerank_window: See :class:`~rerank_core.Reranker`.
        should_rerank: See :class:`~rerank_core.Reranker`.
        unreadable_limit: Share of unknown tokens above which a query or passage counts as
            text the model cannot read (a warning is logged naming the model and one that
            reads the language; see :attr:`last_readability`).
        strict_readability: Raise :class:`~rerank_core.readability.UnreadableTextError` instead
            of warning.
    """

    tokenizer: Any
    max_length: int
    num_labels: int
    normalize: bool

    def __init__(
        self,
        *,
        batch_size: int = 32,
        max_batch_tokens: int | None = 16384,
        chunking: bool = False,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        rerank_window: int | None = None,
        should_rerank: Callable[[str], bool] | None = None,
        unreadable_limit: float = DEFAULT_UNREADABLE_LIMIT,
        strict_readability: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size, rerank_window=rerank_window, should_rerank=should_rerank
        )
        limit = check_number("unreadable_limit", unreadable_limit, minimum=0.0, allow_none=False)
        if limit is None or limit > 1:
            raise ValueError(f"unreadable_limit must be in [0, 1], got {unreadable_limit!r}")
        self.unreadable_limit = limit
        self.strict_readability = bool(strict_readability)
        #: How readable the last call's text was for the model (``None`` before the first).
        self.last_readability: ReadabilityReport | None = None
        self.max_batch_tokens = check_positive_int("max_batch_tokens", max_batch_tokens)
        self.chunking = bool(chunking)
        self.chunk_overlap = check_non_negative_int("chunk_overlap", chunk_overlap)
        self.max_chunks = check_positive_int("max_chunks", max_chunks)
        #: Window counts of the last :meth:`score_pairs` call (``None`` before the first).
        self.last_chunk_stats: ChunkStats | None = None
        # A fast tokenizer changes its truncation state per call: one caller at a time.
        self._tokenizer_lock = threading.Lock()
        self._pad_multiple: int | None = None

    # ----------------------------------------------------------------- setup

    def _setup_encoding(
        self, tokenizer: Any, max_length: int | None, model_limit: int | None
    ) -> None:
        """Record the tokenizer and the window size (``max_length`` or the model's own limit)."""
        self.tokenizer = tokenizer
        limits = [int(tokenizer.model_max_length)]
        if model_limit:
            limits.append(int(model_limit))
        sane = [n for n in limits if 0 < n < _NO_LIMIT]
        self.max_length = max_length or (min(sane) if sane else 512)
        self._type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        if self.chunk_overlap is None:
            self.chunk_overlap = min(32, self.max_length // 4)
        if self.chunking and self.chunk_overlap >= self.max_length // 2:
            raise ValueError(
                f"chunk_overlap={self.chunk_overlap} must be under half the window "
                f"(max_length={self.max_length})"
            )

    # ----------------------------------------------------------------- backend hook

    @abstractmethod
    def _forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Run the model on one padded batch; return float logits of shape (rows, labels)."""

    # ----------------------------------------------------------------- tokenizing

    def _tokenize(self, pairs: Sequence[Pair]) -> list[list[_Window]]:
        """Token windows of each pair: one unless chunking splits a long passage."""
        if not pairs:
            return []
        with self._tokenizer_lock:
            try:
                return self._tokenize_batch(pairs, "only_second")
            except Exception:  # a query alone overflows the window: handle those pairs one by one
                return [self._tokenize_one(p) for p in pairs]

    def _tokenize_one(self, pair: Pair) -> list[_Window]:
        try:
            return self._tokenize_batch([pair], "only_second")[0]
        except Exception:
            logger.debug("query longer than max_length=%d; truncating both", self.max_length)
            return self._tokenize_batch([pair], "longest_first", chunk=False)[0]

    def _tokenize_batch(
        self, pairs: Sequence[Pair], truncation: str, *, chunk: bool | None = None
    ) -> list[list[_Window]]:
        chunk = self.chunking if chunk is None else chunk
        kwargs: dict[str, Any] = {
            "max_length": self.max_length,
            "truncation": truncation,
            "padding": False,
            "return_attention_mask": False,
            "return_token_type_ids": self._type_ids,
        }
        if chunk:
            kwargs.update(return_overflowing_tokens=True, stride=self.chunk_overlap)
        enc = self.tokenizer([q for q, _ in pairs], [d for _, d in pairs], **kwargs)
        ids: list[list[int]] = enc["input_ids"]
        types: list[list[int]] | None = enc["token_type_ids"] if self._type_ids else None
        owner: list[int] = enc["overflow_to_sample_mapping"] if chunk else list(range(len(ids)))
        out: list[list[_Window]] = [[] for _ in pairs]
        for row, pair_index in enumerate(owner):
            out[pair_index].append((ids[row], types[row] if types is not None else None))
        return out

    def count_tokens(self, pairs: Sequence[Pair]) -> list[int]:
        """Tokens the model reads for each pair (every window when chunking), specials included.

        Used for usage reporting (the rerank server) and for sizing work; no model call.

        Returns:
            One ``int`` per pair, in input order.

        Raises:
            TypeError: ``pairs`` is not a sequence of ``(query, document)`` string pairs.
            ValueError: a query is empty.
        """
        encoded = self._tokenize(self._check_pairs(pairs))
        return [sum(len(ids) for ids, _ in windows) for windows in encoded]

    # ----------------------------------------------------------------- batching

    _prepare_blocks = True

    def _prepare(self, pairs: Sequence[Pair]) -> list[Batch]:
        """Tokenize once, sort by token length, pack batches under the token budget."""
        encoded = self._tokenize(pairs)
        self._record_stats(encoded)
        self._check_readability(pairs, encoded)
        widths = [max(len(ids) for ids, _ in windows) for windows in encoded]
        plan = pack_by_tokens(
            widths, [len(w) for w in encoded], self.batch_size, self.max_batch_tokens
        )
        return [_batch_of(pairs, idx, tuple(encoded[i] for i in idx)) for idx in plan]

    def _record_stats(self, encoded: list[list[_Window]]) -> None:
        windows = sum(len(w) for w in encoded)
        chunked = sum(1 for w in encoded if len(w) > 1)
        capped = sum(1 for w in encoded if self.max_chunks is not None and len(w) > self.max_chunks)
        self.last_chunk_stats = ChunkStats(len(encoded), windows, chunked, capped)
        if chunked:
            logger.debug(
                "%d of %d passages split into %d windows (%d capped at max_chunks=%s)",
                chunked,
                len(encoded),
                windows,
                capped,
                self.max_chunks,
            )

    def readability(self, pairs: Sequence[Pair]) -> ReadabilityReport:
        """Unknown-token shares of ``pairs``' queries and passages, without scoring them."""
        checked = self._check_pairs(pairs)
        return self._readability(checked, self._tokenize(checked))

    def _readability(
        self, pairs: Sequence[Pair], encoded: list[list[_Window]]
    ) -> ReadabilityReport:
        queries = list(dict.fromkeys(q for q, _ in pairs))
        with self._tokenizer_lock:
            query_shares = unknown_shares(self.tokenizer, queries)
            if not self._type_ids:  # no segment ids to find the passage: read it on its own
                passage_shares = unknown_shares(self.tokenizer, [d for _, d in pairs])
        if self._type_ids:  # the passage is segment 1 of each window, as the model reads it
            unk = getattr(self.tokenizer, "unk_token_id", None)
            special = set(getattr(self.tokenizer, "all_special_ids", ())) - {unk}
            passage_shares = []
            for windows in encoded:
                tokens = [
                    i
                    for ids, types in windows
                    for i, t in zip(ids, types or (), strict=False)
                    if t == 1 and i not in special
                ]
                share = sum(i == unk for i in tokens) / len(tokens) if tokens else 0.0
                passage_shares.append(share if unk is not None else 0.0)
        return ReadabilityReport(self.unreadable_limit, tuple(query_shares), tuple(passage_shares))

    def _check_readability(self, pairs: Sequence[Pair], encoded: list[list[_Window]]) -> None:
        report = self._readability(pairs, encoded)
        self.last_readability = report
        if report.ok:
            return
        texts = [q for q, _ in pairs[:1]] + [d for _, d in pairs]
        message = report.message(self.model_name, texts)
        if self.strict_readability:
            raise UnreadableTextError(message)
        logger.warning("%s", message)

    # ----------------------------------------------------------------- scoring

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        """Score pairs as one batch, tokenizing them here (the planned path is :meth:`_prepare`)."""
        return self._score_batch(_batch_of(pairs, range(len(pairs)), tuple(self._tokenize(pairs))))

    def _score_batch(self, batch: Batch) -> list[float]:
        """Pad the batch's token windows, run the model, keep each pair's best window."""
        rows: list[_Window] = []
        owner: list[int] = []
        for i, windows in enumerate(batch.payload):
            kept = windows if self.max_chunks is None else windows[: self.max_chunks]
            rows.extend(kept)
            owner.extend([i] * len(kept))
        logits = np.asarray(self._forward(self._pad(rows)), dtype=np.float64)
        window_scores = self._logits_to_scores(logits)
        best = np.full(len(batch.pairs), -np.inf)
        np.maximum.at(best, np.asarray(owner), window_scores)
        return [float(s) for s in best]

    def _pad(self, rows: list[_Window]) -> dict[str, np.ndarray]:
        width = max(len(ids) for ids, _ in rows)
        if self._pad_multiple:
            width = -(-width // self._pad_multiple) * self._pad_multiple
        input_ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64) if self._type_ids else None
        for r, (ids, tt) in enumerate(rows):
            span = slice(width - len(ids), width) if self._pad_left else slice(0, len(ids))
            input_ids[r, span] = ids
            mask[r, span] = 1
            if types is not None and tt is not None:
                types[r, span] = tt
        features = {"input_ids": input_ids, "attention_mask": mask}
        if types is not None:
            features["token_type_ids"] = types
        return features

    def _logits_to_scores(self, logits: np.ndarray) -> np.ndarray:
        if logits.ndim != 2 or logits.shape[1] != self.num_labels:
            raise ValueError(
                f"expected logits of shape (rows, {self.num_labels}), got {logits.shape}"
            )
        # softmax(l)[1] == sigmoid(l1 - l0); tanh form of the sigmoid cannot overflow
        raw = logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]
        return 0.5 * (1.0 + np.tanh(0.5 * raw)) if self.normalize else raw

    @property
    def score_scale(self) -> str:
        """``"probability"`` with ``normalize=True`` (the sigmoid), else ``"logit"``."""
        return "probability" if self.normalize else "logit"

    def identity(self) -> dict[str, Any]:
        """Model, scale, window and long-passage settings: each changes scores."""
        return {
            **super().identity(),
            "max_length": self.max_length,
            "num_labels": self.num_labels,
            "chunking": self.chunking,
            "chunk_overlap": self.chunk_overlap if self.chunking else None,
            "max_chunks": self.max_chunks if self.chunking else None,
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description, with the batching and chunking settings."""
        return {
            **super().describe(),
            "max_length": self.max_length,
            "normalize": self.normalize,
            "max_batch_tokens": self.max_batch_tokens,
            "chunking": self.chunking,
        }
