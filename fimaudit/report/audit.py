"""Renderers of an ``AuditResult``: the HTML dossier, Markdown, JUnit XML, JSON and terminal text.

All are pure functions of the result (the timestamp is in the result, passed in by the caller).
"""

from __future__ import annotations

import html
import json

import numpy as np
from xml.etree import ElementTree as ET

from ..results import AuditResult, dumps
from . import plots
from .page import facts, num, page, pct, preprocessing_text, section, table, versions_text
from .terminal import _fmt

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
    att = result.section("attacks")
    att = att if att and att.status == "ok" else None
    if val and val.status == "ok":
        out.append(("plot-validity", "FIM-predicted radius against the smallest successful attack",
                    plots.radius_scatter(val.data["samples"], val.data["max_eps"],
                                        val.data.get("distance", "smallest successful eps"),
                                        (att.data.get("norm") if att else None) or (result.config or {}).get("norm")),
                    "no samples"))
    else:
        out.append(("plot-validity", "FIM-predicted radius against the smallest successful attack", None,
                    val.reason if val else "no validity section"))
    att = result.section("attacks")
    if att and att.status == "ok":
        tau = att.data["taus"][0] if att.data.get("taus") else None
        out.append(("plot-robustness", "Robust accuracy and robust ratio against eps",
                    plots.robustness_curves(att.data["runs"], tau, att.data.get("worst_case"), att.data.get("norm")),
                    "no attack results"))
    else:
        out.append(("plot-robustness", "Robust accuracy and robust ratio against eps", None,
                    att.reason if att else "no attacks section"))
    met = result.section("metrics")
    if met and met.status == "ok" and met.data.get("corruptions"):
        out.append(("plot-corruptions", "Accuracy against corruption severity",
                    plots.corruption_curves(met.data["corruptions"]), None))
    else:
        reason = (met.reason if met and met.status != "ok" else
                  met.data.get("corruptions_skipped") or "corruptions were not computed") if met else "no metrics section"
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


VACUOUS_RATIO = 1e3  # a finite bound this many times the measured median lambda_max says nothing about the model


def _lambdas(result: AuditResult) -> list[float]:
    scan = result.section("scan")
    if not scan or scan.status != "ok":
        return []
    return [s["lambda_max"] for s in scan.data.get("samples", []) if s.get("lambda_max") is not None]


def vacuous_note(result: AuditResult) -> str | None:
    """'finite but vacuous: ...' when the closed-form bound exceeds the measured median lambda_max 1e3-fold."""
    bounds = result.section("bounds")
    bound = bounds.data.get("fim_upper") if bounds and bounds.status == "ok" else None
    lam = [v for v in _lambdas(result) if v > 0]
    if bound is None or not lam:
        return None
    med, top = float(np.median(lam)), float(max(lam))
    if bound / med <= VACUOUS_RATIO:
        return None
    return (f"finite but vacuous: the bound {bound:.3g} is {bound / top:.3g}× the largest measured lambda_max "
            f"({top:.3g}) and {bound / med:.3g}× the median ({med:.3g}); it guarantees nothing at this model's scale")


_UNIT_NAMES = {"fisher": "Fisher units", "fim_radius": "FIM radius units", "clever": "CLEVER radius units",
               "certify": "certified radius units", "bound": "bound units"}


