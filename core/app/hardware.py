"""What the machine can do and what a model costs, so benchmarks can report a fraction of peak.

* :func:`gemm_peak` times square matrix products in fp32, bf16 or int8 (``torch._int_mm``) and
  returns the achieved rate: the practical ceiling for a transformer forward pass, which is
  almost all matrix products.
* :func:`flops_per_pair` counts the multiply-adds of one cross-encoder (or decoder LLM reranker)
  forward pass from the model's config and the pair's token count.
* :func:`fraction_of_peak` puts the two together with a measured pairs-per-second figure.
* :func:`peak_rss_mib` reads the process's peak resident memory.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any, Literal

__all__ = ["flops_per_pair", "fraction_of_peak", "gemm_peak", "peak_rss_mib"]

Precision = Literal["fp32", "bf16", "fp16", "int8"]


def gemm_peak(
    precision: Precision = "fp32",
    *,
    size: int = 2048,
    min_seconds: float = 0.5,
    device: str = "cpu",
) -> float:
    """Measured matrix-multiply throughput in GFLOP/s (GOP/s for int8).

    Args:
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"`` (int8 inputs, int32
            accumulation via ``torch._int_mm``).
        size: Side of the square matrices; 2048 is large enough to reach the kernels' steady rate.
        min_seconds: Keep multiplying at least this long (after one warm-up product).
        device: ``"cpu"`` or a CUDA device.

    Returns:
        ``2 * size**3 * products / seconds / 1e9``.
    """
    import torch

    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, bf16, fp16 or int8, got {precision!r}")
    gen = torch.Generator(device="cpu").manual_seed(0)
    if precision == "int8":
        a = torch.randint(-128, 127, (size, size), dtype=torch.int8, generator=gen).to(device)
        b = torch.randint(-128, 127, (size, size), dtype=torch.int8, generator=gen).to(device)

        def product() -> Any:
            return torch._int_mm(a, b)

    else:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)

        def product() -> Any:
            return a @ b

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        product()
        sync()
        n = 0
        start = time.perf_counter()
        while True:
            product()
            n += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
    return 2.0 * size**3 * n / elapsed / 1e9


def _value(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def _has(config: Any, key: str) -> bool:
    return _value(config, key) is not None


def flops_per_pair(config: Any, tokens: float) -> float:
    """Floating-point operations of one encoder forward pass over ``tokens`` tokens.

    Counts the matrix products (2 FLOPs per multiply-add) of a BERT-style encoder: per layer the
    Q, K, V and output projections (``4 h^2``), the feed-forward block (``2 h i``) and the
    attention scores and weighted sum (``2 t h``), per token; plus the pooler and the
    classification head once. Embedding look-ups, layer norms and softmax are left out (they are
    a few percent at these sizes).

    A decoder LLM reranker's config (one with ``num_key_value_heads``: Qwen3-Reranker,
    bge-reranker-v2-gemma, mxbai-rerank-v2) is counted as one: query and output projections of
    ``heads * head_dim``, grouped key and value projections, a gated feed-forward block
    (``3 h i``) and causal attention (``t * heads * head_dim`` per token); ``tokens`` is then the
    whole templated input. The answer head (one position) is left out.

    Args:
        config: A transformers config (``hidden_size``, ``num_hidden_layers``,
            ``intermediate_size``, ``num_labels``), or a mapping with those keys.
        tokens: Tokens in the pair (query + passage + special tokens); use the mean over a run.
    """

    def get(key: str, default: int | None = None) -> int:
        value = (
            config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)
        )
        if value is None:
            raise ValueError(f"the model config has no {key}")
        return int(value)

    h = get("hidden_size")
    layers = get("num_hidden_layers")
    inter = get("intermediate_size", 4 * h)
    if _has(config, "num_key_value_heads"):  # a decoder LLM reranker (Qwen, Gemma, Llama)
        heads = get("num_attention_heads")
        head_dim = int(_value(config, "head_dim") or h // heads)
        q, kv = heads * head_dim, get("num_key_value_heads") * head_dim
        # Q and O projections, grouped K and V, a gated MLP (gate, up, down), causal attention
        # (each token attends to half the sequence on average, scores plus weighted sum)
        per_token_layer = 2 * h * q + 2 * h * kv + 3 * h * inter + tokens * q
        return 2.0 * tokens * layers * per_token_layer
    labels = get("num_labels", 1) or 1
    per_token_layer = 4 * h * h + 2 * h * inter + 2 * tokens * h
    return 2.0 * (tokens * layers * per_token_layer + h * h + h * labels)


def fraction_of_peak(pairs_per_second: float, flops_pair: float, peak_gflops: float) -> float:
    """Share of the measured GEMM peak that a scorer reached (0.5 means half the peak)."""
    if peak_gflops <= 0:
        raise ValueError("peak_gflops must be positive")
    return pairs_per_second * flops_pair / (peak_gflops * 1e9)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``, which starts afresh when a process
    starts a new program. ``getrusage``'s ``ru_maxrss`` (used elsewhere) does not: a child
    process started by a large parent reports at least the parent's size at the fork.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
