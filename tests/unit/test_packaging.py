"""Packaging rules: a light core import, no bare ``core`` import, extras that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["core", "langchain_rerank", "llamaindex_rerank", "examples"]


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]


def test_importing_the_core_loads_no_heavy_library() -> None:
    code = (
        "import sys, rerank_core; "
        "heavy = [m for m in ('torch', 'transformers', 'langchain_core', 'llama_index', "
        "'chromadb', 'httpx', 'fastapi') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nothing_imports_bare_core() -> None:
    pattern = re.compile(r"^\s*(from core[\s.]|import core\b)", re.M)
    offenders = [str(p) for p in _sources() if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_every_extra_named_in_an_error_message_exists() -> None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    named = set()
    for p in _sources():
        named |= set(re.findall(r"rag-rerank\[([a-z0-9_-]+)\]", p.read_text(encoding="utf-8")))
    assert named, "expected install hints in ImportError messages"
    assert named <= extras, named - extras


def test_library_code_never_prints() -> None:
    library = [p for p in _sources() if "/app/" not in str(p) and "examples" not in p.parts]
    offenders = [str(p) for p in library if re.search(r"^\s*print\(", p.read_text(), re.M)]
    assert offenders == []
