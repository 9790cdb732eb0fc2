"""Renderers: pure functions ``result -> str`` registered by (kind, format) in ``RENDERERS``; ``render`` picks one.

Every command prints ``render(result, "text")`` and writes ``render(result, "json")`` with ``--json``, so
``fimaudit report saved.json`` prints exactly what the command printed, for every kind (tests/test_report.py).
Renderers import fimaudit.results only (never a job: tests/test_layers.py); they never print and never read the
clock. A new format for a kind is one entry in ``RENDERERS``; the file extensions that select it are in ``EXTENSIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..results import EVIDENCE_KINDS, LOADERS, Result, dumps, kind_of
from . import evidence as _evidence
from .audit import render_audit_html, render_audit_json, render_audit_junit, render_audit_markdown, render_audit_text
from .bounds import render_bounds_html, render_bounds_text
from .certify import render_certify_html, render_certify_text
from .html import render_html
from .markdown import render_markdown
from .terminal import render_text
from .verify import render_verify_html, render_verify_text


def render_json(result: Result) -> str:
    """The saved JSON of any kind (fimaudit.results.dumps: the one JSON writer)."""
    return dumps(result)


RENDERERS: dict[tuple[str, str], Callable[[Any], str]] = {
    ("scan", "text"): render_text, ("scan", "json"): render_json, ("scan", "markdown"): render_markdown,
    ("scan", "html"): render_html,
    ("audit", "text"): render_audit_text, ("audit", "json"): render_audit_json, ("audit", "markdown"): render_audit_markdown,
    ("audit", "html"): render_audit_html, ("audit", "junit"): render_audit_junit,
    ("certify", "text"): render_certify_text, ("certify", "json"): render_json, ("certify", "html"): render_certify_html,
    ("bounds", "text"): render_bounds_text, ("bounds", "json"): render_json, ("bounds", "html"): render_bounds_html,
    ("verify", "text"): render_verify_text, ("verify", "json"): render_json, ("verify", "html"): render_verify_html,
    **{(k, fmt): fn for k in EVIDENCE_KINDS for fmt, fn in (("text", _evidence.render_text), ("json", render_json),
                                                           ("markdown", _evidence.render_markdown),
                                                           ("html", _evidence.render_html))},
}
EXTENSIONS = {".html": "html", ".htm": "html", ".json": "json", ".md": "markdown", ".markdown": "markdown", ".txt": "text",
              ".xml": "junit"}


def formats(kind: str) -> tuple[str, ...]:
    """The formats ``kind`` renders to, in registry order."""
    return tuple(fmt for k, fmt in RENDERERS if k == kind)


def render(result: Result, fmt: str = "text") -> str:
    """``result`` rendered as ``fmt`` (text, json, markdown, html, junit): the registry's renderer for its kind."""
    return renderer_for(fmt, None, result.kind)(result)


def load_result(raw: dict) -> tuple[str, Any]:
    """(kind, result object) of a saved JSON result (fimaudit.results.load; 1.x scan and bounds files name no kind)."""
    kind = kind_of(raw)
    return kind, LOADERS[kind](raw)


def renderer_for(fmt: str | None, path: str | None, kind: str = "scan") -> Callable[[Any], str]:
    """The renderer for ``kind`` by explicit format name, else by the output file's extension, else text."""
    table = formats(kind)
    if fmt is None and path not in (None, "-"):
        fmt = EXTENSIONS.get(Path(path).suffix.lower())
        if fmt is None:
            raise ConfigError(f"cannot tell the report format from '{path}'; use --format {'|'.join(table)}")
    fmt = fmt or "text"
    if fmt not in table:
        raise ConfigError(f"unknown {kind} report format '{fmt}'; choose one of {', '.join(table)}")
    return RENDERERS[(kind, fmt)]


__all__ = ["EXTENSIONS", "RENDERERS", "formats", "load_result", "render", "render_html", "render_json", "render_markdown",
           "render_text", "renderer_for"]
