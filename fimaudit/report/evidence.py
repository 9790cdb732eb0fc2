"""Renderers of attack, metrics, clever and compare results: rich tables, text, Markdown, HTML, JSON.

Every renderer is a pure function of the result; the terminal ones return rich renderables the CLI prints.
"""

from __future__ import annotations

import html
import io
import json

from rich.console import Console
from rich.table import Table

from ..evidence_result import EvidenceResult
from .compare import COLUMNS as COMPARE_COLUMNS
from .compare import compare_markdown, compare_tables, partial_lines
from .terminal import _fmt


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def attack_rows(result) -> list[tuple[str, dict]]:
    """(eps label, result row) for each listed eps, then the per-sample radius run (``--eps-from``) if any."""
    rows = [(f"{r['eps']:g}", r) for r in result["results"]]
    ps = result.get("per_sample_radius")
    if ps:
        rows.append((f"own ({ps['eps_from']}: {ps['eps_min']:.3g}-{ps['eps_max']:.3g})", ps))
    return rows


def tables(result: EvidenceResult) -> list:
    """The rich renderables of a result (tables and lines), in order, then its notes."""
    out = _tables(result)
    return out + [f"note: {n}" for n in (result.get("notes") or [])]


def _tables(result: EvidenceResult) -> list:
    if result.kind == "attack":
        cfg = result["config"]
        taus = [f"{t:g}" for t in cfg["taus"]]
        t = Table(title=f"{cfg['attack']} ({cfg['norm']}) on {cfg['model']}: clean accuracy {_pct(result['clean_accuracy'])}",
                  title_justify="left")
        for col in ("eps", "robust acc.", *[f"RR tau={k}" for k in taus], "queries"):
            t.add_column(col, justify="right")
        for label, r in attack_rows(result):
            t.add_row(label, _pct(r["robust_accuracy"]), *[_pct(r["robust_ratio"][k]) for k in taus],
                      str(r["queries_total"]))
        return [t]
    if result.kind == "metrics":
        t = Table(title=f"Metrics of {result['model']['path']}", title_justify="left")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in result["metrics"].items():
            t.add_row(k, _fmt(v))
        out = [t]
        if result["corruptions"]:
            sev = sorted({int(s) for row in result["corruptions"].values() for s in row})
            c = Table(title="Accuracy under corruptions (by severity)", title_justify="left")
            c.add_column("corruption")
            for s in sev:
                c.add_column(str(s), justify="right")
            for name, row in result["corruptions"].items():
                c.add_row(name, *[f"{100 * row[str(s)]:.1f}" for s in sev])
            out.append(c)
        return out
    if result.kind == "clever":
        cfg, sm = result["config"], result["summary"]
        t = Table(title=f"CLEVER ({cfg['norm']}, R = {cfg['radius']:g}) over {cfg['seeds']} seeds", title_justify="left")
        for col in ("sample", "label", "mean score", "spread (std)", "queries"):
            t.add_column(col, justify="right")
        for s in result["samples"]:
            t.add_row(str(s["index"]), str(s["label"]), f"{s['mean']:.4g}", f"{s['spread']:.2g}", str(s["queries"]))
        spread = "-" if sm["median_relative_spread"] is None else f"{sm['median_relative_spread']:.2%}"
        return [t, f"median score {sm['median_score']:.4g}; median relative spread over seeds {spread}; "
                   f"Weibull fit accepted in {sm['fit_ok_share']:.0%} of runs"]
    if result.kind == "compare":
        return compare_tables(result.to_dict())
    raise ValueError(f"no tables for kind {result.kind}")


def render_text(result: EvidenceResult) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=120, color_system=None, force_terminal=False)
    for item in tables(result):
        console.print(item)
    return buf.getvalue()


def render_json(result: EvidenceResult) -> str:
    return json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"


def _rows(result: EvidenceResult) -> tuple[list[str], list[list[str]]]:
    """One header and rows: the main table of a result, for Markdown and HTML."""
    if result.kind == "attack":
        taus = [f"{t:g}" for t in result["config"]["taus"]]
        head = ["eps", "robust accuracy", *[f"RR tau={k}" for k in taus], "queries"]
        return head, [[label, _pct(r["robust_accuracy"]), *[_pct(r["robust_ratio"][k]) for k in taus],
                       str(r["queries_total"])] for label, r in attack_rows(result)]
    if result.kind == "metrics":
        return ["metric", "value"], [[k, _fmt(v)] for k, v in result["metrics"].items()]
    if result.kind == "clever":
        return (["sample", "label", "mean score", "spread", "queries"],
                [[str(s["index"]), str(s["label"]), f"{s['mean']:.4g}", f"{s['spread']:.2g}", str(s["queries"])]
                 for s in result["samples"]])
    return ["model", *COMPARE_COLUMNS], [[r["model"], *[_fmt(r.get(c)) for c in COMPARE_COLUMNS]] for r in result["rows"]]


def render_markdown(result: EvidenceResult) -> str:
    if result.kind == "compare":
        return f"# fimaudit compare\n\n{compare_markdown(result.to_dict())}"
    head, rows = _rows(result)
    lines = [f"# fimaudit {result.kind}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_html(result: EvidenceResult) -> str:
    e = html.escape
    head, rows = _rows(result)
    table = ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    if result.kind == "compare":  # a run cut short by --timeout says so first
        table = "".join(f"<p><strong>{e(line.strip())}</strong></p>" for line in partial_lines(result.to_dict())) + table
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>fimaudit {e(result.kind)}</title><style>table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;"
            f"padding:.2em .5em}}</style></head><body><h1>fimaudit {e(result.kind)}</h1>{table}</body></html>\n")


RENDERERS = {"text": render_text, "json": render_json, "markdown": render_markdown, "html": render_html}
