"""The guard against text the model cannot read, on the bundled model's real tokenizer."""

from __future__ import annotations

import logging

import pytest

from rerank_core import CrossEncoderScorer
from rerank_core.readability import UnreadableTextError, unknown_shares

# The example the product's source articles use, with its five passages.
ZH_QUERY = "什么是人工智能？"
ZH_DOCS = [
    "人工智能是计算机科学的一个分支，研究如何让机器模拟人类的智能。",
    "苹果是一种常见的水果，富含维生素。",
    "深度学习是机器学习的一种方法，使用多层神经网络。",
    "今天天气晴朗，适合出门散步。",
    "机器学习让计算机从数据中学习规律。",
]
EN_QUERY = "What is artificial intelligence?"
EN_DOCS = [
    "Artificial intelligence is a branch of computer science about machines that think.",
    "Apples are a common fruit rich in vitamins.",
]


@pytest.fixture(scope="module")
def bundled() -> CrossEncoderScorer:
    return CrossEncoderScorer(device="cpu")


def test_a_chinese_query_triggers_the_warning(
    bundled: CrossEncoderScorer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="rerank_core"):
        bundled.rerank(ZH_QUERY, ZH_DOCS, top_n=3)
    report = bundled.last_readability
    assert report is not None and not report.ok
    assert report.query_shares[0] > 0.5  # 5 of its 8 tokens are [UNK]
    assert report.unreadable_passages >= 3
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "rag-rerank-minilm-l6" in messages[0] and "BAAI/bge-reranker-v2-m3" in messages[0]
    assert "Chinese" in messages[0]


def test_an_english_query_does_not(
    bundled: CrossEncoderScorer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="rerank_core"):
        bundled.rerank(EN_QUERY, EN_DOCS)
    assert bundled.last_readability is not None and bundled.last_readability.ok
    assert bundled.last_readability.query_shares == (0.0,)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_shares_are_measured_per_text(bundled: CrossEncoderScorer) -> None:
    report = bundled.readability([(ZH_QUERY, ZH_DOCS[0]), (EN_QUERY, EN_DOCS[0])])
    assert report.query_shares == pytest.approx(
        unknown_shares(bundled.tokenizer, [ZH_QUERY, EN_QUERY])
    )
    assert report.passage_shares[0] > 0.2 and report.passage_shares[1] == 0.0
    tokens = bundled.tokenizer.tokenize(ZH_QUERY)
    assert report.query_shares[0] == pytest.approx(tokens.count("[UNK]") / len(tokens))


def test_strict_mode_raises_instead(tmp_path: object) -> None:
    strict = CrossEncoderScorer(device="cpu", strict_readability=True)
    with pytest.raises(UnreadableTextError, match="cannot read"):
        strict.score(ZH_QUERY, ZH_DOCS)
    assert len(strict.score(EN_QUERY, EN_DOCS)) == 2
    with pytest.raises(ValueError, match="unreadable_limit"):
        CrossEncoderScorer(device="cpu", unreadable_limit=1.5)
