"""Attack-based evidence: ``fimaudit attack`` (RA/RR curves) and ``fimaudit compare`` (models side by side).

Attacks and CLEVER run in attack space: stored data times ``--scale`` (e.g. pixels in
[0, 1]), bounded by ``--input-range``; the model receives (x - mean) / std. eps is in those
units.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from .attacks import make_attack
from .attack_space import attack_oracle
from .errors import ConfigError
from .evidence_result import AttackResult, CleverResult, CompareResult
from .images import DEFAULT_RESIZE, DataOptions, prepare
from .metrics.clever import clever
from .metrics.robustness import robust_accuracy, robust_ratio
from .metrics.suite import MetricsConfig, run_metrics
from .model import load_model
from .scan import ScanConfig, scan

DEFAULT_TAUS = (0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class AttackConfig:
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
    grad: str = "auto"
    device: str = "auto"
    input_name: str | None = None
    output_name: str | None = None
    input_shape: tuple[int, ...] | None = None
    output_kind: str = "auto"
    max_batch: int = 256
    threads: int = 0
    layout: str = "auto"
    resize: str = DEFAULT_RESIZE
    channels: str = "rgb"
    preset: str | None = None
    extra: dict = field(default_factory=dict)


def load_attack_inputs(cfg: AttackConfig):
    if cfg.budget < 3:
        raise ConfigError("--budget must be at least 3 queries per sample")
    model = load_model(cfg.model, input_name=cfg.input_name, output_name=cfg.output_name,
                       input_shape=cfg.input_shape, device=cfg.device, max_batch=cfg.max_batch, threads=cfg.threads)
    prep = prepare(model, cfg.data, cfg.samples, cfg.scale, cfg.mean, cfg.std, DataOptions.of(cfg))
    ds, pre = prep.dataset, prep.pre
    if ds.y is None:
        raise ConfigError(f"{cfg.data} has no labels (y, subfolders or labels.csv): attacks and robust accuracy need labels")
    x = np.asarray(ds.x, dtype=np.float64) * pre.scale
    oracle, kind = attack_oracle(model, pre.mean, pre.std, cfg.output_kind, x, pre.channel_axis, ds.y, ds.source)
    return model, oracle, kind, x, ds.y


def run_attack(cfg: AttackConfig, progress: Callable[[int, int], None] | None = None) -> AttackResult:
    """Attack every sample at every eps; returns the JSON-ready report."""
    t0 = time.perf_counter()
    model, oracle, kind, x, y = load_attack_inputs(cfg)
    attack = make_attack(cfg.attack, steps=cfg.steps, grad=cfg.grad)
    results = []
    clean = oracle.logp(x)
    for k, eps in enumerate(cfg.eps):
        q0 = model.queries
        out = attack(oracle, x, y, eps, cfg.norm, cfg.input_range, np.random.default_rng([cfg.seed, k]), cfg.budget,
                     clean_logp=clean)
        rr = {f"{tau:g}": robust_ratio(out, tau) for tau in cfg.taus}
        rr_tv = {f"{tau:g}": robust_ratio(out, tau, "tv") for tau in cfg.taus}
        pert = (out.x_adv - x).reshape(len(x), -1)
        dist = np.abs(pert).max(axis=1) if cfg.norm == "linf" else np.linalg.norm(pert, axis=1)
        results.append({
            "eps": eps,
            "robust_accuracy": robust_accuracy(out),
            "robust_ratio": rr,
            "robust_ratio_tv": rr_tv,
            "queries_total": int(model.queries - q0),
            "queries_max_per_sample": int(out.queries.max()),
            "samples": [
                {"index": i, "label": int(y[i]), "correct": bool(out.correct[i]), "success": bool(out.success[i]),
                 "adv_predicted": int(np.argmax(out.adv_logp[i])), "perturbation_norm": float(dist[i]),
                 "queries": int(out.queries[i])}
                for i in range(len(x))
            ],
        })
        if progress:
            progress(k + 1, len(cfg.eps))
    cfg_d = asdict(cfg)
    cfg_d.pop("extra", None)
    return AttackResult.of({
        "model": {"path": cfg.model, "sha256": model.info.sha256, "output_kind": kind,
                  "sample_shape": list(model.sample_shape)},
        "runtime": {"provider": model.provider},
        "config": cfg_d,
        "clean_accuracy": float(np.mean(np.argmax(clean, axis=1) == y)),
        "results": results,
        "timing": {"seconds": time.perf_counter() - t0},
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


def compare_row(
    spec: ModelSpec, *, samples: int, eps_linf: float, eps_l2: float, budget: int, clever_points: int,
    clever_samples: int, seed: int, tau: float, with_metrics: bool, metric_samples: int, common: dict,
) -> dict:
    """One model's row of the comparison (a function of the model alone, so models can run on Dask workers)."""
    t0 = time.perf_counter()
    res = scan(ScanConfig(model=spec.path, data=spec.data, samples=samples, budget=budget, seed=seed,
                          scale=spec.scale, mean=spec.mean, std=spec.std, **common))
    row = {
        "model": spec.name or spec.path,
        "clean_accuracy": res.summary.accuracy,
        "lambda_median": res.summary.lambda_max.median,
        "lambda_p90": res.summary.lambda_max.p90,
        "trace_median": res.summary.trace.median,
        "fim_upper": (res.bound or {}).get("fim_upper"),
    }
    base = AttackConfig(model=spec.path, data=spec.data, samples=samples, budget=budget, seed=seed,
                        scale=spec.scale, mean=spec.mean, std=spec.std, **common)
    for attack, norm, eps in (("pgd", "linf", eps_linf), ("square", "linf", eps_linf), ("pgd", "l2", eps_l2)):
        rep = run_attack(AttackConfig(**{**asdict(base), "attack": attack, "norm": norm, "eps": (eps,),
                                         "taus": (tau,)}))
        r = rep["results"][0]
        row[f"ra_{attack}_{norm}"] = r["robust_accuracy"]
        row[f"rr_{attack}_{norm}"] = r["robust_ratio"][f"{tau:g}"]
    model, oracle, _, x, y = load_attack_inputs(base)
    n_batches = max(2, clever_points // 5)
    scores = [clever(oracle, x[i], "l2", eps_l2 * 4, np.random.default_rng([seed, i]), n_batches=n_batches,
                     batch_size=5).score for i in range(min(clever_samples, len(x)))]
    row["clever_l2_median"] = float(np.median(scores))
    if with_metrics:
        met = run_metrics(MetricsConfig(model=spec.path, data=spec.data, samples=metric_samples, scale=spec.scale,
                                        mean=spec.mean, std=spec.std, seed=seed,
                                        **{k: v for k, v in common.items() if k != "input_range"}))["metrics"]
        for k, v in met.items():
            if k not in ("accuracy", "layers"):
                row[k] = v
    row["timing"] = {"seconds": time.perf_counter() - t0}
    return row


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
) -> dict:
    """One row per model, then Spearman/Kendall correlations of each metric with RA (bootstrap CIs).

    ``options``: fields shared by every model's scan, attack and metric configs (device, input_name, ...).
    ``execution`` (``fimaudit.distributed.Execution``) runs the models' rows on Dask workers.
    """
    common = dict(options or {})
    kwargs = dict(samples=samples, eps_linf=eps_linf, eps_l2=eps_l2, budget=budget, clever_points=clever_points,
                  clever_samples=clever_samples, seed=seed, tau=tau, with_metrics=with_metrics,
                  metric_samples=metric_samples, common=common)
    if execution is not None:
        from .distributed import run_per_model

        rows = run_per_model(compare_row, specs, kwargs, execution, progress)
    else:
        rows = []
        for spec in specs:
            rows.append(compare_row(spec, **kwargs))
            if progress:
                progress(rows[-1]["model"])
    target = "ra_pgd_linf"
    targets = [target] + [t for t in ("corruption_relative_accuracy", "corruption_uncertainty_shift") if t in rows[0]]
    metrics = [k for k in rows[0] if k not in ("model", "timing")]
    rng = np.random.default_rng(seed)
    by_target = {}
    for tgt in targets:
        corr = {}
        for m in metrics:
            if m == tgt:
                continue
            pairs = [(r[m], r[tgt]) for r in rows if r.get(m) is not None and r.get(tgt) is not None]
            corr[m] = correlate(np.array(pairs, dtype=float), rng, boot) if len(pairs) >= 3 else None
        by_target[tgt] = corr
    return CompareResult.of({"target": target, "rows": rows,
            "correlations": by_target[target], "correlations_by_target": by_target,
            "config": {"samples": samples, "eps_linf": eps_linf, "eps_l2": eps_l2, "budget": budget, "tau": tau,
                       "seed": seed, "clever_points": clever_points, "clever_samples": clever_samples}})


