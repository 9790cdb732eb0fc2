"""Plain text from rich tables at one fixed width: what every command prints and ``fimaudit report`` prints again.

A command prints the string its text renderer returns, never to a terminal-sized console, so the saved JSON
re-renders to the same characters whatever the terminal (no colour: a colour code would make them differ).
"""

from __future__ import annotations

import io
from collections.abc import Callable

from rich.console import Console

TEXT_WIDTH = 80  # columns: the width a console has outside a terminal, so tables look as they did in logs


def capture(draw: Callable[[Console], None]) -> str:
    """The text ``draw`` prints on a plain console ``TEXT_WIDTH`` columns wide (rich markup rendered, no colour)."""
    buf = io.StringIO()
    draw(Console(file=buf, width=TEXT_WIDTH, color_system=None, force_terminal=False, legacy_windows=False))
    return buf.getvalue()
