"""The ONNX Runtime backend on real weights: fp32 equals torch, int8 keeps the ranking."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from rerank_core import CrossEncoderScorer, OnnxCrossEncoderScorer
from rerank_core.cpu import int8_kernel, u8s8_can_saturate

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
@pytest.mark.parametrize("reduce_range", [False, True], ids=["8-bit-weights", "7-bit-weights"])
def test_int8_keeps_the_ranking(
    minilm_cross_encoder_dir: Path, minilm_torch: CrossEncoderScorer, reduce_range: bool
) -> None:
    # Both weight ranges on every CPU: each computes the same integers everywhere (see
    # BUNDLED_INT8_MAX_ERROR), and the default picks one or the other by CPU.
    int8 = OnnxCrossEncoderScorer(
        str(minilm_cross_encoder_dir), quantize="int8", reduce_range=reduce_range, max_length=128
    )
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
    # a private copy: an export another test left beside the shared folder would be re-used
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("onnx"))
    torch_scorer = CrossEncoderScorer(str(model), device="cpu", max_length=32, chunking=True)
    onnx_scorer = OnnxCrossEncoderScorer(
        str(model), cache_dir=tmp_path / "cache", max_length=32, chunking=True
    )
    assert Path(onnx_scorer.onnx_path).is_relative_to(tmp_path / "cache")
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
    with pytest.raises(ValueError, match="reduce_range applies to quantize='int8' only"):
        OnnxCrossEncoderScorer(str(tiny_model_dir), reduce_range=True)
    with pytest.raises(TypeError, match="reduce_range"):
        OnnxCrossEncoderScorer(str(tiny_model_dir), quantize="int8", reduce_range="yes")  # type: ignore[arg-type]


def test_reduced_range_cannot_saturate_a_16_bit_pair_sum() -> None:
    # Why reduce_range is the default where ONNX Runtime's int8 kernel adds two u8 x s8 products
    # in a saturating int16 (x86 without VNNI): ORT's own 7-bit weight range keeps every pair
    # inside int16, its full 8-bit range does not.
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    lo, hi = (int(x) for x in get_qmin_qmax_for_qType(TensorProto.INT8, reduce_range=True))
    assert 255 * max(-lo, hi) * 2 <= 2**15 - 1
    lo, hi = (int(x) for x in get_qmin_qmax_for_qType(TensorProto.INT8, symmetric=True))
    assert 255 * max(-lo, hi) * 2 > 2**15 - 1


def test_int8_weight_range_is_chosen_by_cpu_and_kept_apart(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    auto = OnnxCrossEncoderScorer(str(tiny_model_dir), quantize="int8", cache_dir=tmp_path)
    assert auto.reduce_range is u8s8_can_saturate()
    full = OnnxCrossEncoderScorer(
        str(tiny_model_dir), quantize="int8", reduce_range=False, cache_dir=tmp_path
    )
    reduced = OnnxCrossEncoderScorer(
        str(tiny_model_dir), quantize="int8", reduce_range=True, cache_dir=tmp_path
    )
    # one file per setting, so a cache shared by machines of both kinds never mixes them
    assert Path(full.onnx_path).name == "model-int8.onnx"
    assert Path(reduced.onnx_path).name == "model-int8-reduce-range.onnx"
    assert Path(auto.onnx_path) == Path((reduced if auto.reduce_range else full).onnx_path)
    for scorer, setting in ((full, False), (reduced, True)):
        meta = json.loads(Path(scorer.onnx_path).with_suffix(".json").read_text())
        assert meta["reduce_range"] is setting and meta["int8_kernel"] == int8_kernel()
        assert scorer.identity()["int8_reduce_range"] is setting
        assert scorer.describe()["int8_reduce_range"] is setting
        # 8-bit weights where the U8S8 kernel could saturate run on ONNX Runtime's exact kernel
        options = scorer.session.get_session_options()
        try:
            exact_kernel = options.get_session_config_entry("session.x64quantprecision") == "1"
        except RuntimeError:  # ONNX Runtime's way of saying the entry is not set
            exact_kernel = False
        assert exact_kernel is (not setting and u8s8_can_saturate())
    assert full.score_id != reduced.score_id
    fp32 = OnnxCrossEncoderScorer(str(tiny_model_dir), cache_dir=tmp_path)
    assert fp32.identity()["int8_reduce_range"] is None
    # both settings score close to fp32 on this tiny model, and each export is re-used
    exact = fp32.score(QUERIES[0], DOCS)
    for scorer in (full, reduced):
        got = scorer.score(QUERIES[0], DOCS)
        assert max(abs(a - b) for a, b in zip(exact, got, strict=True)) < 0.1
    before = Path(reduced.onnx_path).stat().st_mtime_ns
    again = OnnxCrossEncoderScorer(
        str(tiny_model_dir), quantize="int8", reduce_range=True, cache_dir=tmp_path
    )
    assert Path(again.onnx_path).stat().st_mtime_ns == before


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[float]]:
    """The bundled model (weights stored in fp16), a cache for its exports, torch's scores."""
    from rerank_core.cross_encoder import default_model_path

    path = default_model_path()
    exact = CrossEncoderScorer(str(path), device="cpu").score_pairs(PAIRS)
    return path, tmp_path_factory.mktemp("bundled-onnx"), exact


@pytest.mark.slow
def test_bundled_fp16_model_exports_in_fp32(bundled: tuple[Path, Path, list[float]]) -> None:
    path, cache, exact = bundled
    fp32 = OnnxCrossEncoderScorer(str(path), cache_dir=cache)
    assert max(abs(a - b) for a, b in zip(exact, fp32.score_pairs(PAIRS), strict=True)) < 1e-4


