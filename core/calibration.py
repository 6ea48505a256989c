"""Calibrated probabilities: fit a map from a reranker's raw scores to P(relevant), and apply it.

A cross-encoder's sigmoid is a score, not a probability: trained with distillation or on
balanced pairs, its "0.7" need not mean "relevant seven times in ten". A :class:`Calibration`
is fitted on labelled query-passage pairs and maps the model's logit to a probability that
matches the relevance rate of similar data, so that ``score >= 0.5`` means "at least as likely
relevant as not" there.

Methods (all fitted on the logit; a probability is turned into its logit first):

``platt``
    ``sigmoid(a * logit + b)``, ``a`` and ``b`` chosen by minimising log loss (Newton's method).
``temperature``
    ``sigmoid(logit / T)``: Platt with ``b = 0``; keeps 0.5 where the raw sigmoid had it.
``isotonic``
    A monotone step function (pool-adjacent-violators), interpolated linearly between knots.
    Most flexible; needs more data and gives exact 0/1 at the ends.

:class:`CalibratedReranker` wraps any reranker whose scale is ``"probability"`` or ``"logit"``
and returns calibrated probabilities (scale ``"calibrated-probability"``); its identity includes
the calibration, so caches never mix calibrated and raw scores. :func:`~rerank_core.load_reranker`
applies a ``calibration.json`` found beside a local model automatically (``calibration=False``
turns this off). The module needs only numpy.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rerank_core.base import Batch, Pair, Reranker, RerankerWrapper

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_FILE",
    "METHODS",
    "CalibratedReranker",
    "Calibration",
    "attach_calibration",
    "brier_score",
    "expected_calibration_error",
    "fit_calibration",
    "log_loss",
    "reliability_bins",
    "to_logit",
    "to_probability",
]

#: File name of a calibration stored beside a model folder.
CALIBRATION_FILE = "calibration.json"
#: The fitting methods.
METHODS = ("platt", "temperature", "isotonic")
#: Probabilities are clipped to [EPS, 1 - EPS] before taking their logit (|logit| <= 20.7).
EPS = 1e-9
_FORMAT = 1


def to_logit(probabilities: Sequence[float] | np.ndarray) -> np.ndarray:
    """The logit of each probability, clipped to ``[EPS, 1 - EPS]`` so 0 and 1 stay finite."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # cannot overflow


def to_probability(scores: Sequence[float] | np.ndarray, scale: str) -> np.ndarray:
    """Scores on ``scale`` (``"logit"`` or a probability scale) as probabilities."""
    x = np.asarray(scores, dtype=np.float64)
    if scale == "logit":
        return _sigmoid(x)
    if scale in ("probability", "calibrated-probability"):
        return x
    raise ValueError(f"scores on scale {scale!r} are not probabilities or logits")


def _as_logits(scores: Sequence[float] | np.ndarray, scale: str) -> np.ndarray:
    if scale == "logit":
        return np.asarray(scores, dtype=np.float64)
    if scale == "probability":
        return to_logit(scores)
    raise ValueError(
        f"cannot calibrate scores on scale {scale!r}: need raw 'probability' or 'logit' scores"
    )


# --------------------------------------------------------------------------- the calibration


