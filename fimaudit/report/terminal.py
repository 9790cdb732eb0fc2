"""Text rendering of a scan: a rich summary table plus the facts needed to read it (pure: result -> text)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..results import ScanResult, Stats
from .text import capture


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.3e}"
    return f"{x:.4g}"


def preprocess_line(cfg: dict) -> str | None:
    """How stored data became model input (preset or --scale/--mean/--std, layout and its evidence)."""
    pp = cfg.get("preprocess")
    if not pp:
        return None
    lay = pp.get("layout") or {}
    return f"{pp.get('how')}; layout {str(lay.get('name', '?')).upper()} ({lay.get('evidence', '')})"


def _dither_text(d: dict | None) -> str:
    """Where F was evaluated: x, or x + sigma xi and why."""
    if not d or not d.get("sigma"):
        return d["reason"] if d and d.get("reason") else "none: F at the samples themselves"
    how = "automatic: exact input ties" if d.get("source") == "auto" else "set by --dither"
    return f"sigma = {_fmt(d['sigma'])} ({how}); F at x + sigma*xi"


def smoothing_label(s) -> str | None:
    """The heading of a smoothed scan's numbers, "smoothed Fisher F_sigma (sigma = ...)"; None for pointwise F."""
    sm = getattr(s, "smoothed", None)
    if not sm:
        return None
    how = "set by --smoothing" if sm.get("source") == "user" else \
        "sigma chosen automatically" + (f", because {sm['because']}" if sm.get("because") else "")
    median = "" if sm.get("source") == "user" else "median "
    return f"smoothed Fisher F_sigma (sigma = {median}{_fmt(sm.get('sigma'))} {sm.get('units', '')} units, {how})"


def cap(text: str) -> str:
    """First letter upper case, the rest as written (symbols such as F_sigma keep their case)."""
    return text[:1].upper() + text[1:]


def smoothing_text(s) -> str:
    """The smoothing fact line: what was computed and how many draws."""
    sm = getattr(s, "smoothed", None)
    if not sm:
        return "none: the pointwise F"
    return (f"{smoothing_label(s)}: Fisher information of p_sigma(x), the mean of p(x + sigma*eps) over eps ~ N(0, I), "
            f"{sm.get('draws')} antithetic Gaussian pairs per sample (Stein's identity, U-statistic over distinct "
            "draws), 95% jackknife intervals"
            + (f"; rule: {sm['rule']}" if sm.get("source") == "auto" and sm.get("rule") else ""))


def _gradients_text(g: dict | None, cross: dict | None = None) -> str:
    """Which Jacobian source the scan used, the self-check's figures or why the graph was refused."""
    if g and g.get("source") == "smoothing":
        return str(g.get("reason"))
    if not g or g.get("source") != "graph":
        return "finite differences (black-box)" + (f": {g['reason']}" if g and g.get("reason") else "")
    c = g.get("check") or {}
    if c.get("rows") and not c.get("verified"):
        text = (f"gradient graph (self-check inconclusive: central differences, float32 and float64, could not judge "
                f"any of {c['rows']} directions; the graph is used unverified, its rules are tested one by one)")
    else:
        tol = c.get("tolerance")
        text = (f"gradient graph (self-check passed on {c.get('verified', c.get('rows'))} of {c.get('rows')} directions; "
                f"against float32 central differences: JVP error {_fmt(c.get('jvp_error'))}, VJP error "
                f"{_fmt(c.get('vjp_error'))}, tolerance {_fmt(tol)} (relative; finite-difference error "
                f"{_fmt(c.get('fd_discrepancy'))})")
        over = tol is not None and max(c.get("jvp_error") or 0, c.get("vjp_error") or 0) > tol
        if c.get("second_opinion"):
            text += f"; {c['second_opinion']}"
            if over:
                text += ", which settles the rows above the float32 tolerance"
        text += ")"
    if cross:
        text += (f"; black-box {cross['method']} against it: median relative error {_fmt(cross['median_relative_error'])}, "
                 f"max {_fmt(cross['max_relative_error'])}")
    return text


def summary_rows(s) -> list[tuple[str, Stats]]:
    """The summary's quantities with their display names; lower bounds only when measured."""
    f = "F_sigma" if getattr(s, "smoothed", None) else "F"
    rows: list[tuple[str, Stats]] = [(f"lambda_max({f})", s.lambda_max), (f"trace({f})", s.trace)]
    if s.lower_bound.count:
        rows.append(("certified lower bound", s.lower_bound))
    if s.lower_estimate.count:
        rows.append(("lower estimate (FD, not certified)", s.lower_estimate))
    loc = getattr(s, "local_upper", None) or {}
    if (loc.get("fisher_upper") or {}).get("count"):
        rows.append((f"certified local upper (eps {loc.get('eps'):g})", Stats.from_dict(loc["fisher_upper"])))
    sur = getattr(s, "surrogate", None) or {}
    if sur.get("available"):
        rows.append(("lambda_max, float surrogate", Stats.from_dict(sur["lambda_max"])))
        rows.append(("trace, float surrogate", Stats.from_dict(sur["trace"])))
    return rows


