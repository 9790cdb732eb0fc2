"""Renderers of attack, metrics, clever and compare results: text (rich tables), Markdown, HTML.

Every renderer is a pure function of the result returning text; ``render_text`` is what the command prints.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..results import EvidenceResult
from .compare import COLUMNS as COMPARE_COLUMNS
from .compare import compare_markdown, compare_tables, partial_lines
from .terminal import _fmt
from .text import capture


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


def _attack_lines(result: EvidenceResult, console: Console) -> None:
    """Under an attack's table: the black-box Square run beside a white-box one and its warnings (gradient
    masking), then the smallest adversarial distances found (``--min-distance``)."""
    for label, r in attack_rows(result):
        sanity = r.get("sanity") or {}
        if sanity:
            console.print(f"eps {label}: black-box Square robust accuracy "
                          f"{100 * sanity['square_robust_accuracy']:.1f}% beside it")
        for w in sanity.get("warnings", []):
            console.print(f"warning (eps {label}): {w}", style="yellow", soft_wrap=True)
    for norm_name, m in (result.get("minimal_distance") or {}).items():
        console.print(f"smallest adversarial {norm_name} distance found: median {m['median']:.4g}"
                      if m["median"] is not None else f"no adversarial {norm_name} point found")


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


def _draw(result: EvidenceResult, console: Console) -> None:
    for item in tables(result):
        console.print(item)
    if result.kind == "attack":
        _attack_lines(result, console)


def render_text(result: EvidenceResult) -> str:
    """What ``fimaudit attack``, ``metrics``, ``clever`` and ``compare`` print (plain text)."""
    return capture(lambda console: _draw(result, console))


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


def _pp_text(cfg: dict) -> str:
    from .page import preprocessing_text

    pp = cfg.get("preprocess") if isinstance(cfg.get("preprocess"), dict) else None
    if pp:
        return preprocessing_text(pp) + (f"; layout {str((pp.get('layout') or {}).get('name', '?')).upper()}"
                                         if pp.get("layout") else "")
    return preprocessing_text({"scale": cfg.get("scale"), "mean": cfg.get("mean"), "std": cfg.get("std")})


def context_rows(result: EvidenceResult) -> list[tuple[str, str]]:
    """The facts a reader needs next to the table: model, data, preprocessing, norm and units, accuracy."""
    from .page import pct
    from .plots import NORMS

    cfg = dict(result.get("config") or {})
    m = result.get("model") if isinstance(result.get("model"), dict) else {}
    rows = [("command", f"fimaudit {result.kind}")]
    if m:
        rows.append(("model", f"{m.get('path')} (sha256 {m.get('sha256')})"))
    if result.kind in ("attack", "metrics", "clever"):
        rows += [("data", f"{cfg.get('data')}" + (f": the first {cfg['samples']} samples" if cfg.get("samples") else "")),
                 ("preprocessing", _pp_text(cfg)),
                 ("input range", "[{:g}, {:g}], attack units".format(*cfg["input_range"]) if cfg.get("input_range") else "")]
    if result.kind == "attack":
        norm = NORMS.get(cfg.get("norm"), cfg.get("norm"))
        rows += [("attack", f"{cfg.get('attack')}" + (f", {cfg.get('steps')} steps" if cfg.get("steps") else "")
                  + (f", surrogate {cfg['surrogate']}" if cfg.get("surrogate") else "")),
                 ("norm", str(norm)),
                 ("eps", ", ".join(f"{x:g}" for x in cfg.get("eps") or []) + " (attack units: data × --scale, before --mean/--std)"),
                 ("clean accuracy", f"{pct(result.get('clean_accuracy'))} on these samples"),
                 ("budget", f"{cfg.get('budget')} queries per sample and eps"),
                 ("gradients", str((result.get("gradients") or {}).get("source") or cfg.get("gradients") or ""))]
    elif result.kind == "clever":
        rows += [("norm, radius R", f"{NORMS.get(cfg.get('norm'), cfg.get('norm'))}, {cfg.get('radius')} "
                                    "(attack units: data × --scale)"),
                 ("points, seeds", f"{cfg.get('points')} per batch, {cfg.get('seeds')} seeds"),
                 ("gradients", str((result.get("gradients") or {}).get("source") or cfg.get("gradients") or ""))]
    elif result.kind == "metrics":
        acc = (result.get("metrics") or {}).get("accuracy")
        rows.append(("clean accuracy", pct(acc) if acc is not None else ""))
    elif result.kind == "compare":
        rows += [("models", ", ".join(r["model"] for r in result["rows"])),
                 ("target", str(result["target"])),
                 ("settings", ", ".join(f"{k} {v}" for k, v in cfg.items() if not isinstance(v, (dict, list)))
                  + " (eps in attack units: data × --scale)")]
    rows += [("seed", str(cfg.get("seed", ""))),
             ("provider", str((result.get("runtime") or {}).get("provider") or ""))]
    return rows


def render_html(result: EvidenceResult) -> str:
    """The shared page (fimaudit.report.page): context facts, then the result's tables and notes."""
    from .page import e, facts, page, section, table

    if result.kind == "compare":
        rep = result.to_dict()  # a run cut short by --timeout says so first
        body = "".join(f"<p><strong>{e(line.strip())}</strong></p>" for line in partial_lines(rep)) + _compare_html(rep)
    else:
        head, rows = _rows(result)
        if result.kind == "attack":
            from .plots import NORMS

            head = [f"eps ({NORMS.get(result['config']['norm'], result['config']['norm'])}, attack units)", *head[1:]]
        body = section("results", {"attack": "Robust accuracy and robust ratio by eps", "metrics": "Metrics",
                                   "clever": "CLEVER score per sample"}[result.kind], table(head, rows))
        if result.kind == "metrics" and result["corruptions"]:
            sev = sorted({int(s) for row in result["corruptions"].values() for s in row})
            body += section("corruptions", "Accuracy under corruptions (by severity)",
                            table(["corruption", *map(str, sev)],
                                  [[n, *(f"{100 * row[str(s)]:.1f}%" for s in sev)] for n, row in result["corruptions"].items()]))
        if result.kind == "clever":
            sm = result["summary"]
            spread = "-" if sm.get("median_relative_spread") is None else f"{sm['median_relative_spread']:.2%}"
            body += (f"<p>median score {sm['median_score']:.4g}; median relative spread over seeds {spread}; "
                     f"Weibull fit accepted in {sm['fit_ok_share']:.0%} of runs</p>")
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in result.get("notes") or [])
    m = result.get("model")
    model = m.get("path") if isinstance(m, dict) else None
    subtitle = ""
    if result.kind == "attack":
        from .page import pct
        from .plots import NORMS

        cfg = result["config"]
        subtitle = e(f"{cfg['attack']}, {NORMS.get(cfg['norm'], cfg['norm'])}, clean accuracy {pct(result['clean_accuracy'])}")
    return page(result.kind, model, section("context", "Context", facts(context_rows(result))) + notes + body,
                f"fimaudit {e(result.kind)} result, schema {e(result.schema_version)}", subtitle)


