"""How much of a text a model's tokenizer can read: the guard against scoring text it cannot.

A WordPiece tokenizer maps characters outside its vocabulary to one unknown token (``[UNK]``):
the bundled English model turns "什么是人工智能？" into ``[UNK] [UNK] [UNK] 人 [UNK] 智 [UNK] ？``,
and its scores on such text are noise. :func:`unknown_shares` measures, per text, the share of
tokens that are the unknown token; :class:`ReadabilityReport` summarises one scoring call.
Tokenizers without an unknown token (byte-level BPE, which can spell any text) read everything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_UNREADABLE_LIMIT",
    "ReadabilityReport",
    "UnreadableTextError",
    "suggest_model",
    "unknown_shares",
]

#: Share of unknown tokens above which a text counts as unreadable for the model.
DEFAULT_UNREADABLE_LIMIT = 0.2

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


class UnreadableTextError(ValueError):
    """The model's tokenizer cannot read the text (``strict_readability=True``)."""


_MULTILINGUAL = "BAAI/bge-reranker-v2-m3"


def suggest_model(texts: Sequence[str]) -> str:
    """A reranker that reads the language of ``texts``, for the warning's advice."""
    if any(_CJK.search(t) for t in texts):
        return (
            f"for Chinese, Japanese or Korean use a multilingual reranker such as {_MULTILINGUAL}"
        )
    return f"use a reranker trained on this language, such as the multilingual {_MULTILINGUAL}"


def unknown_shares(tokenizer: Any, texts: Sequence[str]) -> list[float]:
    """Share of each text's tokens (special tokens left out) that are the unknown token.

    Returns:
        One float in [0, 1] per text; 0.0 for an empty text and for tokenizers that have no
        unknown token.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return [0.0] * len(texts)
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    return [sum(i == unk for i in row) / len(row) if row else 0.0 for row in ids]


@dataclass(frozen=True, slots=True)
class ReadabilityReport:
    """What share of the last call's text the model's tokenizer could not read.

    Attributes:
        limit: The share above which a text counts as unreadable.
        query_shares: Unknown-token share of each distinct query, in first-seen order.
        passage_shares: Unknown-token share of each pair's passage, in input order.
    """

    limit: float
    query_shares: tuple[float, ...]
    passage_shares: tuple[float, ...]

    @property
    def unreadable_queries(self) -> int:
        """Queries whose share is above the limit."""
        return sum(s > self.limit for s in self.query_shares)

    @property
    def unreadable_passages(self) -> int:
        """Passages whose share is above the limit."""
        return sum(s > self.limit for s in self.passage_shares)

    @property
    def ok(self) -> bool:
        """Whether every query and passage is readable."""
        return not (self.unreadable_queries or self.unreadable_passages)

    def message(self, model: str, texts: Sequence[str]) -> str:
        """The warning for people: what was unreadable and which model to use instead."""
        parts = []
        if self.query_shares and self.unreadable_queries:
            parts.append(
                f"{self.unreadable_queries} of {len(self.query_shares)} queries "
                f"(up to {max(self.query_shares):.0%} unknown tokens)"
            )
        if self.passage_shares and self.unreadable_passages:
            parts.append(
                f"{self.unreadable_passages} of {len(self.passage_shares)} passages "
                f"(up to {max(self.passage_shares):.0%} unknown tokens)"
            )
        return (
            f"{model} cannot read {' and '.join(parts)}: its tokenizer maps more than "
            f"{self.limit:.0%} of their tokens to the unknown token, so its scores on them are "
            f"noise; {suggest_model(texts)}"
        )
