"""Argument checks shared by every reranker, the adapters and the server.

One rule per kind of value, so the same bad input raises the same error type with the same kind of
message wherever it enters: a value of the wrong type raises :class:`TypeError`, a value of the
right type that is out of range (an empty query, a lone surrogate, a negative count) raises
:class:`ValueError`. Messages name the argument (and the index, for sequences).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

__all__ = [
    "check_non_negative_int",
    "check_number",
    "check_positive_int",
    "check_text",
    "check_texts",
    "is_blank",
]


def check_positive_int(name: str, value: object, *, allow_none: bool = True) -> int | None:
    """Return ``value`` if it is an ``int`` >= 1 (or ``None`` when allowed).

    Raises:
        ValueError: anything else, ``bool`` included (``True`` is not a count).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        hint = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive int{hint}, got {value!r}")
    return value


def check_non_negative_int(name: str, value: object, *, allow_none: bool = True) -> int | None:
    """Return ``value`` if it is an ``int`` >= 0 (or ``None`` when allowed).

    Raises:
        ValueError: anything else.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        hint = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a non-negative int{hint}, got {value!r}")
    return value


def check_number(
    name: str, value: object, *, minimum: float | None = None, allow_none: bool = True
) -> float | None:
    """Return ``value`` as a finite ``float`` (at least ``minimum`` when given).

    Raises:
        ValueError: not a real number, NaN or infinite, or below ``minimum``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, got {value!r}")
    return number


def is_blank(text: str) -> bool:
    r"""Whether ``text`` has no visible character: only whitespace and invisible format marks.

    Zero-width spaces and joiners, the byte-order mark and other format characters (Unicode
    category ``Cf``) count as blank, so a query of ``"\u200b"`` is as empty as ``""``.
    """
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def check_text(name: str, value: object, *, allow_blank: bool = True) -> str:
    """Return ``value`` if it is a ``str`` that can be encoded as UTF-8.

    Args:
        name: How the message names the value (``"query"``, ``"documents[3]"``).
        value: The value to check.
        allow_blank: Whether a string without visible characters is accepted (documents may be
            empty; a query may not).

    Raises:
        TypeError: ``value`` is not a ``str``.
        ValueError: it holds a lone surrogate (no UTF-8 form, so no tokenizer or JSON encoder
            can read it), or it is blank where that is not allowed.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} holds a lone surrogate {value[exc.start]!r} at character {exc.start}: "
            "it is not valid Unicode text (decode the source with errors='replace')"
        ) from None
    if not allow_blank and is_blank(value):
        raise ValueError(f"{name} must have visible text, got {value!r}")
    return value


def check_texts(name: str, values: object) -> list[str]:
    """Return ``values`` as a new list if it is a sequence (not a string) of valid strings.

    Raises:
        TypeError: ``values`` is a ``str`` or not a sequence, or an item is not a ``str``.
        ValueError: an item holds a lone surrogate (the message names its index).
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"{name} must be a sequence of str (a list or tuple), got {type(values).__name__}"
        )
    return [check_text(f"{name}[{i}]", v) for i, v in enumerate(values)]