def _context_html(result: AuditResult) -> str:
    """The run's context: model, data, preprocessing, units, policy file, versions, seed."""
    m, cfg, ctx = result.model, result.config or {}, result.context or {}
    pp = ctx.get("preprocessing") or {}
    prep = result.section("preprocessing")
    sanity = ""
    if prep and prep.status == "ok":
        d = prep.data
        sanity = (f"clean accuracy {pct(d.get('accuracy'))} on {d.get('samples')} samples "
                  f"(chance {pct(d.get('chance'))}): " + ("looks sane" if d.get("sane") else f"SUSPECT: {d.get('note')}"))
    pol = result.policy or {}
    pf = ctx.get("policy") or {}
    policy = ""
    if result.policy is not None:
        policy = f"“{pol.get('name', '')}”, {len(pol.get('checks') or [])} checks"
        if pf:
            policy += f"; file {pf.get('file')} (sha256 {pf.get('sha256')})"
    data = ctx.get("data", cfg.get("data"))
    samples = ctx.get("samples")
    grad = ctx.get("gradients") or {}
    rows = [
        ("model", f"{m.get('path')} (sha256 {m.get('sha256')})"),
        ("input, output", f"'{m.get('input')}' {m.get('sample_shape')} → '{m.get('output')}'"),
        ("provider", str(m.get("provider") or "")),
        ("data", "" if data is None else f"{data}" + (f": the first {samples} samples" if samples is not None else "")),
        ("samples per section", f"scan and attacks {cfg.get('samples')}, CLEVER {cfg.get('clever_samples')}, "
                                f"metric suite {cfg.get('metrics_samples')}"),
        ("preprocessing", preprocessing_text(pp) if pp else preprocessing_text(
            {"scale": cfg.get("scale"), "mean": cfg.get("mean"), "std": cfg.get("std")})),
        ("layout", (f"{str(pp.get('layout')).upper()}" + (f" ({pp['layout_evidence']})" if pp.get("layout_evidence") else ""))
         if pp.get("layout") else ""),
        ("input range", "" if not (pp.get("input_range") or cfg.get("input_range")) else
         "[{:g}, {:g}] in attack units (adversarial inputs are clipped to it)".format(*(pp.get("input_range") or cfg.get("input_range")))
         + (f"; {cfg['input_range_source']}" if cfg.get("input_range_source") else "")),
        ("clean predictions", sanity),
        ("eps units", ctx.get("eps_units") or f"attack units: data × --scale ({cfg.get('norm')})"),
        *((_UNIT_NAMES.get(k, f"{k} units"), v) for k, v in (ctx.get("units") or {}).items() if k != "eps"),
        ("attacks", f"{', '.join(cfg.get('attacks') or [])}"
                    + (" and white-box APGD" if cfg.get("whitebox") else "") + f", norm {cfg.get('norm')}, eps "
                    f"{', '.join(f'{x:g}' for x in cfg.get('eps') or [])}, budget {cfg.get('budget')} queries per sample"),
        ("gradients", f"requested {grad.get('requested', cfg.get('gradients'))}"
                      + (f"; scan used {grad['scan']}" if grad.get("scan") else "")
                      + (f" ({grad['reason']})" if grad.get("reason") else "")),
        ("policy", policy or "none: evidence without a verdict"),
        *(("settings", p) for p in _provenance(result)),
        ("seed", str(ctx.get("seed", cfg.get("seed")))),
        ("versions", versions_text(ctx.get("versions")) or f"fimaudit {result.fimaudit}"),
        ("created", result.created or ""),
    ]
    return section("context", "Context", facts(rows))


def _checks_html(result: AuditResult) -> str:
    e = html.escape
    if not result.checks:
        return section("checks", "Policy checks", "<p>No policy was given: the dossier reports evidence without a verdict.</p>")
    vac = vacuous_note(result)
    b = result.section("bounds")
    no_bound = (b.data.get("reason") or "no finite closed-form bound") \
        if b and b.status == "ok" and b.data.get("fim_upper") is None else None
    rows = []
    for c in result.checks:
        note = e(c.reason or "")
        if vac and c.key.startswith("bound."):
            note = (note + "<br>" if note else "") + f'<span class="vacuous">{e(vac)}</span>'
        elif no_bound and c.key.startswith("bound.") and not c.reason:
            note = e(f"no finite bound: {no_bound}")
        rows.append([f"<code>{e(c.text)}</code>", e(_value(c.value)),
                     f"<span class={'pass' if c.passed else 'fail'}>{'PASS' if c.passed else 'FAIL'}</span>", note])
    return section("checks", "Policy checks", table(["check", "value", "result", "note"], rows, raw=True,
                                                   left=(0, 2, 3), cls="checks"))


