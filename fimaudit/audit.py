"""``fimaudit audit``: every kind of evidence for one model, as sections of one ``AuditResult``.

A section is computed by a ``SectionSpec``; a section that cannot be computed for this model
(no labels, no finite bound, a failing sub-step) is kept with its reason instead of aborting the
audit. New evidence kinds slot in by appending a ``SectionSpec`` to ``SECTIONS`` (and, for
policy checks on it, a resolver in ``fimaudit.policy``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .options import ModelDataOptions
from .audit_context import audit_context
from .errors import ConfigError, FimauditError
from .certify import CertifyConfig, certify_job
from .evidence import SCORELESS, AttackConfig, CleverConfig, attack_job, clever_job
from .graph import bounds_from_proto
from .images import DataOptions
from .metrics.suite import MetricsConfig, metrics_job
from .results import AuditResult, ScanResult, Section
from .sanity import checked, muted
from .scan import ScanConfig, scan_job
from .subject import Subject, open_subject


ProgressFn = Callable[[str, int, int], None]  # (section, step done, steps total)


DEFAULT_ATTACKS = ("pgd", "square")
# Randomized smoothing's default noise on a piecewise-constant model: a quarter of the input range's width (in
# model-input units: divided by the mean --std), the middle of the sigmas of Cohen et al. 2019 on [0, 1] images.
CERTIFY_SIGMA_REL = 0.25
CERTIFY_SIGMA_RULE = "sigma = 0.25 x the width of --input-range, in model-input units (divided by the mean --std)"
GRADIENT_NOTE = ("gradient-based attacks (white-box APGD, black-box finite-difference PGD) are uninformative on a "
                 "piecewise-constant model: its gradients are 0 almost everywhere, so they find nothing whatever the "
                 "model's robustness")


def piecewise_attacks(norm: str) -> tuple[str, ...]:
    """The audit's attacks on a piecewise-constant model: gradient-free ones and the float surrogate's transfer."""
    return ("square", "rays" if norm == "linf" else "hsja", "transfer")


class Unavailable(Exception):
    """Raised by a section that cannot be computed for this model; the message is the reason."""


@dataclass(frozen=True)
class AuditConfig(ModelDataOptions):
    """The shared options (same field names as ScanConfig) plus what the policy's [audit] table sets."""

    model: str
    data: str | None = None
    samples: int | None = 20
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    # None: automatic (resolve_input_range): [0, 1], or the data's own range rounded outward when they lie outside it
    input_range: tuple[float, float] | None = None
    seed: int = 0
    budget: int = 2000
    eps: tuple[float, ...] = (0.01, 0.03)
    norm: str = "linf"
    attacks: tuple[str, ...] | None = None  # None: DEFAULT_ATTACKS, or piecewise_attacks(norm) (resolve_defaults)
    eps_from: str | None = None  # --eps-from KEY: the attacks also run each sample at its own radius
    gradients: str = "auto"  # auto | graph | fd | zo; each section takes the values that apply to it (_gradients_for)
    whitebox: bool | None = None  # also APGD from exact graph gradients when the graph allows them; None: yes,
    # except on a piecewise-constant model (resolve_defaults)
    taus: tuple[float, ...] = (0.1,)
    clever_samples: int = 5
    clever_points: int = 20
    clever_radius: float = 2.0
    metrics_samples: int = 200
    corruptions: bool = True
    certify_sigma: float | None = None  # randomized smoothing runs when set, and on piecewise-constant models
    certify_n: int = 1000
    certify_radii: tuple[float, ...] = (0.0, 0.25, 0.5)
    local_bound: float | None = None  # the scan's --local-bound EPS (L-inf, model-input units); None: not computed
    verify: bool = False  # certified robust accuracy by bound propagation (fimaudit verify, CROWN) at the attack eps
    sections: tuple[str, ...] = ()  # empty: all
    # provenance (policy.apply_to_config): [audit] values this run took from the policy, and policy values that an
    # option given on the command line overrode ({key: {"policy": v, "command_line": w}})
    from_policy: dict = field(default_factory=dict)
    overridden: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"audit norm must be linf or l2, not '{self.norm}'")
        if self.gradients not in ("auto", "graph", "fd", "zo"):
            raise ConfigError(f"audit gradients must be one of auto, graph, fd, zo, not '{self.gradients}'")
        if not self.eps or any(not (e > 0 and np.isfinite(e)) for e in self.eps):
            raise ConfigError("audit eps must be positive numbers")
        unknown = [s for s in self.sections if s not in {spec.name for spec in SECTIONS}]
        if unknown:
            raise ConfigError(f"unknown audit section(s) {', '.join(unknown)}; known: {', '.join(s.name for s in SECTIONS)}")

    def resolve_defaults(self, piecewise: bool) -> tuple["AuditConfig", list[str]]:
        """Fill the fields left to the model's kind (attacks, whitebox, certify_sigma) and say what was chosen.

        A piecewise-constant model (fimaudit.piecewise) gets decision-based and transfer attacks, no white-box
        APGD, and randomized-smoothing certificates by default; values the policy set are kept.
        """
        from dataclasses import replace

        if not piecewise:
            return replace(self, attacks=DEFAULT_ATTACKS if self.attacks is None else self.attacks,
                           whitebox=True if self.whitebox is None else self.whitebox), []
        notes = []
        attacks, whitebox, sigma = self.attacks, self.whitebox, self.certify_sigma
        if attacks is None:
            attacks = piecewise_attacks(self.norm)
            notes.append(f"attacks {', '.join(attacks)} by default: the model is piecewise constant, so the audit "
                         "runs gradient-free attacks and the float surrogate's transfer attack; " + GRADIENT_NOTE)
        elif any(a in ("pgd", "fgsm", "bim", "apgd") for a in attacks):
            notes.append(f"the policy's attacks ({', '.join(attacks)}) include gradient-based ones: {GRADIENT_NOTE}")
        if whitebox is None:
            whitebox = False
        if sigma is None:
            sigma = CERTIFY_SIGMA_REL * (self.input_range[1] - self.input_range[0]) / float(np.mean(self.std))
            notes.append(f"certify (randomized smoothing) runs by default on a piecewise-constant model: a guarantee "
                         f"for any classifier; sigma {sigma:g} ({CERTIFY_SIGMA_RULE}), n {self.certify_n}")
        return replace(self, attacks=tuple(attacks), whitebox=whitebox, certify_sigma=sigma), notes

    def resolve_input_range(self, x: np.ndarray | None) -> tuple["AuditConfig", dict | None]:
        """The attack box when ``input_range`` is None: [0, 1] when the data (after --scale) lie in it, else the data's
        min/max rounded outward to 0.001 (pre-normalised data), with a record that says so (``None`` when nothing was
        derived). A box the caller gave is kept."""
        from dataclasses import replace

        if self.input_range is not None:
            return self, None
        if x is None or x.size == 0:
            return replace(self, input_range=(0.0, 1.0)), None
        xmin, xmax = float(np.min(x)), float(np.max(x))
        slack = 1e-6  # sanity.RANGE_TOLERANCE of [0, 1]: float noise of stored data, clipped with a note later
        if xmin >= -slack and xmax <= 1 + slack:
            return replace(self, input_range=(0.0, 1.0)), None
        lo, hi = float(np.floor(xmin * 1000) / 1000), float(np.ceil(xmax * 1000) / 1000)
        if hi <= lo:
            hi = lo + 0.001
        n = len(x)
        record = {"input_range": [lo, hi], "data_range": [xmin, xmax], "source": "derived from the data",
                  "note": (f"attack box [{lo:g}, {hi:g}] derived from the data: the {n} audited samples lie in "
                           f"[{xmin:.4g}, {xmax:.4g}] after --scale, outside [0, 1] (pre-normalised data?), and no "
                           f"--input-range was given; their min/max rounded outward to 0.001. Attacks clip to this "
                           f"box; pass --input-range LO,HI to set the valid range yourself (e.g. per-channel "
                           f"normalised images: the smallest (0 - mean)/std and the largest (1 - mean)/std)")}
        return replace(self, input_range=(lo, hi)), record

    def gradients_for(self, use: str) -> str:
        """The gradient source a section gets: ``use`` is scan/clever (auto|graph|fd), blackbox (auto|fd|zo) or
        whitebox (auto|graph); a value that does not apply to that use falls back to auto."""
        allowed = {"scan": ("auto", "graph", "fd"), "blackbox": ("auto", "fd", "zo"), "whitebox": ("auto", "graph")}[use]
        return self.gradients if self.gradients in allowed else "auto"

    def build(self, cls: type, **own: Any) -> Any:
        """``cls`` (ScanConfig, AttackConfig, MetricsConfig) from the fields it shares with this config, then ``own``."""
        names = set(cls.__dataclass_fields__) - {"extra", "from_policy", "overridden"}  # type: ignore[attr-defined]
        return cls(**{**{k: v for k, v in asdict(self).items() if k in names}, **own})


