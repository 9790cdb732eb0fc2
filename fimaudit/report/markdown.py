"""Markdown rendering of a scan report."""

from __future__ import annotations

from ..results import ScanResult
from .terminal import (_dither_text, _fmt, _gradients_text, cap, piecewise_fact, preprocess_line, smoothing_label,
                        smoothing_text, summary_rows)


def render_markdown(result: ScanResult) -> str:
    s = result.summary
    m = result.model
    cfg = result.config
    lines = [
        f"# fimaudit scan: {m['path']}",
        "",
        f"- sha256: `{m['sha256']}`",
        f"- input: `{m['input']['name']}` {m['input']['sample_shape']} ({m['input']['dtype']}), d = {m['input']['d']}",
        f"- output: `{m['output']['name']}`, {m['output']['kind']}, {m['output']['classes']} classes",
        f"- method: {result.run.method_used}, budget {cfg.get('budget')} queries per sample, seed {cfg.get('seed')}",
        f"- units: {result.units.get('description', '')}",
        f"- preprocess: {preprocess_line(cfg) or '-'}",
        f"- dither: {_dither_text(result.run.dither_used)}",
        *([f"- smoothing: {smoothing_text(s)}"] if s.smoothed else []),
        f"- gradients: {_gradients_text(result.run.gradients_used, result.run.cross_check_result)}",
        f"- accuracy: {'-' if s.accuracy is None else f'{100 * s.accuracy:.1f}%'}",
        f"- queries: {s.queries_total}; provider {result.runtime.get('provider')}; {s.seconds:.2f} s",
    ]
    if result.piecewise:
        lines.append(f"- piecewise-constant: {piecewise_fact(result.piecewise, s)}")
    lines += [
        "",
        *([f"## {cap(smoothing_label(s))}", ""] if s.smoothed else []),
        "| quantity | mean | median | p90 | max | n |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, st in summary_rows(s):
        lines.append(f"| {name} | {_fmt(st.mean)} | {_fmt(st.median)} | {_fmt(st.p90)} | {_fmt(st.max)} | {st.count} |")
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"