_STATS_HEAD = ["quantity", "mean", "median", "p90", "max", "n"]


def _stats_row(name: str, st: dict) -> list[str]:
    return [name, *(num(st.get(k)) for k in ("mean", "median", "p90", "max")), str(st.get("count", "-"))]


def _fisher_html(result: AuditResult) -> str:
    scan = result.section("scan")
    if not scan or scan.status != "ok":
        return section("fisher", "Input-space Fisher information", _unavailable(scan, "scan"))
    s = scan.data.get("summary") or {}
    rows = []
    for key, name in (("lambda_max", "lambda_max(F)"), ("trace", "trace(F)"), ("lower_bound", "certified lower bound of lambda_max"),
                      ("lower_estimate", "lower estimate of lambda_max")):
        st = s.get(key)
        if st and st.get("count"):
            rows.append(_stats_row(name, st))
    if (s.get("surrogate") or {}).get("available"):
        rows.append(_stats_row("lambda_max, float surrogate", s["surrogate"]["lambda_max"]))
    if (s.get("smoothed") or {}).get("lambda_max"):
        sig = s["smoothed"].get("sigma")
        rows.append(_stats_row("lambda_max(F_sigma), smoothed" + (f" (sigma {sig:.3g})" if isinstance(sig, (int, float)) else ""),
                               s["smoothed"]["lambda_max"]))
    run = scan.data.get("run") or {}
    units = (scan.data.get("units") or {}).get("description", "")
    body = table(_STATS_HEAD, rows) if rows else "<p>No per-sample values (see the notes).</p>"
    body += (f"<p class=muted>Per sample: {html.escape(str(run.get('method_used', '')))} method, "
             f"{run.get('samples_scanned', '-')} samples, {s.get('queries_total', '-')} queries; units {html.escape(units)}.</p>")
    return section("fisher", "Input-space Fisher information", body)


def _bound_html(result: AuditResult) -> str:
    b = result.section("bounds")
    if not b or b.status != "ok":
        return section("bound", "Closed-form bound from the weights", _unavailable(b, "bounds"))
    d = b.data
    vac = vacuous_note(result)
    lam = [v for v in _lambdas(result) if v > 0]
    rows = [("Lipschitz bound L of the logit map", num(d.get("lipschitz")) + " (model-input units, L2)"
             if d.get("lipschitz") is not None else "none"),
            ("lambda_max(F) ≤ L²/2", num(d.get("fim_upper")) if d.get("fim_upper") is not None else f"none: {d.get('reason')}"),
            ("measured lambda_max (median, max)", f"{num(float(np.median(lam)))}, {num(max(lam))}" if lam else ""),
            ("family", str(d.get("family") or "unknown"))]
    body = facts(rows, "bound-facts")
    if vac:
        body += f'<p class="unavailable vacuous" id="vacuous">{html.escape(vac)}</p>'
    body += "".join(f"<p class=muted>note: {html.escape(n)}</p>" for n in d.get("notes") or [])
    return section("bound", "Closed-form bound from the weights", body)


def _blocks_html(result: AuditResult) -> str:
    """Each recognised block: bounded (its constant), unbounded or not computed, with why (fimaudit.graph.bounds)."""
    b = result.section("bounds")
    blocks = (b.data.get("blocks") or []) if b and b.status == "ok" else []
    if not blocks:
        return ""
    rows = [[bl["name"], bl["kind"], bl.get("status") or ("bounded" if bl.get("lipschitz") is not None else "unbounded"),
             num(bl.get("lipschitz")), bl.get("detail", "") if bl.get("lipschitz") is not None else (bl.get("reason") or bl.get("detail") or "")]
            for bl in blocks]
    return section("blocks", "Blocks of the closed-form bound",
                   table(["block", "kind", "status", "L", "how / why"], rows, left=(0, 1, 2, 4), cls="blocks"))


