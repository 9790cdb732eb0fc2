"""``fimaudit verify``: per sample and eps, is every other class's margin z_y - z_k provably positive over the set?

The set is the attack space's (``fimaudit attack``): an L-inf or L2 ball of radius eps around the sample,
intersected with ``--input-range``, mapped through --scale/--mean/--std and the layout by the same code
(``fimaudit.evidence.load_attack_inputs``). Bounds come from ``fimaudit.verify.engine`` (IBP, CROWN).
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError
from ..results import VerifyResult
from ..options import ModelDataOptions

METHODS = ("crown", "ibp")
REFINE_LIMIT = 4096  # --method crown: a tensor's intermediate bounds by CROWN when at most this many elements need it
BISECT_STEPS = 10
GROW_STEPS = 6


@dataclass(frozen=True)
class VerifyConfig(ModelDataOptions):
    model: str
    data: str | None = None
    samples: int | None = None
    norm: str = "linf"
    eps: tuple[float, ...] = (0.03,)
    eps_from: str | None = None
    method: str = "crown"
    bisect: bool = True
    input_range: tuple[float, float] = (0.0, 1.0)
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    seed: int = 0
    refine_limit: int = REFINE_LIMIT
    branches: int = 0  # --branches: ReLU branch-and-bound budget per sample and eps (0: the CROWN/IBP bound alone)

    def validate(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"--norm must be linf or l2, not '{self.norm}'")
        if self.method not in METHODS:
            raise ConfigError(f"--method must be crown or ibp, not '{self.method}'")
        if self.data is None:
            raise ConfigError("verify needs --data with labels (a sample is verified for its label)")
        if not self.eps and not self.eps_from:
            raise ConfigError("--eps needs at least one radius (or --eps-from KEY)")
        if any(not (e >= 0) for e in self.eps):
            raise ConfigError("--eps values must be nonnegative (inf: the whole --input-range box)")


def method_description(method: str, refined: bool, limit: int = REFINE_LIMIT) -> str:
    if method == "ibp":
        return "IBP: interval bound propagation through every operator (Gowal et al. 2018)"
    if refined:
        return ("CROWN: linear bounds back-substituted from the margin specification to the input (Zhang et al. 2018); "
                "the inputs of nonlinear operators bounded by CROWN too where at most "
                f"{limit} of a tensor's elements need it (unstable ReLUs), by IBP elsewhere; the larger of it and IBP")
    return ("CROWN-IBP style: the margin specification (K-1 rows) back-substituted by CROWN through the whole graph, "
            "intermediate (pre-activation) bounds from IBP (Zhang et al. 2020); the larger of it and IBP")


class SampleVerifier:
    """Verification of one sample at given radii, from a ``BoundGraph``; the unit of work on Dask workers."""

    def __init__(self, graph, cfg: VerifyConfig, pre) -> None:
        self.graph, self.cfg, self.pre = graph, cfg, pre
        self.refine = "auto" if cfg.method == "crown" else False

    def margins(self, x0: np.ndarray, label: int, eps: float) -> np.ndarray:
        from .sets import InputSet

        s = InputSet.of(x0, eps, self.cfg.norm, self.cfg.input_range, self.pre)
        try:
            b = self.graph.intervals(s, refine=self.refine, refine_limit=self.cfg.refine_limit)
            return self.graph.margins(b, s, label, self.cfg.method)
        except FloatingPointError:
            return np.full(1, -np.inf)

    def verified(self, x0, label, eps, branches: int = 0) -> tuple[bool, np.ndarray, int]:
        """(verified, margin lower bounds at the root, branches used)."""
        if branches > 0 and self.cfg.method == "crown":
            from .bab import verify_bab
            from .sets import InputSet

            s = InputSet.of(x0, eps, self.cfg.norm, self.cfg.input_range, self.pre)
            return verify_bab(self.graph, s, label, self.cfg.method, branches, self.refine, self.cfg.refine_limit)
        m = self.margins(x0, label, eps)
        finite = np.where(np.isfinite(m), m, np.where(m > 0, np.inf, -np.inf))
        return bool(np.all(np.delete(finite, label) > 0)) if finite.size > 1 else bool(np.all(finite > 0)), m, 0

    def radius(self, x0, label, start: float) -> float:
        """The largest radius found verified: grow from ``start`` by doubling, then bisect."""
        lo, hi = 0.0, None
        r = start if start > 0 and np.isfinite(start) else 1e-3 * (self.cfg.input_range[1] - self.cfg.input_range[0])
        if not np.isfinite(r) or r <= 0:
            r = 1e-3
        for _ in range(GROW_STEPS):
            ok = self.verified(x0, label, r)[0]
            if ok:
                lo = r
                r *= 2
            else:
                hi = r
                break
        if hi is None:
            return lo
        for _ in range(BISECT_STEPS):
            mid = 0.5 * (lo + hi)
            ok = self.verified(x0, label, mid)[0]
            lo, hi = (mid, hi) if ok else (lo, mid)
        return lo

    def sample(self, index: int, x0: np.ndarray, label: int, predicted: int, radii: list[float]) -> dict:
        t0 = time.perf_counter()
        correct = predicted == label
        rows = []
        for eps in radii:
            if not correct:
                rows.append({"eps": eps, "verified": False, "margin_lower": None, "margins": None, "branches": 0})
                continue
            ok, m, used = self.verified(x0, label, eps, self.cfg.branches)
            others = np.delete(m, label) if m.size > 1 else m
            rows.append({"eps": eps, "verified": ok, "margin_lower": float(np.min(others)),
                         "margins": [None if k == label else float(v) for k, v in enumerate(m)] if m.size > 1 else None,
                         "branches": used})
        radius = None
        if self.cfg.bisect:
            radius = 0.0
            if correct:
                start = max([r["eps"] for r in rows if r["verified"] and np.isfinite(r["eps"])] or
                            [min([e for e in radii if np.isfinite(e) and e > 0] or [0.0])])
                radius = self.radius(x0, label, start)
        return {"index": index, "label": label, "predicted": predicted, "correct": correct, "bounds": rows,
                "certified_radius": radius, "seconds": time.perf_counter() - t0}


@dataclass(frozen=True)
class VerifyWork:
    """Per-sample verification for ``fimaudit.distributed.run_per_sample`` (one BoundGraph per worker process)."""

    cfg: VerifyConfig
    pre: object
    radii: tuple  # per sample: the list of radii to check
    predicted: tuple

    def __call__(self, model, indices, points, labels) -> list[dict]:
        from .engine import BoundGraph

        graph = BoundGraph.from_model(model)
        job = SampleVerifier(graph, self.cfg, self.pre)
        return [job.sample(int(i), points[j], int(labels[j]), int(self.predicted[i]), list(self.radii[i]))
                for j, i in enumerate(indices)]


def _json_eps(e: float):
    return e if np.isfinite(e) else "inf"


def run_verify(cfg: VerifyConfig, progress=None, execution=None) -> VerifyResult:
    """``verify_job`` on the subject of ``cfg.model`` (opened once the config is validated)."""
    return verify_job(None, cfg, progress, execution)


def verify_job(subject, cfg: VerifyConfig, progress=None, execution=None) -> VerifyResult:
    """Verify every sample of ``subject`` (a ``fimaudit.subject.Subject``; None: opened from ``cfg``) at every eps
    (and its own radius with --eps-from); bisect the certified radius."""
    from ..distributed import run_per_sample
    from ..evidence import AttackConfig, load_attack_inputs
    from .engine import BoundGraph

    cfg.validate()
    t0 = time.perf_counter()
    shared = {f: getattr(cfg, f) for f in ModelDataOptions.__dataclass_fields__}
    acfg = AttackConfig(**shared, model=cfg.model, data=cfg.data, samples=cfg.samples, input_range=cfg.input_range,
                        scale=cfg.scale, mean=cfg.mean, std=cfg.std, seed=cfg.seed, eps=cfg.eps, norm=cfg.norm)
    inputs = load_attack_inputs(acfg, subject)
    model, oracle, kind, x, y, pre, notes = inputs
    graph = BoundGraph.from_model(model)  # refuses unsupported operators before any work
    clean = oracle.logp(x)
    predicted = np.argmax(clean, axis=1)
    from ..sanity import checked

    checked(predicted, y, clean.shape[1], notes)
    own = None
    if cfg.eps_from:
        from ..data import load_radii

        own, note = load_radii(cfg.data, cfg.eps_from, len(x))
        if note:
            notes.append(note)
    radii = tuple(tuple(cfg.eps) + ((float(own[i]),) if own is not None else ()) for i in range(len(x)))
    work = VerifyWork(cfg, pre, radii, tuple(int(p) for p in predicted))
    rows, info = run_per_sample(work, model, x, [int(v) for v in y], execution=execution, progress=progress,
                                device=cfg.device, threads=cfg.threads, blob=inputs.subject.model_bytes)
    refined = bool(cfg.method == "crown" and graph.refine_targets("auto", cfg.refine_limit))
    if cfg.branches and cfg.method != "crown":
        notes.append("--branches applies to --method crown only; ignored")
    results = []
    for k, eps in enumerate(cfg.eps):
        ver = [bool(r["bounds"][k]["verified"]) for r in rows]
        results.append({"eps": _json_eps(eps), "verified": int(sum(ver)), "certified_accuracy": float(np.mean(ver))})
    per_sample = None
    if own is not None:
        k = len(cfg.eps)
        ver = [bool(r["bounds"][k]["verified"]) for r in rows]
        per_sample = {"eps_from": cfg.eps_from, "verified": int(sum(ver)), "certified_accuracy": float(np.mean(ver)),
                      "eps_median": float(np.median(own)), "eps_min": float(own.min()), "eps_max": float(own.max())}
    for r in rows:
        for b in r["bounds"]:
            b["eps"] = _json_eps(b["eps"])
    seconds = time.perf_counter() - t0
    cfg_d = asdict(cfg)
    cfg_d["eps"] = [_json_eps(e) for e in cfg.eps]
    cfg_d["input_range"] = list(cfg.input_range)
    radii_found = [r["certified_radius"] for r in rows if r["certified_radius"] is not None]
    return VerifyResult.of({
        "model": {"path": cfg.model, "sha256": model.info.sha256, "output_kind": kind,
                  "sample_shape": list(model.sample_shape), "logits": graph.logit_name},
        "config": cfg_d,
        "method": {"name": cfg.method, "intermediate": "crown" if refined else "ibp",
                   "description": method_description(cfg.method, refined, cfg.refine_limit),
                   "branches": cfg.branches if cfg.method == "crown" else 0,
                   "bisection": "the root bound of --method, no branching" if cfg.bisect else None},
        "set": {"norm": cfg.norm, "input_range": list(cfg.input_range), "preprocess": pre.to_dict(),
                "units": "attack units (data x --scale), the units of --eps; the model receives (x - mean) / std"},
        "soundness": "bounds hold for the float32 evaluation: float64 intervals widened by per-operator float32 "
                     "rounding margins (docs/verify.md)",
        "clean_accuracy": float(np.mean(predicted == y)),
        "results": results,
        "per_sample_radius": per_sample,
        "certified_radius": None if not cfg.bisect else {
            "median": float(np.median(radii_found)) if radii_found else None,
            "mean": float(np.mean(radii_found)) if radii_found else None},
        "samples": rows,
        "notes": notes,
        "runtime": {"provider": info.get("provider")} | ({"execution": info["execution"]} if "execution" in info else {}),
        "timing": {"seconds": seconds, "seconds_per_sample": seconds / max(len(x), 1),
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0},
    })
