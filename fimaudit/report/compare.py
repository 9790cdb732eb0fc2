"""Terminal and Markdown rendering of a ``fimaudit compare`` report."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .terminal import _fmt

COLUMNS = ("clean_accuracy", "lambda_median", "lambda_p90", "trace_median", "fim_upper", "ra_pgd_linf",
           "ra_square_linf", "ra_pgd_l2", "rr_pgd_linf", "clever_l2_median")


def render_compare(rep: dict, console: Console) -> None:
    for item in compare_tables(rep):
        console.print(item)


def compare_tables(rep: dict) -> list[Table]:
    """The models table and the rank-correlation table."""
    t = Table(title="Models", title_justify="left")
    t.add_column("model")
    for c in COLUMNS:
        t.add_column(c, justify="right")
    for r in rep["rows"]:
        t.add_row(r["model"], *[_fmt(r.get(c)) for c in COLUMNS])
    c = Table(title=f"Rank correlation with {rep['target']} (95% bootstrap CI)", title_justify="left")
    for col in ("metric", "n", "Spearman", "Kendall"):
        c.add_column(col)
    for m, v in rep["correlations"].items():
        if v is None:
            continue
        cells = []
        for k in ("spearman", "kendall"):
            val, ci = v[k]["value"], v[k]["ci"]
            cells.append("-" if val is None else f"{val:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{val:+.2f}")
        c.add_row(m, str(v["n"]), *cells)
    tables = [t, c]
    if rep.get("validity"):
        tables.append(validity_table(rep["validity"]))
    return tables


def validity_table(validities: list[dict]) -> Table:
    """Per model: Spearman rho of the FIM-predicted radius with the minimal adversarial L2 distance."""
    t = Table(title="Per-sample validity: rho(sqrt(2 KL*/lambda_max), minimal adversarial L2 distance), 95% bootstrap CI",
              title_justify="left")
    for col in ("model", "n", "Spearman", "median dist/r", "lambda", "distances"):
        t.add_column(col)
    for v in validities:
        sp = v["spearman"]
        cell = "-" if sp["value"] is None else (f"{sp['value']:+.2f} [{sp['ci'][0]:+.2f}, {sp['ci'][1]:+.2f}]"
                                                if sp["ci"] else f"{sp['value']:+.2f}")
        t.add_row(v["model"], str(sp["n"]), cell, _fmt(v["median_distance_over_radius"]),
                  f"{v['lambda_method']} ({v['lambda_gradients']})", v["distance_gradients"])
    return t


def compare_markdown(rep: dict, columns=COLUMNS, target: str | None = None) -> str:
    target = target or rep["target"]
    corr = rep.get("correlations_by_target", {}).get(target, rep["correlations"])
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for r in rep["rows"]:
        lines.append(f"| {r['model']} | " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    lines += ["", f"| metric vs {target} | n | Spearman [95% CI] | Kendall [95% CI] |", "|---|---:|---|---|"]
    for m, v in corr.items():
        if v is None:
            continue
        cells = []
        for k in ("spearman", "kendall"):
            val, ci = v[k]["value"], v[k]["ci"]
            cells.append("-" if val is None else (f"{val:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{val:+.2f}"))
        lines.append(f"| {m} | {v['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