def _unavailable(sec, name: str) -> str:
    why = sec.reason if sec is not None else f"no {name} section"
    return f'<p class="unavailable">Not available: {html.escape(why or "no data")}</p>'


def _attacks_html(result: AuditResult) -> str:
    e = html.escape
    att = result.section("attacks")
    if not att or att.status != "ok":
        return section("attacks", "Attacks", _unavailable(att, "attacks"))
    d = att.data
    norm = d.get("norm", "")
    body = ""
    masking = d.get("masking") or []
    if masking:
        body += ('<div class="warning" id="masking"><strong>Possible gradient masking:</strong> the robust accuracies '
                 "below may overstate the model's robustness.<ul>"
                 + "".join(f"<li><strong>{e(str(f.get('flag', '')))}</strong>: {e(str(f.get('detail', '')))}</li>" for f in masking)
                 + "</ul></div>")
    elif "masking" in d:
        body += '<p class=muted id="no-masking">Gradient-masking checks: no sign of masked gradients.</p>'

    runs = d.get("runs") or []
    names = [f"{r['config']['attack']}" for r in runs]
    wc = (d.get("worst_case") or {}).get("robust_accuracy") or {}
    eps_all = sorted({float(r["eps"]) for run in runs for r in run["results"]})
    by = {(i, float(r["eps"])): r for i, run in enumerate(runs) for r in run["results"]}
    clean = ["clean (eps 0)", *(pct(run.get("clean_accuracy")) for run in runs)] + (["-"] if wc else [])
    ra_rows = [clean] + [[f"{x:g}", *(pct(by[(i, x)]["robust_accuracy"]) if (i, x) in by else "-" for i in range(len(runs))),
                          *([pct(wc.get(f"{x:g}"))] if wc else [])] for x in eps_all]
    for i, run in enumerate(runs):
        ps = run.get("per_sample_radius")
        if ps:
            ra_rows.append([f"own radius ({names[i]}, {ps.get('eps_from')})",
                            *(pct(ps["robust_accuracy"]) if j == i else "-" for j in range(len(runs))),
                            *([pct(wc.get("per-sample"))] if wc else [])])
    head = [f"eps ({plots.NORMS.get(norm, norm)}, attack units)", *names, *(["worst case per sample"] if wc else [])]
    body += ('<section id=worst-case><h3>Robust accuracy: each attack and the per-sample worst case over them</h3>'
             + table(head, ra_rows)
             + (f"<p class=muted>worst case: {e((d.get('worst_case') or {}).get('rule', ''))}</p>" if wc else "")
             + "</section>")
    taus = [f"{t:g}" for t in d.get("taus") or []]
    wrr = (d.get("worst_case") or {}).get("robust_ratio") or {}  # per eps, per tau (absent in older audits)
    if taus and runs:
        rr_rows = []
        for x in eps_all:
            row = [f"{x:g}"]
            for t in taus:
                for i in range(len(runs)):
                    r = by.get((i, x))
                    key = next((k for k in (r or {}).get("robust_ratio", {}) if float(k) == float(t)), None)
                    row.append(pct(r["robust_ratio"][key]) if r and key else "-")
                if wrr:
                    row.append(pct((wrr.get(f"{x:g}") or {}).get(t)))
            rr_rows.append(row)
        rr_head = [f"eps ({plots.NORMS.get(norm, norm)})",
                   *(h for t in taus for h in [*(f"{n} (tau {t})" for n in names), *([f"worst case (tau {t})"] if wrr else [])])]
        body += ("<h3>Robust ratio: share of samples whose prediction moves by less than tau</h3>" + table(rr_head, rr_rows))
    q_rows = [[n, str(sum(r.get("queries_total", 0) for r in run["results"])),
               str(run["config"].get("budget", "-")), str(run["config"].get("gradients", "-"))] for n, run in zip(names, runs)]
    if q_rows:
        body += "<h3>Cost</h3>" + table(["attack", "queries", "budget per sample and eps", "gradients"], q_rows)
    wb = d.get("whitebox")
    if wb and wb not in ("apgd", "off"):
        body += f'<p class="unavailable">{e(str(wb))}</p>'
    body += "".join(f"<p>{e(s['attack'])} skipped: {e(s.get('reason') or '')}</p>" for s in d.get("skipped") or [])
    body += "".join(f"<p class=muted>note: {e(n)}</p>" for n in d.get("notes") or [])
    return section("attacks", "Attacks", body)


