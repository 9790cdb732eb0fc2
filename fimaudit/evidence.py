"""Attack-based evidence: ``fimaudit attack`` (RA/RR curves) and ``fimaudit compare`` (models side by side).

Attacks and CLEVER run in attack space: stored data times ``--scale`` (e.g. pixels in
[0, 1]), bounded by ``--input-range``; the model receives (x - mean) / std. eps is in those
units.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import progress as ambient
from . import streams
from .options import ModelDataOptions
from .attacks import AttackOutcome, RowRng, make_attack
from .attack_space import attack_oracle
from .data import Preprocess
from .errors import ConfigError
from .estimators.fd import range_step
from .results import AttackResult, CleverResult, CompareResult
from .metrics.clever import clever
from .metrics.robustness import prob_change, robust_accuracy, robust_ratio
from .metrics.suite import MetricsConfig, metrics_job
from .scan import ScanConfig, scan_job
from .subject import OPEN_FIELDS, AttackInputs, OpenOptions, Subject, open_subject

DEFAULT_TAUS = (0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class AttackConfig(ModelDataOptions):
    model: str
    data: str
    attack: str = "pgd"
    norm: str = "linf"
    eps: tuple[float, ...] = (0.03,)
    budget: int = 2000
    samples: int | None = None
    input_range: tuple[float, float] = (0.0, 1.0)
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    seed: int = 0
    taus: tuple[float, ...] = DEFAULT_TAUS
    steps: int | None = None
    # Where gradients come from (--gradients): black-box FGSM/BIM/PGD take auto | fd | zo (finite differences or
    # zeroth-order estimates from counted queries), white-box pgd-wb/apgd take auto | graph (the gradient graph).
    gradients: str = "auto"
    loss: str = "ce"  # white-box attacks: ce | dlr
    restarts: int = 1  # white-box attacks: random restarts after the first run
    min_distance: bool = False  # white-box attacks: also each sample's smallest adversarial L2 and L-inf distance
    eps_from: str | None = None  # --eps-from KEY: also attack each sample at its own radius (array KEY of the .npz)
    # --attack transfer: the surrogate whose gradient graph drives APGD (an ONNX path or an onnx.ModelProto); it takes
    # the model's input (same shape and preprocessing); success is decided on the model alone
    surrogate: object = None
    extra: dict = field(default_factory=dict)


def load_attack_inputs(cfg: AttackConfig, subject: Subject | None = None) -> AttackInputs:
    """The attack-space inputs of ``cfg`` on ``subject`` (None: opened from ``cfg``): ``Subject.attack_inputs``,
    which unpacks as (model, oracle, output kind, attack-space rows x, labels y, attack-space preprocessing, notes).
    """
    if cfg.budget < 3:
        raise ConfigError("--budget must be at least 3 queries per sample")
    if subject is None:
        subject = open_subject(cfg)
    subject.check(cfg)
    return subject.attack_inputs(cfg)


def gradient_oracle(model, oracle, kind: str, pre: Preprocess, x: np.ndarray, mode: str, seed: int):
    """Attack-space exact gradients from the model's gradient graph (self-checked), or (None, reason).

    Attack space is the data times --scale; the model receives (x - mean) / std, so a VJP in
    model-input units is divided by std.
    """
    from .attacks import GradientOracle
    from .autodiff.select import build_gradient_source

    shape = model.sample_shape
    to_input = (lambda rows: rows) if pre.is_identity else (lambda rows: pre.apply(rows, shape))
    from .estimators.fd import input_scale
    from .scan import DITHER_REL, TIE_WARNING_SHARE, tie_fraction

    check = np.asarray(x[:2], dtype=np.float64).copy()
    for j, row in enumerate(check):
        if tie_fraction(row) >= TIE_WARNING_SHARE:
            # the self-check compares with central differences, which mean nothing at exact ties (the scan's
            # per-sample dither rule: 3% of that sample's RMS, stream [seed, 4, index])
            xi = streams.rng(seed, "scan.dither", j).standard_normal(row.shape)
            check[j] = row + DITHER_REL * input_scale(row) * xi
    choice = build_gradient_source(model, kind, "graph" if mode == "graph" else "auto", to_input(check),
                                   streams.rng(seed, "gradients.build"))
    if choice.source != "graph":
        return None, choice.to_dict()
    scale = pre.jacobian_diag(shape)

    def vjp_at(rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        return choice.engine.vjp(to_input(rows), u)[1] * scale

    return GradientOracle(oracle, vjp_at), choice.to_dict()


@dataclass(frozen=True)
class AttackWork:
    """A black-box attack on a chunk of samples, for ``fimaudit.distributed``: per-sample outcomes at every eps.

    Row i draws from ``[seed, i, eps index]`` (``RowRng``), so its outcome does not depend on the chunk.
    """

    config: AttackConfig
    kind: str
    pre: Preprocess  # attack space -> model input (scale 1)
    radii: np.ndarray | None = None  # --eps-from: every sample's own radius (all samples, indexed by sample index)

    def __call__(self, model, indices, points: np.ndarray, labels) -> list[list[dict]]:
        from .model.oracle import LogProbOracle

        shape = model.sample_shape
        oracle = LogProbOracle(model, self.kind, None if self.pre.is_identity else (lambda r: self.pre.apply(r, shape)))
        cfg = self.config
        attack = make_attack(cfg.attack, steps=cfg.steps, grad=cfg.gradients, loss=cfg.loss, restarts=cfg.restarts,
                             channel_axis=self.pre.channel_axis)
        y = np.asarray(labels, dtype=np.int64)
        clean = oracle.logp(points)
        outs = [attack(oracle, points, y, eps, cfg.norm, cfg.input_range, RowRng.named(cfg.seed, "attack.rows", indices, k),
                       cfg.budget, clean_logp=clean) for k, eps in enumerate(cfg.eps)]
        if self.radii is not None:  # each sample at its own radius, stream index after the listed eps
            own = np.asarray(self.radii)[np.asarray(indices)]
            idx_all = np.asarray(indices)
            parts = []
            for value in np.unique(own):
                sel = np.flatnonzero(own == value)
                parts.append((sel, attack(oracle, points[sel], y[sel], float(value), cfg.norm, cfg.input_range,
                                          RowRng.named(cfg.seed, "attack.rows", idx_all[sel], len(cfg.eps)), cfg.budget,
                                          clean_logp=clean[sel])))
            outs.append(_combine(parts, len(indices), cfg.norm))
        return [[{"x_adv": o.x_adv[j], "success": o.success[j], "correct": o.correct[j], "clean_logp": o.clean_logp[j],
                  "adv_logp": o.adv_logp[j], "queries": o.queries[j]} for o in outs] for j in range(len(indices))]


def _combine(parts: list[tuple[np.ndarray, AttackOutcome]], n: int, norm: str) -> AttackOutcome:
    """One outcome over all n samples from outcomes on groups of them (``idx``, outcome)."""
    if len(parts) == 1 and len(parts[0][0]) == n:
        return parts[0][1]
    first = parts[0][1]

    def col(name: str) -> np.ndarray:
        ref = getattr(first, name)
        out = np.empty((n,) + ref.shape[1:], dtype=ref.dtype)
        for idx, o in parts:
            out[idx] = getattr(o, name)
        return out

    return AttackOutcome(col("x_adv"), col("success"), col("correct"), col("clean_logp"), col("adv_logp"),
                         col("queries"), float("nan"), norm)


def _merge_outcomes(rows: list[list[dict]], eps: float, k: int, norm: str) -> AttackOutcome:
    """The eps-``k`` outcome of every sample, stacked in sample order."""
    def col(key: str) -> np.ndarray:
        return np.stack([r[k][key] for r in rows])
    return AttackOutcome(col("x_adv"), col("success"), col("correct"), col("clean_logp"), col("adv_logp"),
                         col("queries"), float(eps), norm)


GRADIENTS_FOR = {"whitebox": ("auto", "graph"), "blackbox": ("auto", "fd", "zo"), "square": ("auto",)}
SCORELESS = ("square", "rays", "hsja")  # attacks that take no gradients at all (scores or decisions only)


def check_gradients(attack: str, gradients: str) -> None:
    """``--gradients`` values that apply to ``attack``: one line naming the alternatives otherwise."""
    from .attacks import WHITEBOX

    use = "whitebox" if attack in WHITEBOX + ("transfer",) else "square" if attack in SCORELESS else "blackbox"
    allowed = GRADIENTS_FOR[use]
    if gradients in allowed:
        return
    if use == "whitebox":
        raise ConfigError(f"--gradients {gradients} does not apply to --attack {attack}: white-box attacks take exact "
                          "gradients from the gradient graph (auto | graph); for black-box gradients use --attack pgd "
                          f"--gradients {gradients}")
    if use == "square":
        what = "Square uses no gradients, only scores" if attack == "square" else \
            f"{'RayS' if attack == 'rays' else 'HopSkipJump'} uses no gradients, only the predicted class"
        raise ConfigError(f"--gradients {gradients} does not apply to --attack {attack}: {what} (leave --gradients "
                          "at auto)")
    raise ConfigError(f"--gradients {gradients} does not apply to --attack {attack} (auto | fd | zo): for exact "
                      "gradients from the gradient graph use --attack pgd-wb or apgd")


def attack_config_dict(cfg: AttackConfig) -> dict:
    """The attack's JSON config: the options an attack run uses (no ``extra``)."""
    out = asdict(cfg)
    out.pop("extra", None)
    if out.get("surrogate") is not None and not isinstance(out["surrogate"], str):
        out["surrogate"] = str(out["surrogate"]) if _is_path(out["surrogate"]) else "onnx.ModelProto (in memory)"
    return out


