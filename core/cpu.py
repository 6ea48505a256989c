"""What the CPU can do, where it changes numerics: the int8 dot-product instructions.

ONNX Runtime multiplies dynamically quantised matrices as uint8 activations times int8 weights
(U8S8). With VNNI (``vpdpbusd``, AVX-512 VNNI or AVX-VNNI) or AMX-INT8 the products are summed
straight into 32-bit integers. An x86 CPU without them (AVX2 only, or AVX-512 without VNNI) uses
``vpmaddubsw``, which adds two adjacent products into a *saturating 16-bit* integer first:
``255 * 127 * 2 = 64,770`` does not fit in 16 bits, so large activations meeting large weights are
clipped. Weights quantised to 7 bits (``reduce_range``) keep every pair within
``255 * 64 * 2 = 32,640``, so nothing saturates and such a CPU computes exactly what a VNNI CPU
does. ARM CPUs have no such path.
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["cpu_flags", "int8_kernel", "u8s8_can_saturate"]

# Flags (as Linux names them in /proc/cpuinfo) of the instructions that sum u8 x s8 products
# into 32 bits without a saturating 16-bit step.
_INT8_DOT = ("amx_int8", "avx512_vnni", "avx_vnni")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them; empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:  # x86, ARM
            return frozenset(value.split())
    return frozenset()


def _is_x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}


@functools.cache
def int8_kernel() -> str:
    """Which int8 matrix kernel ONNX Runtime's CPU provider runs here, in one word.

    ``"amx_int8"``, ``"avx512_vnni"`` or ``"avx_vnni"`` (exact 32-bit sums), ``"u8s8-16bit"``
    (an x86 CPU without them: pairs of products saturate at 16 bits), ``"x86-unknown"`` (an x86
    CPU whose flags cannot be read, treated as saturating) or ``"non-x86"``.
    """
    if not _is_x86():
        return "non-x86"
    flags = cpu_flags()
    if not flags:
        return "x86-unknown"
    for flag in _INT8_DOT:
        if flag in flags:
            return flag
    return "u8s8-16bit"


def u8s8_can_saturate() -> bool:
    """True where ONNX Runtime's U8S8 int8 kernel may clip sums of products at 16 bits."""
    return int8_kernel() in {"u8s8-16bit", "x86-unknown"}