def _clever_validity_html(result: AuditResult) -> str:
    cl, va = result.section("clever"), result.section("validity")
    units = (result.context or {}).get("units") or {}
    if cl and cl.status == "ok":
        sm, cfg = cl.data.get("summary") or {}, cl.data.get("config") or {}
        rows = [("median CLEVER score", f"{num(sm.get('median_score'))} ({units.get('clever', 'attack units, L2')})"),
                ("Weibull fit accepted", pct(sm.get("fit_ok_share")) + " of runs"),
                ("median relative spread over seeds", pct(sm.get("median_relative_spread"))),
                ("samples, seeds", f"{len(cl.data.get('samples') or [])}, {cfg.get('seeds', '-')}"),
                ("norm, radius R", f"{cfg.get('norm', 'l2')}, {num(cfg.get('radius'))}"),
                ("queries", str(sm.get("queries_total", "-")))]
        cb = facts(rows, "clever-facts")
        if sm.get("fit_ok_share") is not None and sm["fit_ok_share"] < 0.5:
            cb += ('<p class="unavailable">The Weibull fit was rejected in most runs: the scores fall back to the '
                   "largest sampled gradient norm and are estimates, not certificates.</p>")
    else:
        cb = _unavailable(cl, "clever")
    if va and va.status == "ok":
        d = va.data
        n = len(d.get("samples") or [])
        rows = [("Spearman rho", num(d.get("spearman"), 3) if d.get("spearman") is not None else
                 "- (fewer than 3 attacked samples with distinct values)"),
                ("samples", f"{d.get('attacked', 0)} broken of {n} (the others censored at eps {num(d.get('max_eps'))})"),
                ("distance", str(d.get("distance", ""))),
                ("FIM radius units", str(d.get("radius_units", ""))),
                ("distance units", str(d.get("eps_units", "")))]
        vb = facts(rows, "validity-facts")
    else:
        vb = _unavailable(va, "validity")
    return ('<div class="cols">' + section("clever", "CLEVER scores", cb)
            + section("validity", "Validity: FIM-predicted radius against the attacks' distance", vb) + "</div>")


def _certify_html(result: AuditResult) -> str:
    c = result.section("certify")
    if not c or c.status != "ok":
        return ""  # not run: the sections table says why
    d = c.data
    s, cfg = d.get("summary") or {}, d.get("config") or {}
    rows = [[num(r.get("radius")), pct(r.get("accuracy")), pct(r.get("certified"))] for r in s.get("certified_accuracy") or []]
    src = d.get("sigma_source") or {}
    body = (f"<p>Gaussian smoothing, sigma {num(cfg.get('sigma'))} ({html.escape(str(src.get('rule', '')))}), "
            f"n {cfg.get('n', '-')} draws per sample, alpha {num(cfg.get('alpha'))}. "
            f"{html.escape((d.get('units') or {}).get('description', ''))}.</p>"
            + table(["L2 radius", "certified accuracy", "certified"], rows, left=0)
            + f"<p class=muted>clean accuracy {pct(s.get('clean_accuracy'))}, smoothed {pct(s.get('smoothed_accuracy'))}, "
              f"abstained on {pct(s.get('abstain_rate'))}</p>")
    return section("certify", "Certified radius (randomized smoothing)", body)


