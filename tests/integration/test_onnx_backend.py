"""The ONNX Runtime backend on real weights: fp32 equals torch, int8 keeps the ranking."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from rerank_core import CrossEncoderScorer, OnnxCrossEncoderScorer

QUERIES = ["what is artificial intelligence?", "how to treat diabetes", "什么是人工智能？"]
DOCS = [
    "Artificial intelligence is a branch of computer science that builds intelligent machines.",
    "Apples are a fruit rich in vitamins and fibre.",
    "Machine learning lets computers learn from data and make predictions.",
    "The weather is fine today, good for a walk.",
    "Type 2 diabetes is treated with diet, exercise and metformin.",
    "人工智能是计算机科学的一个分支。",
    "short",
    "A longer passage about insulin, blood sugar and the pancreas, " * 6,
]
PAIRS = [(q, d) for q in QUERIES for d in DOCS]


@pytest.fixture(scope="module")
def minilm_onnx(minilm_cross_encoder_dir: Path) -> OnnxCrossEncoderScorer:
    return OnnxCrossEncoderScorer(str(minilm_cross_encoder_dir), max_length=128)


@pytest.fixture(scope="module")
def minilm_torch(minilm_cross_encoder_dir: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(str(minilm_cross_encoder_dir), device="cpu", max_length=128)


def _spearman(a: list[float], b: list[float]) -> float:
    def ranks(x: list[float]) -> list[int]:
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0] * len(x)
        for pos, i in enumerate(order):
            r[i] = pos
        return r

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / (n * (n * n - 1))


@pytest.mark.slow
@pytest.mark.parametrize("normalize", [True, False])
def test_fp32_matches_torch(
    minilm_cross_encoder_dir: Path, minilm_torch: CrossEncoderScorer, normalize: bool
) -> None:
    onnx_scorer = OnnxCrossEncoderScorer(
        str(minilm_cross_encoder_dir), max_length=128, normalize=normalize
    )
    torch_scorer = CrossEncoderScorer(
        str(minilm_cross_encoder_dir), device="cpu", max_length=128, normalize=normalize
    )
    got, expected = onnx_scorer.score_pairs(PAIRS), torch_scorer.score_pairs(PAIRS)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-4
    assert onnx_scorer.describe()["quantize"] is None


@pytest.mark.slow
def test_export_is_cached_beside_the_model_and_reused(
    minilm_cross_encoder_dir: Path, minilm_onnx: OnnxCrossEncoderScorer
) -> None:
    path = Path(minilm_onnx.onnx_path)
    assert path.parent == minilm_cross_encoder_dir / "onnx" and path.is_file()
    before = path.stat().st_mtime_ns
    again = OnnxCrossEncoderScorer(str(minilm_cross_encoder_dir), max_length=128)
    assert Path(again.onnx_path) == path and path.stat().st_mtime_ns == before


@pytest.mark.slow
def test_int8_keeps_the_ranking(
    minilm_cross_encoder_dir: Path, minilm_torch: CrossEncoderScorer
) -> None:
    int8 = OnnxCrossEncoderScorer(str(minilm_cross_encoder_dir), quantize="int8", max_length=128)
    assert (
        Path(int8.onnx_path).stat().st_size
        < 0.5 * (minilm_cross_encoder_dir / "onnx" / "model-fp32.onnx").stat().st_size
    )
    for q in QUERIES:
        exact = minilm_torch.score(q, DOCS)
        quant = int8.score(q, DOCS)
        assert _spearman(exact, quant) > 0.8
        assert max(abs(a - b) for a, b in zip(exact, quant, strict=True)) < 0.1
        best = max(range(len(DOCS)), key=lambda i: exact[i])
        top3 = sorted(range(len(DOCS)), key=lambda i: -quant[i])[:3]
        assert best in top3


def test_read_only_model_folder_exports_to_the_cache_dir(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "ro-model"
    shutil.copytree(tiny_model_dir, model)
    model.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(model, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        scorer = OnnxCrossEncoderScorer(str(model), cache_dir=tmp_path / "cache")
        assert Path(scorer.onnx_path).is_relative_to(tmp_path / "cache")
        assert not (model / "onnx").exists()
    finally:
        model.chmod(stat.S_IRWXU)


def test_tiny_model_fp32_chunking_and_cache_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    torch_scorer = CrossEncoderScorer(
        str(tiny_model_dir), device="cpu", max_length=32, chunking=True
    )
    onnx_scorer = OnnxCrossEncoderScorer(
        str(tiny_model_dir), cache_dir=tmp_path, max_length=32, chunking=True
    )
    assert Path(onnx_scorer.onnx_path).is_relative_to(tmp_path)
    docs = ["artificial intelligence " * 40, "short", *DOCS]
    got, expected = onnx_scorer.score(QUERIES[0], docs), torch_scorer.score(QUERIES[0], docs)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-4
    assert onnx_scorer.last_chunk_stats == torch_scorer.last_chunk_stats
    assert onnx_scorer.last_chunk_stats is not None
    assert onnx_scorer.last_chunk_stats.chunked_pairs >= 2


def test_two_label_model(tiny_model_2label_dir: Path, tmp_path: Path) -> None:
    torch_scorer = CrossEncoderScorer(str(tiny_model_2label_dir), device="cpu")
    onnx_scorer = OnnxCrossEncoderScorer(str(tiny_model_2label_dir), cache_dir=tmp_path)
    got, expected = onnx_scorer.score_pairs(PAIRS), torch_scorer.score_pairs(PAIRS)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-4


async def test_async_matches_sync(tiny_model_dir: Path, tmp_path: Path) -> None:
    scorer = OnnxCrossEncoderScorer(str(tiny_model_dir), cache_dir=tmp_path)
    assert await scorer.arerank(QUERIES[0], DOCS, top_n=3) == scorer.rerank(
        QUERIES[0], DOCS, top_n=3
    )


def test_bad_quantize_is_named(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="quantize"):
        OnnxCrossEncoderScorer(str(tiny_model_dir), quantize="int4")  # type: ignore[arg-type]


@pytest.mark.slow
def test_bundled_fp16_model_exports_in_fp32_and_int8(tmp_path: Path) -> None:
    from rerank_core.cross_encoder import default_model_path

    bundled = default_model_path()  # its weights are stored in fp16
    exact = CrossEncoderScorer(str(bundled), device="cpu").score(QUERIES[0], DOCS)
    fp32 = OnnxCrossEncoderScorer(str(bundled), cache_dir=tmp_path)
    int8 = OnnxCrossEncoderScorer(str(bundled), quantize="int8", cache_dir=tmp_path)
    assert max(abs(a - b) for a, b in zip(exact, fp32.score(QUERIES[0], DOCS), strict=True)) < 1e-4
    quant = int8.score(QUERIES[0], DOCS)
    assert max(abs(a - b) for a, b in zip(exact, quant, strict=True)) < 0.1
    assert _spearman(exact, quant) > 0.8
