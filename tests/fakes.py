"""Test fakes: deterministic in-process rerankers, shared by every test that needs one.

They implement the one backend hook, ``_score_pairs``, so everything else they do (validation,
batching, ordering, policy, async) is the real base class at work.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from typing import Any

from rerank_core import Reranker
from rerank_core.base import Pair


class WordOverlap(Reranker):
    """Scores a pair by the share of query words found in the document; records its calls."""

    model_name = "word-overlap"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[list[Pair]] = []
        self.threads: set[int] = set()

    @property
    def score_scale(self) -> str:
        return "probability"

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        self.calls.append(list(pairs))
        self.threads.add(threading.get_ident())
        out = []
        for q, d in pairs:
            words = q.lower().split()
            out.append(sum(w in d.lower() for w in words) / len(words))
        return out


class Broken(Reranker):
    """Returns a fixed list whatever it is asked: wrong counts, NaN, infinity."""

    def __init__(self, result: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result = result

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        return self.result


class CountingScorer(Reranker):
    """Scores a pair by a checksum of its text, and records every pair it scores."""

    model_name = "counting"

    def __init__(self, salt: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.salt = salt
        self.seen: list[tuple[str, str]] = []

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        self.seen.extend(pairs)
        return [(zlib.crc32(f"{q}|{d}".encode()) % 1000 + self.salt) / 1000 for q, d in pairs]

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "salt": self.salt}


class LengthScorer(Reranker):
    """Scores a pair by how many query words the document shares, as a probability-like value."""

    model_name = "length-scorer"

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        out = []
        for q, d in pairs:
            words = set(q.lower().split())
            out.append(len(words & set(d.lower().split())) / max(len(words), 1))
        return out


class TableScorer(Reranker):
    """Scores each passage by a fixed table, so every ranking is known in advance."""

    model_name = "table"

    def __init__(self, table: dict[str, float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.calls = 0

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        self.calls += 1
        return [self.table[d] for _, d in pairs]