def _verify_rows(result: AuditResult) -> tuple[dict, list] | None:
    v = result.section("verify")
    if not v or v.status != "ok" or not v.data.get("comparison"):
        return None
    return v.data, v.data["comparison"]["rows"]


def _verify_lines(result: AuditResult) -> list[str]:
    got = _verify_rows(result)
    if got is None:
        return []
    d, rows = got
    cmp_ = d["comparison"]
    out = [f"  verified robust accuracy ({cmp_['norm']}, bound propagation: {d['method']['name']}) <= attacks' worst case:"]
    for r in rows:
        out.append(f"    eps {r['eps']:g}: certified {_value(r['certified_accuracy'])} <= worst case "
                   f"{_value(r['attack_worst_case'])}" + (f"  VERIFIED BUT BROKEN: samples {r['verified_but_broken']}"
                                                         if r["verified_but_broken"] else ""))
    return out


def _verify_html(result: AuditResult) -> str:
    got = _verify_rows(result)
    if got is None:
        return ""  # not run: the sections table says why
    d, rows = got
    body = (f"<p>{html.escape(d['method']['description'])}. A sample is verified at eps when every other class's logit "
            f"margin has a positive certified lower bound over the {html.escape(d['set']['norm'])} ball intersected "
            f"with the input box ({html.escape(str(d['set']['units']))}). Certified accuracy can never exceed the "
            "attacks' per-sample worst case; the gap between them is what neither side can settle.</p>"
            + table(["eps", "certified (verified) accuracy", "attacks' worst case", "verified but broken"],
                    [[num(r["eps"]), pct(r["certified_accuracy"]), pct(r["attack_worst_case"]),
                      ", ".join(map(str, r["verified_but_broken"])) or "none"] for r in rows], left=0))
    return section("verify", "Verified robust accuracy (bound propagation)", body)


_METRICS = ("accuracy", "ece", "log_loss", "margin_median", "corruption_relative_accuracy", "corruption_accuracy_gap",
            "spectral_product", "sharpness_flatness")


def _metrics_html(result: AuditResult) -> str:
    m = result.section("metrics")
    if not m or m.status != "ok":
        return section("metrics", "Metric suite", _unavailable(m, "metrics"))
    d = m.data
    met = d.get("metrics") or {}
    body = table(["metric", "value"], [[k, num(met[k])] for k in _METRICS if k in met])
    corr = d.get("corruptions") or {}
    if corr:
        sev = sorted({int(s) for row in corr.values() for s in row})
        body += table(["corruption", *(f"severity {x}" for x in sev)],
                      [[name, *(pct(row.get(str(x))) for x in sev)] for name, row in corr.items()])
    if d.get("corruptions_skipped"):
        body += f'<p class="unavailable">{html.escape(d["corruptions_skipped"])}</p>'
    n = (d.get("config") or {}).get("samples")
    body += f"<p class=muted>on {n} samples; all {len(met)} metrics are in audit.json.</p>"
    return section("metrics", "Metric suite", body)


