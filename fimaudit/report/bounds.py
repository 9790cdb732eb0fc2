"""Terminal rendering of a closed-form bound result: one row per recognised block, then totals."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..graph.bounds import BoundResult
from .terminal import _fmt


def render_bounds(result: BoundResult, console: Console, show_ops: bool = False) -> None:
    table = Table(title=f"Recognised blocks ({result.family or 'unknown'} family)", title_justify="left")
    table.add_column("block")
    table.add_column("kind")
    table.add_column("L", justify="right")
    table.add_column("how")
    for b in result.blocks:
        table.add_row(b.name, b.kind, "unbounded" if b.lipschitz is None else _fmt(b.lipschitz), b.detail)
    console.print(table)
    if show_ops:
        ops = Table(title="Per-operation constants", title_justify="left")
        for col in ("node", "op", "L", "how computed"):
            ops.add_column(col, justify="right" if col == "L" else "left")
        for o in result.ops:
            ops.add_row(o.name, o.op, "-" if o.lipschitz is None else _fmt(o.lipschitz), o.how)
        console.print(ops)
    if result.lipschitz is None:
        console.print(f"[bold]no finite bound[/bold]: {result.reason}")
    else:
        console.print(f"[bold]Lipschitz bound of the logit map[/bold] L = {_fmt(result.lipschitz)} (model-input units)")
        console.print(f"[bold]lambda_max(F) <= L^2/2[/bold] = {_fmt(result.fim_upper)}")
    for note in result.notes:
        console.print(f"note: {note}", style="yellow")