def piecewise_fact(piecewise: dict, s) -> str:
    """What a scan of a piecewise-constant model reports instead of the pointwise Fisher (one line)."""
    ops = ", ".join(f"{k} x{v}" for k, v in (piecewise.get("ops") or {}).items())
    text = f"{ops}; {piecewise.get('reported', '')}"
    sur = getattr(s, "surrogate", None) or {}
    if sur.get("available") and sur.get("agreement") is not None:
        text += f"; surrogate and model agree on the class of {100 * sur['agreement']:.0f}% of samples"
    return text


def summary_table(result: ScanResult) -> Table:
    s = result.summary
    label = smoothing_label(s)
    title = cap(label) if label else f"Input-space Fisher information ({result.units.get('space', 'input')} units)"
    table = Table(title=title, title_justify="left")
    table.add_column("quantity")
    for col in ("mean", "median", "p90", "max"):
        table.add_column(col, justify="right")
    for name, st in summary_rows(s):
        table.add_row(name, _fmt(st.mean), _fmt(st.median), _fmt(st.p90), _fmt(st.max))
    return table


def _draw(result: ScanResult, console: Console) -> None:
    s = result.summary
    cfg = result.config
    console.print(summary_table(result))
    m = result.model
    facts = [
        ("model", f"{m['path']}  (sha256 {m['sha256'][:12]}…)"),
        ("input", f"{m['input']['name']} {m['input']['sample_shape']} {m['input']['dtype']}, d = {m['input']['d']}"),
        ("output", f"{m['output']['name']}: {m['output']['kind']} ({m['output']['kind_source']}), {m['output']['classes']} classes"),
        ("samples", f"{len(result.samples)} from {result.run.data_source}"),
        ("method", f"{result.run.method_used} ({result.run.probes_per_sample} "
         + ("antithetic pairs" if s.smoothed else "probes") + " per sample"
         + (f", {cfg.get('probes')} probes" if result.run.method_used == "sketch" else "") + ")"),
        ("accuracy", "-" if s.accuracy is None else f"{100 * s.accuracy:.1f}%"),
        ("queries", f"{s.queries_total} total, budget {cfg.get('budget')} per sample, {s.calibration_queries} for the step check"),
        ("fd step", f"h = {result.finite_differences.get('h', float('nan')):.3g} "
         f"(h vs h/2 discrepancy {_fmt(result.finite_differences.get('h_vs_half_h_relative_discrepancy'))})"),
        ("dither", _dither_text(result.run.dither_used)),
        ("smoothing", smoothing_text(s)),
        ("gradients", _gradients_text(result.run.gradients_used, result.run.cross_check_result)),
        ("provider", str(result.runtime.get("provider"))),
        ("seconds", f"{s.seconds:.2f}" + ("" if s.runtime_fraction is None else f" ({100 * s.runtime_fraction:.0f}% inside onnxruntime)")),
        ("units", result.units.get("description", "")),
    ]
    # a smoothed scan makes no finite differences; a pointwise one has no smoothing line
    facts = [f for f in facts if f[0] != ("fd step" if s.smoothed else "smoothing")]
    if preprocess_line(cfg):
        facts.insert(4, ("preprocess", preprocess_line(cfg)))
    if result.piecewise:
        facts.insert(0, ("piecewise", piecewise_fact(result.piecewise, s)))
    b = result.bound
    if b is not None:
        if b.get("fim_upper") is not None:
            ratio = (b.get("measured_over_bound") or {}).get("median")
            facts.insert(3, ("bound", f"lambda_max <= {_fmt(b['fim_upper'])} from the weights (L = {_fmt(b['lipschitz'])}, "
                                      f"{b.get('family') or '?'} family); median measured/bound = {_fmt(ratio)}"
                                      + ("; VACUOUS (> 1e6 x measured)" if b.get("vacuous") else "")))
        else:
            facts.insert(3, ("bound", f"none from the weights: {b.get('reason')}"))
    loc = s.local_upper
    if loc is not None:
        facts.insert(4, ("local bound", local_bound_fact(loc)))
    print_facts(console, facts, result.notes)


def local_bound_fact(loc: dict) -> str:
    """One line: the local sandwich's tightness, or why there is none."""
    if not loc.get("certified"):
        return f"none over the L-inf ball of radius {loc.get('eps'):g}: {loc.get('reason')}"
    ratio = (loc.get("over_measured") or {}).get("median")
    lip = (loc.get("lipschitz") or {}).get("median")
    return (f"lambda_max(F) <= local upper over the L-inf ball of radius {loc.get('eps'):g} (certified); median "
            f"upper/measured = {_fmt(ratio)}, median Lipschitz bound {_fmt(lip)}, {loc.get('violations', 0)} violations, "
            f"{_fmt(loc.get('seconds_per_sample'))} s per sample")


def print_facts(console: Console, facts: list[tuple[str, str]], notes: tuple[str, ...] | list[str]) -> None:
    """The key/value lines under a result's table, then its notes (the NOT REPRESENTATIVE one in bold)."""
    facts_table = Table(show_header=False, box=None, pad_edge=False)
    facts_table.add_column(style="bold")
    facts_table.add_column()
    for k, v in facts:
        facts_table.add_row(k, v)
    console.print(facts_table)
    for note in notes:
        style = "bold yellow" if note.startswith("NOT REPRESENTATIVE") else "yellow"
        console.print(f"note: {note}", style=style, soft_wrap=True)


def render_text(result: ScanResult) -> str:
    """What ``fimaudit scan`` prints: the summary table, the facts to read it, the notes (plain text)."""
    return capture(lambda console: _draw(result, console))