# How far int8 may move the bundled model's probabilities. int8 sums are exact integers whatever
# the CPU: 7-bit weights never reach the 16-bit limit of the U8S8 kernel of x86 CPUs without VNNI,
# and 8-bit weights run on ONNX Runtime's exact U8U8 kernel there. So the error depends on the
# weight range, not the CPU (beyond float rounding, ~1e-6), and what is measured on one CPU holds
# on all. Measured on an AVX-512 VNNI CPU (onnxruntime 1.32), largest |int8 - torch fp32| over
# these 24 pairs: 0.089 with 8-bit weights, 0.100 with 7-bit weights. The bound is 1.5 times the
# larger, room for kernel changes in other ONNX Runtime versions. (On real text the tail is longer:
# over 600 TREC DL19 BM25 pairs, mean / 99th percentile / largest 0.024 / 0.127 / 0.193 with 8-bit
# and 0.028 / 0.132 / 0.240 with 7-bit weights, so individual scores are no better than that.)
BUNDLED_INT8_MAX_ERROR = 0.15


@pytest.mark.slow
@pytest.mark.parametrize("reduce_range", [False, True], ids=["8-bit-weights", "7-bit-weights"])
def test_bundled_model_int8_error_is_bounded_for_both_weight_ranges(
    bundled: tuple[Path, Path, list[float]], reduce_range: bool
) -> None:
    path, cache, exact = bundled
    int8 = OnnxCrossEncoderScorer(
        str(path), quantize="int8", reduce_range=reduce_range, cache_dir=cache
    )
    quant = int8.score_pairs(PAIRS)
    errors = [abs(a - b) for a, b in zip(exact, quant, strict=True)]
    assert max(errors) < BUNDLED_INT8_MAX_ERROR, max(errors)
    n = len(DOCS)
    for i in range(len(QUERIES)):
        assert _spearman(exact[i * n : (i + 1) * n], quant[i * n : (i + 1) * n]) > 0.8


# ----------------------------------------------------------------- without torch, shipped export

_NO_TORCH = """
import json, sys
import rerank_core
scorer = rerank_core.load_reranker(backend="onnx-int8")
scores = scorer.score("what is artificial intelligence?", [
    "Artificial intelligence is a branch of computer science.",
    "Apples are a fruit rich in vitamins.",
])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"scores": scores, "loaded": loaded, "path": scorer.describe()["onnx_path"]}))
"""


def test_bundled_int8_scores_in_a_fresh_process_without_torch() -> None:
    import subprocess
    import sys

    from rerank_core.cross_encoder import default_model_path

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # neither torch nor any transformers module (its package __init__ imports torch)
    assert got["loaded"] == []
    # the shipped file, not an export made now
    shipped = default_model_path() / "onnx" / "model-int8-reduce-range.onnx"
    assert Path(got["path"]) == shipped
    relevant, other = got["scores"]
    assert 0.0 <= other < relevant <= 1.0


def test_shipped_int8_export_is_for_the_current_weights() -> None:
    # Its metadata carries the content hash of the config, the weights and the export recipe:
    # a retrained model or a changed recipe no longer matches (the scorer would re-export).
    from rerank_core.cross_encoder import default_model_path
    from rerank_core.onnx_backend import onnx_fingerprint

    path = default_model_path()
    meta = json.loads((path / "onnx" / "model-int8-reduce-range.json").read_text())
    assert meta["fingerprint"] == onnx_fingerprint(path)
    assert meta["reduce_range"] is True and meta["optimized"] is True


@pytest.mark.slow
def test_shipped_int8_export_matches_a_fresh_export(
    bundled: tuple[Path, Path, list[float]],
) -> None:
    # The export is deterministic, so a fresh one must equal the shipped file node for node
    # and weight for weight (any stale or hand-edited file differs in some initializer). Runs
    # after the fp32 test above, whose export into the same cache the quantiser re-uses.
    from rerank_core.onnx_backend import export_onnx, onnx_differences

    path, cache, _ = bundled
    fresh = export_onnx(path, cache, quantize="int8", reduce_range=True)
    assert onnx_differences(path / "onnx" / fresh.name, fresh) == []


@pytest.mark.slow
def test_export_command_writes_and_checks(tiny_model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rerank_core.app.cli import _register, app

    _register()
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("onnx"))
    made = CliRunner().invoke(app, ["export-onnx", str(model)])
    assert made.exit_code == 0, made.output
    shipped = model / "onnx" / "model-int8-reduce-range.onnx"
    before = {p.name: p.stat().st_mtime_ns for p in (model / "onnx").iterdir()}
    # The default weight range takes the 7-bit file that is there, whatever the CPU would
    # pick, instead of exporting again (both are exact on every CPU).
    scorer = OnnxCrossEncoderScorer(str(model), quantize="int8")
    assert scorer.reduce_range is True and Path(scorer.onnx_path) == shipped
    assert {p.name: p.stat().st_mtime_ns for p in (model / "onnx").iterdir()} == before
    check = ["export-onnx", str(model), "--check"]
    assert CliRunner().invoke(app, check).exit_code == 0
    # a stale file: another graph in place of the int8 export
    shutil.copyfile(model / "onnx" / "model-fp32.onnx", shipped)
    stale = CliRunner().invoke(app, check)
    assert stale.exit_code == 1 and "differs from a fresh export" in stale.output