@dataclass(frozen=True)
class Calibration:
    """A fitted map from a model's logit to a calibrated probability.

    Attributes:
        kind: ``"platt"``, ``"temperature"`` or ``"isotonic"``.
        a: Slope on the logit (``platt``, ``temperature``: ``1 / T``).
        b: Offset (``platt``; 0 for ``temperature``).
        knots_x: ``isotonic``: increasing logits at which the fitted probabilities are known.
        knots_y: ``isotonic``: the probabilities there (non-decreasing); linear in between,
            constant beyond the ends.
        dataset: What it was fitted on (a name or path).
        pairs: Number of labelled pairs fitted on.
        positives: How many of them were relevant.
        relevance_level: The lowest grade counted relevant, when known.
        model: The identity of the model whose scores were fitted (for provenance).

    Example:
        >>> cal = Calibration("platt", a=0.5, b=-1.0)
        >>> [round(p, 4) for p in cal.apply([2.0, -2.0])]
        [0.5, 0.1192]
    """

    kind: str
    a: float = 1.0
    b: float = 0.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()
    dataset: str = ""
    pairs: int = 0
    positives: int = 0
    relevance_level: int | None = None
    model: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in METHODS:
            raise ValueError(f"calibration kind must be one of {METHODS}, got {self.kind!r}")
        for name in ("a", "b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"calibration {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"calibration {name} must be finite, got {value!r}")
        if self.kind != "isotonic" and self.a <= 0:
            raise ValueError(f"calibration slope a must be positive (monotone), got {self.a}")
        if self.kind == "temperature" and self.b != 0:
            raise ValueError("a temperature calibration has b = 0")
        if self.kind == "isotonic":
            x, y = np.asarray(self.knots_x, float), np.asarray(self.knots_y, float)
            if len(x) < 1 or len(x) != len(y):
                raise ValueError("isotonic calibration needs knots_x and knots_y of equal length")
            if not (np.all(np.isfinite(x)) and np.all(np.diff(x) > 0)):
                raise ValueError("isotonic knots_x must be finite and strictly increasing")
            if not (np.all((y >= 0) & (y <= 1)) and np.all(np.diff(y) >= 0)):
                raise ValueError("isotonic knots_y must be non-decreasing probabilities")

    def apply(self, scores: Sequence[float], *, scale: str = "logit") -> list[float]:
        """Calibrated probabilities of ``scores``, as plain floats in input order.

        ``scores`` are raw logits, or probabilities with ``scale="probability"``.
        """
        z = _as_logits(scores, scale)
        if self.kind == "isotonic":
            p = np.interp(z, self.knots_x, self.knots_y)
        else:
            p = _sigmoid(self.a * z + self.b)
        return [float(v) for v in p]

    def identity(self) -> dict[str, Any]:
        """The parameters that change a calibrated score (for reranker identities)."""
        if self.kind == "isotonic":
            return {"kind": self.kind, "knots_x": list(self.knots_x), "knots_y": list(self.knots_y)}
        return {"kind": self.kind, "a": self.a, "b": self.b}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (what :meth:`save` writes)."""
        return {
            "format": _FORMAT,
            "kind": self.kind,
            "a": self.a,
            "b": self.b,
            "knots_x": list(self.knots_x),
            "knots_y": list(self.knots_y),
            "fitted_on": {
                "dataset": self.dataset,
                "pairs": self.pairs,
                "positives": self.positives,
                "relevance_level": self.relevance_level,
                "model": self.model,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """The calibration :meth:`to_dict` described.

        Raises:
            ValueError: a field is missing or invalid, or the format is newer than this code.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a calibration must be a JSON object, got {type(data).__name__}")
        if data.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"unsupported calibration format {data.get('format')!r}")
        if "kind" not in data:
            raise ValueError("a calibration needs a 'kind'")
        fitted = data.get("fitted_on") or {}
        return cls(
            kind=data["kind"],
            a=data.get("a", 1.0),
            b=data.get("b", 0.0),
            knots_x=tuple(float(v) for v in data.get("knots_x") or ()),
            knots_y=tuple(float(v) for v in data.get("knots_y") or ()),
            dataset=str(fitted.get("dataset", "")),
            pairs=int(fitted.get("pairs", 0)),
            positives=int(fitted.get("positives", 0)),
            relevance_level=fitted.get("relevance_level"),
            model=dict(fitted.get("model") or {}),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibration as JSON (atomically: a temporary file, then a rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a calibration written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a valid calibration (the message names it).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_dict(data)
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid calibration: {exc}") from None


# --------------------------------------------------------------------------- fitting


def _check_fit_data(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"got {x.size} scores but {y.size} labels")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores must be finite")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (not relevant) or 1 (relevant)")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("fitting a calibration needs both relevant and non-relevant pairs")
    return x, y


def _newton(
    z: np.ndarray, y: np.ndarray, theta: np.ndarray, design: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Minimise the mean log loss of ``sigmoid(X @ theta)`` by damped Newton steps."""
    X = design(z)
    ridge = 1e-9 * np.eye(len(theta))  # keeps the Hessian invertible on separable data

    def loss(t: np.ndarray) -> float:
        s = X @ t
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    current = loss(theta)
    for _ in range(100):
        p = _sigmoid(X @ theta)
        grad = X.T @ (p - y) / len(y)
        hess = (X * (p * (1 - p))[:, None]).T @ X / len(y) + ridge
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:
            candidate = theta - t * step
            value = loss(candidate)
            if value <= current:
                break
            t /= 2
        else:
            break
        theta, improvement, current = candidate, current - value, value
        if improvement < 1e-12 and np.max(np.abs(t * step)) < 1e-9:
            break
    return theta


def _pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pool adjacent violators: the non-decreasing fit of ``y`` (weights ``w``) in order."""
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for value, weight in zip(y, w, strict=True):
        means.append(float(value))
        weights.append(float(weight))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m2, w2, n2 = means.pop(), weights.pop(), sizes.pop()
            total = weights[-1] + w2
            means[-1] = (means[-1] * weights[-1] + m2 * w2) / total
            weights[-1] = total
            sizes[-1] += n2
    return np.repeat(means, sizes)


def _isotonic_knots(z: np.ndarray, y: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xs, inverse, counts = np.unique(z, return_inverse=True, return_counts=True)
    ys = np.bincount(inverse, weights=y) / counts
    fit = _pav(ys, counts.astype(np.float64))
    # keep the first and last x of each constant run: the interpolation is then unchanged
    keep = np.ones(len(xs), dtype=bool)
    if len(xs) > 2:
        same_prev = np.r_[False, fit[1:] == fit[:-1]]
        same_next = np.r_[fit[:-1] == fit[1:], False]
        keep = ~(same_prev & same_next)
    return tuple(float(v) for v in xs[keep]), tuple(float(v) for v in fit[keep])


def fit_calibration(
    scores: Sequence[float],
    labels: Sequence[int | bool],
    *,
    method: str = "platt",
    scale: str = "logit",
    dataset: str = "",
    relevance_level: int | None = None,
    model: Mapping[str, Any] | None = None,
) -> Calibration:
    """Fit a calibration of raw scores against binary relevance labels.

    Args:
        scores: The model's raw scores, one per labelled pair.
        labels: 1 (relevant) or 0 (not), one per score.
        method: ``"platt"``, ``"temperature"`` or ``"isotonic"``.
        scale: ``"logit"`` or ``"probability"``: what ``scores`` are.
        dataset: Name of the fitting data, kept with the result.
        relevance_level: The lowest grade counted relevant, kept with the result.
        model: The scoring model's identity, kept with the result.

    Returns:
        The fitted :class:`Calibration`.

    Raises:
        ValueError: unknown method or scale, mismatched lengths, non-finite scores, labels other
            than 0/1, or only one class present.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    z, y = _check_fit_data(_as_logits(scores, scale), labels)
    meta: dict[str, Any] = {
        "dataset": dataset,
        "pairs": len(y),
        "positives": int(y.sum()),
        "relevance_level": relevance_level,
        "model": dict(model or {}),
    }
    if method == "isotonic":
        knots_x, knots_y = _isotonic_knots(z, y)
        return Calibration("isotonic", knots_x=knots_x, knots_y=knots_y, **meta)
    if method == "temperature":
        (a,) = _newton(z, y, np.array([1.0]), lambda v: v[:, None])
        if a <= 0:
            raise ValueError("the scores are anti-correlated with the labels: no temperature fits")
        return Calibration("temperature", a=float(a), b=0.0, **meta)
    a, b = _newton(z, y, np.array([1.0, 0.0]), lambda v: np.column_stack([v, np.ones_like(v)]))
    if a <= 0:
        raise ValueError("the scores are anti-correlated with the labels: no Platt scaling fits")
    return Calibration("platt", a=float(a), b=float(b), **meta)


# --------------------------------------------------------------------------- measures


def _check_probs(probabilities: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"got {p.size} probabilities but {y.size} labels")
    if p.size == 0:
        raise ValueError("no probabilities given")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return p, y


def reliability_bins(
    probabilities: Sequence[float], labels: Sequence[int | bool], bins: int = 10
) -> list[dict[str, float]]:
    """Equal-width bins over [0, 1] (the last one closed), the non-empty ones.

    Each bin gives its range, count, mean predicted probability and observed relevant rate.
    """
    p, y = _check_probs(probabilities, labels)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for k in range(bins):
        mask = idx == k
        n = int(mask.sum())
        if n:
            out.append(
                {
                    "low": k / bins,
                    "high": (k + 1) / bins,
                    "count": n,
                    "mean_probability": float(p[mask].mean()),
                    "relevant_rate": float(y[mask].mean()),
                }
            )
    return out


def expected_calibration_error(
    probabilities: Sequence[float], labels: Sequence[int | bool], bins: int = 10
) -> float:
    """Expected calibration error over ``bins`` equal-width bins.

    The count-weighted mean of ``|mean predicted probability - observed relevant rate|``.
    """
    rows = reliability_bins(probabilities, labels, bins)
    total = sum(r["count"] for r in rows)
    return float(
        sum(r["count"] * abs(r["mean_probability"] - r["relevant_rate"]) for r in rows) / total
    )


def brier_score(probabilities: Sequence[float], labels: Sequence[int | bool]) -> float:
    """Mean squared difference between probability and label."""
    p, y = _check_probs(probabilities, labels)
    return float(np.mean((p - y) ** 2))


def log_loss(probabilities: Sequence[float], labels: Sequence[int | bool]) -> float:
    """Mean negative log-likelihood, probabilities clipped to ``[1e-15, 1 - 1e-15]``."""
    p, y = _check_probs(probabilities, labels)
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


# --------------------------------------------------------------------------- the reranker


class CalibratedReranker(RerankerWrapper):
    """A reranker whose scores are calibrated probabilities of the wrapped reranker's scores.

    The wrapped reranker's scores are read as logits (a ``"probability"`` scale is turned back
    into its logit, clipped at ``EPS``) and mapped through the calibration. Order is the wrapped
    reranker's (the map is monotone); only the values change.

    Args:
        inner: The reranker to calibrate; its scale must be ``"probability"`` or ``"logit"``.
        calibration: A :class:`Calibration`, or the path of a saved one.
        input_scale: What ``inner`` returns, when its own ``score_scale`` cannot say (a generic
            remote server reports ``"unknown"``): ``"probability"`` or ``"logit"``.
        rerank_window: See :class:`~rerank_core.Reranker` (the wrapper's own policy).
        should_rerank: See :class:`~rerank_core.Reranker`.
        fusion: See :class:`~rerank_core.Reranker`.

    Raises:
        ValueError: ``inner`` is already calibrated, or its scale is not one a calibration reads.

    Example:
        >>> scorer = CalibratedReranker(CrossEncoderScorer(), "calibration.json")  # doctest: +SKIP
        >>> scorer.rerank(query, docs, score_threshold=0.5)  # doctest: +SKIP
    """

    def __init__(
        self,
        inner: Reranker,
        calibration: Calibration | str | os.PathLike[str],
        *,
        input_scale: str | None = None,
        rerank_window: int | None = None,
        should_rerank: Callable[[str], bool] | None = None,
        fusion: Any = None,
    ) -> None:
        super().__init__(
            inner, rerank_window=rerank_window, should_rerank=should_rerank, fusion=fusion
        )
        if isinstance(calibration, (str, os.PathLike)):
            calibration = Calibration.load(calibration)
        if not isinstance(calibration, Calibration):
            raise TypeError(
                f"calibration must be a Calibration or a path, got {type(calibration).__name__}"
            )
        scale = inner.score_scale if input_scale is None else input_scale
        if scale == "calibrated-probability":
            raise ValueError(f"{inner.model_name} is already calibrated")
        if scale not in ("probability", "logit"):
            raise ValueError(
                f"cannot calibrate {inner.model_name}: its scores are on scale {scale!r}; "
                "pass input_scale='probability' or 'logit' if you know which it returns"
            )
        self.calibration = calibration
        self.input_scale = scale

    def _score_pairs(self, pairs: Sequence[Pair]) -> list[float]:
        raw = self.inner.score_pairs(list(pairs))
        return self.calibration.apply(raw, scale=self.input_scale)

    async def _ascore_batch(self, batch: Batch) -> list[float]:
        raw = await self.inner.ascore_pairs(list(batch.pairs))
        return self.calibration.apply(raw, scale=self.input_scale)

    def __getattr__(self, name: str) -> Any:
        """Attributes this wrapper lacks come from the wrapped reranker.

        So a calibrated model serves where its scorer did (``max_length``, ``count_tokens``).
        """
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    @property
    def score_scale(self) -> str:
        """Always ``"calibrated-probability"``."""
        return "calibrated-probability"

    def identity(self) -> dict[str, Any]:
        """The wrapped reranker's identity plus the calibration's parameters."""
        return {
            "class": type(self).__name__,
            "model": self.model_name,
            "scale": self.score_scale,
            "inner": self.inner.identity(),
            "input_scale": self.input_scale,
            "calibration": self.calibration.identity(),
        }

    def describe(self) -> dict[str, Any]:
        """The wrapped reranker's description, with the calibration and what it was fitted on."""
        cal = self.calibration
        return {
            **self.inner.describe(),
            "fusion": None if self.fusion is None else self.fusion.spec(),
            "score_scale": self.score_scale,
            "calibration": {"kind": cal.kind, "dataset": cal.dataset, "pairs": cal.pairs},
        }


def attach_calibration(
    reranker: Reranker,
    model: str | None,
    calibration: str | os.PathLike[str] | bool | None,
    *,
    local: bool,
) -> Reranker:
    """What :func:`~rerank_core.load_reranker` does with its ``calibration`` argument.

    ``False`` returns ``reranker`` unchanged; a path wraps it with that calibration; ``None``
    (default) wraps a local model when a ``calibration.json`` sits in its folder (the bundled
    model's when ``model`` is ``None``); ``True`` does the same but requires the file.
    """
    if calibration is False:
        return reranker
    if calibration is None or calibration is True:
        path = _beside(model) if local else None
        if path is None or not path.is_file():
            if calibration is True:
                raise FileNotFoundError(
                    f"calibration=True but no {CALIBRATION_FILE} beside model {model or 'bundled'}"
                )
            return reranker
    elif isinstance(calibration, (str, os.PathLike)):
        path = Path(calibration)
    else:
        raise TypeError(
            f"calibration must be a path, True, False or None, got {type(calibration).__name__}"
        )
    logger.info("calibrating %s with %s", reranker.model_name, path)
    # The wrapper runs the policy (window, gate) that was asked of the reranker it wraps.
    return CalibratedReranker(
        reranker,
        path,
        rerank_window=reranker.rerank_window,
        should_rerank=reranker.should_rerank,
        fusion=reranker.fusion,
    )


def _beside(model: str | None) -> Path | None:
    if model is None:
        from rerank_core.cross_encoder import DEFAULT_MODEL_DIR

        return DEFAULT_MODEL_DIR / CALIBRATION_FILE
    folder = Path(model)
    return folder / CALIBRATION_FILE if folder.is_dir() else None
