"""Text and HTML of a certification: certified accuracy per radius, then the facts to read it.

    Certified L2 robustness (Gaussian smoothing, sigma = 0.25, input units)
    ┏━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━┓
    ┃ radius ┃ certified accuracy ┃ certified ┃
    ┡━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━┩
    │      0 │              80.0% │     90.0% │
    │   0.25 │              60.0% │     70.0% │
    └────────┴────────────────────┴───────────┘
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..results import CertifyResult
from .terminal import _fmt, print_facts
from .text import capture


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _draw(result: CertifyResult, console: Console) -> None:
    s, cfg, m = result.summary, result.config, result.model
    title = (f"Certified L2 robustness (Gaussian smoothing, sigma = {cfg['sigma']:g}, "
             f"{result.units.get('space', 'input')} units)")
    console.print(title, style="bold", soft_wrap=True)
    table = Table()
    for col in ("radius", "certified accuracy", "certified"):
        table.add_column(col, justify="right")
    for row in s.certified_accuracy:
        table.add_row(_fmt(row.radius), _pct(row.accuracy), _pct(row.certified))
    console.print(table)
    ex = result.execution
    where = "this process"
    if ex.get("mode") == "dask":
        where = f"{ex.get('workers')} Dask workers ({ex.get('scheduler')}), {ex.get('chunks')} chunks"
    facts = [
        ("model", f"{m['path']}  (sha256 {m['sha256'][:12]}…)"),
        ("input", f"{m['input']['name']} {m['input']['sample_shape']} {m['input']['dtype']}, d = {m['input']['d']}"),
        ("samples", f"{len(result.samples)} from {cfg.get('data_source')}"),
        ("certify", f"n0 = {cfg['n0']} selection and n = {cfg['n']} estimation draws per sample, alpha = {cfg['alpha']:g} "
                    "(one-sided Clopper-Pearson)"),
        ("radius", f"median {_fmt(s.radius.median)}, max {_fmt(s.radius.max)} over {s.radius.count} certified; "
                   f"abstained on {_pct(s.abstain_rate)}"),
        ("accuracy", f"clean {_pct(s.clean_accuracy)}, smoothed {_pct(s.smoothed_accuracy)} (abstentions count as wrong)"),
        ("queries", f"{s.queries_total} total"),
        ("provider", str(result.runtime.get("provider"))),
        ("ran on", where),
        ("seconds", f"{s.seconds:.2f}" + ("" if s.runtime_fraction is None else
                                          f" ({100 * s.runtime_fraction:.0f}% inside onnxruntime)")),
        ("units", result.units.get("description", "")),
    ]
    pp = cfg.get("preprocess")
    if pp:
        lay = pp.get("layout") or {}
        facts.insert(3, ("preprocess", f"{pp.get('how')}; layout {str(lay.get('name', '?')).upper()}"))
    print_facts(console, facts, result.notes)


def render_certify_text(result: CertifyResult) -> str:
    """What ``fimaudit certify`` prints (plain text, no colour)."""
    return capture(lambda console: _draw(result, console))


def render_certify_html(result: CertifyResult) -> str:
    """The shared page (fimaudit.report.page): context, certified accuracy per radius, the facts to read it."""
    from .page import e, facts, num, page, preprocessing_text, section, table

    s, cfg, m = result.summary, result.config, result.model
    pp = cfg.get("preprocess") or {}
    units = result.units.get("description", "")
    rows = [
        ("command", "fimaudit certify"),
        ("model", f"{m['path']} (sha256 {m['sha256']})"),
        ("data", f"{cfg.get('data_source')}: {len(result.samples)} samples"),
        ("preprocessing", preprocessing_text(pp or {"scale": cfg.get("scale"), "mean": cfg.get("mean"),
                                                     "std": cfg.get("std")})
         + (f"; layout {str((pp.get('layout') or {}).get('name', '?')).upper()}" if pp.get("layout") else "")),
        ("smoothing", f"Gaussian, sigma {cfg['sigma']:g} ({result.units.get('space', 'input')} units)"),
        ("draws", f"n0 = {cfg['n0']} selection and n = {cfg['n']} estimation draws per sample, alpha = {cfg['alpha']:g} "
                  "(one-sided Clopper-Pearson)"),
        ("radius units", units),
        ("clean accuracy", f"{_pct(s.clean_accuracy)}; smoothed {_pct(s.smoothed_accuracy)} (abstentions count as wrong)"),
        ("certified radius", f"median {_fmt(s.radius.median)}, max {_fmt(s.radius.max)} over {s.radius.count} certified; "
                             f"abstained on {_pct(s.abstain_rate)}"),
        ("queries", f"{s.queries_total} total"),
        ("seed", str(cfg.get("seed", ""))),
        ("provider", str(result.runtime.get("provider"))),
    ]
    table_html = table(["L2 radius", "certified accuracy", "certified"],
                       [[num(r.radius), _pct(r.accuracy), _pct(r.certified)] for r in s.certified_accuracy], left=0)
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in result.notes)
    body = (section("context", "Context", facts(rows)) + notes
            + section("certified", "Certified L2 robustness (randomized smoothing)", table_html))
    return page("certify", m["path"], body, f"fimaudit certify result, schema {e(result.schema_version)}",
                f"sigma {cfg['sigma']:g}, clean accuracy {_pct(s.clean_accuracy)}")
