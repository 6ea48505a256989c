"""Packaging rules: a light core import, no bare ``core`` import, extras that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from packages import package_dirs  # noqa: E402

PACKAGES = package_dirs()


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


def _imports(path: Path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{f.relative_to(ROOT)}: {name}"
        for f in files
        for name in _imports(f)
        if name.split(".")[0] in forbidden or name.startswith(forbidden)
    )


def test_arrows_point_one_way() -> None:
    core = ROOT / "core"
    library = [p for p in core.rglob("*.py") if "app" not in p.relative_to(core).parts]
    app = list((core / "app").rglob("*.py"))
    lc = list((ROOT / "langchain_rerank").rglob("*.py"))
    li = list((ROOT / "llamaindex_rerank").rglob("*.py"))
    # The scoring library imports neither the app layer, the adapters, the examples nor a
    # framework; the app never imports the examples by name (they register their commands
    # through an entry point); no adapter imports the other.
    framework = ("langchain_core", "langchain", "llama_index", "chromadb", "fastapi", "typer")
    assert (
        _offenders(
            library,
            (
                "rerank_core.app",
                "rerank_examples",
                "langchain_rerank",
                "llamaindex_rerank",
                *framework,
            ),
        )
        == []
    )
    assert _offenders(app, ("rerank_examples",)) == []
    assert _offenders(lc, ("llamaindex_rerank", "llama_index")) == []
    assert _offenders(li, ("langchain_rerank", "langchain_core")) == []


def test_the_version_is_written_once() -> None:
    import rerank_core

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert "version" not in pyproject["project"]
    hits = [
        str(p.relative_to(ROOT))
        for p in _sources()
        if rerank_core.__version__ in p.read_text(encoding="utf-8")
    ]
    assert hits == ["core/__init__.py"]
