"""Print the project's package folders, read from pyproject.toml (the one list of packages).

``python scripts/packages.py`` prints every top-level package folder; ``--typed`` only those that
ship ``py.typed`` (the library packages, which mypy checks). CI and the packaging tests use it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_dirs(*, typed: bool = False) -> list[str]:
    """Folders of the top-level packages in ``[tool.setuptools] package-dir``."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools["package-dir"]
    data: dict[str, list[str]] = setuptools.get("package-data", {})
    return [
        folder for name, folder in mapping.items() if not typed or "py.typed" in data.get(name, [])
    ]


if __name__ == "__main__":
    print(" ".join(package_dirs(typed="--typed" in sys.argv[1:])))  # noqa: T201
