"""Certified L2 radii by Gaussian randomized smoothing (Cohen, Rosenfeld & Kolter 2019, CERTIFY).

The smoothed classifier g(x) = argmax_c P(f(x + σε) = c), ε ~ N(0, I), is robust within
radius σ·Φ⁻¹(p_A) around x whenever the top class has probability p_A > 1/2. CERTIFY picks
the candidate class from n0 noisy queries, then bounds p_A from below with n fresh queries
(one-sided Clopper-Pearson at level α) and abstains when the bound is ≤ 1/2. With
probability at least 1 − α over the noise, a returned radius is a true certificate.

``certify(CertifyConfig(...))`` is the Python API behind ``fimaudit certify``; it never prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import special

from . import streams
from .options import ModelDataOptions
from .data import Preprocess, synthetic_data
from .errors import ConfigError
from .model.engine import Model
from .results import SCHEMA_VERSION, Stats  # noqa: F401 - SCHEMA_VERSION: the version certify writes
from .results.certify import CertifiedSample, CertifyResult, CertifySummary, certified_rows
from .scan import load as scan_load
from .scan import runtime_info
from .subject import Subject

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
SPACES = ("input", "data")
DEFAULT_SAMPLES_DATA = 100
DEFAULT_SAMPLES_SYNTHETIC = 16
# A noise chunk holds at most this many float64 values, so 10^5 draws at 224x224x3 never sit
# in memory at once; results do not depend on it (the Generator's stream is chunk-invariant).
NOISE_VALUES = 1 << 22
# per-sample noise: the "certify.noise" stream of fimaudit.streams ([seed, 5, index])

ProgressFn = Callable[[int, int, int], None]  # (samples done, samples total, queries so far)


# --------------------------------------------------------------------------- the statistics
def lower_confidence_bound(n_a: Any, n: Any, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper-Pearson lower bound on a binomial proportion; 0 where ``n_a`` is 0.

    Vectorised over ``n_a`` and ``n``: P(p ≥ bound) ≥ 1 − α for every true p.
    """
    n_a = np.asarray(n_a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = special.betaincinv(n_a, n - n_a + 1, alpha)  # the beta distribution's alpha quantile
    return np.where(n_a > 0, bound, 0.0)


def radius_from_counts(n_a: Any, n: Any, sigma: float, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(p_A lower bound, radius, abstain)`` from the estimation counts; vectorised.

    The radius is σ·Φ⁻¹(p_A lower) and NaN where the certificate abstains (bound ≤ 1/2).
    """
    p_lower = lower_confidence_bound(n_a, n, alpha)
    abstain = p_lower <= 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.where(abstain, np.nan, sigma * special.ndtri(np.where(abstain, 0.75, p_lower)))
    return p_lower, radius, abstain


def class_counts(
    classify: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    sigma: float,
    num: int,
    n_classes: int,
    rng: np.random.Generator,
    chunk: int,
) -> np.ndarray:
    """Counts of the base classifier's classes at ``num`` points x + σε, drawn ``chunk`` rows at a time."""
    counts = np.zeros(n_classes, dtype=np.int64)
    # float32 in place: the rows go to a float32 model anyway, and float64 temporaries would
    # cost more than the draws themselves.
    x32, s32 = np.asarray(x, dtype=np.float32), np.float32(sigma)
    # One buffer refilled in place: fresh chunk-sized arrays cost page faults on every chunk
    # (notably in Dask workers, whose allocator returns freed memory to the system at once).
    buf = np.empty((min(chunk, num),) + x.shape, dtype=np.float32)
    done = 0
    while done < num:
        rows = min(chunk, num - done)
        noisy = buf[:rows]
        rng.standard_normal(out=noisy, dtype=np.float32)
        noisy *= s32
        noisy += x32
        classes = classify(noisy)
        counts += np.bincount(classes, minlength=n_classes)[:n_classes]
        done += rows
    return counts


def noise_chunk(d: int) -> int:
    """Rows per noise draw: bounded memory whatever the input size."""
    return max(1, NOISE_VALUES // max(d, 1))


@dataclass(frozen=True)
class SmoothingJob:
    """What certifying a sample needs besides the model: picklable, so a Dask worker can run it.

    ``preprocess`` maps estimation-space rows (stored data) to model input; None when the
    points already are model input.
    """

    sigma: float
    n0: int
    n: int
    alpha: float
    seed: int
    preprocess: Preprocess | None = None

    def __call__(
        self, model: Model, indices: Sequence[int], points: np.ndarray, labels: Sequence[int | None]
    ) -> list[CertifiedSample]:
        """Certify ``points[j]`` (sample ``indices[j]``); each sample draws from its own Generator."""
        from . import progress as ambient

        with ambient.task("noise", total=len(points) * (1 + self.n0 + self.n), unit="draws") as bar:
            return self._certify(model, indices, points, labels, bar)

    def _certify(self, model: Model, indices, points: np.ndarray, labels, bar) -> list[CertifiedSample]:
        shape = model.sample_shape
        to_input = (lambda rows: rows) if self.preprocess is None else (lambda rows: self.preprocess.apply(rows, shape))

        def classify(rows: np.ndarray) -> np.ndarray:
            bar.advance(len(rows))  # progress: noise draws classified so far
            return np.argmax(model.run(to_input(rows)), axis=1)

        chunk = noise_chunk(model.d)
        out = []
        for idx, x, label in zip(indices, points, labels):
            before = model.queries
            base = int(classify(x[None])[0])
            n_classes = int(model.n_classes)
            rng = streams.rng(self.seed, "certify.noise", int(idx))
            selection = class_counts(classify, x, self.sigma, self.n0, n_classes, rng, chunk)
            selected = int(np.argmax(selection))
            counts = class_counts(classify, x, self.sigma, self.n, n_classes, rng, chunk)
            n_a = int(counts[selected])
            p_lower, radius, abstain = radius_from_counts(n_a, self.n, self.sigma, self.alpha)
            abstained = bool(abstain)
            out.append(
                CertifiedSample(
                    index=int(idx),
                    label=None if label is None else int(label),
                    base_prediction=base,
                    selected=selected,
                    prediction=None if abstained else selected,
                    abstain=abstained,
                    n_a=n_a,
                    p_a_lower=float(p_lower),
                    radius=None if abstained else float(radius),
                    queries=model.queries - before,
                )
            )
        return out


# --------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class CertifyConfig(ModelDataOptions):
    """Every option of a certification; recorded in the report's ``config``."""

    model: str
    data: str | None = None
    samples: int | None = None
    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    radii: tuple[float, ...] = DEFAULT_RADII
    seed: int = 0
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    space: str = "input"
    input_range: tuple[float, float] = (0.0, 1.0)

    def validate(self) -> None:
        if not (np.isfinite(self.sigma) and self.sigma > 0):
            raise ConfigError("--sigma must be a positive number (the noise standard deviation)")
        if self.n0 < 1 or self.n < 1:
            raise ConfigError("--n0 and --n must be >= 1")
        if not (0 < self.alpha < 0.5):
            raise ConfigError("--alpha must be in (0, 0.5): the certificate fails with probability at most alpha")
        if not self.radii or any(not (np.isfinite(r) and r >= 0) for r in self.radii):
            raise ConfigError("--radii must be nonnegative numbers separated by commas")
        if self.space not in SPACES:
            raise ConfigError(f"--space must be input or data, not '{self.space}'")
        if self.samples is not None and self.samples < 1:
            raise ConfigError("--samples must be >= 1")
        if self.max_batch < 0:
            raise ConfigError("--max-batch must be >= 1")
        if self.data is None and self.space == "data":
            raise ConfigError("--space data needs --data: synthetic inputs are drawn in model-input units")
        # The smallest certifiable radius needs p_A lower > 1/2: n all-correct draws give alpha^(1/n).
        if self.alpha ** (1.0 / self.n) <= 0.5:
            raise ConfigError(
                f"--n {self.n} is too small to certify anything at --alpha {self.alpha:g} (need n > log2(1/alpha))"
            )


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def _units(data_space: bool, identity: bool, images: bool, preset: str | None) -> dict:
    """The unit of the noise and of the radii (the same unit: both live where the noise is added)."""
    how = f"--preset {preset}" if preset is not None else "--scale/--mean/--std"
    if data_space:
        stored = "pixel values 0-255 as decoded from the images" if images else "the data as stored"
        return {"space": "data", "description": f"L2 radius in stored-data units: noise added to {stored}, before {how}"}
    return {"space": "input", "description": "L2 radius in model-input units: noise added to the tensor the model "
            "receives" + ("" if identity else f" (after {how})")}


def certify(config: CertifyConfig, progress: ProgressFn | None = None, execution=None) -> CertifyResult:
    """``certify_job`` on the subject of ``config.model`` (opened once the config is validated)."""
    return certify_job(None, config, progress, execution)


def certify_job(subject: Subject | None, config: CertifyConfig, progress: ProgressFn | None = None,
                execution=None) -> CertifyResult:
    """Certify each sample of ``subject`` (None: opened from ``config``). ``execution``
    (``fimaudit.distributed.Execution``) spreads samples over Dask workers; the result is the same as in one
    process apart from timing and ``execution``. Raises ``FimauditError`` subclasses for bad input (one-line messages).
    """
    from .distributed import run_per_sample

    t_start = time.perf_counter()
    loaded = scan_load(config, subject)  # validates, opens the subject, prepares the data: the same stage 1 as scan
    model, prepared = loaded.model, loaded.prepared
    shape = model.sample_shape
    pre = prepared.pre
    notes: list[str] = list(loaded.notes)
    if prepared.dataset is not None:
        dataset = prepared.dataset
        if config.samples is None:
            notes.append(f"certified the first {dataset.x.shape[0]} samples (set --samples to change)")
        data_space = config.space == "data"
        points = np.asarray(dataset.x, dtype=np.float64) if data_space else pre.apply(dataset.x, shape)
        job_pre = pre if data_space else None
    else:
        if not pre.is_identity:
            notes.append("--scale/--mean/--std are ignored for synthetic inputs (drawn in model-input units)")
        rng_data = loaded.subject.rng("data.synthetic")
        dataset = synthetic_data(shape, config.samples or DEFAULT_SAMPLES_SYNTHETIC, config.input_range, rng_data)
        points, job_pre = dataset.x, None
        notes.append(
            "NOT REPRESENTATIVE: no --data given, so samples are synthetic uniform inputs in "
            f"[{config.input_range[0]:g}, {config.input_range[1]:g}]; real data can differ by orders of magnitude"
        )
    n_samples = points.shape[0]
    labels = [None] * n_samples if dataset.y is None else [int(v) for v in dataset.y]
    # One query per sample up front learns the class count and the clean predictions, so bad labels fail
    # and wrong preprocessing is reported before any long run.
    clean = model.run(points if job_pre is None else job_pre.apply(points, shape))
    setup_queries = model.queries
    if dataset.y is not None and int(dataset.y.max()) >= model.n_classes:
        raise ConfigError(
            f"labels in {dataset.source} go up to {int(dataset.y.max())} but the model has {model.n_classes} classes"
        )
    if prepared.dataset is not None:
        from .sanity import checked

        checked(np.argmax(np.asarray(clean).reshape(n_samples, -1), axis=1), dataset.y, int(model.n_classes), notes)
    job = SmoothingJob(config.sigma, config.n0, config.n, config.alpha, config.seed, job_pre)
    from . import progress as ambient

    with ambient.task("certify", total=n_samples, unit="samples", estimate=True) as bar:
        samples, run_info = run_per_sample(job, model, points, labels, execution=execution,
                                           progress=bar.callback(progress, lambda queries: f"{queries} queries"),
                                           device=config.device,
                                           threads=config.threads, blob=loaded.subject.model_bytes)
    samples = tuple(samples)
    seconds = time.perf_counter() - t_start
    labelled = dataset.y is not None
    summary = CertifySummary(
        certified_accuracy=certified_rows(samples, config.radii),
        radius=Stats.of([s.radius for s in samples if s.radius is not None]),
        abstain_rate=float(np.mean([s.abstain for s in samples])),
        clean_accuracy=float(np.mean([s.base_prediction == s.label for s in samples])) if labelled else None,
        smoothed_accuracy=float(np.mean([bool(s.correct) for s in samples])) if labelled else None,
        queries_total=setup_queries + int(sum(s.queries for s in samples)),
        seconds=seconds,
        # On workers: the share of their busy time inside onnxruntime (a sum over workers / wall could exceed 1).
        runtime_fraction=_share(run_info["run_seconds"], run_info.get("busy_seconds", seconds)),
    )
    if summary.abstain_rate > 0.5:
        notes.append(
            f"the smoothed classifier abstained on {100 * summary.abstain_rate:.0f}% of the samples: sigma "
            f"{config.sigma:g} may be too large for this model, or --n too small for --alpha"
        )
    info = model.info
    units = _units(job_pre is not None and not pre.is_identity, pre.is_identity, prepared.images, config.preset)
    cfg = asdict(config)
    cfg["samples_certified"] = n_samples
    cfg["data_source"] = dataset.source
    cfg["preprocess"] = prepared.config
    cfg["noise_chunk_rows"] = noise_chunk(model.d)
    return CertifyResult(
        model={
            "path": info.path,
            "sha256": info.sha256,
            "input": info.input.to_dict() | {"sample_shape": list(shape), "d": model.d},
            "output": info.output.to_dict() | {"classes": model.n_classes},
            "ir_version": info.ir_version,
            "opsets": info.opsets,
        },
        runtime=runtime_info(model) | {"provider": run_info["provider"]},
        config=cfg,
        units=units,
        samples=samples,
        summary=summary,
        notes=tuple(notes),
        execution=run_info["execution"],
    )
