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