def correlate(pairs: np.ndarray, rng: np.random.Generator, boot: int = 1000, level: float = 0.95) -> dict:
    """Spearman and Kendall coefficients with percentile bootstrap intervals over models."""
    a, b = pairs[:, 0], pairs[:, 1]
    out = {"n": int(len(a))}
    for name, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        val = float(fn(a, b).statistic)
        reps = []
        for _ in range(boot):
            idx = rng.integers(0, len(a), len(a))
            if np.ptp(a[idx]) == 0 or np.ptp(b[idx]) == 0:
                continue
            reps.append(fn(a[idx], b[idx]).statistic)
        reps = np.array([r for r in reps if np.isfinite(r)])
        lo, hi = (np.quantile(reps, [(1 - level) / 2, (1 + level) / 2]) if reps.size else (np.nan, np.nan))
        out[name] = {"value": val if np.isfinite(val) else None, "ci": [float(lo), float(hi)] if reps.size else None}
    return out


def run_clever(cfg: AttackConfig, norm: str, radius: float, points: int = 50, seeds: int = 3,
               batch_size: int = 10) -> CleverResult:
    """CLEVER scores per sample, repeated over ``seeds`` seeds to show their spread."""
    if norm not in ("l2", "linf"):
        raise ConfigError(f"--norm must be l2 or linf, not '{norm}'")
    if radius <= 0 or points < 2 * batch_size or seeds < 1:
        raise ConfigError("--radius must be positive, --points at least 2 batches of 10, --seeds at least 1")
    t0 = time.perf_counter()
    model, oracle, kind, x, y = load_attack_inputs(cfg)
    h = 1e-3 * (cfg.input_range[1] - cfg.input_range[0])
    samples = []
    for i in range(len(x)):
        runs = [clever(oracle, x[i], norm, radius, np.random.default_rng([cfg.seed, s, i]),
                       n_batches=points // batch_size, batch_size=batch_size, h=h) for s in range(seeds)]
        scores = np.array([r.score for r in runs])
        samples.append({"index": i, "label": int(y[i]), "scores": scores.tolist(), "mean": float(scores.mean()),
                        "spread": float(scores.std()), "fit_ok": [r.fit_ok for r in runs],
                        "queries": int(sum(r.queries for r in runs))})
    means = np.array([s["mean"] for s in samples])
    rel = np.array([s["spread"] / s["mean"] for s in samples if s["mean"] > 0])
    cfg_d = asdict(cfg)
    cfg_d.pop("extra", None)
    return CleverResult.of({
        "model": {"path": cfg.model, "sha256": model.info.sha256, "output_kind": kind},
        "config": cfg_d | {"norm": norm, "radius": radius, "points": points, "seeds": seeds},
        "samples": samples,
        "summary": {"median_score": float(np.median(means)), "median_relative_spread": float(np.median(rel))
                    if rel.size else None, "fit_ok_share": float(np.mean([f for s in samples for f in s["fit_ok"]])),
                    "queries_total": int(model.queries)},
        "timing": {"seconds": time.perf_counter() - t0},
    })
