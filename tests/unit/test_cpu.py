"""Which int8 kernel the CPU gets, from its flags."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rerank_core import cpu


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    cpu.int8_kernel.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    cpu.int8_kernel.cache_clear()


@pytest.mark.parametrize(
    ("machine", "flags", "kernel", "saturates"),
    [
        ("x86_64", {"avx2", "fma"}, "u8s8-16bit", True),
        ("x86_64", {"avx2", "avx512f", "avx512bw"}, "u8s8-16bit", True),  # AVX-512 without VNNI
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "avx512_vnni", False),
        ("AMD64", {"avx2", "avx_vnni"}, "avx_vnni", False),
        ("x86_64", {"avx512_vnni", "amx_int8"}, "amx_int8", False),
        ("x86_64", set(), "x86-unknown", True),  # flags unreadable: assume the worst
        ("aarch64", {"asimd", "asimddp"}, "non-x86", False),
        ("arm64", set(), "non-x86", False),
    ],
)
def test_int8_kernel_from_flags(
    fake_cpu: pytest.MonkeyPatch, machine: str, flags: set[str], kernel: str, saturates: bool
) -> None:
    fake_cpu.setattr(cpu.platform, "machine", lambda: machine)
    fake_cpu.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    assert cpu.int8_kernel() == kernel
    assert cpu.u8s8_can_saturate() is saturates


def test_this_machine_is_classified() -> None:
    assert cpu.int8_kernel() in {
        "amx_int8",
        "avx512_vnni",
        "avx_vnni",
        "u8s8-16bit",
        "x86-unknown",
        "non-x86",
    }
    assert isinstance(cpu.cpu_flags(), frozenset)
