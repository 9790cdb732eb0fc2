"""Self-contained HTML rendering of a scan: summary, a histogram of per-sample lambda_max (inline SVG), samples.

No scripts, no external assets: the file opens anywhere and can be attached to an audit.
"""

from __future__ import annotations

import html
import math

import numpy as np

from ..result import ScanResult
from .page import facts as facts_table
from .page import page, section, versions_text
from .terminal import (_dither_text, _fmt, _gradients_text, cap, piecewise_fact, preprocess_line, smoothing_label,
                        smoothing_text, summary_rows)

def _histogram_svg(values: list[float], width: int = 640, height: int = 220) -> str:
    """Histogram of log10(lambda_max) per sample as an inline SVG."""
    vals = np.array([v for v in values if v is not None and v > 0 and math.isfinite(v)])
    if vals.size == 0:
        return "<p>No positive lambda_max values to plot.</p>"
    logs = np.log10(vals)
    lo, hi = float(np.floor(logs.min())), float(np.ceil(logs.max()))
    if hi <= lo:
        hi = lo + 1
    bins = min(30, max(5, int(np.sqrt(vals.size)) * 2))
    counts, edges = np.histogram(logs, bins=bins, range=(lo, hi))
    pad_l, pad_b, pad_t = 40, 30, 10
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    top = max(int(counts.max()), 1)
    bar_w = plot_w / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             'aria-label="histogram of lambda_max per sample">']
    for i, c in enumerate(counts):
        h = plot_h * c / top
        x = pad_l + i * bar_w
        parts.append(f'<rect x="{x:.1f}" y="{pad_t + plot_h - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                     f'fill="#4a78b5"><title>{c} samples in [1e{edges[i]:.2f}, 1e{edges[i + 1]:.2f})</title></rect>')
    parts.append(f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" stroke="#333"/>')
    for k in range(int(lo), int(hi) + 1):
        x = pad_l + plot_w * (k - lo) / (hi - lo)
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" font-size="11" text-anchor="middle">1e{k}</text>')
    parts.append(f'<text x="4" y="{pad_t + 10}" font-size="11">{top}</text>')
    parts.append("</svg>")
    return "".join(parts)


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
        + section("histogram", "lambda_max per sample", _histogram_svg([x.lambda_max for x in result.samples]))
        + section("samples", "Samples", "<div class=scroll><table><tr><th>index</th><th>label</th><th>predicted</th>"
                  "<th>lambda_max</th><th>95% interval</th><th>trace</th><th>lower bound or estimate</th><th>queries</th>"
                  f"</tr>{sample_rows}</table></div>")
    )
    return page("scan", m["path"], body, f"fimaudit {e(str(result.runtime.get('fimaudit')))}, schema {e(result.schema_version)}; "
                + e(versions_text(result.runtime)))
