"""Renderers of an ``AuditResult``: the HTML dossier, Markdown, JUnit XML, JSON and terminal text.

All are pure functions of the result (the timestamp is in the result, passed in by the caller).
"""

from __future__ import annotations

import html
import json
from xml.etree import ElementTree as ET

from ..audit import AuditResult
from . import plots
from .terminal import _fmt

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;color:#222;max-width:72em;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.pass{color:#1e7d32;font-weight:bold}
.fail{color:#b71c1c;font-weight:bold}.verdict{font-size:1.4em;padding:.4em .8em;border-radius:4px;display:inline-block}
.verdict.pass{background:#e8f5e9}.verdict.fail{background:#ffebee}.verdict.none{background:#f4f4f4}
.unavailable{background:#fff6d6;padding:.5em;border-left:4px solid #e0b000}figure{margin:1em 0}
figure svg{max-width:100%;height:auto}img.thumb{width:84px;height:84px;image-rendering:pixelated;border:1px solid #ccc}
code{background:#f4f4f4;padding:0 .2em}
"""


def _value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return "-" if v is None else _fmt(v)


def _plots(result: AuditResult) -> list[tuple[str, str, str | None, str | None]]:
    """(id, title, svg or None, reason when None) for every plot of the dossier, in order."""
    out = []
    scan = result.section("scan")
    bounds = result.section("bounds")
    lam = [s["lambda_max"] for s in scan.data.get("samples", []) if s.get("lambda_max") is not None] \
        if scan and scan.status == "ok" else []
    bound = bounds.data.get("fim_upper") if bounds and bounds.status == "ok" else None
    why_scan = None if lam else (scan.reason if scan else "no scan section")
    if not lam and _piecewise_note(result):
        why_scan = _piecewise_note(result)
    # A smoothed scan (--smoothing, or automatic on a piecewise-constant model) measured F_sigma, not F: say so.
    smoothed = ((scan.data.get("summary") or {}).get("smoothed") if scan and scan.status == "ok" else None) or None
    qty = "lambda_max(F_sigma)" if smoothed else "lambda_max(F)"
    sigma = smoothed.get("sigma") if smoothed else None
    label = f"{qty} per sample" + (f" (smoothed Fisher, sigma {sigma:.3g})" if isinstance(sigma, (int, float)) else "")
    out.append(("plot-lambda", label, plots.lambda_histogram(lam, bound, qty) if lam else None, why_scan))
    val = result.section("validity")
    if val and val.status == "ok":
        out.append(("plot-validity", "FIM-predicted radius against the smallest successful attack",
                    plots.radius_scatter(val.data["samples"], val.data["max_eps"],
                                        val.data.get("distance", "smallest successful eps")), "no samples"))
    else:
        out.append(("plot-validity", "FIM-predicted radius against the smallest successful attack", None,
                    val.reason if val else "no validity section"))
    att = result.section("attacks")
    if att and att.status == "ok":
        tau = att.data["taus"][0] if att.data.get("taus") else None
        out.append(("plot-robustness", "Robust accuracy and robust ratio against eps",
                    plots.robustness_curves(att.data["runs"], tau), "no attack results"))
    else:
        out.append(("plot-robustness", "Robust accuracy and robust ratio against eps", None,
                    att.reason if att else "no attacks section"))
    met = result.section("metrics")
    if met and met.status == "ok" and met.data.get("corruptions"):
        out.append(("plot-corruptions", "Accuracy against corruption severity",
                    plots.corruption_curves(met.data["corruptions"]), None))
    else:
        reason = (met.reason if met and met.status != "ok" else "corruptions were not computed") if met else "no metrics section"
        out.append(("plot-corruptions", "Accuracy against corruption severity", None, reason))
    if lam:
        why = None if bound is not None else f"no finite closed-form bound ({bounds.data.get('reason') if bounds else ''})"
        out.append(("plot-bound", f"Measured {qty} against the closed-form bound",
                    plots.bound_vs_measured(lam, bound, bounds.data.get("blocks", []) if bounds else [], qty), why))
    else:
        out.append(("plot-bound", f"Measured {qty} against the closed-form bound", None, why_scan))
    return out


def _piecewise_note(result: AuditResult) -> str | None:
    """The model's piecewise-constant line (fimaudit.piecewise), when it is one."""
    pw = (result.model or {}).get("piecewise")
    return pw.get("note") if pw else None


def _worst_case_html(result: AuditResult) -> str:
    """The per-sample worst case over the attacks, per eps, and the attacks skipped with their reasons."""
    att = result.section("attacks")
    if not att or att.status != "ok" or not att.data.get("worst_case"):
        return ""
    e = html.escape
    wc = att.data["worst_case"]
    rows = "".join(f"<tr><td>{e(eps)}</td><td>{_value(ra)}</td><td class=l>{e(', '.join(wc['attacks'][eps]))}</td></tr>"
                   for eps, ra in wc["robust_accuracy"].items())
    skipped = "".join(f"<p>{e(s['attack'])} skipped: {e(s['reason'] or '')}</p>" for s in att.data.get("skipped") or [])
    return ("<section id=worst-case><h2>Robust accuracy, worst case per sample over the attacks</h2><table><tr>"
            f"<th>eps ({e(att.data['norm'])})</th><th>robust accuracy</th><th class=l>attacks</th></tr>{rows}</table>"
            + skipped + "</section>")


def _local_sandwich(result: AuditResult) -> tuple[dict, list[tuple]] | None:
    """The scan's local Fisher sandwich (scan --local-bound): its summary and per-sample
    (index, certified lower, measured lambda_max, local upper, upper / measured)."""
    scan = result.section("scan")
    if not scan or scan.status != "ok" or not scan.data["summary"].get("local_upper"):
        return None
    rows = [(s["index"], s.get("lower_bound"), s.get("lambda_max"), (s.get("local_upper") or {}).get("fisher_upper"),
             (s.get("local_upper") or {}).get("over_measured")) for s in scan.data["samples"]]
    return scan.data["summary"]["local_upper"], rows


def _local_sandwich_line(loc: dict) -> str:
    if not loc.get("certified"):
        return f"No local upper bound (L-inf radius {loc['eps']:g}): {loc.get('reason')}"
    return (f"Certified over the L-inf ball of radius {loc['eps']:g} (model-input units) around each sample: "
            f"lower bound <= lambda_max <= local upper. Median local upper / measured = "
            f"{_value((loc.get('over_measured') or {}).get('median'))}; {loc.get('violations', 0)} violations; "
            f"{loc['certified']} samples certified.")


def _local_sandwich_html(result: AuditResult) -> str:
    got = _local_sandwich(result)
    if got is None:
        return ""
    loc, rows = got
    body = "".join(f"<tr><td>{i}</td><td>{_fmt(lo)}</td><td>{_fmt(lam)}</td><td>{_fmt(up)}</td><td>{_fmt(r)}</td></tr>"
                   for i, lo, lam, up, r in rows)
    return ("<section id=local-sandwich><h2>Local Fisher sandwich</h2>"
            f"<p>{html.escape(_local_sandwich_line(loc))}</p>"
            "<table><tr><th>index</th><th>certified lower</th><th>lambda_max (measured)</th><th>local upper</th>"
            f"<th>upper / measured</th></tr>{body}</table></section>")


def render_audit_html(result: AuditResult) -> str:
    e = html.escape
    v = result.verdict
    cls = {"pass": "pass", "fail": "fail"}.get(v, "none")
    checks = "".join(
        f"<tr><td class=l><code>{e(c.text)}</code></td><td>{_value(c.value)}</td>"
        f"<td class={'pass' if c.passed else 'fail'}>{'PASS' if c.passed else 'FAIL'}</td>"
        f"<td class=l>{e(c.reason or '')}</td></tr>"
        for c in result.checks
    )
    check_table = (f"<table><tr><th class=l>check</th><th>value</th><th>result</th><th class=l>note</th></tr>{checks}</table>"
                   if result.checks else "<p>No policy was given: the dossier reports evidence without a verdict.</p>")
    sec_rows = "".join(
        f"<tr><td class=l>{e(s.name)}</td><td class=l>{e(s.status)}</td><td class=l>{e(s.reason or '')}</td></tr>"
        for s in result.sections  # no wall times here: the page is byte-identical run to run (they are in audit.json)
    )
    figures = []
    for pid, title, svg, reason in _plots(result):
        body = svg if svg else f'<p class="unavailable">Not available: {e(reason or "no data")}</p>'
        figures.append(f'<section id="{pid}"><h2>{e(title)}</h2><figure class="plot" data-plot="{pid}">{body}</figure></section>'
                       if svg else f'<section id="{pid}"><h2>{e(title)}</h2>{body}</section>')
    worst = result.section("worst")
    worst_html = ""
    if worst and worst.status == "ok":
        rows = []
        for r in worst.data["samples"]:
            imgs = "".join(f'<img class="thumb" alt="{alt} of sample {r["index"]}" src="{r[k]}">'
                           for k, alt in (("input_png", "input"), ("direction_png", "worst direction")) if r.get(k))
            rows.append(f"<tr><td>{r['index']}</td><td>{_value(r['label'])}</td><td>{r['predicted']}</td>"
                        f"<td>{_fmt(r['lambda_max'])}</td><td class=l>{imgs or '-'}</td></tr>")
        note = f"<p>{e(worst.data['thumbnails_note'])}</p>" if worst.data.get("thumbnails_note") else ""
        worst_html = ("<section id=worst><h2>Worst samples</h2>" + note + "<table><tr><th>index</th><th>label</th>"
                      "<th>predicted</th><th>lambda_max</th><th class=l>input, worst direction</th></tr>"
                      + "".join(rows) + "</table></section>")
    m = result.model
    created = f", {e(result.created)}" if result.created else ""
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>fimaudit audit: {e(m['path'])}</title><style>{_CSS}</style></head><body>"
        f"<h1>fimaudit audit</h1><p><code>{e(m['path'])}</code> (sha256 {e(str(m.get('sha256', '')))[:16]}…)</p>"
        f'<p id="verdict" class="verdict {cls}">Verdict: {e(v.upper())}</p>'
        + (f'<p id="piecewise" class="unavailable">{e(_piecewise_note(result))}</p>' if _piecewise_note(result) else "")
        + "".join(f'<p class="unavailable">{e(n)}</p>' for n in (m.get("defaults") or []))
        + _worst_case_html(result)
        +
        f"<section id=checks><h2>Policy checks</h2>{check_table}</section>"
        + "".join(figures) + _local_sandwich_html(result) + worst_html
        + "<section id=sections><h2>Sections</h2><table><tr><th class=l>section</th><th class=l>status</th>"
        f"<th class=l>reason</th></tr>{sec_rows}</table></section>"
        f"<p>fimaudit {e(result.fimaudit)}, audit schema {e(result.schema_version)}{created}</p></body></html>\n"
    )


def render_audit_markdown(result: AuditResult) -> str:
    lines = [f"# fimaudit audit: `{result.model['path']}`", "", f"**Verdict: {result.verdict.upper()}**", ""]
    if _piecewise_note(result):
        lines += [f"**Note:** {_piecewise_note(result)}", ""]
    if result.checks:
        lines += ["| check | value | result | note |", "|---|---:|---|---|"]
        lines += [f"| `{c.text}` | {_value(c.value)} | {'PASS' if c.passed else 'FAIL'} | {c.reason or ''} |"
                  for c in result.checks]
        lines.append("")
    scan = result.section("scan")
    if scan and scan.status == "ok":
        s = scan.data["summary"]
        lines += ["## Fisher information", "", "| quantity | mean | median | p90 | max |", "|---|---:|---:|---:|---:|"]
        rows = [(k, s[k]) for k in ("lambda_max", "trace")]
        if (s.get("surrogate") or {}).get("available"):
            rows.append(("lambda_max, float surrogate", s["surrogate"]["lambda_max"]))
        if (s.get("local_upper") or {}).get("certified"):
            rows.append((f"certified local upper (eps {s['local_upper']['eps']:g})", s["local_upper"]["fisher_upper"]))
        for k, st in rows:
            lines.append(f"| {k} | {_value(st['mean'])} | {_value(st['median'])} | {_value(st['p90'])} | {_value(st['max'])} |")
        lines.append("")
        if s.get("local_upper"):
            lines += [_local_sandwich_line(s["local_upper"]), ""]
    att = result.section("attacks")
    if att and att.status == "ok":
        lines += ["## Attacks", "", "| attack | eps | robust accuracy |", "|---|---:|---:|"]
        for run in att.data["runs"]:
            for r in run["results"]:
                lines.append(f"| {run['config']['attack']} ({run['config']['norm']}) | {r['eps']:g} | {_value(r['robust_accuracy'])} |")
        for eps, ra in ((att.data.get("worst_case") or {}).get("robust_accuracy") or {}).items():
            lines.append(f"| worst case per sample over the attacks | {eps} | {_value(ra)} |")
        for skip in att.data.get("skipped") or []:
            lines.append(f"| {skip['attack']}: skipped ({skip['reason']}) | | |")
        lines += [""] + [f"- {n}" for n in att.data.get("notes") or []] + ([""] if att.data.get("notes") else [])
    lines += ["## Sections", "", "| section | status | reason |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.reason or ''} |" for s in result.sections]
    lines += ["", f"fimaudit {result.fimaudit}, audit schema {result.schema_version}" + (f", {result.created}" if result.created else "")]
    return "\n".join(lines) + "\n"


def render_audit_junit(result: AuditResult) -> str:
    """One testsuite; each policy check a testcase (failure with the value and reason when it fails)."""
    failures = sum(not c.passed for c in result.checks)
    suite = ET.Element("testsuite", name=f"fimaudit audit {result.model['path']}", tests=str(len(result.checks)),
                       failures=str(failures), errors="0", skipped="0")
    if result.created:
        suite.set("timestamp", result.created)
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", classname="fimaudit.policy", name=c.text)
        if not c.passed:
            msg = f"value {_value(c.value)}" + (f": {c.reason}" if c.reason else "")
            ET.SubElement(case, "failure", message=msg, type="PolicyCheckFailed").text = msg
    suites = ET.Element("testsuites", name="fimaudit", tests=str(len(result.checks)), failures=str(failures))
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def render_audit_json(result: AuditResult) -> str:
    return json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"


def render_audit_text(result: AuditResult) -> str:
    lines = [f"fimaudit audit of {result.model['path']}: verdict {result.verdict.upper()}"]
    if _piecewise_note(result):
        lines.append(f"  note: {_piecewise_note(result)}")
    for note in (result.model or {}).get("defaults") or []:
        lines.append(f"  note: {note}")
    for c in result.checks:
        lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.text}  (value {_value(c.value)}{'; ' + c.reason if c.reason else ''})")
    for s in result.sections:
        lines.append(f"  section {s.name}: {s.status}" + (f" ({s.reason})" if s.reason else ""))
    return "\n".join(lines) + "\n"