def _worst_html(result: AuditResult) -> str:
    worst = result.section("worst")
    if not worst or worst.status != "ok":
        return ""
    e = html.escape
    rows = []
    for r in worst.data["samples"]:
        imgs = "".join(f'<img class="thumb" alt="{alt} of sample {r["index"]}" src="{r[k]}">'
                       for k, alt in (("input_png", "input"), ("direction_png", "worst direction")) if r.get(k))
        rows.append([str(r["index"]), e(_value(r["label"])), str(r["predicted"]), _fmt(r["lambda_max"]), imgs or "-"])
    note = f"<p>{e(worst.data['thumbnails_note'])}</p>" if worst.data.get("thumbnails_note") else ""
    return section("worst", "Worst samples", note + table(["index", "label", "predicted", "lambda_max",
                                                          "input, worst direction"], rows, left=(4,), raw=True))


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
    figures = []
    for pid, title, svg, reason in _plots(result):
        body = (f'<figure class="plot" data-plot="{pid}">{svg}</figure>' if svg else
                f'<p class="unavailable">Not available: {e(reason or "no data")}</p>')
        figures.append(f'<section id="{pid}"><h2>{e(title)}</h2>{body}</section>')
    sec_rows = [[s.name, s.status, s.reason or ""] for s in result.sections]  # no wall times: byte-identical pages
    m = result.model
    body = (
        f'<p id="verdict" class="verdict {cls}">Verdict: {e(v.upper())}</p>'
        + (f'<p id="piecewise" class="unavailable">{e(_piecewise_note(result))}</p>' if _piecewise_note(result) else "")
        + "".join(f'<p class="unavailable">{e(n)}</p>' for n in (m.get("defaults") or []))
        + _checks_html(result)
        + _context_html(result)
        + '<div class="cols">' + _fisher_html(result) + _bound_html(result) + "</div>" + _blocks_html(result)
        + _local_sandwich_html(result)
        + _attacks_html(result)
        + _clever_validity_html(result)
        + _certify_html(result)
        + _verify_html(result)
        + _metrics_html(result)
        + '<div class="plots">' + "".join(figures) + "</div>"
        + _worst_html(result)
        + section("sections", "Sections", table(["section", "status", "reason"], sec_rows, left=3))
    )
    created = f", {e(result.created)}" if result.created else ""
    footer = f"fimaudit {e(result.fimaudit)}, audit schema {e(result.schema_version)}{created}"
    return page("audit", m["path"], body, footer, f"(sha256 {e(str(m.get('sha256', '')))[:16]}…)")


