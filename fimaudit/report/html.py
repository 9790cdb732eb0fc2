"""Self-contained HTML rendering of a scan: summary, a histogram of per-sample lambda_max (inline SVG), samples.

No scripts, no external assets: the file opens anywhere and can be attached to an audit.
"""

from __future__ import annotations

import html

from ..results import ScanResult
from .page import facts as facts_table
from .page import page, section, versions_text
from .terminal import (_dither_text, _fmt, _gradients_text, cap, piecewise_fact, preprocess_line, smoothing_label,
                        smoothing_text, summary_rows)

def _histogram_svg(result: ScanResult) -> str:
    """The dossier's histogram (fimaudit.report.plots): log10 lambda_max per sample, integer counts, the bound."""
    from . import plots

    bound = (result.bound or {}).get("fim_upper")
    qty = "lambda_max(F_sigma)" if result.summary.smoothed else "lambda_max(F)"
    svg = plots.lambda_histogram([x.lambda_max for x in result.samples], bound, qty)
    if svg is None:
        return "<p>No positive lambda_max values to plot.</p>"
    return f'<figure class="plot" data-plot="plot-lambda">{svg}</figure>'


def render_html(result: ScanResult) -> str:
    s = result.summary
    m = result.model
    cfg = result.config
    e = html.escape
    rows = []
    for name, st in summary_rows(s):
        rows.append(f"<tr><td class=l>{name}</td><td>{_fmt(st.mean)}</td><td>{_fmt(st.median)}</td>"
                    f"<td>{_fmt(st.p90)}</td><td>{_fmt(st.max)}</td><td>{st.count}</td></tr>")
    facts = [
        ("model", f"{m['path']} (sha256 {m['sha256']})"),
        ("input", f"{m['input']['name']} {m['input']['sample_shape']} {m['input']['dtype']}, d = {m['input']['d']}"),
        ("output", f"{m['output']['name']}: {m['output']['kind']}, {m['output']['classes']} classes"),
        ("method", f"{result.run.method_used}, {result.run.probes_per_sample} probes per sample, budget {cfg.get('budget')}, "
                   f"seed {cfg.get('seed')}"),
        ("accuracy", "-" if s.accuracy is None else f"{100 * s.accuracy:.1f}%"),
        ("queries", f"{s.queries_total} ({s.calibration_queries} for the step check)"),
        ("dither", _dither_text(result.run.dither_used)),
        ("gradients", _gradients_text(result.run.gradients_used, result.run.cross_check_result)),
        ("provider", str(result.runtime.get("provider"))),
        ("units", result.units.get("description", "")),
        ("preprocess", preprocess_line(cfg) or "-"),
    ]
    if result.piecewise:
        facts.insert(0, ("piecewise-constant", piecewise_fact(result.piecewise, s)))
    if s.smoothed:
        facts.insert(3, ("smoothing", smoothing_text(s)))
    b = result.bound
    if b is not None:
        facts.append(("closed-form bound", f"lambda_max <= {_fmt(b['fim_upper'])}"
                      + (" (vacuous: more than 1e6 times the measured median)" if b.get("vacuous") else "")
                      if b.get("fim_upper") is not None else f"none: {b.get('reason')}"))
    sample_rows = "".join(
        f"<tr><td>{x.index}</td><td>{'-' if x.label is None else x.label}</td><td>{x.predicted}</td>"
        f"<td>{_fmt(x.lambda_max)}</td><td>{'-' if x.lambda_max_ci is None else _fmt(x.lambda_max_ci[0]) + ' – ' + _fmt(x.lambda_max_ci[1])}</td>"
        f"<td>{_fmt(x.trace)}</td><td>{_fmt(x.lower_bound if x.lower_bound is not None else x.lower_estimate)}</td><td>{x.queries}</td></tr>"
        for x in result.samples
    )
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in result.notes)
    facts.insert(0, ("command", "fimaudit scan"))
    facts.insert(3, ("data", f"{result.run.data_source or '-'}: {result.run.samples_scanned} samples"))
    body = (
        section("context", "Context", facts_table(facts))
        + notes
        + section("fisher", cap(smoothing_label(s) or "input-space Fisher information"),
                  "<div class=scroll><table><tr><th class=l>quantity</th><th>mean</th><th>median</th>"
                  f"<th>p90</th><th>max</th><th>n</th></tr>{''.join(rows)}</table></div>"
                  f"<p class=muted>units: {e(result.units.get('description', ''))}</p>")
        + section("histogram", "lambda_max per sample", _histogram_svg(result))
        + section("samples", "Samples", "<div class=scroll><table><tr><th>index</th><th>label</th><th>predicted</th>"
                  "<th>lambda_max</th><th>95% interval</th><th>trace</th><th>lower bound or estimate</th><th>queries</th>"
                  f"</tr>{sample_rows}</table></div>")
    )
    return page("scan", m["path"], body, f"fimaudit {e(str(result.runtime.get('fimaudit')))}, schema {e(result.schema_version)}; "
                + e(versions_text(result.runtime)))
