"""CPU speed and memory of CausalLMReranker on random weights of real and tiny sizes.

Real weights cannot be downloaded where this runs, so the models are random ``Qwen3ForCausalLM``
weights of two shapes: a tiny one (hidden 64, 2 layers) and Qwen3-Reranker-0.6B's own shape
(hidden 1024, 28 layers, 16 query / 8 key-value heads of 128, MLP 3072, vocabulary 151669, tied
embeddings). Speed does not depend on the weights' values, only on the shapes and the token
counts; the tokenizer is the small test-time Qwen-style one, so token counts per pair are
reported with each figure. The bundled MiniLM cross-encoder scores the same pairs for
comparison. Each configuration runs in its own process, so its peak memory is its own.

Run from the repository root::

    PYTHONPATH=.devpath:. .venv/bin/python scripts/bench_causal_lm.py \
        --out benchmarks/causal-lm-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    },
    "qwen3-0.6b": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151669,
        "tie_word_embeddings": True,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
    },
}


def _pairs(n: int, doc_words: int) -> list[tuple[str, str]]:
    from tests.llm_models import WORDS

    pairs = []
    for i in range(n):
        words = [WORDS[(i * 13 + 7 * j) % len(WORDS)] for j in range(doc_words)]
        pairs.append(
            (f"what is {WORDS[i % len(WORDS)]} {WORDS[(i * 5) % len(WORDS)]}?", " ".join(words))
        )
    return pairs


def _flops_per_token(cfg: dict[str, Any], tokens: float) -> float:
    """Multiply-add FLOPs per token of a GQA + SwiGLU decoder (attention over ``tokens``)."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter + tokens * q  # causal: half of 2*t*q
    return 2.0 * layers * per_layer


def child(
    size: str, mode: str, n: int, doc_words: int, batch_size: int, folder: Path | None
) -> dict[str, Any]:
    """Load one configuration and time one ``score_pairs`` call of ``n`` pairs (after warm-up)."""
    import torch

    from rerank_core.app.hardware import peak_rss_mib

    pairs = _pairs(n, doc_words)
    result: dict[str, Any] = {
        "size": size,
        "mode": mode,
        "pairs": n,
        "threads": torch.get_num_threads(),
    }
    if size == "minilm":
        from rerank_core import CrossEncoderScorer

        scorer: Any = CrossEncoderScorer(
            device="cpu", batch_size=batch_size, autocast="bfloat16" if mode == "bf16" else None
        )
    else:
        from rerank_core.causal_lm import CausalLMReranker

        cfg = SIZES[size]
        scorer = CausalLMReranker(
            folder,
            device="cpu",
            batch_size=batch_size,
            autocast="bfloat16" if mode == "bf16" else None,
        )
        tokens = scorer.count_tokens(pairs)
        mean = sum(tokens) / len(tokens)
        result["tokens_per_pair"] = round(mean, 1)
        result["params_m"] = round(sum(p.numel() for p in scorer.model.parameters()) / 1e6, 1)
        result["gflop_per_pair"] = round(_flops_per_token(cfg, mean) * mean / 1e9, 2)
    scorer.score_pairs(pairs[:2])  # warm-up
    start = time.perf_counter()
    scorer.score_pairs(pairs)
    elapsed = time.perf_counter() - start
    result["seconds"] = round(elapsed, 3)
    result["pairs_per_s"] = round(n / elapsed, 3)
    result["peak_rss_mib"] = round(peak_rss_mib(), 0)
    return result


def main() -> None:
    """Build the models, time each configuration in its own process, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "MODE"))
    parser.add_argument("--build", nargs=2, metavar=("SIZE", "FOLDER"))
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--runs", default="minilm:fp32,tiny:fp32,qwen3-0.6b:fp32,qwen3-0.6b:bf16")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per timed call (large model)")
    parser.add_argument("--small-pairs", type=int, default=256, help="pairs for tiny and MiniLM")
    parser.add_argument("--doc-words", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.build:
        from tests.llm_models import build_qwen3_reranker

        build_qwen3_reranker(Path(args.build[1]), **SIZES[args.build[0]])
        return
    if args.child:
        size, mode = args.child
        n = args.pairs if size not in ("tiny", "minilm") else args.small_pairs
        print(json.dumps(child(size, mode, n, args.doc_words, args.batch_size, args.folder)))
        return

    from rerank_core.app.hardware import gemm_peak

    peaks = {"fp32": gemm_peak("fp32"), "bf16": gemm_peak("bf16")}
    flags = []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = sorted(
                    f for f in line.split()[2:] if f.startswith(("avx512", "amx", "avx2"))
                )
                break
    rows = []
    tmp = tempfile.TemporaryDirectory()
    folders: dict[str, Path] = {}
    for run in args.runs.split(","):
        size, mode = run.split(":")
        cmd = [sys.executable, __file__, "--child", size, mode]
        if size != "minilm":
            if size not in folders:  # built in its own process: the build's memory is not counted
                folders[size] = Path(tmp.name) / f"Qwen3-Reranker-{size}"
                build = [sys.executable, __file__, "--build", size, str(folders[size])]
                subprocess.run(build, check=True, capture_output=True)
            cmd += ["--folder", str(folders[size])]
        cmd += ["--pairs", str(args.pairs), "--small-pairs", str(args.small_pairs)]
        cmd += ["--doc-words", str(args.doc_words), "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        if "gflop_per_pair" in row:
            row["share_of_gemm_peak"] = round(
                row["pairs_per_s"] * row["gflop_per_pair"] / peaks[mode], 3
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "flags": flags,
            "gemm_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
            "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        },
        "runs": rows,
    }
    print(json.dumps(report["machine"]))
    tmp.cleanup()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