# --------------------------------------------------------------------------- sections
@dataclass
class AuditContext:
    """What sections share: the config, the subject (the model opened once), earlier sections' data, arrays kept
    out of the JSON."""

    config: AuditConfig
    subject: Subject
    data: dict[str, dict] = field(default_factory=dict)  # section name -> its data (ok sections only)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. inputs and worst directions
    progress: ProgressFn | None = None
    unlabelled_reason: str | None = None  # set when the data has no labels 'y'
    execution: Any = None  # fimaudit.distributed.Execution: scan, certify and black-box attacks run on Dask workers
    preprocessing: dict | None = None  # fimaudit.sanity's verdict on the clean predictions (None without --data)
    piecewise: Any = None  # fimaudit.piecewise.PiecewiseInfo of a (wholly) piecewise-constant model, else None
    proto: Any = None  # the model's onnx.ModelProto (the float surrogate is built from it)
    io_names: tuple[str, str] = ("", "")  # the model's input and output names
    surrogate: Any = None  # fimaudit.piecewise.Surrogate, built on first use
    defaults: list[str] = field(default_factory=list)  # what resolve_defaults chose for this model's kind
    reasons: dict[str, str] = field(default_factory=dict)  # section name -> why it is unavailable (earlier sections)
    data_notes: list[str] = field(default_factory=list)  # notes of the data loading the dossier must show

    def needs(self, name: str, what: str) -> dict:
        """The data of an earlier section, or Unavailable with that section's own reason (never a guessed one)."""
        if name in self.data:
            return self.data[name]
        why = self.reasons.get(name)
        raise Unavailable(f"needs the {name} section, which is unavailable" + (f": {why}" if why else "") + f" ({what})")

    def step(self, section: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(section, done, total)


@dataclass(frozen=True)
class SectionSpec:
    name: str
    title: str
    run: Callable[[AuditContext], dict]


def _scan_section(ctx: AuditContext) -> dict:
    cfg = ctx.config
    scfg = cfg.build(ScanConfig, gradients=cfg.gradients_for("scan"))
    scfg.validate()
    result = scan_job(ctx.subject, scfg, lambda done, total, _q: ctx.step("scan", done, total), ctx.execution,
                      directions=lambda worst: ctx.arrays.__setitem__("directions", worst))
    return result.to_dict()


def _bounds_section(ctx: AuditContext) -> dict:
    cfg, subject = ctx.config, ctx.subject
    res = bounds_from_proto(subject.proto, subject.info.input.name, subject.info.output.name, subject.sample_shape,
                            str(cfg.model)).to_dict()
    if res.get("fim_upper") is None:
        # Still a result: the dossier shows why; the policy check bound.finite fails on it.
        res.setdefault("reason", "no finite closed-form bound")
    return res


def _labels_needed(ctx: AuditContext, what: str) -> None:
    if ctx.config.data is None:
        raise Unavailable(f"{what}: labelled data needed (--data with x and y); none was given")
    if ctx.unlabelled_reason:
        raise Unavailable(f"{what}: labels needed; {ctx.unlabelled_reason}")


def _is_image(shape: tuple[int, ...]) -> bool:
    return (len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 4) or (len(shape) == 2 and min(shape) >= 4)


def _png_data_uri(img: np.ndarray, signed: bool) -> str:
    """A small PNG of a (C, H, W) or (H, W) array as a data URI; deterministic bytes (no metadata)."""
    import base64
    import io

    from matplotlib.image import imsave

    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    if signed:  # a direction: symmetric around zero, grey = 0
        m = float(np.max(np.abs(a))) or 1.0
        a = 0.5 + 0.5 * a / m
    else:
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    buf = io.BytesIO()
    kw = {"cmap": "gray"} if a.ndim == 2 else {}
    imsave(buf, np.clip(a, 0, 1), format="png", metadata={"Software": None}, **kw)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _not_for_piecewise(scan_d: dict) -> None:
    """Sections built on the pointwise lambda_max do not apply to a piecewise-constant model (fimaudit.piecewise)."""
    pw = scan_d.get("piecewise")
    if pw and pw.get("complete"):
        ops = ", ".join(f"{k} x{v}" for k, v in (pw.get("ops") or {}).items())
        raise Unavailable(f"not applicable: piecewise-constant model ({ops}): the pointwise lambda_max is not reported")


def _worst_section(ctx: AuditContext, k: int = 5) -> dict:
    """The k samples with the largest lambda_max, with thumbnails of the input and the worst direction."""
    scan_d = ctx.needs("scan", "the worst samples are ranked by lambda_max")
    _not_for_piecewise(scan_d)
    shape = tuple(scan_d["model"]["input"]["sample_shape"])
    ranked = sorted((s for s in scan_d["samples"] if s["lambda_max"] is not None), key=lambda s: -s["lambda_max"])[:k]
    image = _is_image(shape)
    rows = []
    for s in ranked:
        row = {"index": s["index"], "label": s["label"], "predicted": s["predicted"], "lambda_max": s["lambda_max"]}
        if image and "inputs" in ctx.arrays:
            row["input_png"] = _png_data_uri(ctx.arrays["inputs"][s["index"]].reshape(shape), signed=False)
        if image and "directions" in ctx.arrays:
            row["direction_png"] = _png_data_uri(ctx.arrays["directions"][s["index"]].reshape(shape), signed=True)
        rows.append(row)
    note = None if image else f"no thumbnails: the input {list(shape)} is not an image"
    return {"samples": rows, "thumbnails_note": note}


def _attack_section(ctx: AuditContext) -> dict:
    cfg = ctx.config
    _labels_needed(ctx, "attacks")
    runs, skipped = [], []
    whitebox_note = None
    from . import progress as ambient

    bar = ambient.begin("attacks", total=len(cfg.attacks) + (1 if cfg.whitebox else 0))
    if cfg.whitebox:
        bar.update(0, detail="apgd")
        # APGD from exact graph gradients when the graph allows them; the black-box attacks run either way.
        try:
            # also each sample's minimal adversarial distance (binary search with the exact gradients): validity
            runs.append(attack_job(ctx.subject, cfg.build(AttackConfig, attack="apgd", eps=tuple(sorted(cfg.eps)),
                                             min_distance=True, gradients=cfg.gradients_for("whitebox"))).to_dict())
        except FimauditError as exc:
            whitebox_note = f"white-box APGD unavailable: {exc}"
    elif ctx.piecewise is not None:
        whitebox_note = f"skipped: {GRADIENT_NOTE}"
    for k, name in enumerate(cfg.attacks):
        bar.update(k + (1 if cfg.whitebox else 0), detail=name)
        own: dict[str, Any] = {}
        if name == "transfer":
            surrogate = _surrogate_for(ctx)
            if surrogate.model is None:
                skipped.append({"attack": "transfer", "reason": surrogate.reason})
                ctx.step("attacks", k + 1, len(cfg.attacks))
                continue
            own["surrogate"] = surrogate.model
        acfg = cfg.build(AttackConfig, attack=name, eps=tuple(sorted(cfg.eps)),
                         gradients=cfg.gradients_for("blackbox") if name not in SCORELESS else "auto", **own)
        runs.append(attack_job(ctx.subject, acfg, execution=ctx.execution).to_dict())  # black-box: per-sample streams, any worker
        ctx.step("attacks", k + 1, len(cfg.attacks))
    bar.end()
    out = {"norm": cfg.norm, "eps": sorted(cfg.eps), "taus": list(cfg.taus), "runs": runs,
           "whitebox": whitebox_note or ("apgd" if cfg.whitebox else "off"), "skipped": skipped,
           "worst_case": worst_case(runs, cfg.taus), "masking": masking_flags(runs, cfg.norm)}
    if whitebox_note and "no derivative" in whitebox_note:  # the self-check found no usable derivative
        out["masking"].append({"flag": "no_usable_gradient", "detail": f"{whitebox_note}. Vanishing or masked "
                               "gradients are likely (a smooth model's gradient passes this check): gradient attacks "
                               "say nothing here, only the black-box attacks count"})
    if ctx.piecewise is not None:
        out["notes"] = [n for n in ctx.defaults if n.startswith(("attacks", "the policy's attacks"))] or [GRADIENT_NOTE]
    return out


def _surrogate_for(ctx: AuditContext):
    """The float surrogate (fimaudit.piecewise.float_surrogate) of the model, built in memory once."""
    from .piecewise import Surrogate, float_surrogate

    if ctx.surrogate is None:
        if ctx.piecewise is None or ctx.proto is None:
            ctx.surrogate = Surrogate(None, "no float surrogate: the transfer attack needs a piecewise-constant "
                                            "(quantized) model, or `fimaudit attack --attack transfer --surrogate FILE`")
        else:
            ctx.surrogate = float_surrogate(ctx.proto, *ctx.io_names)
    return ctx.surrogate


def _sample_ok(smp: dict, tau: float | None = None) -> bool:
    """A sample withstood one attack run: classified correctly and not broken (robust accuracy); with ``tau``, also
    kept its prediction and moved its predicted-class probability by at most tau (robust ratio)."""
    ok = bool(smp["correct"]) and not bool(smp["success"])
    if tau is None or not ok:
        return ok
    change = smp.get("prob_change")
    return change is not None and int(smp["adv_predicted"]) == int(smp["label"]) and float(change) <= tau + 1e-12


def worst_case(runs: list[dict], taus: tuple[float, ...] | list[float] = ()) -> dict | None:
    """Per eps: robust accuracy when each sample counts as robust only if every attack run failed on it (and it
    was classified correctly): the per-sample worst case over the attacks (AutoAttack's convention). With ``taus``,
    the robust ratio by the same rule: a sample counts only if, under every attack, it kept its prediction and its
    predicted-class probability moved by at most tau. Runs at per-sample radii (--eps-from) make the key
    ``per-sample``."""
    by_eps: dict[float | str, dict[int, list[dict]]] = {}
    names: dict[float | str, list[str]] = {}

    def add(key: float | str, name: str, samples: list[dict]) -> None:
        names.setdefault(key, []).append(name)
        seen = by_eps.setdefault(key, {})
        for smp in samples:
            seen.setdefault(smp["index"], []).append(smp)

    for run in runs:
        for r in run["results"]:
            add(float(r["eps"]), run["config"]["attack"], r["samples"])
        if (run.get("per_sample_radius") or {}).get("samples"):
            add("per-sample", run["config"]["attack"], run["per_sample_radius"]["samples"])
    if not by_eps:
        return None

    def label(key: float | str) -> str:
        return key if isinstance(key, str) else f"{key:g}"

    keys = sorted((k for k in by_eps if not isinstance(k, str))) + [k for k in by_eps if isinstance(k, str)]
    ratio_ok = all("prob_change" in smp for seen in by_eps.values() for rows in seen.values() for smp in rows)
    out = {"robust_accuracy": {label(k): float(np.mean([all(_sample_ok(s) for s in rows) for rows in by_eps[k].values()]))
                               for k in keys},
           "attacks": {label(k): names[k] for k in keys},
           "rule": "a sample is robust at eps only if it is classified correctly and every attack failed on it"}
    if taus and ratio_ok:
        out["robust_ratio"] = {label(k): {f"{t:g}": float(np.mean([all(_sample_ok(s, float(t)) for s in rows)
                                                                  for rows in by_eps[k].values()]))
                                          for t in taus} for k in keys}
        out["ratio_rule"] = ("robust ratio at tau: a sample counts only if, under every attack, it kept its correct "
                             "prediction and its predicted-class probability moved by at most tau")
    return out


# Black-box and score-based attacks: when one of them breaks a sample the white-box APGD did not at the same eps, the
# gradients APGD followed may be masked (Athalye et al. 2018; AutoAttack's checks).
BLACKBOX_ATTACKS = ("square", "rays", "hsja", "transfer", "pgd", "fgsm", "bim")


def masking_flags(runs: list[dict], norm: str) -> list[dict]:
    """Signs of gradient masking in the attack runs, AutoAttack-style: a list of {"flag", "detail"}, empty when
    nothing is suspicious.

    - ``blackbox_beats_whitebox``: at some eps a black-box or score-based attack (Square, RayS, HopSkipJump, the
      transfer attack, black-box PGD; also the Square run beside APGD) broke correctly classified samples that the
      white-box APGD did not;
    - ``zero_gradient``: APGD's loss gradient is exactly zero at correctly classified samples;
    - ``non_monotone``: an attack's robust accuracy (or the per-sample worst case) rises with eps;
    - ``nondeterministic``: the model gave different outputs for the same input.
    """
    flags: list[dict] = []
    wb = next((r for r in runs if r["config"]["attack"] == "apgd"), None)
    if wb is not None:
        by_eps = {float(r["eps"]): r for r in wb["results"]}
        beaten: dict[float, dict[str, list[int]]] = {}
        for run in runs:
            name = run["config"]["attack"]
            if name not in BLACKBOX_ATTACKS:
                continue
            for r in run["results"]:
                w = by_eps.get(float(r["eps"]))
                if w is None:
                    continue
                held = {s["index"] for s in w["samples"] if s["correct"] and not s["success"]}
                idx = sorted(s["index"] for s in r["samples"] if s["correct"] and s["success"] and s["index"] in held)
                if idx:
                    beaten.setdefault(float(r["eps"]), {})[name] = idx
        for eps, r in by_eps.items():  # the Square run beside APGD (its sanity check)
            idx = sorted(set((r.get("sanity") or {}).get("blackbox_beats_whitebox") or []))
            correct = {s["index"] for s in r["samples"] if s["correct"]}
            idx = [i for i in idx if i in correct]
            if idx:
                prev = beaten.setdefault(eps, {}).get("square", [])
                beaten[eps]["square"] = sorted(set(prev) | set(idx))
        for eps in sorted(beaten):
            parts = [f"{name} broke {len(idx)} (sample{'s' if len(idx) > 1 else ''} "
                     f"{', '.join(map(str, idx[:8]))}{', ...' if len(idx) > 8 else ''})"
                     for name, idx in sorted(beaten[eps].items())]
            flags.append({"flag": "blackbox_beats_whitebox", "eps": eps, "count": len(set().union(*beaten[eps].values())),
                          "detail": f"at {norm} eps {eps:g}, black-box attacks broke samples that white-box APGD did "
                                    f"not: {'; '.join(parts)}; APGD's gradients may be masked, so its robust accuracy "
                                    "is overstated (the worst case per sample counts these)"})
        zero = sorted({i for r in wb["results"] for i in ((r.get("sanity") or {}).get("zero_gradient") or [])
                       if any(s["index"] == i and s["correct"] for s in r["samples"])})
        if zero:
            flags.append({"flag": "zero_gradient", "count": len(zero),
                          "detail": f"APGD's loss gradient is exactly zero at {len(zero)} correctly classified "
                                    f"sample{'s' if len(zero) > 1 else ''} ({', '.join(map(str, zero[:8]))}"
                                    f"{', ...' if len(zero) > 8 else ''}): gradient attacks cannot move there "
                                    "(vanishing or masked gradients); trust only the black-box attacks there"})
        if any((r.get("sanity") or {}).get("nondeterministic") for r in wb["results"]):
            flags.append({"flag": "nondeterministic", "detail": "the model gave different outputs for the same input "
                                                                "(randomness in the model masks gradients)"})
    curves = [(run["config"]["attack"], {float(r["eps"]): r["robust_accuracy"] for r in run["results"]}) for run in runs]
    wc = worst_case(runs)
    if wc:
        curves.append(("worst case", {float(k): v for k, v in wc["robust_accuracy"].items() if k != "per-sample"}))
    for name, curve in curves:
        eps = sorted(curve)
        rises = [(a, b) for a, b in zip(eps, eps[1:]) if curve[b] is not None and curve[a] is not None
                 and curve[b] > curve[a] + 1e-12]
        if rises:
            a, b = rises[0]
            flags.append({"flag": "non_monotone", "attack": name,
                          "detail": f"{name}: robust accuracy rises with eps ({curve[a]:.3g} at {norm} eps {a:g}, "
                                    f"{curve[b]:.3g} at {b:g}): a stronger perturbation should never help, so the "
                                    "attack is not converging (masked gradients or too small a budget)"})
    return flags


def _clever_section(ctx: AuditContext) -> dict:
    cfg = ctx.config
    if ctx.piecewise is not None:  # CLEVER estimates a local Lipschitz constant from gradients: 0 almost everywhere
        raise Unavailable(f"not applicable: piecewise-constant model ({ctx.piecewise.ops_text()}): CLEVER's gradient "
                          "norms are 0 almost everywhere")
    _labels_needed(ctx, "CLEVER scores")
    ccfg = cfg.build(CleverConfig, samples=min(cfg.clever_samples, cfg.samples or cfg.clever_samples), norm="l2",
                     radius=cfg.clever_radius, points=cfg.clever_points, seeds=2, gradients=cfg.gradients_for("scan"))
    return clever_job(ctx.subject, ccfg).to_dict()


def _metrics_section(ctx: AuditContext) -> dict:
    cfg = ctx.config
    _labels_needed(ctx, "the metric suite")
    x = ctx.arrays.get("inputs")
    # Corruptions are defined on images in [0, 1]; other inputs still get the rest of the suite.
    in_unit = x is None or (float(x.min()) >= -1e-6 and float(x.max()) <= 1 + 1e-6)  # sanity.RANGE_TOLERANCE
    mcfg = cfg.build(MetricsConfig, samples=cfg.metrics_samples, attack_samples=0, corruptions=cfg.corruptions and in_unit)
    rep = metrics_job(ctx.subject, mcfg).to_dict()
    if cfg.corruptions and not in_unit:
        rep["corruptions_skipped"] = corruption_skip_reason(float(x.min()), float(x.max()), cfg.scale)
    if rep["corruptions"]:
        sev = sorted({int(s) for row in rep["corruptions"].values() for s in row})
        rep["corruption_mean_by_severity"] = {str(s): float(np.mean([row[str(s)] for row in rep["corruptions"].values()]))
                                              for s in sev}
    return rep


def corruption_skip_reason(xmin: float, xmax: float, scale: float) -> str:
    """Why the corruptions did not run on data outside [0, 1], and exactly what to pass so that they do."""
    if xmin >= 0 and xmax > 1 and xmax <= 255 * max(scale, 1e-300) + 1e-6 and scale == 1.0:
        fix = "pass --scale 1/255 (0-255 pixels)"
    else:
        fix = ("store the images un-normalised (pixels in [0, 1], or 0-255 with --scale 1/255) and give the model's "
               "normalisation as --mean M --std S (per channel, e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225),"
               " so that the model input is (x*scale - mean)/std")
    return (f"corruptions are defined on images in [0, 1] and the data lie in [{xmin:.4g}, {xmax:.4g}] after --scale "
            f"(pre-normalised?): {fix}; or set [audit] corruptions = false")


def _validity_section(ctx: AuditContext) -> dict:
    """Per sample: the FIM-predicted radius 1/sqrt(lambda_max) against the minimal adversarial distance.

    The distance is the white-box minimal-distance search (in the attack norm) when the gradient
    graph allowed it; otherwise the smallest eps of the policy grid at which an attack succeeded.
    """
    scan_d = ctx.needs("scan", "the FIM radius")
    att = ctx.needs("attacks", "the adversarial distances")
    _not_for_piecewise(scan_d)
    lam = {s["index"]: s["lambda_max"] for s in scan_d["samples"]}
    smallest: dict[int, float] = {}
    minimal = next((run["minimal_distance"][att["norm"]]["per_sample"] for run in att["runs"]
                    if run.get("minimal_distance")), None)
    if minimal is not None:
        order = [s["index"] for s in scan_d["samples"]]
        smallest = {i: float(d) for i, d in zip(order, minimal) if d is not None and np.isfinite(d) and d > 0}
    for run in ([] if minimal is not None else att["runs"]):
        for r in run["results"]:
            for s in r["samples"]:
                if s["success"]:
                    smallest[s["index"]] = min(smallest.get(s["index"], np.inf), float(r["eps"]))
    rows = []
    for i, lm in sorted(lam.items()):
        if lm is None or lm <= 0:
            continue
        rows.append({"index": i, "lambda_max": lm, "fim_radius": float(1.0 / np.sqrt(lm)),
                     "min_adversarial_eps": smallest.get(i), "censored": i not in smallest})
    hit = [(r["fim_radius"], r["min_adversarial_eps"]) for r in rows if not r["censored"]]
    rho = None
    if len(hit) >= 3 and np.ptp([h[0] for h in hit]) > 0 and np.ptp([h[1] for h in hit]) > 0:
        from scipy import stats  # here: importing scipy.stats costs ~0.9 s at start-up

        rho = float(stats.spearmanr([h[0] for h in hit], [h[1] for h in hit]).statistic)
    return {"samples": rows, "spearman": rho, "attacked": len(hit), "max_eps": max(att["eps"]),
            "radius_units": "model-input units (1/sqrt(lambda_max): where the local KL reaches 1/2)",
            "eps_units": f"attack units ({att['norm']})",
            "distance": "white-box minimal distance" if minimal is not None else "smallest successful eps on the grid"}


def _certify_section(ctx: AuditContext) -> dict:
    cfg = ctx.config
    if cfg.certify_sigma is None:
        raise Unavailable("randomized smoothing runs only when the policy's [audit] sets certify_sigma (or by "
                          "default on a piecewise-constant model)")
    ccfg = cfg.build(CertifyConfig, sigma=cfg.certify_sigma, n=cfg.certify_n, radii=tuple(cfg.certify_radii))
    ccfg.validate()
    out = certify_job(ctx.subject, ccfg, lambda done, total, _q: ctx.step("certify", done, total), ctx.execution).to_dict()
    chosen = [n for n in ctx.defaults if n.startswith("certify")]
    out["sigma_source"] = {"source": "default" if chosen else "policy", "rule": CERTIFY_SIGMA_RULE if chosen else
                           "set by the policy's [audit] certify_sigma", "sigma": cfg.certify_sigma}
    return out


def _verify_section(ctx: AuditContext) -> dict:
    """Certified robust accuracy per eps by bound propagation (fimaudit.verify, CROWN), beside the attacks'
    per-sample worst case: certified <= worst case always; a sample verified and broken is a soundness failure."""
    from .errors import UnsupportedModelError
    from .verify.run import VerifyConfig, verify_job

    cfg = ctx.config
    if not cfg.verify:
        raise Unavailable("bound propagation runs when the policy's [audit] sets verify = true or a check names "
                          "verify.certified_accuracy[NORM=EPS] (about 1-3 s per sample and eps on a small conv net)")
    _labels_needed(ctx, "verified robust accuracy")
    vcfg = cfg.build(VerifyConfig, eps=tuple(sorted(cfg.eps)), bisect=False, method="crown")
    try:
        out = verify_job(ctx.subject, vcfg, execution=ctx.execution).to_dict()
    except UnsupportedModelError as exc:
        raise Unavailable(f"bound propagation does not cover this graph: {exc}") from None
    att_data = ctx.data.get("attacks")  # the attacks section's result when it ran (it runs before this one)
    worst = ((att_data or {}).get("worst_case") or {}).get("robust_accuracy") or {}
    broken: dict[str, set] = {}
    for run in (att_data or {}).get("runs", []):
        for r in run["results"]:
            broken.setdefault(f"{float(r['eps']):g}", set()).update(
                smp["index"] for smp in r["samples"] if smp["success"])
    rows, violations = [], 0
    for k, res in enumerate(out["results"]):
        key = f"{float(res['eps']):g}"
        ver = {smp["index"] for smp in out["samples"] if smp["bounds"][k]["verified"]}
        bad = sorted(ver & broken.get(key, set()))
        violations += len(bad)
        rows.append({"eps": float(res["eps"]), "certified_accuracy": res["certified_accuracy"],
                     "attack_worst_case": worst.get(key), "verified_but_broken": bad})
    out["comparison"] = {"norm": cfg.norm, "rows": rows, "violations": violations,
                         "rule": "certified robust accuracy <= the attacks' per-sample worst case; a sample verified "
                                 "and broken by an attack at the same eps would be a soundness failure"}
    return out


def _preprocessing_section(ctx: AuditContext) -> dict:
    if ctx.preprocessing is None:
        raise Unavailable("no --data: there are no clean predictions to check")
    return ctx.preprocessing


SECTIONS: list[SectionSpec] = [
    SectionSpec("preprocessing", "Preprocessing sanity (clean predictions against labels)", _preprocessing_section),
    SectionSpec("scan", "Input-space Fisher information", _scan_section),
    SectionSpec("worst", "Worst samples", _worst_section),
    SectionSpec("bounds", "Closed-form bound from the weights", _bounds_section),
    SectionSpec("attacks", "Attacks", _attack_section),
    SectionSpec("clever", "CLEVER scores", _clever_section),
    SectionSpec("metrics", "Metric suite and corruptions", _metrics_section),
    SectionSpec("validity", "FIM-predicted radius against attacks", _validity_section),
    SectionSpec("certify", "Certified radius (randomized smoothing)", _certify_section),
    SectionSpec("verify", "Verified robust accuracy (bound propagation)", _verify_section),
]


def run_audit(cfg: AuditConfig, progress: ProgressFn | None = None, execution: Any = None) -> AuditResult:
    """Every section in order; bad input (model, data, options) raises, a failing section is recorded."""
    from . import progress as ambient

    with ambient.task("section", total=len(SECTIONS)) as bar:
        return _run_audit(cfg, progress, execution, bar)


def _run_audit(cfg: AuditConfig, progress: ProgressFn | None, execution: Any, bar) -> AuditResult:
    cfg.validate()
    given_range = cfg.input_range is not None
    # Open the model (once: every section runs on this subject) and read the data up front, so that bad input is
    # exit 2, not N unavailable sections.
    subject = open_subject(cfg)
    model = subject.model()
    pw = model.info.piecewise
    piecewise = pw is not None and pw.complete
    prep = inputs = None
    if cfg.data is not None:
        prep = subject.prepare(model, cfg.data, cfg.samples, cfg.scale, cfg.mean, cfg.std, DataOptions.of(cfg))
        inputs = subject.spaces(prep).to_attack(prep.dataset.x)
    cfg, derived_range = cfg.resolve_input_range(inputs)
    cfg, defaults = cfg.resolve_defaults(piecewise)
    if derived_range is not None:
        defaults = [derived_range["note"], *defaults]
    ctx = AuditContext(cfg, subject, progress=progress, execution=execution, piecewise=pw if piecewise else None,
                       proto=model.proto if piecewise else None,
                       io_names=(model.info.input.name, model.info.output.name), defaults=defaults)
    if prep is not None:
        ctx.arrays["inputs"] = inputs
        if prep.dataset.y is None:
            ctx.unlabelled_reason = f"{cfg.data} has no labels (y, subfolders or labels.csv)"
        ctx.data_notes = [n for n in prep.notes if "--classes" in n]

        raw = model.run(prep.pre.apply(prep.dataset.x, model.sample_shape))  # one clean query per sample
        ctx.preprocessing = checked(np.argmax(raw, axis=1), prep.dataset.y, raw.shape[1]).to_dict()
        defaults = defaults + ctx.data_notes
    # every section when none is named; the preprocessing check always runs (the others mean nothing without it)
    wanted = set(cfg.sections) | {"preprocessing"} if cfg.sections else {s.name for s in SECTIONS}
    sections = []
    for spec in SECTIONS:
        bar.update(SECTIONS.index(spec), detail=spec.name)
        if spec.name not in wanted:
            ctx.reasons[spec.name] = "not requested"
            sections.append(Section(spec.name, "unavailable", "not requested", {}))
            continue
        t0 = time.perf_counter()
        try:
            with muted():  # the preprocessing warning was given once above; the jobs keep their notes
                data = spec.run(ctx)
            ctx.data[spec.name] = data
            sections.append(Section(spec.name, "ok", None, data, time.perf_counter() - t0))
        except (Unavailable, FimauditError) as exc:
            ctx.reasons[spec.name] = str(exc)
            sections.append(Section(spec.name, "unavailable", str(exc), {}, time.perf_counter() - t0))
        except Exception as exc:  # a bug in one section must not cost the other sections
            if os.environ.get("FIMAUDIT_DEBUG"):
                raise
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            ctx.reasons[spec.name] = msg
            sections.append(Section(spec.name, "error", msg, {}, time.perf_counter() - t0))
        ctx.step(spec.name, 1, 1)
    cfg_d = asdict(cfg)
    cfg_d.pop("extra", None)
    cfg_d["input_range_source"] = (derived_range or {}).get("source") or ("given" if given_range else "default [0, 1]")
    context = audit_context(cfg, None if prep is None else len(prep.dataset.x), None if prep is None else prep.config,
                            ctx.data.get("scan"))
    return AuditResult(
        model={"path": cfg.model, "sha256": model.info.sha256, "sample_shape": list(model.sample_shape),
               "input": model.info.input.name, "output": model.info.output.name, "provider": model.provider}
        | ({} if model.info.piecewise is None else {"piecewise": model.info.piecewise.to_dict()})
        | ({"defaults": defaults} if defaults else {}),
        config=cfg_d, sections=tuple(sections), context=context,
    )


def scan_result_of(result: AuditResult) -> ScanResult | None:
    sec = result.section("scan")
    return ScanResult.from_dict(sec.data) if sec is not None and sec.status == "ok" else None