def _provenance(result: AuditResult) -> list[str]:
    """Where the run's settings came from: the [audit] values taken from the policy, and those the command line
    overrode (policy.PRECEDENCE: an option given on the command line wins)."""
    cfg = result.config or {}
    out = []
    if cfg.get("from_policy"):
        out.append("from the policy's [audit]: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in cfg["from_policy"].items()))
    if cfg.get("overridden"):
        out.append("given on the command line, over the policy's [audit]: " + ", ".join(
            f"{k} = {json.dumps(v['command_line'])} (policy: {json.dumps(v['policy'])})" for k, v in cfg["overridden"].items()))
    return out


def _attack_table(result: AuditResult) -> tuple[list[str], list[tuple[str, list[str], str]], list[dict]]:
    """(attack names, rows (eps, each attack's robust accuracy, the per-sample worst case), masking flags) of the
    attacks section; empty when it is unavailable."""
    att = result.section("attacks")
    if not att or att.status != "ok":
        return [], [], []
    names = [run["config"]["attack"] for run in att.data["runs"]]
    wc = (att.data.get("worst_case") or {}).get("robust_accuracy") or {}
    rows = []
    for eps in att.data.get("eps") or []:
        vals = []
        for run in att.data["runs"]:
            r = next((r for r in run["results"] if abs(float(r["eps"]) - float(eps)) <= 1e-12 * max(1.0, abs(eps))), None)
            vals.append(_value(None if r is None else r["robust_accuracy"]))
        worst = next((v for k, v in wc.items() if k != "per-sample" and abs(float(k) - float(eps)) <= 1e-9 * max(1.0, abs(eps))), None)
        rows.append((f"{eps:g}", vals, _value(worst)))
    return names, rows, list(att.data.get("masking") or [])


def render_audit_markdown(result: AuditResult) -> str:
    lines = [f"# fimaudit audit: `{result.model['path']}`", "", f"**Verdict: {result.verdict.upper()}**", ""]
    if _piecewise_note(result):
        lines += [f"**Note:** {_piecewise_note(result)}", ""]
    notes = list((result.model or {}).get("defaults") or [])
    lines += [f"- Note: {n}" for n in notes] + ([""] if notes else [])
    prov = _provenance(result)
    lines += [f"- Settings {p}" for p in prov] + ([""] if prov else [])
    if result.checks:
        lines += ["| check | value | result | note |", "|---|---:|---|---|"]
        vac = vacuous_note(result)
        lines += [f"| `{c.text}` | {_value(c.value)} | {'PASS' if c.passed else 'FAIL'} | "
                  + "; ".join(x for x in (c.reason, vac if c.key.startswith("bound.") else None) if x) + " |"
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
        names, rows, masking = _attack_table(result)
        lines += ["## Attacks", "", f"Robust accuracy ({att.data['norm']}) per attack, and the per-sample worst case over "
                  "all of them (a sample counts as robust only if every attack failed on it): the figure a verdict "
                  "should use.", "",
                  "| eps | " + " | ".join(names) + " | worst case |", "|---:|" + "---:|" * (len(names) + 1)]
        lines += [f"| {eps} | " + " | ".join(vals) + f" | **{worst}** |" for eps, vals, worst in rows]
        for eps, ra in ((att.data.get("worst_case") or {}).get("robust_accuracy") or {}).items():
            if eps == "per-sample":
                lines.append("| per-sample radii | " + " | ".join("" for _ in names) + f" | **{_value(ra)}** |")
        for skip in att.data.get("skipped") or []:
            lines.append(f"\n{skip['attack']}: skipped ({skip['reason']})")
        lines += ["", "### Gradient-masking flags", ""]
        lines += [f"- **{f['flag']}**: {f['detail']}" for f in masking] or ["None: no sign of masked gradients."]
        lines += [""] + [f"- {n}" for n in att.data.get("notes") or []] + ([""] if att.data.get("notes") else [])
    got = _verify_rows(result)
    if got is not None:
        d, rows = got
        lines += ["## Verified robust accuracy (bound propagation)", "", f"{d['method']['description']}.", "",
                  "| eps | certified accuracy | attacks' worst case | verified but broken |", "|---|---:|---:|---|"]
        lines += [f"| {r['eps']:g} | {_value(r['certified_accuracy'])} | {_value(r['attack_worst_case'])} | "
                  f"{', '.join(map(str, r['verified_but_broken'])) or 'none'} |" for r in rows]
        lines.append("")
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
    return dumps(result)


def render_audit_text(result: AuditResult) -> str:
    lines = [f"fimaudit audit of {result.model['path']}: verdict {result.verdict.upper()}"]
    if _piecewise_note(result):
        lines.append(f"  note: {_piecewise_note(result)}")
    for note in (result.model or {}).get("defaults") or []:
        lines.append(f"  note: {note}")
    vac = vacuous_note(result)
    for c in result.checks:
        lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.text}  (value {_value(c.value)}{'; ' + c.reason if c.reason else ''})")
        if vac and c.key.startswith("bound."):
            lines.append(f"        {vac}")
    for p in _provenance(result):
        lines.append(f"  settings {p}")
    names, rows, masking = _attack_table(result)
    if rows:
        norm = result.section("attacks").data["norm"]
        lines.append(f"  robust accuracy ({norm}), per attack and the per-sample worst case over all of them:")
        for eps, vals, worst in rows:
            lines.append(f"    eps {eps}: " + ", ".join(f"{n} {v}" for n, v in zip(names, vals)) + f"; worst case {worst}")
        lines += [f"  masking: {f['flag']}: {f['detail']}" for f in masking] or ["  masking: no sign of masked gradients"]
    lines += _verify_lines(result)
    for s in result.sections:
        lines.append(f"  section {s.name}: {s.status}" + (f" ({s.reason})" if s.reason else ""))
    return "\n".join(lines) + "\n"
