"""Renderers: pure functions from a result object to text, keyed by result kind and format (name or file extension)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..audit import AuditResult
from ..certify import CertifyResult
from ..errors import ConfigError
from ..evidence_result import EVIDENCE_KINDS
from . import evidence as _evidence
from ..result import ScanResult
from .certify import render_certify_html, render_certify_text
from .bounds import render_bounds_html, render_bounds_text
from ..graph.bounds import BoundResult
from .audit import render_audit_html, render_audit_json, render_audit_junit, render_audit_markdown, render_audit_text
from .html import render_html
from .markdown import render_markdown
from .terminal import render_text
from .verify import render_verify_html, render_verify_text
from ..evidence_result import VerifyResult


def render_json(result: ScanResult) -> str:
    return json.dumps(result.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"


RENDERERS: dict[str, Callable[[ScanResult], str]] = {
    "html": render_html,
    "json": render_json,
    "markdown": render_markdown,
    "text": render_text,
}
EXTENSIONS = {".html": "html", ".htm": "html", ".json": "json", ".md": "markdown", ".markdown": "markdown", ".txt": "text"}


# Every result kind with its loader and its renderers by format name.
LOADERS: dict[str, Callable[[dict], object]] = {"scan": ScanResult.from_dict, "audit": AuditResult.from_dict,
                                               "certify": CertifyResult.from_dict, "bounds": BoundResult.from_dict,
                                               "verify": VerifyResult.from_dict,
                                               **{k: c.from_dict for k, c in EVIDENCE_KINDS.items()}}
KIND_RENDERERS: dict[str, dict[str, Callable]] = {
    "scan": RENDERERS,
    "audit": {"html": render_audit_html, "json": render_audit_json, "markdown": render_audit_markdown,
              "text": render_audit_text, "junit": render_audit_junit},
    # certify has a terminal renderer only; json is the saved report again
    "certify": {"text": render_certify_text, "json": render_json, "html": render_certify_html},
    "bounds": {"text": render_bounds_text, "json": render_json, "html": render_bounds_html},
    "verify": {"text": render_verify_text, "json": render_json, "html": render_verify_html},
    **{k: _evidence.RENDERERS for k in EVIDENCE_KINDS},
}
EXTENSIONS[".xml"] = "junit"


def load_result(raw: dict) -> tuple[str, object]:
    """(kind, result object) of a saved JSON result; a scan report has no ``kind`` field."""
    kind = raw.get("kind", "scan") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and "kind" not in raw and "blocks" in raw and "fim_upper" in raw:
        kind = "bounds"  # `fimaudit bounds --json` writes no kind field
    if kind not in LOADERS:
        raise ValueError(f"unknown result kind {kind!r} (re-renderable: {', '.join(LOADERS)})")
    return kind, LOADERS[kind](raw)


def renderer_for(fmt: str | None, path: str | None, kind: str = "scan") -> Callable:
    """Pick a renderer for ``kind`` by explicit name, else by the output file's extension, else text."""
    table = KIND_RENDERERS[kind]
    if fmt is None and path not in (None, "-"):
        fmt = EXTENSIONS.get(Path(path).suffix.lower())
        if fmt is None:
            raise ConfigError(f"cannot tell the report format from '{path}'; use --format {'|'.join(table)}")
    fmt = fmt or "text"
    if fmt not in table:
        raise ConfigError(f"unknown {kind} report format '{fmt}'; choose one of {', '.join(table)}")
    return table[fmt]


__all__ = ["KIND_RENDERERS", "LOADERS", "RENDERERS", "load_result", "renderer_for", "render_html", "render_json", "render_markdown", "render_text"]
