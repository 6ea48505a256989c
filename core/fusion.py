"""Fusion of the reranker's judgement with the first stage's, so reranking never hurts.

A cross-encoder reads query and passage together, but a small one still errs, and behind a strong
first stage (a learned sparse or dense retriever) its errors can outweigh what it fixes. Fusion
orders the candidates by a mix of both judgements instead of the reranker's alone:

- ``rrf``: weighted reciprocal rank fusion, ``w / (k + reranker rank) + (1 - w) / (k + first-stage
  rank)``. Needs ranks only, which are always known (the candidates arrive in first-stage order).
- ``linear``: ``w * p + (1 - w) * e``, where ``p`` is the reranker's score as a probability
  (calibrated when the reranker is) and ``e`` is the first stage's evidence in [0, 1]: its scores
  min-max normalised within the query when the caller passes them (``evidence="score"``), or its
  rank, ``1 / (1 + r / c)`` for the candidate at 0-based position ``r`` (``evidence="rank"``).

Fusion only orders: every result keeps the reranker's own score (so ``score_threshold`` keeps its
meaning) and carries the fused value as :attr:`~rerank_core.RerankResult.fused_score`. A weight
of 1 is the reranker alone, 0 the first stage alone. Which weight suits a model and a first stage
is measured, not guessed: ``rag-rerank tune-fusion`` sweeps the settings on judged data and writes
the chosen one to ``fusion.json`` beside the model, which :func:`~rerank_core.load_reranker` then
applies by default (the bundled model ships one).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["FUSION_FILE", "FUSION_METHODS", "Fusion", "check_first_stage_scores"]

#: The fusion methods; ``none`` orders by the reranker's score alone.
FUSION_METHODS = ("none", "rrf", "linear")
#: What ``linear`` fusion takes from the first stage.
EVIDENCE = ("auto", "rank", "score")
#: File name of a model's default fusion, beside its weights.
FUSION_FILE = "fusion.json"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Fusion:
    """How to combine the reranker's scores with the first stage's ranking.

    Attributes:
        method: One of :data:`FUSION_METHODS`.
        weight: The reranker's share, in [0, 1] (1: the reranker alone; 0: the first stage alone).
        k: Rank offset of ``rrf`` (larger flattens the difference between top ranks).
        evidence: What ``linear`` takes from the first stage: ``"rank"``, ``"score"`` (the
            caller's first-stage scores, higher is better) or ``"auto"`` (scores when the call
            has them, else ranks).
        rank_scale: ``c`` in the rank evidence ``1 / (1 + r / c)`` of ``linear``: how fast the
            first stage's confidence decays down its ranking.

    Example:
        >>> Fusion.parse("rrf:weight=0.4,k=20")
        Fusion(method='rrf', weight=0.4, k=20.0, evidence='auto', rank_scale=10.0)
    """

    method: str = "none"
    weight: float = 0.5
    k: float = 60.0
    evidence: str = "auto"
    rank_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"fusion method must be one of {FUSION_METHODS}, got {self.method!r}")
        if self.evidence not in EVIDENCE:
            raise ValueError(f"fusion evidence must be one of {EVIDENCE}, got {self.evidence!r}")
        for name, low, high in (("weight", 0.0, 1.0), ("k", 0.0, math.inf)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"fusion {name} must be a number, got {value!r}")
            if not low <= value <= high or math.isnan(value):
                raise ValueError(f"fusion {name} must be in [{low:g}, {high:g}], got {value!r}")
            object.__setattr__(self, name, float(value))
        scale = self.rank_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"fusion rank_scale must be a positive number, got {scale!r}")
        if math.isinf(scale):
            raise ValueError("fusion rank_scale must be finite")
        object.__setattr__(self, "rank_scale", float(scale))

    # ----------------------------------------------------------------- parsing

    @classmethod
    def parse(cls, value: Fusion | str | Mapping[str, Any] | None) -> Fusion | None:
        """A :class:`Fusion` from a spec; ``None`` and ``"none"`` give ``None`` (no fusion).

        A string spec is a method name with optional settings: ``"rrf"``,
        ``"linear:weight=0.7,evidence=rank"``. A mapping holds the attributes.
        """
        if value is None or isinstance(value, Fusion):
            return None if value is None or value.method == "none" else value
        if isinstance(value, Mapping):
            known = {"method", "weight", "k", "evidence", "rank_scale"}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown fusion settings {unknown}; known: {sorted(known)}")
            return cls.parse(cls(**value))
        if not isinstance(value, str):
            raise TypeError(f"fusion must be a Fusion, a spec string or None, got {value!r}")
        method, _, rest = value.strip().partition(":")
        settings: dict[str, Any] = {"method": method.strip()}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, raw = item.partition("=")
            if not eq:
                raise ValueError(f"fusion setting {item!r} is not key=value (in {value!r})")
            key = key.strip()
            settings[key] = raw.strip() if key in ("method", "evidence") else _number(key, raw)
        return cls.parse(settings)

    def spec(self) -> str:
        """The string :meth:`parse` reads back into this fusion."""
        if self.method == "none":
            return "none"
        if self.method == "rrf":
            return f"rrf:weight={self.weight:g},k={self.k:g}"
        return (
            f"linear:weight={self.weight:g},evidence={self.evidence},rank_scale={self.rank_scale:g}"
        )

    # ----------------------------------------------------------------- fusing

    def fuse(
        self,
        scores: Sequence[float],
        *,
        scale: str,
        first_stage_scores: Sequence[float] | None = None,
    ) -> list[float]:
        """The fused value of each candidate, in input (first-stage) order.

        Args:
            scores: The reranker's scores, in first-stage order.
            scale: Their :data:`~rerank_core.base.SCORE_SCALES` entry (``linear`` turns logits
                into probabilities and min-max normalises scales that are not probabilities).
            first_stage_scores: The first stage's scores for the same candidates (higher is
                better), or ``None``.

        Returns:
            One float per candidate; higher ranks first.
        """
        n = len(scores)
        if first_stage_scores is not None and len(first_stage_scores) != n:
            raise ValueError(
                f"{len(first_stage_scores)} first-stage scores for {n} reranked candidates"
            )
        if self.method == "none" or n == 0:
            return [float(s) for s in scores]
        if self.method == "rrf":
            order = sorted(range(n), key=lambda i: -scores[i])
            rank = [0] * n
            for r, i in enumerate(order):
                rank[i] = r
            w, k = self.weight, self.k
            return [w / (k + rank[i] + 1) + (1 - w) / (k + i + 1) for i in range(n)]
        p = _as_probabilities(scores, scale)
        if self.evidence == "score" and first_stage_scores is None:
            raise ValueError("fusion evidence='score' needs first_stage_scores in the call")
        if first_stage_scores is not None and self.evidence != "rank":
            evidence = _min_max(first_stage_scores)
        else:
            evidence = [1.0 / (1.0 + i / self.rank_scale) for i in range(n)]
        w = self.weight
        return [w * a + (1 - w) * b for a, b in zip(p, evidence, strict=True)]

    # ----------------------------------------------------------------- files

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the settings."""
        return asdict(self)

    def save(
        self, path: str | os.PathLike[str], *, measured: Mapping[str, Any] | None = None
    ) -> Path:
        """Write the fusion (and what it was chosen on) as JSON; returns the path."""
        out = Path(path)
        data = {"format": _FORMAT, **self.to_dict(), "measured": dict(measured or {})}
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Fusion | None:
        """Read a file :meth:`save` wrote; ``None`` when it says ``"method": "none"``."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a rag-rerank fusion file (format {_FORMAT})")
        settings = {k: v for k, v in data.items() if k not in ("format", "measured")}
        return cls.parse(settings)


def check_first_stage_scores(values: object, n: int) -> list[float] | None:
    """``values`` as ``n`` finite floats, or ``None``; a clear error otherwise."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"first_stage_scores must be a sequence of numbers, got {values!r}")
    if len(values) != n:
        raise ValueError(f"first_stage_scores has {len(values)} values for {n} documents")
    out: list[float] = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"first_stage_scores[{i}] must be a finite number, got {v!r}")
        out.append(float(v))
    return out


def _number(key: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"fusion setting {key} must be a number, got {raw.strip()!r}") from None


def _min_max(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    span = high - low
    return [1.0 if span == 0 else (v - low) / span for v in values]


def _as_probabilities(scores: Sequence[float], scale: str) -> list[float]:
    if scale in ("probability", "calibrated-probability"):
        return [float(s) for s in scores]
    if scale == "logit":
        return [1.0 / (1.0 + math.exp(-max(min(s, 500.0), -500.0))) for s in scores]
    return _min_max(scores)
