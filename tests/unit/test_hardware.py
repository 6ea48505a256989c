"""The peak and FLOPs helpers the benchmark uses for its fraction-of-peak column."""

from __future__ import annotations

import pytest

from rerank_core.app.hardware import flops_per_pair, fraction_of_peak, gemm_peak, peak_rss_mib

pytest.importorskip("torch")

MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536, "num_labels": 1}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_gemm_peak_is_a_positive_rate(precision: str) -> None:
    rate = gemm_peak(precision, size=256, min_seconds=0.05)  # type: ignore[arg-type]
    assert 0.1 < rate < 1e6


def test_gemm_peak_rejects_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        gemm_peak("fp8")  # type: ignore[arg-type]


def test_flops_per_pair_counts_the_matrix_products() -> None:
    # 6 layers x (4 h^2 + 2 h i + 2 t h) x t tokens, 2 FLOPs per multiply-add, + pooler + head
    t = 128
    per_layer = 4 * 384 * 384 + 2 * 384 * 1536 + 2 * t * 384
    assert flops_per_pair(MINILM, t) == 2 * (t * 6 * per_layer + 384 * 384 + 384)
    # about 2 FLOPs per encoder-layer weight (6 x 1.77M, embeddings excluded) per token
    assert flops_per_pair(MINILM, t) / t == pytest.approx(2 * 6 * 1.77e6, rel=0.1)
    assert flops_per_pair(MINILM, 256) > 2 * flops_per_pair(MINILM, 128)  # attention is quadratic


def test_fraction_of_peak() -> None:
    assert fraction_of_peak(100, 1e9, 200) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        fraction_of_peak(1, 1, 0)


def test_peak_rss_is_plausible() -> None:
    before = peak_rss_mib()
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    assert peak_rss_mib() >= before and peak_rss_mib() > 64


QWEN3_06B = {
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "intermediate_size": 3072,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
}


def test_flops_per_pair_counts_a_decoder_llm_reranker() -> None:
    # per token and layer: Q and O (h x 2048 each), K and V (h x 1024 each), gate/up/down
    # (3 x h x 3072), causal attention (t x 2048); 2 FLOPs per multiply-add
    t = 201
    per_layer = 2 * 1024 * 2048 + 2 * 1024 * 1024 + 3 * 1024 * 3072 + t * 2048
    assert flops_per_pair(QWEN3_06B, t) == 2 * t * 28 * per_layer
    assert flops_per_pair(QWEN3_06B, t) / 1e9 == pytest.approx(181.7, abs=0.1)
    # about 2 FLOPs per non-embedding weight (Qwen3-0.6B: 0.44 B) per token
    assert flops_per_pair(QWEN3_06B, t) / t == pytest.approx(2 * 0.44e9, rel=0.05)
    # head_dim defaults to hidden / heads (Qwen2's config has none)
    qwen2 = {**QWEN3_06B, "head_dim": None, "num_attention_heads": 8}
    assert flops_per_pair(qwen2, t) == flops_per_pair({**QWEN3_06B, "num_attention_heads": 8}, t)