def _compare_html(rep: dict) -> str:
    from .page import num, section, table

    body = section("models", "Models", table(["model", *COMPARE_COLUMNS],
                                             [[r["model"], *(_fmt(r.get(c)) for c in COMPARE_COLUMNS)] for r in rep["rows"]]))
    rows = []
    for name, v in rep["correlations"].items():
        if v is None:
            continue
        cells = []
        for k in ("spearman", "kendall"):
            val, ci = v[k]["value"], v[k]["ci"]
            cells.append("-" if val is None else (f"{val:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{val:+.2f}"))
        rows.append([name, str(v["n"]), *cells])
    body += section("correlations", f"Rank correlation with {rep['target']} (95% bootstrap CI)",
                    table(["metric", "n", "Spearman", "Kendall"], rows))
    if rep.get("validity"):
        vrows = []
        for v in rep["validity"]:
            sp = v["spearman"]
            cell = "-" if sp["value"] is None else (f"{sp['value']:+.2f} [{sp['ci'][0]:+.2f}, {sp['ci'][1]:+.2f}]"
                                                    if sp["ci"] else f"{sp['value']:+.2f}")
            vrows.append([v["model"], str(sp["n"]), cell, num(v["median_distance_over_radius"])])
        body += section("validity", "Per-sample validity: FIM-predicted radius against the minimal adversarial L2 "
                                    "distance (attack units)", table(["model", "n", "Spearman", "median dist/r"], vrows))
    return body