def _is_path(value) -> bool:
    import os

    return isinstance(value, (str, os.PathLike))


def surrogate_flat_at(surrogate, x: np.ndarray, y: np.ndarray) -> int:
    """How many samples the surrogate's cross-entropy gradient is exactly zero at (its rows count as its work)."""
    from .attacks.whitebox import loss_and_weights

    _, u = loss_and_weights(surrogate.logp(x), y, "ce")
    g = surrogate.vjp_at(x, u).reshape(len(x), -1)
    return int(np.sum(~np.any(g != 0, axis=1)))


def surrogate_oracle(cfg: AttackConfig, model, pre: Preprocess, x: np.ndarray):
    """The surrogate's attack-space gradient oracle for ``--attack transfer`` and its record for the report.

    The surrogate (a path or an ``onnx.ModelProto``) gets the model's preprocessing; its gradient graph
    must build and pass its self-check (there is no fallback: a transfer attack is its gradients).
    """
    import tempfile
    from pathlib import Path

    if cfg.surrogate is None:
        raise ConfigError("--attack transfer needs --surrogate FILE: a differentiable model taking the same input "
                          "(e.g. the float twin of a quantized or binarized model)")
    with tempfile.TemporaryDirectory() as tmp:
        path = cfg.surrogate
        if not _is_path(path):
            import onnx

            if not isinstance(path, onnx.ModelProto):
                raise ConfigError(f"the surrogate must be an ONNX file or an onnx.ModelProto, not {type(path).__name__}")
            path = Path(tmp) / "surrogate.onnx"
            onnx.save(cfg.surrogate, str(path))
        sur = open_subject(OpenOptions(str(path), input_name=cfg.input_name, output_name=None,
                                       input_shape=cfg.input_shape, device=cfg.device, max_batch=cfg.max_batch,
                                       threads=cfg.threads)).model()
    if tuple(sur.sample_shape) != tuple(model.sample_shape):
        raise ConfigError(f"the surrogate takes samples of shape {list(sur.sample_shape)}, the model "
                          f"{list(model.sample_shape)}: a surrogate must take the model's input")
    sur_oracle, sur_kind = attack_oracle(sur, pre, "auto", x)
    wb, record = gradient_oracle(sur, sur_oracle, sur_kind, pre, x, "graph" if cfg.gradients == "graph" else "auto",
                                 cfg.seed)
    if wb is None:
        raise ConfigError(f"--attack transfer needs the surrogate's exact gradients, but {record['reason']}")
    return wb, {"surrogate": {"path": attack_config_dict(cfg)["surrogate"], "sha256": sur.info.sha256,
                              "output_kind": sur_kind}} | record


