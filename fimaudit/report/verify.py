"""Terminal and text rendering of a ``fimaudit verify`` result (pure: result -> text)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..results import VerifyResult
from .text import capture


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.4g}"


def _draw(result: VerifyResult, console: Console) -> None:
    r = result.to_dict()
    cfg, m = r["config"], r["method"]
    console.print(f"Verified robustness ({r['set']['norm']} ball ∩ input box [{r['set']['input_range'][0]:g}, "
                  f"{r['set']['input_range'][1]:g}], method {m['name']})", style="bold", soft_wrap=True)
    table = Table()
    for col in ("eps", "verified", "certified accuracy"):
        table.add_column(col, justify="right")
    n = len(r["samples"])
    for row in r["results"]:
        table.add_row(_fmt(row["eps"]), f"{row['verified']}/{n}", f"{100 * row['certified_accuracy']:.1f}%")
    ps = r.get("per_sample_radius")
    if ps:
        table.add_row(f"own ({ps['eps_from']})", f"{ps['verified']}/{n}", f"{100 * ps['certified_accuracy']:.1f}%")
    console.print(table)
    shown = r["samples"][:20]
    st = Table()
    for col in ("sample", "label", "clean", "min margin lower bound per eps", "certified radius"):
        st.add_column(col, justify="right")
    for s in shown:
        margins = " ".join(_fmt(b["margin_lower"]) + ("✓" if b["verified"] else "") for b in s["bounds"])
        st.add_row(str(s["index"]), str(s["label"]), "ok" if s["correct"] else "wrong", margins,
                   _fmt(s["certified_radius"]))
    console.print(st)
    if n > len(shown):
        console.print(f"(first {len(shown)} of {n} samples; every sample is in the JSON)")
    facts = [("model", f"{r['model']['path']}  (sha256 {r['model']['sha256'][:12]}…)"),
             ("method", m["description"]),
             ("accuracy", f"clean {100 * r['clean_accuracy']:.1f}% (a misclassified sample is never verified)"),
             ("units", r["set"]["units"]),
             ("soundness", r["soundness"])]
    cr = r.get("certified_radius")
    if cr and cr.get("median") is not None:
        facts.append(("radius", f"largest verified radius by bisection: median {_fmt(cr['median'])}, "
                                f"mean {_fmt(cr['mean'])}"))
    t = r["timing"]
    facts.append(("seconds", f"{t['seconds']:.2f} ({t['seconds_per_sample']:.2f} per sample)"))
    width = max(len(k) for k, _ in facts)
    for k, v in facts:
        console.print(f"{k.ljust(width)}  {v}", soft_wrap=True)
    for note in r.get("notes", []):
        console.print(f"note: {note}", soft_wrap=True)


def render_verify_text(result: VerifyResult) -> str:
    """What ``fimaudit verify`` prints (plain text)."""
    return capture(lambda console: _draw(result, console))


def render_verify_html(result: VerifyResult) -> str:
    """The shared page (fimaudit.report.page): context, certified accuracy per eps, per-sample margin bounds."""
    from .page import e, facts, page, section, table

    r = result.to_dict()
    cfg, m, st = r["config"], r["method"], r["set"]
    n = len(r["samples"])
    rows = [("command", "fimaudit verify"),
            ("model", f"{r['model']['path']} (sha256 {r['model']['sha256']})"),
            ("data", f"{cfg.get('data')}: {n} samples"),
            ("set", f"{st['norm']} ball ∩ input box [{st['input_range'][0]:g}, {st['input_range'][1]:g}]"),
            ("units", str(st["units"])),
            ("method", str(m["description"])),
            ("clean accuracy", f"{100 * r['clean_accuracy']:.1f}% (a misclassified sample is never verified)"),
            ("soundness", str(r["soundness"])),
            ("seed", str(cfg.get("seed", "")))]
    cr = r.get("certified_radius")
    if cr and cr.get("median") is not None:
        rows.append(("certified radius", f"largest verified radius by bisection: median {_fmt(cr['median'])}, "
                                         f"mean {_fmt(cr['mean'])}"))
    acc = [[_fmt(x["eps"]), f"{x['verified']}/{n}", f"{100 * x['certified_accuracy']:.1f}%"] for x in r["results"]]
    ps = r.get("per_sample_radius")
    if ps:
        acc.append([f"own ({ps['eps_from']})", f"{ps['verified']}/{n}", f"{100 * ps['certified_accuracy']:.1f}%"])
    per = [[str(s["index"]), str(s["label"]), "ok" if s["correct"] else "wrong",
            " ".join(_fmt(b["margin_lower"]) + (" ✓" if b["verified"] else "") for b in s["bounds"]),
            _fmt(s["certified_radius"])] for s in r["samples"]]
    notes = "".join(f'<p class="note">{e(x)}</p>' for x in r.get("notes", []))
    body = (section("context", "Context", facts(rows)) + notes
            + section("verified", f"Certified robust accuracy ({e(st['norm'])}, {e(str(st['units']))})",
                      table(["eps", "verified", "certified accuracy"], acc, left=0))
            + section("samples", "Per sample: lower bound of the smallest logit margin per eps (✓ verified)",
                      table(["sample", "label", "clean", "min margin lower bound per eps", "certified radius"], per,
                            left=0)))
    return page("verify", r["model"]["path"], body, f"fimaudit verify result, schema {e(str(r.get('schema_version', '')))}")
