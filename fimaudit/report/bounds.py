"""Text and HTML of a closed-form bound result: one row per recognised block, then totals (pure: result -> text)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..results import BoundResult
from .terminal import _fmt
from .text import capture


def _draw(result: BoundResult, console: Console) -> None:
    table = Table(title=f"Recognised blocks ({result.family or 'unknown'} family)", title_justify="left")
    table.add_column("block")
    table.add_column("kind")
    table.add_column("status")
    table.add_column("L", justify="right")
    table.add_column("how / why")
    for b in result.blocks:
        status = b.status or ("bounded" if b.lipschitz is not None else "unbounded")
        table.add_row(b.name, b.kind, status, "-" if b.lipschitz is None else _fmt(b.lipschitz),
                      b.detail if status == "bounded" else (b.reason or b.detail))
    console.print(table)
    if result.show_ops:  # `bounds --ops`
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
    over = result.domain_bounds  # `bounds --domain LO,HI`
    if over is not None:
        box = over["input_range"]
        inf = float("inf")  # the JSON writes an infinite bound as null
        lower = [-inf if v is None else v for v in over["logits_lower"]]
        upper = [inf if v is None else v for v in over["logits_upper"]]
        lo, hi = min(lower), max(upper)
        spread = max(u - l for l, u in zip(lower, upper))
        console.print(f"[bold]bound over the input box[/bold] [{box[0]:g}, {box[1]:g}] (IBP, fimaudit verify's "
                      f"engine): every logit in [{lo:.4g}, {hi:.4g}], widest logit interval {spread:.4g}", soft_wrap=True)


def _status(b: dict) -> str:
    return b.get("status") or ("bounded" if b.get("lipschitz") is not None else "unbounded")


def render_bounds_html(result: BoundResult) -> str:
    """The shared page (fimaudit.report.page): the bound, then each block bounded / unbounded / not computed."""
    from .page import e, facts, num, page, section, table

    d = result.to_dict()
    rows = [("command", "fimaudit bounds"), ("model", d["model"]), ("family", d["family"] or "unknown"),
            ("Lipschitz bound L", f"{num(d['lipschitz'])} (logit map, model-input units, L2)" if d["lipschitz"] is not None
             else f"none: {d['reason']}"),
            ("lambda_max(F) ≤ L²/2", num(d["fim_upper"]) if d["fim_upper"] is not None else "none"),
            ("excluded output op", d.get("excluded_output_op") or "")]
    blocks = table(["block", "kind", "status", "L", "why"],
                   [[b["name"], b["kind"], _status(b), num(b["lipschitz"]), b.get("reason") or b["detail"]]
                    for b in d["blocks"]], left=(0, 1, 2, 4), cls="blocks")
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in d["notes"])
    body = section("context", "Context", facts(rows)) + notes + section("blocks", "Recognised blocks", blocks)
    return page("bounds", d["model"], body, f"fimaudit bounds result, schema {e(d['schema_version'])}")


def render_bounds_text(result: BoundResult) -> str:
    """What ``fimaudit bounds`` prints: the blocks, per-operation constants with --ops, the bound, the box bound."""
    return capture(lambda console: _draw(result, console))