def run_attack(cfg: AttackConfig, progress: Callable[[int, int], None] | None = None,
               execution=None) -> AttackResult:
    """``attack_job`` on the subject of ``cfg.model`` (opened once its options are checked)."""
    return attack_job(None, cfg, progress, execution)


def attack_job(subject: Subject | None, cfg: AttackConfig, progress: Callable[[int, int], None] | None = None,
               execution=None) -> AttackResult:
    """Attack every sample at every eps of ``subject`` (None: opened from ``cfg``); returns the JSON-ready report.

    Each sample draws from its own stream ``[seed, sample index, eps index]``, so the report is
    the same for any batching; ``execution`` (``fimaudit.distributed.Execution``) runs black-box
    attacks in chunks on Dask workers. White-box attacks (pgd-wb, apgd) take exact gradients from
    the gradient graph and also run black-box Square at each eps for the sanity flags (``sanity``).
    """
    with ambient.task(f"{cfg.attack} {cfg.norm}", unit="eps") as bar:
        return _run_attack(cfg, progress, execution, bar, subject)


def _run_attack(cfg: AttackConfig, progress, execution, bar, subject: Subject | None) -> AttackResult:
    from .attacks import WHITEBOX, Square, sanity_flags

    t0 = time.perf_counter()
    distributed = execution is not None and execution.distributed
    if distributed:
        execution.validate()
        if cfg.attack in WHITEBOX + ("transfer",):
            raise ConfigError(f"--attack {cfg.attack} cannot run on --workers/--scheduler yet (its gradient graph is "
                              "not rebuilt per worker); run it in one process or use a black-box attack")
    check_gradients(cfg.attack, cfg.gradients)
    inputs = load_attack_inputs(cfg, subject)
    model, oracle, kind, x, y, pre, notes = inputs
    gradients = None
    surrogate = None
    if cfg.attack == "transfer":
        surrogate, gradients = surrogate_oracle(cfg, model, pre, x)
        flat = surrogate_flat_at(surrogate, x, y)
        if flat:
            notes.append(f"the surrogate's gradient is zero at {flat} of {len(x)} samples: it cannot guide the "
                         "attack there (a piecewise-constant surrogate? use a smooth twin, e.g. Sign -> Tanh)")
    attack = make_attack(cfg.attack, steps=cfg.steps, grad=cfg.gradients, loss=cfg.loss, restarts=cfg.restarts,
                         channel_axis=pre.channel_axis, surrogate=surrogate)
    if cfg.attack in WHITEBOX:
        wb, gradients = gradient_oracle(model, oracle, kind, pre, x, cfg.gradients, cfg.seed)
        if wb is None:
            raise ConfigError(f"--attack {cfg.attack} needs exact gradients, but {gradients['reason']}; "
                              "use a black-box attack (pgd, square)")
        oracle = wb
    results = []
    clean = oracle.logp(x)
    from .sanity import checked

    checked(np.argmax(clean, axis=1), y, clean.shape[1], notes)
    rows = None
    runtime, spread = {"provider": model.provider}, {}
    radii = None
    if cfg.eps_from:
        from .data import load_radii

        radii, note = load_radii(cfg.data, cfg.eps_from, len(x))
        if note:
            notes.append(note)
    if distributed:
        from .distributed import run_per_sample

        rows, info = run_per_sample(AttackWork(cfg, kind, pre, radii), model, x, [int(v) for v in y], execution=execution,
                                    device=cfg.device, threads=cfg.threads, blob=inputs.subject.model_bytes)
        runtime, spread = {"provider": info["provider"]}, {"execution": info["execution"]}
    everyone = np.arange(len(x))
    square = Square(channel_axis=pre.channel_axis) if cfg.attack in WHITEBOX else None

    def at(radii: np.ndarray, k: int) -> tuple[AttackOutcome, int, AttackOutcome | None]:
        """The attack (and the sanity Square beside a white-box one) with sample i at radius radii[i].

        Samples sharing a radius run together; each draws from its own stream [seed, i, k], so the
        grouping changes nothing.
        """
        q0 = oracle.queries
        parts, checks = [], []
        for value in np.unique(radii):
            idx = np.flatnonzero(radii == value)
            parts.append((idx, attack(oracle, x[idx], y[idx], float(value), cfg.norm, cfg.input_range,
                                      RowRng.named(cfg.seed, "attack.rows", idx, k), cfg.budget, clean_logp=clean[idx])))
            if square is not None:
                checks.append((idx, square(oracle.oracle, x[idx], y[idx], float(value), cfg.norm, cfg.input_range,
                                           RowRng.named(cfg.seed, "attack.sanity_square", idx, k), cfg.budget, clean_logp=clean[idx])))
        return (_combine(parts, len(x), cfg.norm), int(oracle.queries - q0),
                _combine(checks, len(x), cfg.norm) if checks else None)

    def entry(out: AttackOutcome, spent: int, sq: AttackOutcome | None, radii: np.ndarray | None) -> dict:
        sanity = None
        if sq is not None:
            sanity = sanity_flags(oracle, x, y, out.success, sq.success)
            sanity["square_robust_accuracy"] = robust_accuracy(sq)
        pert = (out.x_adv - x).reshape(len(x), -1)
        change = prob_change(out)  # per sample: how far the predicted class's probability moved (robust ratio)
        dist = np.abs(pert).max(axis=1) if cfg.norm == "linf" else np.linalg.norm(pert, axis=1)
        return {
            "robust_accuracy": robust_accuracy(out),
            "robust_ratio": {f"{tau:g}": robust_ratio(out, tau) for tau in cfg.taus},
            "robust_ratio_tv": {f"{tau:g}": robust_ratio(out, tau, "tv") for tau in cfg.taus},
            "queries_total": spent,
            "sanity": sanity,
            "queries_max_per_sample": int(out.queries.max()),
            "samples": [
                {"index": i, "label": int(y[i]), "correct": bool(out.correct[i]), "success": bool(out.success[i]),
                 "adv_predicted": int(np.argmax(out.adv_logp[i])), "perturbation_norm": float(dist[i]),
                 "prob_change": float(change[i]), "queries": int(out.queries[i])} | ({} if radii is None else {"eps": float(radii[i])})
                for i in range(len(x))
            ],
        }

    steps_total = len(cfg.eps) + (1 if cfg.eps_from else 0)
    bar.update(0, steps_total)
    for k, eps in enumerate(cfg.eps):
        bar.update(k, detail=f"eps {eps:g}")
        if rows is not None:
            out, sq = _merge_outcomes(rows, eps, k, cfg.norm), None
            spent = int(out.queries.sum())
        else:
            out, spent, sq = at(np.full(len(x), float(eps)), k)
        results.append({"eps": eps} | entry(out, spent, sq, None))
        if progress:
            progress(k + 1, steps_total)
    per_sample = None
    if radii is not None:
        bar.update(len(cfg.eps), detail=f"own radius ({cfg.eps_from})")
        k = len(cfg.eps)  # the per-sample run's stream index follows the listed eps
        if rows is not None:
            out, sq = _merge_outcomes(rows, float("nan"), k, cfg.norm), None
            spent = int(out.queries.sum())
        else:
            out, spent, sq = at(radii, k)
        per_sample = {"eps_from": cfg.eps_from, "units": "attack units (data x --scale), the units of --eps",
                      "eps_median": float(np.median(radii)), "eps_min": float(radii.min()),
                      "eps_max": float(radii.max())} | entry(out, spent, sq, radii)
        if progress:
            progress(steps_total, steps_total)
    bar.update(steps_total, detail="")
    minimal = None
    if cfg.min_distance:
        if cfg.attack not in WHITEBOX:
            raise ConfigError("--min-distance needs a white-box attack (--attack apgd or pgd-wb)")
        from .attacks import minimal_distance

        minimal = {}
        for norm in ("l2", "linf"):
            bar.update(detail=f"minimal {norm} distance")
            dist, _ = minimal_distance(oracle, x, y, norm, cfg.input_range, RowRng.named(cfg.seed, "attack.min_distance", everyone),
                                       steps=cfg.steps or 30, loss=cfg.loss)
            finite = dist[np.isfinite(dist) & (dist > 0)]
            minimal[norm] = {"per_sample": dist.tolist(), "median": float(np.median(finite)) if finite.size else None}
    if surrogate is not None:  # the surrogate's forward and gradient rows: its work, not queries of the model
        gradients["surrogate"]["rows"] = int(surrogate.queries)
    cfg_d = attack_config_dict(cfg)
    return AttackResult.of({
        "gradients": gradients,
        "minimal_distance": minimal,
        "model": {"path": cfg.model, "sha256": model.info.sha256, "output_kind": kind,
                  "sample_shape": list(model.sample_shape)},
        "runtime": runtime,
        "config": cfg_d,
        "clean_accuracy": float(np.mean(np.argmax(clean, axis=1) == y)),
        "notes": notes,
        "results": results,
        "per_sample_radius": per_sample,
        "timing": {"seconds": time.perf_counter() - t0} | spread,
    })


