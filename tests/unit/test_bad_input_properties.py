"""Property tests of the library's bad-input contract, on arbitrary generated input.

Whatever a caller passes, ``score``, ``score_pairs`` and ``rerank`` either return one plain
float per document or raise ``TypeError`` (wrong type) or ``ValueError`` (bad value) whose message
names the argument; they never raise anything else, never return a wrong count, and never change
what they were given.
"""

from __future__ import annotations

import copy
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank_core.validation import is_blank
from tests.fakes import WordOverlap

SCORER = WordOverlap(batch_size=3)
NAMES = ("query", "documents", "pairs", "top_n", "score_threshold", "score_margin")

# Text that includes lone surrogates (st.text() never does) and invisible format characters.
texts = st.one_of(
    st.text(max_size=30),
    st.lists(
        st.sampled_from(["a", " ", "\u200b", "\ufeff", "\ud800", "\udfff", "人", "\n"]),
        max_size=8,
    ).map("".join),
)
anything = st.one_of(
    texts, st.none(), st.integers(), st.floats(), st.binary(max_size=5), st.booleans()
)
documents = st.one_of(
    st.lists(texts, max_size=6),
    st.lists(anything, max_size=4),
    st.tuples(texts, texts),
    texts,
    st.none(),
    st.integers(),
)
numbers = st.one_of(st.none(), st.integers(-3, 5), st.floats(allow_nan=True), st.booleans())


def _valid_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_error(exc: Exception) -> None:
    assert isinstance(exc, (TypeError, ValueError)), repr(exc)
    message = str(exc)
    assert any(name in message for name in NAMES), message


quick = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@quick
@given(query=st.one_of(texts, anything), docs=documents)
def test_score_returns_one_float_per_document_or_a_named_error(query: object, docs: object) -> None:
    before = copy.deepcopy(docs)
    try:
        scores = SCORER.score(query, docs)  # type: ignore[arg-type]
    except Exception as exc:  # the property is about which errors occur
        _check_error(exc)
        valid = (
            _valid_text(query)
            and not is_blank(query)  # type: ignore[arg-type]
            and isinstance(docs, (list, tuple))
            and all(_valid_text(d) for d in docs)
        )
        assert not valid, f"valid input refused: {exc!r}"
    else:
        assert isinstance(docs, (list, tuple)) and len(scores) == len(docs)
        assert all(type(s) is float and math.isfinite(s) for s in scores)
    assert docs == before or (isinstance(docs, float) and math.isnan(docs))


@quick
@given(pairs=st.one_of(st.lists(st.tuples(anything, anything), max_size=4), documents))
def test_score_pairs_returns_one_float_per_pair_or_a_named_error(pairs: object) -> None:
    before = copy.deepcopy(pairs)
    try:
        scores = SCORER.score_pairs(pairs)  # type: ignore[arg-type]
    except Exception as exc:
        _check_error(exc)
    else:
        assert isinstance(pairs, (list, tuple)) and len(scores) == len(pairs)
    assert pairs == before or pairs != pairs  # NaN inside compares unequal to itself


@quick
@given(
    docs=st.lists(texts, max_size=6),
    top_n=numbers,
    threshold=numbers,
    margin=numbers,
)
def test_rerank_cutoffs_are_checked_and_never_drop_silently(
    docs: list[str], top_n: object, threshold: object, margin: object
) -> None:
    try:
        results = SCORER.rerank(
            "artificial intelligence",
            docs,
            top_n=top_n,  # type: ignore[arg-type]
            score_threshold=threshold,  # type: ignore[arg-type]
            score_margin=margin,  # type: ignore[arg-type]
        )
    except Exception as exc:
        _check_error(exc)
        return
    assert all(_valid_text(d) for d in docs)
    indices = [r.index for r in results]
    assert len(set(indices)) == len(indices) and all(0 <= i < len(docs) for i in indices)
    if top_n is None and threshold is None and margin is None:
        assert sorted(indices) == list(range(len(docs)))  # nothing dropped without a cut-off
