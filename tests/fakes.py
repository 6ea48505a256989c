"""Test fakes shared by every test that needs one: small real stand-ins, each does its job.

The rerankers implement the one backend hook, ``_score_pairs``, so everything else they do
(validation, batching, ordering, policy, async) is the real base class at work.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

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


class ScaledTable(Reranker):
    """Scores each passage by a fixed table on a stated scale; records every pair it scores."""

    def __init__(self, table: dict[str, float], scale: str = "probability", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.scale = scale
        self.model_name = f"table-{scale}"
        self.seen: list[list[Pair]] = []

    @property
    def score_scale(self) -> str:
        return self.scale

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        self.seen.append(list(pairs))
        return [self.table[d] for _, d in pairs]


class GatedReranker(Reranker):
    """Scores by document length, but each model call waits until the test opens the gate."""

    model_name = "gated"

    def __init__(self) -> None:
        super().__init__(batch_size=100_000)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []

    def _score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        self.calls.append(len(pairs))
        self.entered.set()
        assert self.gate.wait(30), "test never opened the gate"
        return [float(len(d)) for _, d in pairs]


class KeywordRetriever(BaseRetriever):
    """A first-stage LangChain retriever: the ``k`` documents sharing most words with the query.

    Ties keep corpus order and documents sharing no word still count, so it always returns
    ``min(k, len(documents))``. It returns its own ``Document`` objects (as an in-memory store
    does), so a test can check that whoever consumes them leaves them alone. ``k`` can also be
    given per call, as LangChain's vector-store retrievers allow.
    """

    documents: list[Document]
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        words = set(query.lower().split())
        order = sorted(
            range(len(self.documents)),
            key=lambda i: -len(words & set(self.documents[i].page_content.lower().split())),
        )
        return [self.documents[i] for i in order[: kwargs.get("k", self.k)]]


def checksum_vectors(texts: Sequence[str], dim: int = 384) -> list[list[float]]:
    """Deterministic unit vectors from a checksum of each text: an ``embed`` for indexing tests.

    Same text, same vector; ``dim`` matches all-MiniLM-L6-v2, so a collection filled with these
    can be indexed into later with the real model.
    """
    out = []
    for text in texts:
        seed = zlib.crc32(text.encode())
        raw = [((seed * (i + 1) * 2654435761) % 1000) / 1000 + 0.001 for i in range(dim)]
        norm = sum(x * x for x in raw) ** 0.5
        out.append([x / norm for x in raw])
    return out
