"""Terminal and Markdown rendering of a ``fimaudit compare`` report.

The terminal tables fit 80 columns whatever the console width (so ``fimaudit compare`` and
``fimaudit report compare.json`` print the same text): the models' metrics are split over two
tables with short headers, explained by a legend naming each JSON key; model names that do not
fit wrap instead of being cut.
"""

from __future__ import annotations

import textwrap

from rich import box
from rich.table import Table
from rich.text import Text

from .terminal import _fmt

COLUMNS = ("clean_accuracy", "lambda_median", "lambda_p90", "trace_median", "fim_upper", "ra_pgd_linf",
           "ra_square_linf", "ra_pgd_l2", "rr_pgd_linf", "clever_l2_median")
# The terminal's two tables: (title, [(JSON key, short header)]).
GROUPS = (
    ("Models: accuracy and Fisher information", (
        ("clean_accuracy", "acc"), ("lambda_median", "lam med"), ("lambda_p90", "lam p90"),
        ("trace_median", "tr med"), ("fim_upper", "bound"))),
    ("Models: attacks and CLEVER", (
        ("ra_pgd_linf", "RA pgd-i"), ("ra_square_linf", "RA sq-i"), ("ra_pgd_l2", "RA pgd-2"),
        ("rr_pgd_linf", "RR pgd-i"), ("clever_l2_median", "CLEVER"))),
)
LEGEND = ("acc = clean_accuracy; lam med, lam p90 = lambda_max(F) median, 90th percentile; tr med = trace(F) median; "
          "bound = fim_upper (closed-form bound); RA/RR = robust accuracy/ratio (RR at tau) under PGD L-inf (pgd-i), "
          "Square L-inf (sq-i), PGD L2 (pgd-2); CLEVER = clever_l2_median")
WIDTH = 80  # the tables are laid out for this width


def _wrapped(text: str, style: str = "", indent: str = "") -> Text:
    """A line wrapped at 80 columns here, so every console at least that wide prints the same text."""
    return Text(textwrap.fill(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False), style=style)


def _first_width(heads: list[str], rows: list[list[str]]) -> int:
    """The most the first (name) column may take so that the table fits ``WIDTH`` columns at any console width:
    the other columns are as wide as their widest cell; columns are 3 apart (box.SIMPLE_HEAD, no edge)."""
    others = sum(max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads))
    return max(8, WIDTH - others - 3 * len(heads))


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)


def partial_lines(rep: dict) -> list[str]:
    """What a report cut short by ``--timeout`` says first: which models are missing and why."""
    if not rep.get("partial"):
        return []
    unfinished = rep.get("unfinished") or []
    total = len(rep["rows"]) + len(unfinished)
    reason = (rep.get("stopped") or {}).get("reason", "the run was stopped")
    lines = [f"PARTIAL REPORT: {reason}; {len(rep['rows'])} of {total} models finished, the tables cover those only."]
    lines += [f"  not finished: {u['model']}: {u['reason']}" for u in unfinished]
    return lines


def correlation_gap(rep: dict, target: str | None = None) -> tuple[str | None, list[str]]:
    """(why the rank-correlation table is empty, or None; the metrics left out for too few finite values)."""
    target = target or rep["target"]
    corr = rep.get("correlations_by_target", {}).get(target, rep["correlations"])
    left_out = [m for m, v in corr.items() if v is None]
    if corr and len(left_out) < len(corr):
        return None, left_out
    n = len(rep["rows"])
    return (f"no rank correlations: they need at least 3 models with finite values of a metric and of {target}; "
            f"{n} model{'s' if n != 1 else ''} given"), left_out


def _ci(v: dict, key: str, sep: str = ",") -> str:
    """``+0.44 [-0.08,+0.79]`` (terminal: no space, so the longest metric name still fits 80 columns)."""
    val, ci = v[key]["value"], v[key]["ci"]
    return "-" if val is None else (f"{val:+.2f} [{ci[0]:+.2f}{sep}{ci[1]:+.2f}]" if ci else f"{val:+.2f}")


