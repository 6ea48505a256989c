"""Token-budget batching and long-passage windows on a tiny real cross-encoder."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank_core import CrossEncoderScorer
from rerank_core.encoding import ChunkStats

torch = pytest.importorskip("torch")

QUERY = "what is artificial intelligence?"
DOCS = [
    "short",
    "Artificial intelligence is a branch of computer science.",
    "Apples are a fruit rich in vitamins and fibre, grown in orchards around the world " * 3,
    "人工智能是计算机科学的一个分支。",
    "Machine learning lets computers learn from data.",
    "a " * 60,
]
PAIRS = [(QUERY, d) for d in DOCS] + [("how to treat diabetes", d) for d in DOCS]


class CountingTokenizer:
    """Wraps a real tokenizer and counts the pairs it encodes."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.pairs_encoded = 0

    def __call__(self, queries: list[str], docs: list[str], **kwargs: object) -> object:
        self.pairs_encoded += len(queries)
        return self.inner(queries, docs, **kwargs)  # type: ignore[operator]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _direct_scores(model_dir: Path, rows: list[tuple[list[int], list[int]]]) -> list[float]:
    """Sigmoid logits of single unpadded inputs, straight through transformers."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    out = []
    with torch.no_grad():
        for ids, types in rows:
            logits = model(
                input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])
            ).logits
            out.append(float(torch.sigmoid(logits[0, 0])))
    return out


def test_plan_covers_every_pair_once_and_respects_the_budget(tiny_model_dir: Path) -> None:
    scorer = CrossEncoderScorer(str(tiny_model_dir), device="cpu", max_batch_tokens=200)
    batches = scorer._prepare(PAIRS)
    plan = [b.indices for b in batches]
    assert sorted(i for b in plan for i in b) == list(range(len(PAIRS)))
    # each batch carries its own pairs and their token windows as values
    for b in batches:
        assert b.pairs == tuple(PAIRS[i] for i in b.indices)
        assert len(b.payload) == len(b.indices)
    lengths = [len(w[0][0]) for w in scorer._tokenize(PAIRS)]
    for batch in plan:
        width = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * width <= 200
        assert len(batch) <= scorer.batch_size
    # longest first, so each batch pads to its first pair's length
    firsts = [lengths[b[0]] for b in plan]
    assert firsts == sorted(firsts, reverse=True)
    assert len(plan) > 1


def test_a_pair_longer_than_the_budget_gets_its_own_batch(tiny_model_dir: Path) -> None:
    scorer = CrossEncoderScorer(str(tiny_model_dir), device="cpu", max_batch_tokens=5)
    plan = [b.indices for b in scorer._prepare(PAIRS)]
    assert all(len(b) == 1 for b in plan)
    assert len(scorer.score_pairs(PAIRS)) == len(PAIRS)


def test_scores_do_not_depend_on_batching(tiny_model_dir: Path) -> None:
    one = CrossEncoderScorer(str(tiny_model_dir), device="cpu", batch_size=1)
    budget = CrossEncoderScorer(str(tiny_model_dir), device="cpu", max_batch_tokens=150)
    count = CrossEncoderScorer(
        str(tiny_model_dir), device="cpu", batch_size=32, max_batch_tokens=None
    )
    expected = one.score_pairs(PAIRS)
    assert budget.score_pairs(PAIRS) == pytest.approx(expected, abs=1e-5)
    assert count.score_pairs(PAIRS) == pytest.approx(expected, abs=1e-5)


def test_each_pair_is_tokenized_once_per_call(tiny_model_dir: Path) -> None:
    scorer = CrossEncoderScorer(str(tiny_model_dir), device="cpu", batch_size=4)
    counting = CountingTokenizer(scorer.tokenizer)
    scorer.tokenizer = counting
    scorer.score_pairs(PAIRS)
    assert counting.pairs_encoded == len(PAIRS)


def test_duplicate_pairs_all_get_scores(tiny_scorer: CrossEncoderScorer) -> None:
    pairs = [PAIRS[0], PAIRS[1], PAIRS[0], PAIRS[0]]
    scores = tiny_scorer.score_pairs(pairs)
    assert scores[0] == pytest.approx(scores[2], abs=1e-6) == pytest.approx(scores[3], abs=1e-6)


def test_chunking_scores_a_long_passage_by_its_best_window(tiny_model_dir: Path) -> None:
    long_doc = " ".join(f"word{i} artificial intelligence apples" for i in range(40))
    scorer = CrossEncoderScorer(
        str(tiny_model_dir), device="cpu", max_length=32, chunking=True, chunk_overlap=8
    )
    got = scorer.score(QUERY, [long_doc, "short"])
    stats = scorer.last_chunk_stats
    assert isinstance(stats, ChunkStats)
    assert stats.pairs == 2 and stats.chunked_pairs == 1 and stats.windows > 3

    tok = scorer.tokenizer
    enc = tok(
        QUERY,
        long_doc,
        max_length=32,
        truncation="only_second",
        return_overflowing_tokens=True,
        stride=8,
    )
    windows = list(zip(enc["input_ids"], enc["token_type_ids"], strict=True))
    assert len(windows) == stats.windows - 1
    # consecutive windows overlap by the stride
    q_len = len(tok(QUERY)["input_ids"])
    first, second = windows[0][0][q_len:-1], windows[1][0][q_len:-1]
    assert first[-8:] == second[:8]
    per_window = _direct_scores(tiny_model_dir, windows)
    assert got[0] == pytest.approx(max(per_window), abs=1e-5)
    assert len(set(round(s, 4) for s in per_window)) > 1  # the max is a real choice

    plain = CrossEncoderScorer(str(tiny_model_dir), device="cpu", max_length=32)
    truncated = plain.score(QUERY, [long_doc, "short"])
    assert truncated[0] == pytest.approx(per_window[0], abs=1e-5)  # truncation = first window
    assert got[1] == pytest.approx(truncated[1], abs=1e-6)  # short passages are unchanged


def test_max_chunks_caps_windows_and_reports_it(tiny_model_dir: Path) -> None:
    long_doc = " ".join(f"token{i}" for i in range(300))
    scorer = CrossEncoderScorer(
        str(tiny_model_dir), device="cpu", max_length=32, chunking=True, max_chunks=2
    )
    scores = scorer.score(QUERY, [long_doc, long_doc + " more", "short"])
    assert len(scores) == 3
    stats = scorer.last_chunk_stats
    assert stats is not None and stats.capped_pairs == 2


def test_chunking_with_a_query_longer_than_the_window(tiny_model_dir: Path) -> None:
    scorer = CrossEncoderScorer(str(tiny_model_dir), device="cpu", max_length=32, chunking=True)
    assert len(scorer.score("why " * 100, ["a passage " * 50, "another"])) == 2


def test_chunked_batches_count_windows_against_the_batch_size(tiny_model_dir: Path) -> None:
    scorer = CrossEncoderScorer(
        str(tiny_model_dir), device="cpu", max_length=32, chunking=True, batch_size=4
    )
    docs = ["alpha beta gamma " * 30, "short one", "delta " * 80, "x"]
    plan = [b.indices for b in scorer._prepare([(QUERY, d) for d in docs])]
    windows = [len(w) for w in scorer._tokenize([(QUERY, d) for d in docs])]
    for batch in plan:
        assert len(batch) == 1 or sum(windows[i] for i in batch) <= 4


def test_two_label_models_chunk_too(tiny_model_2label_dir: Path) -> None:
    scorer = CrossEncoderScorer(
        str(tiny_model_2label_dir), device="cpu", max_length=32, chunking=True
    )
    scores = scorer.score(QUERY, ["long " * 100, "short"])
    assert all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_batch_tokens": 0}, "max_batch_tokens"),
        ({"chunk_overlap": -1}, "chunk_overlap"),
        ({"max_chunks": 0}, "max_chunks"),
        ({"chunking": True, "max_length": 32, "chunk_overlap": 16}, "chunk_overlap"),
        ({"autocast": "int8"}, "autocast"),
        ({"num_threads": 0}, "num_threads"),
    ],
)
def test_bad_arguments_are_named(tiny_model_dir: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CrossEncoderScorer(str(tiny_model_dir), device="cpu", **kwargs)


def test_bf16_autocast_stays_close_to_fp32(tiny_model_dir: Path) -> None:
    fp32 = CrossEncoderScorer(str(tiny_model_dir), device="cpu")
    bf16 = CrossEncoderScorer(str(tiny_model_dir), device="cpu", autocast="bfloat16")
    a, b = fp32.score_pairs(PAIRS), bf16.score_pairs(PAIRS)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.05
    assert bf16.describe()["autocast"] == "bfloat16"


def test_count_tokens_counts_every_window_and_names_bad_input(tiny_model_dir: Path) -> None:
    plain = CrossEncoderScorer(str(tiny_model_dir), device="cpu")
    chunked = CrossEncoderScorer(str(tiny_model_dir), device="cpu", chunking=True)
    long_doc = "word " * 400
    (short_n, long_n) = plain.count_tokens([("query", "short"), ("query", long_doc)])
    assert short_n < long_n <= plain.max_length
    assert chunked.count_tokens([("query", long_doc)])[0] > plain.max_length
    with pytest.raises(TypeError, match="pairs must be a sequence"):
        plain.count_tokens("query and document")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        plain.count_tokens([("query",)])  # type: ignore[list-item]
