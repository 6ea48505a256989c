"""Griffe extension for the docs build: render the reST bits of our docstrings as Markdown.

The docstrings are Google style with Sphinx roles (``:class:`~rerank_core.Reranker```) and, in a
few module docstrings, reST simple tables. mkdocstrings renders docstrings as Markdown, where both
would show up verbatim. This extension rewrites them once a package is loaded:

- a role becomes inline code wrapped in an optional cross-reference, so it links to the reference
  page when the target is documented and stays plain code otherwise (no broken-link warning);
  ``~`` keeps only the last component as the title, as in Sphinx;
- a two-column reST simple table becomes a Markdown table;
- a ``#:`` comment above a module or class attribute (Sphinx's attribute doc comment) becomes the
  attribute's docstring, so ``BACKENDS``, ``PROVIDERS`` and ``SCORE_SCALES`` are documented.

Used by ``mkdocs.yml`` (``extensions: [scripts/griffe_rst.py]``); the code itself is unchanged.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|data|attr|exc|mod|obj):`(~?)([^`]+)`")
_BORDER = re.compile(r"^(=+)(\s+)(=+)\s*$")


def _target(obj: griffe.Object, name: str) -> str:
    """Full path of ``name`` as seen from ``obj``, or ``name`` itself when it cannot be found."""
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head)
    except griffe.NameResolutionError:  # a name outside our code (ValueError) stays as written
        return name
    full = f"{path}.{rest}" if rest else path
    try:
        found = obj.modules_collection[full]
        if isinstance(found, griffe.Alias):
            return found.target_path
        return str(found.path)
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        # a target in a package not loaded (yet) keeps the path as resolved
        return full


def _roles(obj: griffe.Object, text: str) -> str:
    def swap(match: re.Match[str]) -> str:
        tilde, name = match.groups()
        name = name.strip().removesuffix("()")
        title = name.rsplit(".", 1)[-1] if tilde else name
        ident = _target(obj, name)
        return (
            f'<autoref identifier="{html.escape(ident)}" optional>'
            f"<code>{html.escape(title)}</code></autoref>"
        )

    return _ROLE.sub(swap, text)


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|").replace("``", "`")


def _tables(text: str) -> str:
    """Turn two-column reST simple tables (border, header, border, rows, border) into Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        border = _BORDER.match(lines[i])
        closing = [j for j in range(i + 1, len(lines)) if lines[j] == lines[i]]
        if not border or len(closing) < 2:
            out.append(lines[i])
            i += 1
            continue
        width = len(border.group(1)) + len(border.group(2))
        header, end = lines[i + 1], closing[1]
        rows = lines[closing[0] + 1 : end]
        out.append(f"| {_cell(header[:width])} | {_cell(header[width:])} |")
        out.append("| --- | --- |")
        out.extend(f"| {_cell(row[:width])} | {_cell(row[width:])} |" for row in rows)
        i = end + 1
    return "\n".join(out)


def _doc_comment(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above an attribute, joined, or ``None``."""
    if obj.lineno is None:
        return None
    try:
        lines = obj.lines_collection[obj.filepath]  # type: ignore[index]
    except KeyError:
        return None
    found: list[str] = []
    i = obj.lineno - 2  # lines are 1-based; start at the line above
    while i >= 0 and lines[i].strip().startswith("#:"):
        found.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(found) or None


class RstToMarkdown(griffe.Extension):
    """Rewrite the docstrings of a loaded package as Markdown; see the module docstring."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # noqa: D102
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is None and isinstance(obj, griffe.Attribute):
            comment = _doc_comment(obj)
            if comment:
                obj.docstring = griffe.Docstring(comment, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = _roles(obj, _tables(obj.docstring.value))
        for member in obj.members.values():
            if not isinstance(member, griffe.Alias):
                self._walk(member, seen)