# --------------------------------------------------------------------------- compare
@dataclass(frozen=True)
class ModelSpec:
    path: str
    data: str
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    name: str = ""
    input_range: tuple[float, float] = (0.0, 1.0)


def fd_vjp_at(oracle, h: float):
    """Black-box fallback for ``vjp_at``: the gradient of u^T log p by central differences on every coordinate (2d queries per row)."""
    from .estimators.fd import jvp_coordinates

    def apply(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        d = int(np.prod(x.shape[1:]))
        coords = np.arange(d)
        return np.stack([jvp_coordinates(oracle, xi, coords, h) @ ui for xi, ui in zip(x, u)]).reshape(x.shape)

    return apply


def model_validity(spec: ModelSpec, samples: int = 20, seed: int = 0, kl_star: float | None = None, steps: int = 30,
                   search: int = 10, gradients: str = "auto", subject: Subject | None = None) -> dict:
    """Per-sample FIM-predicted radius against the smallest adversarial L2 distance found, for one model.

    lambda_max per attack unit (data x --scale) from a scan (exact with the gradient graph when it
    passes its self-check); minimal distances by binary search over eps with APGD, with exact
    gradients from the graph, else central differences (slow: 2d queries per gradient).
    """
    from .attacks import GradientOracle, minimal_distance
    from .metrics.validity import KL_STAR, validity
    if kl_star is not None and not (np.isfinite(kl_star) and kl_star > 0):
        raise ConfigError(f"--kl-star must be a positive number, not {kl_star}")
    pre = Preprocess(spec.scale, tuple(spec.mean), tuple(spec.std))
    space = "input" if pre.is_identity else "data"
    scfg = ScanConfig(model=spec.path, data=spec.data, samples=samples, seed=seed, scale=spec.scale,
                      mean=tuple(spec.mean), std=tuple(spec.std), space=space, gradients=gradients, bounds=False)
    scfg.validate()
    subject = subject or open_subject(scfg)  # one validation for the scan and the distances
    res = scan_job(subject, scfg)
    lam = np.array([s.lambda_max for s in res.samples]) / (spec.scale**2 if space == "data" else 1.0)
    base = AttackConfig(model=spec.path, data=spec.data, samples=samples, scale=spec.scale, mean=tuple(spec.mean),
                        std=tuple(spec.std), seed=seed, input_range=tuple(spec.input_range))
    model, oracle, kind, x, y, pre, _ = load_attack_inputs(base, subject)
    wb, record = (None, None) if gradients == "fd" else gradient_oracle(model, oracle, kind, pre, x,
                                                                        gradients, seed)
    if wb is None:
        wb = GradientOracle(oracle, fd_vjp_at(oracle, range_step(spec.input_range)))
    dist, _ = minimal_distance(wb, x, y, "l2", tuple(spec.input_range), subject.rng("validity.distance"), steps=steps,
                               search=search)
    out = validity(lam, dist, subject.rng("validity.bootstrap"), KL_STAR if kl_star is None else kl_star)
    out.update({
        "model": spec.name or spec.path,
        "lambda_method": res.run.method_used,
        "lambda_gradients": res.run.gradients_used["source"],
        "distance_gradients": "graph" if record is not None and record.get("source") == "graph" else "fd",
        "dither": (res.run.dither_used or {}).get("sigma"),
        "units": "attack units (data x --scale), L2",
    })
    return out


def compare_row(
    spec: ModelSpec, *, samples: int, eps_linf: float, eps_l2: float, budget: int, clever_points: int,
    clever_samples: int, seed: int, tau: float, with_metrics: bool, metric_samples: int, common: dict,
    subject: Subject | None = None,
) -> dict:
    """One model's row of the comparison (a function of the model alone, so models can run on Dask workers).

    Every section runs on one subject: ``subject``, or the model opened once from ``spec`` and ``common``.
    """
    from .sanity import muted, warn

    t0 = time.perf_counter()
    with muted():  # the jobs' own warnings would not say which model; one warning per model below names it
        row = _compare_row(spec, samples=samples, eps_linf=eps_linf, eps_l2=eps_l2, budget=budget,
                           clever_points=clever_points, clever_samples=clever_samples, seed=seed, tau=tau,
                           with_metrics=with_metrics, metric_samples=metric_samples, common=common,
                           subject=subject)
    for note in row["notes"]:
        warn(f"{row['model']}: {note}")
    row["timing"] = {"seconds": time.perf_counter() - t0, "sections": row.pop("section_seconds")}
    return row


COMPARE_SECTIONS = ("scan", "pgd linf", "square linf", "pgd l2", "clever", "metrics")  # per model, cheap first


def compare_options(spec: ModelSpec, seed: int, common: dict) -> OpenOptions:
    """How compare opens ``spec``'s model: the options shared by its scan, attack and metric configs."""
    return OpenOptions(spec.path, seed=seed, **{k: v for k, v in common.items() if k in OPEN_FIELDS})


def _compare_row(spec: ModelSpec, *, samples, eps_linf, eps_l2, budget, clever_points, clever_samples, seed, tau,
                 with_metrics, metric_samples, common, subject: Subject | None) -> dict:
    from .sanity import preprocessing_check

    sections = [s for s in COMPARE_SECTIONS if with_metrics or s != "metrics"]
    seconds: dict[str, float] = {}
    with ambient.task(spec.name or spec.path, total=len(sections), unit="sections") as bar:
        def begin(k: int) -> None:
            bar.update(k, detail=sections[k])
            seconds[sections[k]] = time.perf_counter()

        def end(name: str) -> None:
            seconds[name] = time.perf_counter() - seconds[name]

        begin(0)
        scfg = ScanConfig(model=spec.path, data=spec.data, samples=samples, budget=budget, seed=seed,
                          scale=spec.scale, mean=spec.mean, std=spec.std, **common)
        scfg.validate()
        if subject is None:
            subject = open_subject(compare_options(spec, seed, common))
        res = scan_job(subject, scfg)
        labels = [s.label for s in res.samples]
        sane = preprocessing_check([s.predicted for s in res.samples], None if None in labels else labels,
                                   int(res.model["output"]["classes"]))
        row = {
            "model": spec.name or spec.path,
            "clean_accuracy": res.summary.accuracy,
            "lambda_median": res.summary.lambda_max.median,
            "lambda_p90": res.summary.lambda_max.p90,
            "trace_median": res.summary.trace.median,
            "fim_upper": (res.bound or {}).get("fim_upper"),
            "preprocessing_sane": sane.sane,
            "notes": ([res.piecewise["note"]] if res.piecewise else []) + ([] if sane.sane else [sane.note]),
        }
        end("scan")
        base = AttackConfig(model=spec.path, data=spec.data, samples=samples, budget=budget, seed=seed,
                            scale=spec.scale, mean=spec.mean, std=spec.std, **common)
        for k, (attack, norm, eps) in enumerate((("pgd", "linf", eps_linf), ("square", "linf", eps_linf),
                                                 ("pgd", "l2", eps_l2)), start=1):
            begin(k)
            rep = attack_job(subject, AttackConfig(**{**asdict(base), "attack": attack, "norm": norm, "eps": (eps,),
                                                      "taus": (tau,)}))
            r = rep["results"][0]
            row[f"ra_{attack}_{norm}"] = r["robust_accuracy"]
            row[f"rr_{attack}_{norm}"] = r["robust_ratio"][f"{tau:g}"]
            end(sections[k])
        begin(4)
        model, oracle, kind, x, y, pre, _ = load_attack_inputs(base, subject)
        n_clever = min(clever_samples, len(x))
        # Exact margin gradients from the gradient graph (self-checked) when it builds: K-1 VJP rows per point
        # instead of 2d finite-difference queries (at d = 9216 the difference between seconds and many minutes).
        wb, record = gradient_oracle(model, oracle, kind, pre, x[:max(n_clever, 1)], "auto", seed)
        n_batches = max(2, clever_points // 5)
        scores = []
        with ambient.task("clever", total=n_clever, unit="samples") as cbar:
            for i in range(n_clever):
                cbar.update(i)
                scores.append(clever(wb if wb is not None else oracle, x[i], "l2", eps_l2 * 4,
                                     subject.rng("compare.clever", i), n_batches=n_batches, batch_size=5,
                                     vjp_at=None if wb is None else wb.vjp_at).score)
        row["clever_l2_median"] = float(np.median(scores))
        row["clever_gradients"] = "graph" if wb is not None else "fd"
        end("clever")
        if with_metrics:
            begin(5)
            met = metrics_job(subject, MetricsConfig(model=spec.path, data=spec.data, samples=metric_samples,
                                            scale=spec.scale, mean=spec.mean, std=spec.std, seed=seed,
                                            **{k: v for k, v in common.items() if k != "input_range"}))["metrics"]
            for k, v in met.items():
                if k not in ("accuracy", "layers"):
                    row[k] = v
            end("metrics")
        bar.update(len(sections), detail="")
    row["section_seconds"] = seconds
    return row


# `fimaudit compare` defaults: chosen so that the README's `compare --manifest sample_models/manifest.json` (14
# models, two of them 96x96) finishes within 5 minutes on 2 CPU cores (docs/compare.md has the per-section profile).
COMPARE_SAMPLES, COMPARE_BUDGET, COMPARE_CLEVER_SAMPLES, COMPARE_CLEVER_POINTS, COMPARE_METRIC_SAMPLES = 10, 2000, 3, 20, 100


@dataclass(frozen=True)
class CompareConfig(ModelDataOptions):
    """``fimaudit compare``: the models (paths, each with ``data`` and the preprocessing given here, and/or a zoo
    ``manifest`` whose entries carry their own), the shared options every model's jobs take, and compare's own."""

    models: tuple[str, ...] = ()
    manifest: str | None = None
    data: str | None = None
    samples: int | None = COMPARE_SAMPLES
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    input_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    budget: int = COMPARE_BUDGET
    eps_linf: float = 0.03
    eps_l2: float = 0.5
    clever_points: int = COMPARE_CLEVER_POINTS
    clever_samples: int = COMPARE_CLEVER_SAMPLES
    metrics: bool = True
    metric_samples: int = COMPARE_METRIC_SAMPLES
    validity: bool = False
    kl_star: float | None = 0.1

    def validate(self) -> None:
        if self.clever_samples < 1 or self.clever_points < 10 or self.metric_samples < 1:
            raise ConfigError("--clever-samples and --metric-samples must be >= 1, --clever-points >= 10")

    def specs(self) -> list[ModelSpec]:
        """The manifest's models, then those named on the command line (with ``data`` and this preprocessing)."""
        specs = [] if self.manifest is None else manifest_specs(Path(self.manifest), self.input_range)
        for m in self.models:
            if self.data is None:
                raise ConfigError("--data is needed for models given on the command line")
            specs.append(ModelSpec(str(m), self.data, self.scale, self.mean, self.std, Path(m).stem, self.input_range))
        if len(specs) < 2:
            raise ConfigError("compare needs at least two models")
        return specs


def manifest_specs(manifest: Path, input_range: tuple[float, float]) -> list[ModelSpec]:
    """The models of a zoo manifest (``{"models": [{"name", "file", "data", "preprocess": {scale, mean, std}}]}``),
    paths relative to the manifest's folder; a malformed entry is one line naming it."""
    try:
        entries = json.loads(manifest.read_text())["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read manifest {manifest}: {type(exc).__name__}: {exc}") from None
    if not isinstance(entries, list):
        raise ConfigError(f"manifest {manifest}: 'models' must be a list")

    def floats(value: Any) -> tuple[float, ...]:
        return tuple(float(v) for v in (value if isinstance(value, list) else [value]))

    specs = []
    for k, e in enumerate(entries):
        try:
            pp = e.get("preprocess") or {}
            name = str(e.get("name") or Path(e["file"]).stem)
            specs.append(ModelSpec(str(manifest.parent / e["file"]), str(manifest.parent / e["data"]),
                                   float(pp.get("scale", 1.0)), floats(pp.get("mean", 0.0)), floats(pp.get("std", 1.0)),
                                   name, input_range))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"manifest {manifest}: model {k + 1} is malformed ({type(exc).__name__}: {exc}); each "
                              "needs 'file' and 'data', optionally 'name' and 'preprocess' {scale, mean, std}") from None
    return specs


def compare_job(cfg: CompareConfig, execution=None) -> CompareResult:
    """``fimaudit compare``: ``compare_models`` over ``cfg.specs()``, every model opened once (its own subject)."""
    cfg.validate()
    specs = cfg.specs()
    common = {f: getattr(cfg, f) for f in ModelDataOptions.__dataclass_fields__}
    common["input_range"] = cfg.input_range
    return compare_models(specs, samples=cfg.samples, eps_linf=cfg.eps_linf, eps_l2=cfg.eps_l2, budget=cfg.budget,
                          seed=cfg.seed, clever_points=cfg.clever_points, clever_samples=cfg.clever_samples,
                          with_metrics=cfg.metrics, metric_samples=cfg.metric_samples, options=common,
                          execution=execution, with_validity=cfg.validity, kl_star=cfg.kl_star)


def partial_message(result: CompareResult, json_path: str | None) -> str | None:
    """The one error line of a compare stopped by ``--timeout`` (its finished models are kept), else None."""
    if not result.get("partial"):
        return None
    left = ", ".join(u["model"] for u in result["unfinished"])
    where = "" if json_path is None else f"; partial report written to {json_path}"
    return (f"compare stopped: {result['stopped']['reason']}; {len(result['rows'])} of "
            f"{len(result['rows']) + len(result['unfinished'])} models finished; not finished: {left}{where}")


def compare_models(
    specs: list[ModelSpec],
    samples: int = 20,
    eps_linf: float = 0.03,
    eps_l2: float = 0.5,
    budget: int = 2000,
    clever_points: int = 20,
    clever_samples: int = 5,
    seed: int = 0,
    tau: float = 0.1,
    boot: int = 1000,
    progress: Callable[[str], None] | None = None,
    with_metrics: bool = True,
    metric_samples: int = 300,
    options: dict | None = None,
    execution=None,
    with_validity: bool = False,
    kl_star: float | None = None,
) -> dict:
    """One row per model, then Spearman/Kendall correlations of each metric with RA (bootstrap CIs).

    ``options``: fields shared by every model's scan, attack and metric configs (device, input_name, ...).
    ``execution`` (``fimaudit.distributed.Execution``) runs the models' rows on Dask workers.
    """
    common = dict(options or {})
    kwargs = dict(samples=samples, eps_linf=eps_linf, eps_l2=eps_l2, budget=budget, clever_points=clever_points,
                  clever_samples=clever_samples, seed=seed, tau=tau, with_metrics=with_metrics,
                  metric_samples=metric_samples, common=common)
    from .runtime_guard import RunTimeout

    unfinished: list[dict] = []
    stopped: RunTimeout | None = None
    finished: dict[int, dict] = {}
    t0 = time.perf_counter()
    with ambient.task("", total=len(specs), unit="models", estimate=True) as bar:
        running: dict[int, float] = {}
        try:
            if execution is not None:
                from .distributed import run_per_model

                def done(name: str) -> None:
                    bar.update(len(finished))
                    if progress:
                        progress(name)

                run_per_model(compare_row, specs, kwargs, execution, done, collected=finished,
                              open_subject=lambda spec: open_subject(compare_options(spec, seed, common)))
            else:
                for i, spec in enumerate(specs):
                    bar.update(i)
                    running = {i: time.perf_counter()}
                    finished[i] = compare_row(spec, **kwargs)
                    running = {}
                    bar.update(i + 1)
                    if progress:
                        progress(finished[i]["model"])
        except RunTimeout as exc:  # keep the finished models: a partial report, marked as such
            stopped = exc
            for i, spec in enumerate(specs):
                if i in finished:
                    continue
                if i in running:
                    why = (f"stopped by --timeout {exc.seconds:g} s while running, "
                           f"{time.perf_counter() - running[i]:.0f} s into it")
                elif execution is not None:
                    why = f"not finished when --timeout {exc.seconds:g} s elapsed (running on the cluster)"
                else:
                    why = f"not started: --timeout {exc.seconds:g} s elapsed"
                unfinished.append({"model": spec.name or spec.path, "reason": why})
    rows = [finished[i] for i in sorted(finished)]
    if not rows:
        raise stopped if stopped is not None else ConfigError("compare: no model finished")
    validities = []
    if with_validity and stopped is None:  # per model: rho of the FIM-predicted radius with the minimal distance
        for spec, row in zip(specs, rows):
            val = model_validity(spec, samples=samples, seed=seed, kl_star=kl_star)
            validities.append(val)
            row["validity_spearman"] = val["spearman"]["value"]
    target = "ra_pgd_linf"
    targets = [target] + [t for t in ("corruption_relative_accuracy", "corruption_uncertainty_shift") if t in rows[0]]
    metrics = [k for k in rows[0] if k not in ("model", "timing", "validity_spearman", "notes") and _numeric(rows[0][k])]
    rng = streams.rng(seed, "compare.correlation")
    by_target = {}
    for tgt in targets:
        corr = {}
        for m in metrics:
            if m == tgt:
                continue
            pairs = [(r[m], r[tgt]) for r in rows if _finite(r.get(m)) and _finite(r.get(tgt))]
            corr[m] = correlate(np.array(pairs, dtype=float), rng, boot) if len(pairs) >= MIN_MODELS_FOR_RANKS else None
        by_target[tgt] = corr
    body = {"target": target, "rows": rows,
            "correlations": by_target[target], "correlations_by_target": by_target,
            "validity": validities or None,
            "config": {"samples": samples, "eps_linf": eps_linf, "eps_l2": eps_l2, "budget": budget, "tau": tau,
                       "seed": seed, "clever_points": clever_points, "clever_samples": clever_samples,
                       "metric_samples": metric_samples if with_metrics else 0},
            "timing": {"seconds": time.perf_counter() - t0}}
    if stopped is not None:
        body["partial"] = True
        body["unfinished"] = unfinished
        body["stopped"] = {"reason": f"--timeout {stopped.seconds:g} s elapsed", "seconds": stopped.seconds}
    return CompareResult.of(body)


MIN_MODELS_FOR_RANKS = 3  # rank correlations over fewer models mean nothing (and scipy returns NaN)


def _numeric(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _finite(v) -> bool:
    return _numeric(v) and v is not None and bool(np.isfinite(v))


def correlate(pairs: np.ndarray, rng: np.random.Generator, boot: int = 1000, level: float = 0.95) -> dict:
    """Spearman and Kendall (tau-b) coefficients with percentile bootstrap intervals over models.

    The bootstrap is vectorised (all resamples at once): the same draws and the same statistics as
    scipy's ``spearmanr``/``kendalltau`` resample by resample, in milliseconds instead of seconds per metric.
    """
    a, b = pairs[:, 0], pairs[:, 1]
    n = len(a)
    out = {"n": int(n)}
    for name, fn in (("spearman", _spearman_rows), ("kendall", _kendall_rows)):
        val = float(fn(a[None], b[None])[0])
        idx = rng.integers(0, n, (boot, n))
        ra, rb = a[idx], b[idx]
        keep = (np.ptp(ra, axis=1) > 0) & (np.ptp(rb, axis=1) > 0)
        reps = fn(ra[keep], rb[keep]) if keep.any() else np.empty(0)
        reps = reps[np.isfinite(reps)]
        lo, hi = (np.quantile(reps, [(1 - level) / 2, (1 + level) / 2]) if reps.size else (np.nan, np.nan))
        out[name] = {"value": val if np.isfinite(val) else None, "ci": [float(lo), float(hi)] if reps.size else None}
    return out


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair: the Pearson correlation of average ranks (as scipy.stats.spearmanr)."""
    from scipy.stats import rankdata

    return _pearson_rows(rankdata(a, axis=1), rankdata(b, axis=1))


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.clip(r, -1.0, 1.0)


def _kendall_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair (as scipy.stats.kendalltau): sum(sa sb) / sqrt(sum(sa^2) sum(sb^2)) over the
    pairs i < j, with sa = sign(a_i - a_j); a pair tied in both counts in neither sum."""
    i, j = np.triu_indices(a.shape[1], 1)
    sa, sb = np.sign(a[:, i] - a[:, j]), np.sign(b[:, i] - b[:, j])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sa * sb).sum(axis=1) / np.sqrt((sa * sa).sum(axis=1) * (sb * sb).sum(axis=1))


CLEVER_UNUSED = ("extra", "attack", "eps", "budget", "taus", "steps", "gradients", "loss", "restarts", "min_distance",
                 "radius", "points", "seeds", "batch_size")  # the last four: written after norm, in this order


@dataclass(frozen=True)
class CleverConfig(AttackConfig):
    """``fimaudit clever``: the attack options it shares (model, data, preprocessing, seed, ``gradients``) and its own:
    the norm of the distance, the sampling ball's ``radius``, ``points`` per sample in batches of ``batch_size``,
    and ``seeds`` repeats whose spread is reported."""

    norm: str = "l2"
    radius: float = 2.0
    points: int = 50
    seeds: int = 3
    batch_size: int = 10

    def validate(self) -> None:
        if self.norm not in ("l2", "linf"):
            raise ConfigError(f"--norm must be l2 or linf, not '{self.norm}'")
        if self.radius <= 0 or self.points < 2 * self.batch_size or self.seeds < 1:
            raise ConfigError("--radius must be positive, --points at least 2 batches of 10, --seeds at least 1")
        if self.gradients not in ("auto", "graph", "fd"):
            raise ConfigError(f"--gradients must be one of auto, graph, fd, not '{self.gradients}'")


def run_clever(cfg: AttackConfig, norm: str, radius: float, points: int = 50, seeds: int = 3,
               batch_size: int = 10, gradients: str = "auto") -> CleverResult:
    """``clever_job`` on the subject of ``cfg.model`` (the API spelling: an attack config and CLEVER's own values)."""
    own = dict(norm=norm, radius=radius, points=points, seeds=seeds, batch_size=batch_size, gradients=gradients)
    if isinstance(cfg, CleverConfig):
        return clever_job(None, replace(cfg, **own))
    return clever_job(None, CleverConfig(**{**{k: v for k, v in asdict(cfg).items() if k not in own}, **own}))


def clever_job(subject: Subject | None, cfg: CleverConfig) -> CleverResult:
    """CLEVER scores per sample of ``subject`` (None: opened from ``cfg``), repeated over ``cfg.seeds`` seeds to show
    their spread.

    ``gradients`` auto|graph: the margin gradients come from the model's gradient graph (K-1 VJP
    rows per point instead of 2d queries) when it builds and passes its self-check.
    """
    cfg.validate()
    norm, radius, points, seeds, batch_size, gradients = (cfg.norm, cfg.radius, cfg.points, cfg.seeds, cfg.batch_size,
                                                          cfg.gradients)
    t0 = time.perf_counter()
    inputs = load_attack_inputs(cfg, subject)
    model, oracle, kind, x, y, pre, notes = inputs
    h = range_step(cfg.input_range)
    wb, record = (None, None) if gradients == "fd" else gradient_oracle(model, oracle, kind, pre, x,
                                                                        gradients, cfg.seed)
    if wb is None and gradients == "graph":
        raise ConfigError(f"--gradients graph: {record['reason']}")
    from .sanity import checked

    clean = oracle.logp(x)
    checked(np.argmax(clean, axis=1), y, clean.shape[1], notes)
    samples = []
    counted = wb if wb is not None else oracle  # gradient-graph rows are queries too (one per VJP row)
    with ambient.task("clever", total=len(x), unit="samples") as bar:
        for i in range(len(x)):
            bar.update(i)
            runs = [clever(counted, x[i], norm, radius, inputs.subject.rng("clever.runs", s, i),
                           n_batches=points // batch_size, batch_size=batch_size, h=h,
                           vjp_at=None if wb is None else wb.vjp_at) for s in range(seeds)]
            scores = np.array([r.score for r in runs])
            samples.append({"index": i, "label": int(y[i]), "scores": scores.tolist(), "mean": float(scores.mean()),
                            "spread": float(scores.std()), "fit_ok": [r.fit_ok for r in runs],
                            "queries": int(sum(r.queries for r in runs))})
    means = np.array([s["mean"] for s in samples])
    rel = np.array([s["spread"] / s["mean"] for s in samples if s["mean"] > 0])
    # The config holds what CLEVER uses: no attack, eps, budget, taus or attack-only options.
    cfg_d = {k: v for k, v in asdict(cfg).items() if k not in CLEVER_UNUSED}
    return CleverResult.of({
        "model": {"path": cfg.model, "sha256": model.info.sha256, "output_kind": kind},
        "config": cfg_d | {"norm": norm, "radius": radius, "points": points, "seeds": seeds, "gradients": gradients},
        "gradients": record or {"requested": "fd", "source": "fd", "reason": "finite differences requested"},
        "samples": samples,
        "summary": {"median_score": float(np.median(means)), "median_relative_spread": float(np.median(rel))
                    if rel.size else None, "fit_ok_share": float(np.mean([f for s in samples for f in s["fit_ok"]])),
                    "queries_total": int(model.queries) + (wb.gradient_rows if wb is not None else 0)},
        "notes": notes,
        "timing": {"seconds": time.perf_counter() - t0},
    })
