"""``fimaudit metrics``: performance, norm-based measures, path norm, sharpness and corruption robustness."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import progress
from ..options import ModelDataOptions
from ..attack_space import attack_oracle
from ..attacks import make_attack
from ..errors import ConfigError
from ..results import MetricsResult
from ..images import DataOptions
from ..model.layout import Layout
from ..subject import Subject, open_subject
from .corruptions import CORRUPTIONS, SEVERITIES, applicable, corrupt
from .performance import performance, shift_robustness
from .weights import norm_measures, path_norm, sharpness_sigma


@dataclass(frozen=True)
class MetricsConfig(ModelDataOptions):
    model: str
    data: str
    samples: int | None = 500
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    seed: int = 0
    sharpness_samples: int = 200
    sharpness_draws: int = 3
    corruptions: bool = True
    attack_eps: float = 0.03  # L-inf radius of the attacked set (Square), in image units
    attack_samples: int = 100
    attack_budget: int = 300


def run_metrics(cfg: MetricsConfig) -> MetricsResult:
    """``metrics_job`` on the subject of ``cfg.model``."""
    return metrics_job(None, cfg)


def metrics_job(subject: Subject | None, cfg: MetricsConfig) -> MetricsResult:
    """The metric suite on ``subject`` (None: opened from ``cfg``)."""
    t0 = time.perf_counter()
    if subject is None:
        subject = open_subject(cfg)
    subject.check(cfg)
    model = subject.model()
    prep = subject.prepare(model, cfg.data, cfg.samples, cfg.scale, cfg.mean, cfg.std, DataOptions.of(cfg))
    ds, pre = prep.dataset, prep.pre
    if ds.y is None:
        raise ConfigError(f"{cfg.data} has no labels (y, subfolders or labels.csv): the metric suite needs labels")
    spaces = subject.spaces(prep)
    x = spaces.to_attack(ds.x)  # attack/corruption space, e.g. [0, 1]
    y = ds.y
    oracle, kind = attack_oracle(model, spaces.attack_to_input, cfg.output_kind, x, y, ds.source)
    from ..piecewise import piecewise_notes

    notes: list[str] = piecewise_notes(model)
    clean_logp = oracle.logp(x)
    from ..sanity import checked

    checked(np.argmax(clean_logp, axis=1), y, clean_logp.shape[1], notes)
    clean = performance(clean_logp, y)
    metrics: dict[str, float] = dict(clean)
    gamma = clean["margin_p10_correct"]
    metrics.update(norm_measures(model.proto, gamma))
    pn = path_norm(model.proto, model.info.input.name, model.info.output.name, model.sample_shape)
    metrics["path_norm"] = pn
    metrics["path_norm_over_margin"] = pn / gamma**2 if gamma > 0 else float("nan")
    ns = min(cfg.sharpness_samples, len(x))
    u = oracle.model_input(x[:ns]).astype(np.float32)
    sh = sharpness_sigma(model.proto, model.info.input.name, model.info.output.name, u, y[:ns],
                         subject.rng("metrics.sharpness"), draws=cfg.sharpness_draws,
                         fixed_batch=model.info.fixed_batch)
    sh_m = sharpness_sigma(model.proto, model.info.input.name, model.info.output.name, u, y[:ns],
                           subject.rng("metrics.sharpness_magnitude"), draws=cfg.sharpness_draws, magnitude_aware=True,
                           fixed_batch=model.info.fixed_batch)
    metrics.update({"sharpness_sigma": sh["sigma"], "sharpness_flatness": sh["flatness"],
                    "sharpness_magnitude_sigma": sh_m["sigma"], "sharpness_magnitude_flatness": sh_m["flatness"]})
    corr: dict[str, dict[str, float]] = {}
    shifts = []
    if cfg.corruptions:
        lo, hi = float(x.min()), float(x.max())
        # float32 exports round 0 and 1 by a few ulps of 1 (values such as -5e-9 occur): allow 1e-6.
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ConfigError("corruptions need images in [0, 1] after --scale (e.g. --scale 1/255 for uint8 pixels)")
        rng = subject.rng("metrics.corruptions")
        names = applicable(_image_shape(model.sample_shape, prep.layout))
        skipped = [n for n in CORRUPTIONS if n not in names]
        if skipped:
            notes.append(f"{', '.join(skipped)} skipped: the last two axes of the sample shape "
                         f"{list(model.sample_shape)} are not an image's height and width")
        with progress.task("corruptions", total=len(names) * len(SEVERITIES)) as bar:
            for name in names:
                corr[name] = {"0": clean["accuracy"]}
                for sev in SEVERITIES:
                    bar.update(len(shifts), detail=f"{name} {sev}")
                    bad = _corrupt_images(np.clip(x, 0.0, 1.0), name, sev, rng, prep.layout)
                    perf = performance(oracle.logp(bad), y)
                    corr[name][str(sev)] = perf["accuracy"]
                    shifts.append(shift_robustness(clean, perf))
        for key in ("accuracy_gap", "relative_accuracy", "relative_confidence", "uncertainty_shift"):
            metrics[f"corruption_{key}"] = float(np.mean([s[key] for s in shifts]))
    if cfg.attack_samples > 0 and cfg.attack_eps > 0:
        # The attacked set as a shift: Square L-inf (score-based, no gradients) on the first samples.
        na = min(cfg.attack_samples, len(x))
        lo, hi = min(0.0, float(x.min())), max(1.0, float(x.max()))
        out = make_attack("square", channel_axis=pre.channel_axis)(oracle, x[:na], y[:na], cfg.attack_eps, "linf", (lo, hi),
                                    subject.rng("metrics.attack"), cfg.attack_budget)
        clean_a = performance(out.clean_logp, y[:na])
        adv = performance(out.adv_logp, y[:na])
        for key, val in shift_robustness(clean_a, adv).items():
            metrics[f"adversarial_{key}"] = val
    cfg_d = asdict(cfg)
    return MetricsResult.of({
        "model": {"path": cfg.model, "sha256": model.info.sha256, "output_kind": kind},
        "config": cfg_d,
        "metrics": {k: (float(v) if v is not None and np.isfinite(v) else None) for k, v in metrics.items()},
        "corruptions": corr,
        "notes": notes,
        "timing": {"seconds": time.perf_counter() - t0},
    })


def _image_shape(sample_shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    """The per-sample shape ``_corrupt_images`` hands to the corruptions (channels first)."""
    if layout.name == "nhwc":
        return (sample_shape[-1],) + tuple(sample_shape[-3:-1])
    if layout.name == "flat" and layout.height is not None:
        return (1, layout.height, layout.width)
    return tuple(sample_shape)


def _corrupt_images(x: np.ndarray, name: str, severity: int, rng: np.random.Generator, layout: Layout) -> np.ndarray:
    """Corruptions act on the last two axes: move NHWC channels out of the way, unflatten square grey inputs."""
    if layout.name == "nhwc":
        return corrupt(x.transpose(0, 3, 1, 2), name, severity, rng).transpose(0, 2, 3, 1)
    if layout.name == "flat" and layout.height is not None:
        grey = x.reshape(len(x), 1, layout.height, layout.width)
        return corrupt(grey, name, severity, rng).reshape(x.shape)
    return corrupt(x, name, severity, rng)