def compare_tables(rep: dict) -> list:
    """The models tables (two, with a legend), the rank-correlation table (or why it is empty), validity."""
    out: list = [_wrapped(line, "bold yellow", "    ") for line in partial_lines(rep)]
    for title, cols in GROUPS:
        cells = [[_fmt(r.get(key)) for key, _ in cols] for r in rep["rows"]]
        t = _table(title)
        t.add_column("model", overflow="fold", max_width=_first_width([h for _, h in cols], cells))
        for _, head in cols:
            t.add_column(head, justify="right", no_wrap=True)
        for r, row in zip(rep["rows"], cells):
            t.add_row(Text(str(r["model"])), *row)
        out.append(t)
    tau = (rep.get("config") or {}).get("tau")
    out.append(_wrapped(LEGEND.replace("RR at tau", f"RR at tau = {tau:g}" if tau is not None else "RR at tau"),
                        "dim"))
    why, left_out = correlation_gap(rep)
    if why is not None:
        out.append(_wrapped(why))
    else:
        rows = [(m, [str(v["n"]), _ci(v, "spearman"), _ci(v, "kendall")])
                for m, v in rep["correlations"].items() if v is not None]
        heads = ["n", "Spearman", "Kendall"]
        c = _table(f"Rank correlation with {rep['target']} over models (95% bootstrap CI)")
        c.add_column("metric", overflow="fold", max_width=_first_width(heads, [r for _, r in rows]))
        for head in heads:
            c.add_column(head, justify="right" if head == "n" else "left", no_wrap=True)
        for m, cells in rows:
            c.add_row(m, *cells)
        out.append(c)
        if left_out:
            out.append(_wrapped(f"left out (fewer than 3 models with finite values): {', '.join(left_out)}", "dim"))
    if rep.get("validity"):
        out.append(validity_table(rep["validity"]))
    return out


def validity_table(validities: list[dict]) -> Table:
    """Per model: Spearman rho of the FIM-predicted radius with the minimal adversarial L2 distance."""
    heads = ["n", "Spearman", "dist/r", "lambda", "distances"]
    rows = []
    for v in validities:
        sp = v["spearman"]
        cell = "-" if sp["value"] is None else (f"{sp['value']:+.2f} [{sp['ci'][0]:+.2f},{sp['ci'][1]:+.2f}]"
                                                if sp["ci"] else f"{sp['value']:+.2f}")
        rows.append((str(v["model"]), [str(sp["n"]), cell, _fmt(v["median_distance_over_radius"]),
                                       f"{v['lambda_method']} ({v['lambda_gradients']})", v["distance_gradients"]]))
    t = _table("Per-sample validity: rho(sqrt(2 KL*/lambda_max), minimal adversarial L2 distance), 95% bootstrap CI")
    t.add_column("model", overflow="fold", max_width=_first_width(heads, [r for _, r in rows]))
    for col in heads:
        t.add_column(col, no_wrap=True)
    for name, cells in rows:
        t.add_row(Text(name), *cells)
    return t


def compare_markdown(rep: dict, columns=COLUMNS, target: str | None = None) -> str:
    target = target or rep["target"]
    corr = rep.get("correlations_by_target", {}).get(target, rep["correlations"])
    lines = [f"> {line.strip()}" for line in partial_lines(rep)]
    if lines:
        lines.append("")
    lines += ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for r in rep["rows"]:
        lines.append(f"| {r['model']} | " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    why, left_out = correlation_gap(rep, target)
    if why is not None:
        return "\n".join(lines + ["", why]) + "\n"
    lines += ["", f"| metric vs {target} | n | Spearman [95% CI] | Kendall [95% CI] |", "|---|---:|---|---|"]
    for m, v in corr.items():
        if v is not None:
            lines.append(f"| {m} | {v['n']} | {_ci(v, 'spearman', ', ')} | {_ci(v, 'kendall', ', ')} |")
    if left_out:
        lines += ["", f"Left out (fewer than 3 models with finite values): {', '.join(left_out)}."]
    return "\n".join(lines) + "\n"
