"""The ONNX path's tokenizer (``tokenizers`` only) against transformers' fast tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rerank_core.cross_encoder import default_model_path
from rerank_core.fast_tokenizer import FastTokenizer

QUERIES = ["what is artificial intelligence?", "什么是人工智能？", "café ﬁ ½"]
DOCS = [
    "Artificial intelligence is a branch of computer science. " * 12,
    "人工智能是计算机科学的一个分支。",
    "x",
]


@pytest.mark.parametrize("which", ["tiny", "bundled"])
def test_same_encodings_as_transformers(which: str, tiny_model_dir: Path) -> None:
    folder = tiny_model_dir if which == "tiny" else default_model_path()
    hf, fast = AutoTokenizer.from_pretrained(str(folder)), FastTokenizer.from_folder(folder)
    for attr in ("model_max_length", "pad_token_id", "unk_token_id", "padding_side"):
        assert getattr(fast, attr) == getattr(hf, attr), attr
    assert fast.model_input_names == list(hf.model_input_names)
    assert fast.all_special_ids == sorted(hf.all_special_ids)
    calls = [
        {"truncation": "longest_first", "max_length": 24},
        {"truncation": "only_second", "max_length": 24, "return_token_type_ids": True},
        {
            "truncation": "only_second",
            "max_length": 32,
            "stride": 8,
            "return_overflowing_tokens": True,
            "return_attention_mask": False,
        },
    ]
    for kwargs in calls:
        assert fast(QUERIES, DOCS, **kwargs) == dict(hf(QUERIES, DOCS, padding=False, **kwargs))
    single = {"add_special_tokens": False, "truncation": False}
    assert fast(DOCS, **single)["input_ids"] == hf(DOCS, **single)["input_ids"]
    offsets = {"add_special_tokens": False, "truncation": True, "max_length": 5}
    got = fast(DOCS, return_offsets_mapping=True, **offsets)["offset_mapping"]
    want = hf(DOCS, return_offsets_mapping=True, **offsets)["offset_mapping"]
    assert [[tuple(s) for s in row] for row in got] == [[tuple(s) for s in row] for row in want]
    # a query longer than the window cannot keep "only_second": both raise
    with pytest.raises(Exception):  # noqa: B017  # tokenizers' own error type
        fast(["word " * 40], ["x"], truncation="only_second", max_length=16)
    with pytest.raises(Exception):  # noqa: B017
        hf(["word " * 40], ["x"], truncation="only_second", max_length=16)


def test_padding_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="pad"):
        FastTokenizer.from_folder(tiny_model_dir)(["a"], padding=True)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        FastTokenizer.from_folder(tiny_model_dir / "missing")
