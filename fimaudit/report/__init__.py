"""Renderers: pure functions from a ``ScanResult`` to text, keyed by name and file extension."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from ..result import ScanResult
from .html import render_html
from .markdown import render_markdown
from .terminal import render_text


def render_json(result: ScanResult) -> str:
    return json.dumps(result.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"


RENDERERS: dict[str, Callable[[ScanResult], str]] = {
    "html": render_html,
    "json": render_json,
    "markdown": render_markdown,
    "text": render_text,
}
EXTENSIONS = {".html": "html", ".htm": "html", ".json": "json", ".md": "markdown", ".markdown": "markdown", ".txt": "text"}


def renderer_for(fmt: str | None, path: str | None) -> Callable[[ScanResult], str]:
    """Pick a renderer by explicit name, else by the output file's extension, else text."""
    if fmt is None and path not in (None, "-"):
        fmt = EXTENSIONS.get(Path(path).suffix.lower())
        if fmt is None:
            raise ConfigError(f"cannot tell the report format from '{path}'; use --format {'|'.join(RENDERERS)}")
    fmt = fmt or "text"
    if fmt not in RENDERERS:
        raise ConfigError(f"unknown report format '{fmt}'; choose one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt]


__all__ = ["RENDERERS", "renderer_for", "render_html", "render_json", "render_markdown", "render_text"]
