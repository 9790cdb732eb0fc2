"""The scan job: model + data -> per-sample Fisher estimates -> ``ScanResult``.

``scan(ScanConfig(...))`` is the Python API behind ``fimaudit scan``; it never prints.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from . import streams
from .options import ModelDataOptions
from ._version import __version__
from .data import Preprocess, check_labels, synthetic_data
from .errors import ConfigError
from .estimators.core import Estimate, exact, kl_check
from .estimators.fd import StepChoice, choose_step, input_scale
from .estimators.hutchinson import HUTCHINSON_PROBES, hutchinson
from .estimators.lower import LowerCheck, fd_lower_estimate
from .estimators.power import fresh_probes, power_fixed, power_fresh
from .estimators.smoothed import MIN_PAIRS, SMOOTHING_RULE, SmoothedEstimate, default_sigma, smoothed_fisher
from .estimators.probes import PROBES
from .estimators.source import FiniteDifferences
from .estimators.subspace import SUBSPACES, LearntSubspace, dct_lowfreq_basis, deflated_sketch, sketch
from .images import DataOptions, Prepared
from .model import OUTPUT_KINDS, LogProbOracle, Model, detect_output_kind
from .model.oracle import check_output_kind, to_log_probs
from .results import RunInfo, SampleResult, ScanResult, Stats, Summary
from .subject import Subject, open_subject

METHODS = ("auto", "exact", "sketch", "power", "power-fresh", "deflated")
SPACES = ("input", "data")
DEFAULT_SAMPLES_DATA = 100
DEFAULT_SAMPLES_SYNTHETIC = 16

ProgressFn = Callable[[int, int, int], None]  # (samples done, samples total, queries so far)


@dataclass(frozen=True)
class ScanConfig(ModelDataOptions):
    """Every option of a scan; recorded verbatim in the report's ``config``."""

    model: str
    data: str | None = None
    samples: int | None = None
    method: str = "auto"
    probes: str = "orthogonal"
    budget: int = 2000
    seed: int = 0
    fd_step: float | None = None
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    space: str = "input"
    input_range: tuple[float, float] = (0.0, 1.0)
    fail_above: float | None = None
    lower_bound: bool = True
    subspace: str = "dct"
    subspace_dim: int | None = None
    save_direction: str | None = None
    bounds: bool = True
    dither: float = 0.0  # 0: automatic (dither only when exact ties are detected); > 0: this sigma
    no_dither: bool = False  # keep x even with ties
    gradients: str = "auto"  # auto | graph | fd: where the Jacobian comes from (fimaudit.autodiff)
    cross_check: bool = False  # with the graph: also run the black-box plan and report its error
    trace_budget: int = 0
    trace_rse: float = 0.05
    trace_probes: str = "rademacher"
    smoothing: float | None = None  # sigma (units of --space): F_sigma of the Gaussian-smoothed model instead of F
    local_bound: float | None = None  # eps (L-inf, units of --space): certified local upper bound (fimaudit.verify.local)
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, not '{self.method}'")
        if self.probes not in PROBES:
            raise ConfigError(f"--probes must be one of {', '.join(PROBES)}, not '{self.probes}'")
        if self.output_kind not in ("auto",) + OUTPUT_KINDS:
            raise ConfigError(f"--output-kind must be auto or one of {', '.join(OUTPUT_KINDS)}")
        if self.subspace not in SUBSPACES:
            raise ConfigError(f"--subspace must be one of {', '.join(SUBSPACES)}, not '{self.subspace}'")
        if self.subspace_dim is not None and self.subspace_dim < 0:
            raise ConfigError("--subspace-dim must be >= 0")
        if self.space not in SPACES:
            raise ConfigError(f"--space must be input or data, not '{self.space}'")
        if self.budget < 10:
            raise ConfigError(
                "--budget must be at least 10 queries per sample (1 centre, 3 probes x 2, 3 for the lower-bound and KL checks)"
            )
        if self.samples is not None and self.samples < 1:
            raise ConfigError("--samples must be >= 1")
        if self.fd_step is not None and not (np.isfinite(self.fd_step) and self.fd_step > 0):
            raise ConfigError("--fd-step must be a positive number")
        if self.trace_budget < 0 or not (0 <= self.trace_rse < 1):
            raise ConfigError("--trace-budget must be >= 0 and --trace-rse in [0, 1)")
        if self.trace_probes not in HUTCHINSON_PROBES:
            raise ConfigError(f"--trace-probes must be one of {', '.join(HUTCHINSON_PROBES)}")
        if not (np.isfinite(self.dither) and self.dither >= 0):
            raise ConfigError("--dither must be a nonnegative number")
        if self.gradients not in ("auto", "graph", "fd"):
            raise ConfigError(f"--gradients must be one of auto, graph, fd, not '{self.gradients}'")
        if self.cross_check and self.gradients == "fd":
            raise ConfigError("--cross-check compares the black-box estimate with the gradient graph's: give --gradients auto or graph")
        if self.no_dither and self.dither > 0:
            raise ConfigError("--no-dither and --dither SIGMA contradict each other: give one")
        if self.max_batch < 1:
            raise ConfigError("--max-batch must be >= 1")
        if self.data is None and self.space == "data":
            raise ConfigError("--space data needs --data: synthetic inputs are drawn in model-input units")
        if self.smoothing is not None:
            self._validate_smoothing()
        if self.local_bound is not None:
            if not (np.isfinite(self.local_bound) and self.local_bound >= 0):
                raise ConfigError("--local-bound must be a nonnegative number (the L-inf radius, in the units of --space)")
            if self.smoothing is not None:
                raise ConfigError("--local-bound bounds the pointwise Fisher F, not the smoothed F_sigma of --smoothing: "
                                  "give one")

    def _validate_smoothing(self) -> None:
        """--smoothing replaces the pointwise estimator: the options of that estimator contradict it."""
        if not (np.isfinite(self.smoothing) and self.smoothing > 0):
            raise ConfigError("--smoothing must be a positive number (sigma, in the units of --space)")
        clashes = pointwise_options(self)
        if clashes:
            raise ConfigError("--smoothing estimates F_sigma from Gaussian draws and replaces the pointwise "
                              f"estimator: {', '.join(clashes)} cannot go with it")
        if self.budget < 2 * MIN_PAIRS + 1:
            raise ConfigError(f"--smoothing needs --budget of at least {2 * MIN_PAIRS + 1} queries per sample (the "
                              f"centre query and {MIN_PAIRS} antithetic pairs, two per jackknife group)")


@dataclass(frozen=True)
class Plan:
    """How a sample's query budget is spent: 1 centre query + the estimator + the checks."""

    method: str  # exact | sketch | power | power-fresh | deflated
    k: int  # probes: d for exact, sketch/power probes, or complement probes for deflated
    r: int  # subspace dimension (deflated)
    checks: int  # 2 for the certified lower bound + 1 for the KL check, or 0
    trace: int = 0  # queries reserved for a separate Hutchinson trace (0: trace from the probes)

    def cost(self) -> int:
        if self.method == "exact":
            core = 2 * self.k
        elif self.method == "power-fresh":
            core = self.k  # k holds the query allowance of the iteration itself
        else:
            core = 2 * (self.k + self.r)
        return 1 + core + self.checks + self.trace


CHECK_QUERIES = 5  # 4 along v for the lower estimate and its margin + 1 for the KL check


def plan(
    method: str, d: int, budget: int, lower_bound: bool = True, subspace_dim: int | None = None, trace_budget: int = 0
) -> Plan:
    """Choose the estimator and its size so that a sample never exceeds ``budget`` queries."""
    checks = CHECK_QUERIES if lower_bound else 0
    exact_cost = 2 * d + 1
    if method == "exact" or (method == "auto" and exact_cost <= budget):
        if exact_cost > budget:
            raise ConfigError(
                f"--method exact needs 2d+1 = {exact_cost} queries per sample (d = {d}) but --budget is {budget}; "
                f"raise --budget to {exact_cost} or use --method sketch"
            )
        return Plan("exact", d, 0, checks if exact_cost + checks <= budget else 0)
    if trace_budget and trace_budget > budget // 2:
        raise ConfigError(f"--trace-budget {trace_budget} may use at most half of --budget {budget}")
    least = 12 if method in ("power-fresh", "deflated") else 6  # the estimator's own minimum
    if checks and budget - 1 - checks - trace_budget < least:
        checks = 0  # a budget this small pays the estimator only: no lower estimate, no KL check
    room = budget - 1 - checks - trace_budget
    if method == "power-fresh":
        if room < 12:
            raise ConfigError(f"--budget {budget} is too small for --method power-fresh (needs at least {13 + checks})")
        return Plan("power-fresh", room, 0, checks, trace_budget)
    r = 0
    if method == "deflated":
        r = min(d, room // 4) if subspace_dim is None else min(d, subspace_dim)
        if 2 * r > room - 6:
            raise ConfigError(f"--subspace-dim {r} leaves fewer than 3 sketch probes within --budget {budget}")
    k = (room - 2 * r) // 2
    if k < 3:
        raise ConfigError(f"--budget {budget} leaves fewer than 3 sketch probes per sample")
    name = "sketch" if method == "auto" else method
    return Plan(name, k, r, checks, trace_budget)


TIE_WARNING_SHARE = 0.05


def tie_fraction(row: np.ndarray) -> float:
    """Share of a sample's coordinates equal to its most common exact value."""
    _, counts = np.unique(np.asarray(row).ravel(), return_counts=True)
    return float(counts.max() / counts.sum()) if counts.size and counts.max() > 1 else 0.0


# Default dither: 3% of the sample's own RMS, small against the input's scale; the finite-difference
# step is kept at most sigma/10 so that a step rarely reaches a kink the dither moved away. On a
# max-pool net with a 75% constant background (tests/test_dither.py) sigma = 1% with h <= sigma/3
# left exact and sketch 7% apart on some samples; 3% with sigma/10 brought the worst to 1%.
DITHER_REL = 3e-2
STEP_OVER_DITHER = 0.1
DITHER_RULE = ("per sample: a sample is dithered when at least 5% of its values are one exact value; "
               "sigma = 3% of that sample's RMS (its own values only); xi from the stream [seed, 4, sample index]")


FLOAT32_RESOLUTION = 1e-6  # relative spacing well above float32 rounding (eps 1.2e-7)


def dither_points(points: np.ndarray, ties: np.ndarray, config: "ScanConfig",
                  indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decide, sample by sample, where F is evaluated: x, or a seeded dithered point x + sigma xi (MATH §1).

    With exact ties (a constant background puts ReLU/max-pool units exactly at kinks, where F
    is not defined and every source would measure a different one-sided mixture) the default
    is x + sigma xi with sigma = DITHER_REL * that sample's own RMS (``DITHER_RULE``); ``--dither
    SIGMA`` sets sigma for every sample, ``--no-dither`` keeps x. Each sample's decision, sigma and
    xi (stream ``[seed, 4, index]``) depend on that sample alone, never on the others scanned.
    Returns the points, each sample's sigma (0: kept) and a record of the decision (with a note).
    """
    n = points.shape[0]
    indices = np.arange(n) if indices is None else np.asarray(indices)
    ties = np.asarray(ties, dtype=np.float64)
    tied = ties >= TIE_WARNING_SHARE
    units = "data" if config.space == "data" else "model-input"
    scales = np.array([input_scale(row) for row in points]) if n else np.zeros(0)
    if config.dither > 0:
        source = "user"
        sigmas = np.full(n, float(config.dither))
        low = scales * FLOAT32_RESOLUTION > config.dither
        if np.any(low):
            # the model sees float32: a smaller sigma does not move the inputs, and the step h <= sigma/10
            # that goes with a dither would be lost in rounding (or underflow)
            worst = float(scales[low].max())
            raise ConfigError(
                f"--dither {config.dither:g} is below the float32 resolution of the inputs (sample RMS up to "
                f"{worst:.3g}): it cannot move them; give at least {FLOAT32_RESOLUTION * worst:.3g}, or leave it out"
            )
    elif not config.no_dither and np.any(tied):
        source = "auto"
        sigmas = np.where(tied, DITHER_REL * scales, 0.0)
    else:
        source, sigmas = None, np.zeros(n)
    moved = sigmas > 0
    share = float(np.median(ties)) if n else 0.0
    record = {"sigma": float(np.median(sigmas[moved])) if np.any(moved) else None, "source": source,
              "tie_share": share, "samples": int(np.sum(moved)), "note": ""}
    if source == "auto":
        record["rule"] = DITHER_RULE
    out = points
    if np.any(moved):
        out = points.copy()
        for j in np.flatnonzero(moved):
            xi = streams.rng(config.seed, "scan.dither", int(indices[j])).standard_normal(points.shape[1:])
            out[j] = points[j] + sigmas[j] * xi
        which = "every sample" if moved.all() else f"{int(moved.sum())} of {n} samples"
        if source == "auto":
            record["note"] = (
                f"exact input ties (a constant background; median {100 * share:.0f}% of a sample's values) put "
                f"ReLU/max-pool units at kinks, where F is not defined: for {which} F is evaluated at the dithered "
                f"point x + sigma*xi (seeded Gaussian xi, sigma = 3% of that sample's own RMS, median "
                f"{record['sigma']:.3g} {units} units) so that every estimator measures the same differentiable "
                "point; --no-dither keeps x"
            )
        else:
            record["note"] = (
                f"F is evaluated at the dithered points x + sigma*xi (seeded Gaussian xi, sigma = {config.dither:.3g} "
                f"{units} units, set by --dither) so that every estimator measures the same differentiable point"
            )
        return out, sigmas, record
    if np.any(tied):
        # kept at x (--no-dither): ``kink_note`` says, once the Jacobian source is known, what is computed there
        record["kept_at_ties"] = [int(indices[j]) for j in np.flatnonzero(tied)]
    return out, sigmas, record


def smoothing_sigmas(points: np.ndarray, config: "ScanConfig", auto: bool = False,
                     input_range: tuple[float, float] | None = None) -> tuple[np.ndarray, dict]:
    """Each sample's smoothing sigma (estimation-space units, like --dither) and the record for the report.

    ``config.smoothing`` sets one sigma for every sample; ``auto`` (for a caller that detected a piecewise-constant
    model) takes ``default_sigma`` of each sample on its own. Refuses a sigma below the float32 resolution of the
    inputs, which could not move them.
    """
    n = points.shape[0]
    units = "data" if config.space == "data" else "model-input"
    if auto:
        pairs = [default_sigma(row, input_range or tuple(config.input_range)) for row in points]
        sigmas = np.array([p[0] for p in pairs])
        record = {"sigma": float(np.median(sigmas)) if n else None, "source": "auto", "units": units,
                  "rule": SMOOTHING_RULE}
    else:
        sigmas = np.full(n, float(config.smoothing))
        record = {"sigma": float(config.smoothing), "source": "user", "units": units, "rule": "set by --smoothing"}
        scales = np.array([input_scale(row) for row in points]) if n else np.zeros(0)
        low = scales * FLOAT32_RESOLUTION > config.smoothing
        if np.any(low):
            worst = float(scales[low].max())
            raise ConfigError(
                f"--smoothing {config.smoothing:g} is below the float32 resolution of the inputs (sample RMS up to "
                f"{worst:.3g}): it cannot move them; give at least {FLOAT32_RESOLUTION * worst:.3g}"
            )
    return sigmas, record


def pointwise_options(config: "ScanConfig") -> list[str]:
    """The options given that only the pointwise estimator uses (they contradict a smoothed Fisher)."""
    return [flag for flag, on in (
        (f"--method {config.method}", config.method != "auto"), ("--dither", config.dither > 0),
        ("--gradients graph", config.gradients == "graph"), ("--cross-check", config.cross_check),
        ("--trace-budget", config.trace_budget > 0), ("--fd-step", config.fd_step is not None)) if on]


def auto_smoothing(config: "ScanConfig", model) -> tuple[bool, str | None]:
    """Whether the scan estimates F_sigma with automatic sigmas because the model is piecewise constant (and no
    --smoothing was given), and the note saying why it does not when it could (None otherwise)."""
    pw = model.info.piecewise
    if config.smoothing is not None or pw is None or not pw.complete:
        return False, None
    why = "the automatic smoothed Fisher F_sigma of this piecewise-constant model was not computed"
    clashes = pointwise_options(config)
    if clashes:
        return False, f"{why}: {', '.join(clashes)} asked for the pointwise estimator (drop it, or give --smoothing)"
    if config.budget < 2 * MIN_PAIRS + 1:
        return False, (f"{why}: --budget {config.budget} is below the {2 * MIN_PAIRS + 1} queries per sample it needs "
                       f"(the centre query and {MIN_PAIRS} antithetic pairs)")
    return True, None


def smoothing_note(record: dict, pairs: int) -> str:
    """What a smoothed scan computed, for the report's notes."""
    how = "set by --smoothing" if record.get("source") == "user" else \
        f"sigma chosen automatically: {record.get('rule')}" + (f", because {record['because']}" if record.get("because") else "")
    return (f"smoothed Fisher F_sigma (sigma = {record['sigma']:.3g} {record['units']} units, {how}): every value is "
            "the Fisher information of the Gaussian-smoothed model p_sigma(x), the mean of p(x + sigma*eps) over "
            f"eps ~ N(0, I), not the pointwise F; per sample {pairs} antithetic Gaussian pairs ({2 * pairs} queries, "
            "plus the centre query), Stein's identity for J_sigma and a U-statistic over distinct draws for "
            "J_sigma J_sigma^T (no plug-in noise term), "
            "p_sigma from the same draws; 95% intervals by a delete-a-group jackknife; no lower bound or KL check "
            "(docs/smoothed_fisher.md)")


SMOOTHING_WIDE = 0.5  # a median interval half-width above this share of lambda_max gets a note


def smoothing_width_note(samples, d: int, pairs: int) -> str | None:
    """Why the smoothed intervals are wide, when they are: the U-statistic's variance has a term growing like
    d / m^2 (docs/smoothed_fisher.md, section 3), so high-dimensional inputs need many more pairs."""
    rel = [(s.lambda_max_ci[1] - s.lambda_max_ci[0]) / (2 * s.lambda_max) for s in samples
           if s.lambda_max_ci is not None and s.lambda_max > 0]
    if not rel or float(np.median(rel)) <= SMOOTHING_WIDE:
        return None
    return (f"the smoothed Fisher's 95% intervals are wide (median half-width {100 * float(np.median(rel)):.0f}% of "
            f"lambda_max): with d = {d} and {pairs} pairs per sample the estimator's variance term that grows like "
            "d/m^2 dominates; raise --budget (the interval narrows about like 1/m there)")


LOWER_GAP = 0.5  # a lower estimate below this share of lambda_max (median) gets an explanation


def lower_estimate_gap_note(samples, d: int) -> str | None:
    """Why the finite-difference path's lower estimate sits far below lambda_max, when it does (median below half).

    The estimate is (|P^1/2 S v| - 2 err)^2 along the estimator's top direction v, re-measured with 4 queries:
    it falls short of lambda_max when v^T F v itself does (the estimator's sampling error: its value and
    direction come from k probes of d) and when the error margin for kinks or curvature within the step is large.
    """
    rows = [(s.lower_estimate, s.lambda_max, (s.lower_check or {}).get("quadratic_form"), s.probes) for s in samples
            if s.lower_estimate is not None and s.lambda_max and s.lambda_max > 0]
    if not rows:
        return None
    ratio = float(np.median([lo / lam for lo, lam, _, _ in rows]))
    if ratio >= LOWER_GAP:
        return None
    quad = [q / lam for _, lam, q, _ in rows if q is not None]
    margin = [1 - lo / q for lo, _, q, _ in rows if q]
    probes = int(np.median([p for *_, p in rows if p])) if any(p for *_, p in rows) else None
    parts = []
    if quad:
        parts.append(f"v^T F v re-measured along the estimator's top direction v is a median {100 * np.median(quad):.0f}% "
                     f"of lambda_max (the estimator's value and direction carry its sampling error"
                     + (f": {probes} probes of d = {d}" if probes else "") + ")")
    if margin:
        parts.append(f"the error margin for kinks or curvature within the step removes a median "
                     f"{100 * np.median(margin):.0f}% of it")
    return (f"lower estimate (finite-difference path) is a median {100 * ratio:.0f}% of lambda_max: "
            + "; ".join(parts) + ". It is an estimate, not a certified bound; --gradients graph gives a certified one")


def kink_note(kept: list[int], ties: np.ndarray, gradients: dict | None) -> str:
    """One line for samples kept at exact ties by --no-dither: F is not defined there; what was computed instead."""
    shown = ", ".join(str(i) for i in kept[:10]) + (f" and {len(kept) - 10} more" if len(kept) > 10 else "")
    share = float(np.median(ties[kept])) if len(kept) else 0.0
    gradients = gradients or {}
    if gradients.get("source") == "graph":
        what = ("the gradient graph's one-sided derivatives (at each tie, the branch onnxruntime's ReLU/max-pool "
                "takes): one one-sided limit of F, not F")
    elif gradients.get("requested") == "fd" or gradients.get("reason", "").startswith("--method"):
        what = "finite-difference estimates that mix one-sided derivatives along each direction, not F"
    elif "self-check" in gradients.get("reason", ""):
        what = ("finite-difference estimates that mix one-sided derivatives along each direction, not F (the gradient "
                "graph was set aside: its self-check against central differences cannot pass at kinks, where no "
                "derivative exists)")
    else:
        what = ("finite-difference estimates that mix one-sided derivatives along each direction, not F (gradients: "
                f"finite differences because {gradients.get('reason')})")
    return (f"F is not defined at x for sample{'s' if len(kept) != 1 else ''} {shown} (median {100 * share:.0f}% "
            f"of their values are exact ties, which put ReLU/max-pool units at kinks) and --no-dither keeps x: "
            f"reported for them are {what}; leave out --no-dither to measure F at a seeded dithered point")


def runtime_info(model) -> dict:
    """The report's ``runtime``: the model's execution provider and the versions that computed it."""
    import onnx
    import onnxruntime
    import scipy

    return {
        "provider": model.provider,
        "fimaudit": __version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------ stage 1: load
@dataclass(frozen=True)
class Loaded:
    """The job's view of the validated model with the loader's notes."""

    model: Model  # this job's query-counting view (``Subject.model``)
    pre: Preprocess
    prepared: Prepared  # layout, preprocessing and (with --data) the samples
    notes: tuple[str, ...]
    subject: Subject | None = None


def load(config: ScanConfig, subject: Subject | None = None) -> Loaded:
    """Validate the config, open the subject (unless given: it must match the config) and prepare the data."""
    config.validate()
    if subject is None:
        subject = open_subject(config)
    subject.check(config)
    model = subject.model()
    prepared = subject.prepare(model, config.data, config.samples or DEFAULT_SAMPLES_DATA, config.scale, config.mean,
                               config.std, DataOptions.of(config))
    return Loaded(model, prepared.pre, prepared, tuple(model.info.notes) + tuple(prepared.notes), subject)


# ------------------------------------------------------------------ stage 2: points
@dataclass(frozen=True)
class Points:
    """The scan's points in estimation space, their labels and where they came from."""

    x: np.ndarray  # (n, *sample_shape) float64, estimation space (dithered when asked)
    labels: np.ndarray | None
    source: str
    tie_share: float  # median share of each input's most common exact value (before dithering)
    to_input: Callable[[np.ndarray], np.ndarray] | None  # estimation space -> model input (None: identity)
    notes: tuple[str, ...]
    pre: Preprocess  # stored data -> model input
    images: bool  # the data came from a folder of images
    preprocess: dict  # the resolved preprocessing (preset, layout, channels, resize), for the report
    dither: dict = field(default_factory=dict)  # median sigma (None: x kept), source (auto | user), tie_share, samples
    sigmas: np.ndarray | None = None  # each sample's dither sigma (0: F at x)
    ties: np.ndarray | None = None  # each sample's share of its most common exact value
    smoothing: np.ndarray | None = None  # each sample's smoothing sigma (None: pointwise F)
    smoothing_record: dict | None = None  # sigma (median), source (user | auto), units, rule

    def sigma_of(self, index: int) -> float:
        """The dither sigma of sample ``index`` (0: evaluated at x)."""
        return 0.0 if self.sigmas is None else float(self.sigmas[index])


def prepare_points(config: ScanConfig, loaded: Loaded) -> Points:
    """Load (arrays or images) or draw the samples, map them to estimation space, measure ties, dither if asked."""
    model = loaded.model
    shape = model.sample_shape
    prepared = loaded.prepared  # read in stage 1 (the preset and layout decide the preprocessing)
    pre = prepared.pre
    notes: list[str] = []  # the preparation's notes are the loaded stage's
    to_input = None
    if prepared.dataset is not None:
        dataset = prepared.dataset
        if config.samples is None:
            notes.append(f"scanned the first {dataset.x.shape[0]} samples (set --samples to change)")
        if config.space == "data":
            points = np.asarray(dataset.x, dtype=np.float64)
            to_input = lambda rows: pre.apply(rows, shape)  # noqa: E731
        else:
            points = pre.apply(dataset.x, shape)
    else:
        if not pre.is_identity:
            notes.append("--scale/--mean/--std are ignored for synthetic inputs (drawn in model-input units)")
        rng_data = loaded.subject.rng("data.synthetic")
        dataset = synthetic_data(shape, config.samples or DEFAULT_SAMPLES_SYNTHETIC, config.input_range, rng_data)
        points = dataset.x
        notes.append(
            "NOT REPRESENTATIVE: no --data given, so samples are synthetic uniform inputs in "
            f"[{config.input_range[0]:g}, {config.input_range[1]:g}]; real data can differ by orders of magnitude"
        )
    ties = np.array([tie_fraction(row) for row in points])
    smooth, smooth_record = None, None
    auto, why_not = auto_smoothing(config, loaded.model)
    if why_not:
        notes.append(why_not)
    if config.smoothing is not None or auto:
        # F_sigma is defined at ties (the smoothing averages over the kinks): no dither
        n = points.shape[0]
        share = float(np.median(ties)) if n else 0.0
        sigmas = np.zeros(n)
        dither = {"sigma": None, "source": None, "tie_share": share, "samples": 0,
                  "reason": "none: the smoothed Fisher averages over the kinks"}
        smooth, smooth_record = smoothing_sigmas(points, config, auto=auto)
        if auto:
            pw = loaded.model.info.piecewise
            # the pointwise F of a piecewise-constant model is 0 almost everywhere: F_sigma replaces it
            smooth_record["because"] = f"the model is piecewise-constant ({pw.ops_text()})"
    else:
        points, sigmas, dither = dither_points(points, ties, config)
        note = dither.pop("note")
        if note:
            notes.append(note)
    return Points(points, dataset.y, dataset.source, dither["tie_share"], to_input, tuple(notes), pre,
                  prepared.images, prepared.config, dither, sigmas, ties, smooth, smooth_record)


# ------------------------------------------------------------------ stage 3: calibrate
@dataclass(frozen=True)
class Calibration:
    """Everything fixed before the per-sample loop: output kind, centre queries, plan, step."""

    kind: str
    kind_source: str
    logp: np.ndarray  # (n, K) log-probabilities at the points (one centre query each)
    plan: Plan
    step: StepChoice
    queries: int  # spent on the step search
    dct_basis: np.ndarray | None  # the deflation subspace when it is the fixed DCT one
    notes: tuple[str, ...]
    graph: object | None = None  # fimaudit.autodiff GradientChoice when the gradient graph is used
    gradients: dict | None = None  # its record for the report (or why finite differences)
    input_scale: np.ndarray | None = None  # d(model input)/d(estimation space), diagonal; None: identity
    dither_sigmas: np.ndarray | None = None  # each sample's dither sigma (0: none)
    smoothing_sigmas: np.ndarray | None = None  # each sample's smoothing sigma (None: pointwise F)

    @property
    def n_classes(self) -> int:
        return int(self.logp.shape[1])


def calibrate(config: ScanConfig, model: Model, points: Points,
              pre: Preprocess | None = None) -> tuple[LogProbOracle, Calibration]:
    """Centre queries, output kind, the budget plan and the finite-difference step."""
    kind_oracle = LogProbOracle(model, "logits", points.to_input)
    raw_centre = kind_oracle.raw(points.x)  # one centre query per sample
    if config.output_kind == "auto":
        kind = detect_output_kind(raw_centre, model.info.final_op)
        kind_source = "detected from the outputs"
    else:
        kind = config.output_kind
        check_output_kind(raw_centre, kind, model.info.output.name)
        kind_source = "given by --output-kind"
    oracle = LogProbOracle(model, kind, points.to_input)
    logp = to_log_probs(raw_centre, kind)
    n_classes = int(logp.shape[1])
    if points.labels is not None:
        check_labels(points.labels, n_classes, points.source)
    notes = []
    if points.smoothing is not None:
        return oracle, _calibrate_smoothed(config, kind, kind_source, logp, points, pre, model)
    graph, gradients = _gradient_choice(model, kind, config, points.x, points.to_input, notes)
    method = config.method
    if graph is not None:
        from .estimators.exact_source import LANCZOS_FROM_CLASSES

        # K - 1 VJP rows, the centre query, the lower bound's two finite-difference queries and the KL check's one
        need = (n_classes - 1 if n_classes < LANCZOS_FROM_CLASSES else 0) + 4
        if need > config.budget:
            raise ConfigError(f"--budget {config.budget} is below the {need} queries per sample of the gradient graph's "
                              f"exact Fisher ({n_classes - 1} VJP rows, the centre query, two finite-difference queries "
                              "of the lower bound and one of the KL check); raise --budget or use --gradients fd with "
                              "a black-box --method")
    if graph is not None and method == "exact" and 2 * model.d + 1 > config.budget:
        # The graph makes exact cheap (K - 1 VJPs); the black-box plan only serves --cross-check.
        method = "auto"
    chosen = plan(method, model.d, config.budget, config.lower_bound, config.subspace_dim, config.trace_budget)
    q0 = model.queries
    # The step is calibrated once, at the data's first sample and from its values alone, so a sample's
    # result does not depend on how many others are scanned (the first sample is always the same one).
    step = choose_step(
        oracle, points.x[0], input_scale(points.x[0]), streams.rng(config.seed, "scan.fd_step"), config.fd_step,
        max_step=points.sigma_of(0) * STEP_OVER_DITHER if points.sigma_of(0) > 0 else None,
    )
    if step.relative_discrepancy is not None and step.relative_discrepancy > 0.05:
        unstable = (f"finite differences are unstable here: JVPs at h and h/2 differ by "
                    f"{100 * step.relative_discrepancy:.1f}% (kinks or round-off)")
        if graph is not None:
            notes.append(f"{unstable}; this touches only the finite-difference re-measurement beside the certified "
                         "lower bound and the KL check: lambda_max, the trace and the bound come from the gradient graph")
        else:
            notes.append(f"{unstable}; the black-box estimates (lambda_max, trace, lower estimate) carry that error")
    dct = None
    if chosen.method == "deflated" and config.subspace == "dct":
        dct = dct_lowfreq_basis(model.sample_shape, chosen.r)
    queries = model.queries - q0
    scale = None if points.to_input is None or pre is None else pre.jacobian_diag(model.sample_shape)
    return oracle, Calibration(kind, kind_source, logp, chosen, step, queries, dct, tuple(notes), graph, gradients,
                               scale, points.sigmas)


def _calibrate_smoothed(config: ScanConfig, kind: str, kind_source: str, logp: np.ndarray, points: Points,
                        pre: Preprocess | None, model: Model) -> Calibration:
    """The smoothed scan's plan: every query after the centre one goes to antithetic pairs; no step, no graph."""
    pairs = (config.budget - 1) // 2
    flag = "--smoothing" if config.smoothing is not None else "automatic smoothing (piecewise-constant model)"
    step = StepChoice(h=float("nan"), scale=input_scale(points.x[0]), relative_discrepancy=None, queries=0,
                      source=f"none ({flag} uses no finite differences)")
    gradients = {"requested": config.gradients, "source": "smoothing",
                 "reason": f"{flag}: J_sigma from Gaussian draws by Stein's identity (queries only)"}
    scale = None if points.to_input is None or pre is None else pre.jacobian_diag(model.sample_shape)
    return Calibration(kind, kind_source, logp, Plan("smoothed", pairs, 0, 0), step, 0, None, (), None, gradients,
                       scale, points.sigmas, points.smoothing)


# ------------------------------------------------------------------ stage 4: one sample
@dataclass(frozen=True)
class SampleOutcome:
    """One sample's result and its worst direction (unit, estimation space; not serialised)."""

    result: SampleResult
    direction: np.ndarray | None


def needs_learnt_basis(config: ScanConfig, calib: Calibration) -> bool:
    """True when each sample's subspace is learnt from the samples before it (sequential state)."""
    return calib.plan.method == "deflated" and config.subspace == "learnt"


def estimate_sample(
    oracle: LogProbOracle,
    config: ScanConfig,
    calib: Calibration,
    index: int,
    x: np.ndarray,
    label: int | None = None,
    learnt_basis: np.ndarray | None = None,
    direction: bool = False,
) -> SampleOutcome:
    """The planned estimator, trace and checks at sample ``index`` (point ``x``); seeded by (seed, 3, index).

    Depends on nothing mutable across samples; ``learnt_basis`` (rows orthonormal) is the
    only input from earlier samples, required when ``needs_learnt_basis``. ``direction``: the smoothed estimator
    also returns its top direction (with ``--save-direction`` it always does; the pointwise ones always do).
    """
    if calib.smoothing_sigmas is not None:
        return _estimate_smoothed(oracle, config, calib, index, x, label, direction)
    chosen, step = calib.plan, calib.step
    rng = streams.rng(config.seed, "scan.probes", index)
    logp0 = calib.logp[index]
    block = probe_block(oracle.model.max_batch)
    source = FiniteDifferences(
        oracle, x, step.h, logp0=logp0, rel_error=step.relative_discrepancy, vjp_probes=fresh_probes(chosen.k), rng=rng,
        chunk=block,
    )
    check, exact_info = None, None
    if calib.graph is not None:
        est, check, exact_info = _estimate_graph(calib, config, source, x, logp0, rng, learnt_basis)
    else:
        est = _estimate(chosen, source, rng, config, calib.dct_basis, learnt_basis)
    trace, trace_se, trace_ci, trace_how = est.trace, est.trace_se, None, "probes"
    if chosen.trace and chosen.method != "exact" and calib.graph is None:
        te = hutchinson(source, chosen.trace, rng, probes=config.trace_probes, rse_target=config.trace_rse)
        trace, trace_se, trace_ci = te.trace, te.se, te.ci
        trace_how = f"hutchinson-{config.trace_probes} ({te.probes} probes, stopped by {te.stopped_by})"
    kl_ratio = None
    if check is None and chosen.checks and est.direction is not None:
        check = fd_lower_estimate(source, x, logp0, est.direction, step.h)
    if check is not None and est.direction is not None:
        kl_ratio = kl_check(source, est.direction, check.quadratic_form, max_eps=100 * step.h)
    graph_rows = int(exact_info.pop("graph_queries", 0)) if exact_info else 0
    spent = source.queries + graph_rows + 1  # + the centre query made in calibration; gradient-graph rows count
    if spent > config.budget:  # a planning bug, never a user error
        raise AssertionError(f"sample {index} spent {spent} queries over the budget {config.budget}")
    result = SampleResult(
        index=index,
        label=label,
        predicted=int(np.argmax(logp0)),
        lambda_max=est.lambda_max,
        lambda_max_ci=est.lambda_max_ci,
        trace=trace,
        trace_se=trace_se,
        trace_ci=trace_ci,
        trace_method=_trace_method(chosen, calib.graph, exact_info, trace_how),
        lower_bound=check.value if check is not None and check.certified else None,
        lower_estimate=check.value if check is not None and not check.certified else None,
        lower_check=None if check is None else check.to_dict(),
        dither=(float(calib.dither_sigmas[index]) or None) if calib.dither_sigmas is not None else None,
        exact=exact_info,
        queries=spent,
        method=est.method,
        probes=est.probes,
        top_eigenvalues=est.top_eigenvalues,
        kl_ratio=kl_ratio,
    )
    return SampleOutcome(result, est.direction)


def _estimate_smoothed(oracle: LogProbOracle, config: ScanConfig, calib: Calibration, index: int, x: np.ndarray,
                       label: int | None, direction: bool = False) -> SampleOutcome:
    """F_sigma at sample ``index``: draws from the stream "scan.smoothing" of (seed, index), so independent of the others."""
    sigma = float(calib.smoothing_sigmas[index])
    logp0 = calib.logp[index]
    est: SmoothedEstimate = smoothed_fisher(oracle, x, sigma, 2 * calib.plan.k, (config.seed, index),
                                            block=oracle.model.max_batch, direction=bool(config.save_direction) or direction)
    spent = est.queries + 1  # + the centre query made in calibration
    if spent > config.budget:  # a planning bug, never a user error
        raise AssertionError(f"sample {index} spent {spent} queries over the budget {config.budget}")
    result = SampleResult(
        index=index, label=label, predicted=int(np.argmax(logp0)), lambda_max=est.lambda_max,
        lambda_max_ci=est.lambda_max_ci, trace=est.trace, trace_se=est.trace_se, trace_ci=est.trace_ci,
        trace_method=f"smoothed: U-statistic over {est.draws} antithetic pairs, jackknife interval", lower_bound=None,
        queries=spent, method="smoothed", probes=est.draws, top_eigenvalues=est.top_eigenvalues,
        smoothed=est.to_dict(),
    )
    return SampleOutcome(result, est.direction)


def probe_block(max_batch: int) -> int:
    """Probes per JVP call: two rows each by central differences, so a call stays within one model batch."""
    return max(1, max_batch // 2)


def _estimate(chosen: Plan, source: FiniteDifferences, rng, config: ScanConfig, dct_basis, learnt_basis) -> Estimate:
    """Run the planned estimator at one sample (the checks are made by the caller)."""
    block = source.chunk
    if chosen.method == "exact":
        return exact(source)
    if chosen.method == "sketch":
        return sketch(source, chosen.k, rng, probes=config.probes, check_lower_bound=False, block=block)
    if chosen.method == "power":
        return power_fixed(source, chosen.k, rng, probes=config.probes, check_lower_bound=False, block=block)
    if chosen.method == "power-fresh":
        return power_fresh(source, chosen.k, rng)
    if chosen.method == "deflated":
        if config.subspace == "learnt":
            if learnt_basis is None:
                raise ValueError("the learnt subspace needs the basis learnt from earlier samples")
            basis = learnt_basis
            # Unused subspace queries go to the complement sketch, keeping the sample's cost.
            k = chosen.k + (chosen.r - basis.shape[0])
            name = "deflated-learnt"
        else:
            basis, k, name = dct_basis, chosen.k, "deflated-dct"
        return deflated_sketch(source, basis, k, rng, probes=config.probes, check_lower_bound=False, name=name,
                              block=block)
    raise ConfigError(f"unknown method {chosen.method}")


# ------------------------------------------------------------------ stage 5: assemble
VACUOUS_FACTOR = 1e6  # a closed-form bound this far above the measured median is labelled vacuous


def _trace_method(chosen: Plan, graph, exact_info: dict | None, trace_how: str) -> str:
    """How the trace was obtained: exact (all of S), Hutchinson over VJPs (Lanczos path) or from the probes."""
    if graph is not None:
        return "exact" if exact_info and exact_info["path"] == "rows" else "hutchinson-rademacher (VJP probes)"
    return "exact" if chosen.method == "exact" else trace_how


def _gradient_choice(model, kind: str, config: ScanConfig, points: np.ndarray, to_input, notes: list[str]):
    """Build and self-check the gradient graph (``--gradients auto|graph``): (choice or None, its record for the report)."""
    if config.gradients == "fd":
        return None, {"requested": "fd", "source": "fd", "reason": "finite differences requested (--gradients fd)"}
    if config.gradients == "auto" and config.method not in ("auto", "exact"):
        # An explicit black-box estimator is what was asked for; --gradients graph would run the
        # graph's exact values instead, with this estimator as the cross-check.
        return None, {"requested": "auto", "source": "fd",
                      "reason": f"--method {config.method} is a black-box estimator (--method auto or exact uses the graph)"}
    pw = model.info.piecewise
    if config.gradients == "auto" and pw is not None and pw.complete:
        # its derivatives are 0 almost everywhere: the pointwise F is not reported (fimaudit.piecewise)
        return None, {"requested": "auto", "source": "fd",
                      "reason": "piecewise-constant model: the gradient graph's derivatives are 0 almost everywhere"}
    from .autodiff.select import build_gradient_source

    rows = to_input(points[:2]) if to_input is not None else points[:2]
    choice = build_gradient_source(model, kind, config.gradients, rows, streams.rng(config.seed, "gradients.build"),
                                   threads=config.threads)
    record = {k: v for k, v in choice.to_dict().items() if k != "build_seconds"}  # same seed, same report
    if choice.source != "graph":
        notes.append(f"gradients: finite differences (black-box), because the {choice.reason}")
        return None, record
    return choice, record


def _estimate_graph(calib: Calibration, config: ScanConfig, fd: FiniteDifferences, x: np.ndarray, logp0: np.ndarray,
                    rng: np.random.Generator, learnt_basis) -> tuple[Estimate, LowerCheck, dict]:
    """Exact estimate from the gradient graph at one sample (K VJPs in one batched pass, or Lanczos), its
    certified lower bound with the finite-difference re-measurement beside it, and the optional cross-check."""
    from .estimators.exact_source import exact_from_source

    src = calib.graph.at(np.asarray(x).reshape(-1), logp0=logp0, to_input=fd_to_input(fd), input_scale=calib.input_scale)
    p = np.exp(logp0)
    res = exact_from_source(src, p, rng, oracle=fd, x0=x, h=calib.step.h)
    info = {"source": "graph", "path": res.path, "products": res.products, "tolerance": res.tolerance,
            "cross_check": None}
    if config.cross_check:
        bb = _estimate(calib.plan, fd, rng, config, calib.dct_basis, learnt_basis)
        lam = res.estimate.lambda_max
        info["cross_check"] = {"method": bb.method, "lambda_max": bb.lambda_max,
                               "relative_error": abs(bb.lambda_max - lam) / lam if lam > 0 else None}
    info["graph_queries"] = int(src.queries)  # rows through the gradient graphs: each one is a counted query
    return res.estimate, res.lower, info


def _graph_rows(calib: Calibration) -> int:
    """Rows run through the gradient graphs in this process (self-check and per-sample VJPs): counted queries."""
    engine = getattr(calib.graph, "engine", None)
    return int(engine.rows) if engine is not None else 0


def _graph_seconds(calib: Calibration) -> float:
    """Wall time inside onnxruntime running the gradient graphs (0 without them)."""
    engine = getattr(calib.graph, "engine", None)
    return float(engine.seconds) if engine is not None else 0.0


def fd_to_input(fd: FiniteDifferences):
    """The estimation-space -> model-input map behind a finite-difference source's oracle (None: identity)."""
    return fd.oracle._to_input


def _cross_check_summary(samples, method: str) -> dict | None:
    errs = [s.exact["cross_check"]["relative_error"] for s in samples
            if s.exact and s.exact.get("cross_check") and s.exact["cross_check"].get("relative_error") is not None]
    if not errs:
        return None
    return {"method": method, "samples": len(errs), "median_relative_error": float(np.median(errs)),
            "max_relative_error": float(np.max(errs))}


def assemble(
    config: ScanConfig,
    loaded: Loaded,
    points: Points,
    calib: Calibration,
    outcomes: list[SampleOutcome],
    seconds: float,
) -> ScanResult:
    """Summary, model facts, units, the closed-form bound and notes -> ``ScanResult``."""
    model, pre = loaded.model, points.pre
    shape, d = model.sample_shape, model.d
    notes = list(loaded.notes) + list(model.notes) + list(points.notes) + list(calib.notes)
    kept = points.dither.get("kept_at_ties") or []
    if kept:
        from .sanity import warn

        line = kink_note(kept, points.ties, calib.gradients)
        notes.insert(0, line)
        warn(line)
    samples = tuple(o.result for o in outcomes)
    piecewise, surrogate = None, None
    if model.info.piecewise is not None:
        samples, piecewise, surrogate, more = piecewise_results(config, loaded, points, calib, samples)
        notes.extend(more)
    predicted = np.array([s.predicted for s in samples])
    accuracy = None if points.labels is None else float(np.mean(predicted == points.labels[: len(samples)]))
    from .sanity import checked

    checked(predicted, None if points.labels is None else points.labels[: len(samples)], calib.n_classes, notes)
    gap = lower_estimate_gap_note(samples, d)
    if gap:
        notes.append(gap)
    smoothed = None
    if points.smoothing_record is not None:
        notes.insert(0, smoothing_note(points.smoothing_record, calib.plan.k))
        wide = smoothing_width_note(samples, d, calib.plan.k)
        if wide:
            notes.append(wide)
        smoothed = dict(points.smoothing_record) | {
            "draws": calib.plan.k,
            "lambda_max": Stats.of([s.lambda_max for s in samples]).to_dict(),
            "trace": Stats.of([s.trace for s in samples]).to_dict(),
        }
    local = None
    bound = _bound_summary(model, config, pre, shape) if config.bounds else None
    if config.local_bound is not None:
        samples, local = _local_bounds(config, loaded, points, calib, samples, notes, (bound or {}).get("lipschitz"))
    summary = Summary(
        lambda_max=Stats.of([s.lambda_max for s in samples]),
        trace=Stats.of([s.trace for s in samples]),
        lower_bound=Stats.of([s.lower_bound for s in samples]),
        lower_estimate=Stats.of([s.lower_estimate for s in samples]),
        accuracy=accuracy,
        queries_total=model.queries + _graph_rows(calib),  # the model's runs and every gradient-graph row
        calibration_queries=calib.queries,
        seconds=seconds,
        runtime_fraction=(model.run_seconds + _graph_seconds(calib)) / seconds if seconds > 0 else None,
        surrogate=surrogate,
        smoothed=smoothed,
        local_upper=local,
    )
    info = model.info
    model_dict = {
        "path": info.path,
        "sha256": info.sha256,
        "input": info.input.to_dict() | {"sample_shape": list(shape), "d": d},
        "output": info.output.to_dict()
        | {"kind": calib.kind, "kind_source": calib.kind_source, "classes": calib.n_classes},
        "ir_version": info.ir_version,
        "opsets": info.opsets,
    }
    units = _units(config.space, pre, loaded.prepared.images, config.preset)
    if bound is not None and bound.get("fim_upper"):
        lam = summary.lambda_max
        bound["measured_over_bound"] = {
            "median": None if lam.median is None else lam.median / bound["fim_upper"],
            "max": None if lam.max is None else lam.max / bound["fim_upper"],
        }
        # A bound a million times above what the model does is true but says nothing: label it.
        bound["vacuous"] = bool(lam.median is not None and bound["fim_upper"] > VACUOUS_FACTOR * lam.median)
        if bound["vacuous"]:
            notes.append(
                f"the closed-form bound {bound['fim_upper']:.3g} is vacuous: more than {VACUOUS_FACTOR:.0e} times the "
                f"measured median lambda_max {lam.median:.3g} (per-layer norms multiply; it is a guarantee, not an estimate)"
            )
        if lam.max is not None and lam.max > bound["fim_upper"]:
            notes.append("a measured lambda_max exceeds the closed-form bound: please report this as a bug")
    cfg = asdict(config)
    cfg.pop("extra", None)
    cfg["preprocess"] = loaded.prepared.config
    run = RunInfo(
        method_used=calib.plan.method,
        subspace_dim_used=calib.plan.r,
        probes_per_sample=calib.plan.k,
        samples_scanned=len(samples),
        data_source=points.source,
        tie_share=points.tie_share,
        dither_used=dict(points.dither),
        gradients_used=calib.gradients,
        cross_check_result=_cross_check_summary(samples, calib.plan.method),
    )
    if calib.graph is not None and samples:
        run = replace(run, method_used=samples[0].method, probes_per_sample=samples[0].probes)
    return ScanResult(
        model=model_dict,
        runtime=runtime_info(model),
        config=cfg,
        run=run,
        units=units,
        finite_differences=calib.step.to_dict(),
        bound=bound,
        samples=samples,
        summary=summary,
        notes=tuple(notes),
        piecewise=piecewise,
    )


def _local_bounds(config: ScanConfig, loaded: Loaded, points: Points, calib: Calibration,
                  samples: tuple[SampleResult, ...], notes: list[str],
                  lipschitz: float | None = None) -> tuple[tuple[SampleResult, ...], dict]:
    """--local-bound EPS: each sample's certified upper bound on lambda_max(F) over the ball (fimaudit.verify.local);
    ``lipschitz``: the closed-form global bound in the scan's space, taken where it is smaller."""
    from .verify.local import scan_local_bounds

    per, summary, more = scan_local_bounds(
        loaded.model, points.x, float(config.local_bound), kind=calib.kind, pre=points.pre,
        data_space=points.to_input is not None, lambdas=[s.lambda_max for s in samples], lipschitz_cap=lipschitz)
    notes.extend(more)
    return tuple(replace(s, local_upper=d) for s, d in zip(samples, per)), summary


NO_SURROGATE = {"available": False, "reason": "no float surrogate: the piecewise-constant operators are the model's "
                                             "function (sign/rounding/trees/argmax), not an artefact of quantization"}
NOT_REPORTED = "not reported: piecewise-constant model (the pointwise Fisher is 0 almost everywhere)"


def piecewise_results(config: ScanConfig, loaded: Loaded, points: Points, calib: Calibration,
                      samples: tuple[SampleResult, ...]) -> tuple[tuple[SampleResult, ...], dict, dict | None, list[str]]:
    """A piecewise-constant model (fimaudit.piecewise): the pointwise F is not a result; what is computed instead.

    Measures the behaviour at the first point (JVP rows exactly 0 at the finite-difference scale while
    larger steps change the output), nulls the pointwise lambda_max, trace and lower bounds of every
    sample when every input->output path is piecewise constant, and, for an INT8 model, scans the float
    surrogate (``fimaudit.piecewise.float_surrogate``) at the same points with its exact graph Fisher.
    Returns (samples, the piecewise record, the summary's surrogate record or None, notes).
    """
    from .piecewise import Surrogate, behaves_piecewise

    model = loaded.model
    info = model.info.piecewise
    oracle = LogProbOracle(model, calib.kind, points.to_input)
    behaviour = behaves_piecewise(oracle.logp, points.x[0], streams.rng(config.seed, "scan.piecewise"))
    info = info.with_behaviour(behaviour)
    record = info.to_dict()
    notes: list[str] = []
    if not info.complete:
        record["reported"] = "pointwise Fisher reported: some paths from the input to the output are smooth"
        return samples, record, None, notes
    if points.smoothing_record is not None:
        # --smoothing or automatic sigmas (scan.smoothing_sigmas): lambda_max and trace are already the smoothed
        # Fisher F_sigma's, not the pointwise F's (which was never estimated): they stay; the surrogate is reported
        # beside them.
        how = "--smoothing" if points.smoothing_record.get("source") == "user" else "sigma chosen automatically"
        record["reported"] = (f"lambda_max and trace are the smoothed Fisher F_sigma's ({how}), not the pointwise "
                              "F's: " + NOT_REPORTED.removeprefix("not reported: "))
        surrogate = _surrogate_scan(config, loaded, info) if info.quantized else dict(NO_SURROGATE)
        if surrogate.get("available"):
            per = surrogate.pop("per_sample")
            samples = tuple(replace(s, surrogate_lambda_max=lam, surrogate_predicted=pred)
                            for s, (lam, pred) in zip(samples, per))
            surrogate["agreement"] = float(np.mean([s.surrogate_predicted == s.predicted for s in samples]))
        return samples, record, surrogate, notes
    nulled = tuple(replace(s, lambda_max=None, lambda_max_ci=None, trace=None, trace_se=float("nan"), trace_ci=None,
                           lower_bound=None, lower_estimate=None, lower_check=None, top_eigenvalues=(), kl_ratio=None)
                   for s in samples)
    surrogate = _surrogate_scan(config, loaded, info) if info.quantized else dict(NO_SURROGATE)
    if surrogate.get("available"):
        per = surrogate.pop("per_sample")
        nulled = tuple(replace(s, surrogate_lambda_max=lam, surrogate_predicted=pred)
                       for s, (lam, pred) in zip(nulled, per))
        agree = float(np.mean([s.surrogate_predicted == s.predicted for s in nulled])) if nulled else None
        surrogate["agreement"] = agree
        record["reported"] = ("lambda_max, trace and lower bounds of the pointwise F: " + NOT_REPORTED
                              + "; reported instead: the float surrogate's exact Fisher (summary.surrogate)")
        notes.append(f"reported instead: the {Surrogate.DESCRIPTION}. Its median lambda_max is "
                     f"{surrogate['lambda_max']['median']:.4g}; it predicts the quantized model's class on "
                     f"{100 * agree:.0f}% of {len(nulled)} samples")
    else:
        record["reported"] = ("lambda_max, trace and lower bounds of the pointwise F: " + NOT_REPORTED
                              + f"; {surrogate['reason']}; use a smoothed Fisher or decision-based attacks")
        notes.append(f"{surrogate['reason']}")
    record["behaviour_text"] = behaviour.text()
    if not behaviour.piecewise:
        notes.append(f"the graph is piecewise constant but queries did not show it at sample 0 ({behaviour.text()})")
    return nulled, record, surrogate, notes


def _surrogate_scan(config: ScanConfig, loaded: Loaded, info) -> dict:
    """Scan the float surrogate at the same points with its exact gradient-graph Fisher; a record with the reason
    when it cannot be built or scanned (never raises for that)."""
    import tempfile
    from pathlib import Path

    import onnx

    from .errors import FimauditError
    from .piecewise import Surrogate, float_surrogate

    model = loaded.model
    sur = float_surrogate(model.proto, model.info.input.name, model.info.output.name)
    if sur.model is None:
        return {"available": False, "reason": sur.reason, "rewritten": sur.rewritten}
    with tempfile.TemporaryDirectory(prefix="fimaudit-surrogate-") as tmp:
        path = Path(tmp) / "surrogate.onnx"
        onnx.save(sur.model, str(path))
        sub = replace(config, model=str(path), gradients="graph", method="auto", save_direction=None,
                      fail_above=None, cross_check=False, bounds=False,
                      **({"smoothing": None} if hasattr(config, "smoothing") else {}))  # the exact graph Fisher
        try:
            res = scan(sub)
        except FimauditError as exc:
            return {"available": False, "reason": f"no float surrogate Fisher: {exc}", "rewritten": sur.rewritten}
    if res.piecewise is not None:  # a rewrite that left rounding behind: never report it as a float model
        return {"available": False, "reason": "no float surrogate: the rewrite is still piecewise constant",
                "rewritten": sur.rewritten}
    return {
        "available": True,
        "description": Surrogate.DESCRIPTION,
        "rewritten": sur.rewritten,
        "gradients": (res.run.gradients_used or {}).get("source"),
        "lambda_max": res.summary.lambda_max.to_dict(),
        "trace": res.summary.trace.to_dict(),
        "lower_bound": res.summary.lower_bound.to_dict(),
        "queries": res.summary.queries_total,
        "per_sample": [(s.lambda_max, s.predicted) for s in res.samples],
    }


@dataclass(frozen=True)
class ScanWork:
    """Stage 4 on a chunk of samples, for ``fimaudit.distributed``: picklable, rebuilds the oracle per model."""

    config: ScanConfig
    calib: Calibration  # without its gradient graph (it holds onnxruntime sessions, which do not pickle)
    pre: Preprocess | None  # estimation space -> model input when the points are in data units
    graph_rows: np.ndarray | None = None  # the rows the client built and checked its graph on; None: no graph
    directions: bool = False  # the caller takes the worst directions (``scan_job(directions=...)``)

    def __call__(self, model: Model, indices, points: np.ndarray, labels) -> list[SampleOutcome]:
        from dataclasses import replace

        shape = model.sample_shape
        to_input = None if self.pre is None else (lambda rows: self.pre.apply(rows, shape))
        oracle = LogProbOracle(model, self.calib.kind, to_input)
        calib = self.calib
        if self.graph_rows is not None:
            calib = replace(calib, graph=_worker_graph(model, self.calib.kind, self.config, self.graph_rows))
        return [estimate_sample(oracle, self.config, calib, int(i), x, label, direction=self.directions)
                for i, x, label in zip(indices, points, labels)]


_WORKER_GRAPHS: dict[tuple, object] = {}


def _worker_graph(model: Model, kind: str, config: ScanConfig, rows: np.ndarray):
    """The gradient graph rebuilt once per worker process, as the client built it (same rows, same seed)."""
    from .autodiff.select import build_gradient_source

    key = (model.info.sha256, kind, config.gradients, config.seed, config.threads)
    if key not in _WORKER_GRAPHS:
        choice = build_gradient_source(model, kind, config.gradients, rows, streams.rng(config.seed, "gradients.build"),
                                       threads=config.threads)
        if choice.source != "graph":
            raise ConfigError(f"a Dask worker could not build the gradient graph the client built ({choice.reason})")
        _WORKER_GRAPHS[key] = choice
    return _WORKER_GRAPHS[key]


def scan(config: ScanConfig, progress: ProgressFn | None = None, execution=None) -> ScanResult:
    """Run a scan of ``config.model``: open its subject, then ``scan_job``.

    ``execution`` (``fimaudit.distributed.Execution``) runs stage 4 on Dask workers; the
    report is the same apart from ``timing``. Raises ``FimauditError`` subclasses for bad
    input (one-line messages). Progress also goes to the ambient reporter (``fimaudit.progress``).
    """
    return scan_job(None, config, progress, execution)


def scan_job(subject: Subject | None, config: ScanConfig, progress: ProgressFn | None = None, execution=None,
             directions: Callable[[np.ndarray], None] | None = None) -> ScanResult:
    """The scan job on an opened subject (None: opened from ``config`` after it is validated): load, prepare points,
    calibrate, estimate each sample, assemble. ``directions`` receives the per-sample worst directions (as
    ``--save-direction`` writes them) without a file."""
    from . import progress as ambient

    with ambient.task("scan", unit="samples") as bar:
        return _scan(config, bar.callback(progress, lambda queries: f"{queries} queries"), execution, subject,
                     directions)


def _scan(config: ScanConfig, progress: ProgressFn | None, execution, subject: Subject | None = None,
          directions: Callable[[np.ndarray], None] | None = None) -> ScanResult:
    t_start = time.perf_counter()
    loaded = load(config, subject)
    model = loaded.model
    points = prepare_points(config, loaded)
    oracle, calib = calibrate(config, model, points, loaded.pre)
    n = points.x.shape[0]
    if execution is not None and execution.distributed:
        return _scan_distributed(config, loaded, points, calib, execution, progress, t_start, directions)
    learnt = LearntSubspace(model.d) if needs_learnt_basis(config, calib) else None
    outcomes: list[SampleOutcome] = []
    if progress:
        progress(0, n, model.queries)
    for i in range(n):
        label = None if points.labels is None else int(points.labels[i])
        basis = learnt.basis(calib.plan.r) if learnt is not None else None
        outcome = estimate_sample(oracle, config, calib, i, points.x[i], label, basis, directions is not None)
        if learnt is not None and outcome.direction is not None:
            learnt.add(outcome.direction)
        outcomes.append(outcome)
        if progress:
            progress(i + 1, n, model.queries)
    if config.save_direction:
        _save_directions(config.save_direction, outcomes, model.sample_shape)
    if directions is not None:
        directions(direction_array(outcomes, model.sample_shape))
    return assemble(config, loaded, points, calib, outcomes, time.perf_counter() - t_start)


def _scan_distributed(config: ScanConfig, loaded: Loaded, points: Points, calib: Calibration, execution, progress,
                      t_start: float, directions: Callable[[np.ndarray], None] | None = None) -> ScanResult:
    """Stage 4 on Dask workers (fimaudit/distributed.py); stages 1-3 and 5 stay here."""
    from dataclasses import replace

    from .distributed import run_per_sample

    if needs_learnt_basis(config, calib):
        raise ConfigError("--subspace learnt carries state from sample to sample and cannot run on --workers; "
                          "use --subspace dct")
    model = loaded.model
    n = points.x.shape[0]
    labels = [None] * n if points.labels is None else [int(v) for v in points.labels]
    rows = None
    if calib.graph is not None:
        rows = points.to_input(points.x[:2]) if points.to_input is not None else points.x[:2]
    work = ScanWork(config, replace(calib, graph=None), loaded.pre if points.to_input is not None else None, rows,
                    directions is not None)
    client_queries = model.queries + _graph_rows(calib)  # centre queries and the graph's self-check, made here
    outcomes, info = run_per_sample(
        work, model, points.x, labels, execution=execution, device=config.device, threads=config.threads,
        blob=loaded.subject.model_bytes,
        progress=None if progress is None else (lambda done, total, q: progress(done, total, client_queries + q)),
    )
    if config.save_direction:
        _save_directions(config.save_direction, outcomes, model.sample_shape)
    if directions is not None:
        directions(direction_array(outcomes, model.sample_shape))
    result = assemble(config, loaded, points, calib, outcomes, time.perf_counter() - t_start)
    # The workers' queries (each sample's count includes its centre query, made here in stage 3).
    total = client_queries + sum(o.result.queries - 1 for o in outcomes)
    busy = info.get("busy_seconds") or 0.0
    summary = replace(result.summary, queries_total=total,
                      runtime_fraction=info["run_seconds"] / busy if busy > 0 else None)
    return replace(result, summary=summary, runtime=result.runtime | {"provider": info["provider"]})


def _units(space: str, pre: Preprocess, images: bool, preset: str | None) -> dict:
    """What one unit of perturbation means in this report (MATH §1: F_data = D F_input D)."""
    how = f"--preset {preset}" if preset is not None else "--scale/--mean/--std"
    if space == "data" and not pre.is_identity:
        stored = "per pixel-value unit (0-255 pixels as decoded from the images" if images else \
            "per stored-data unit (the data as stored"
        return {
            "space": "data",
            "description": f"{stored}, before {how}; F_data = D F_input D with D = scale/std)",
        }
    return {
        "space": "input",
        "description": "per model-input unit: perturbations of the tensor the model receives"
        + ("" if pre.is_identity else f" (after {how})"),
    }


def _save_directions(path: str, outcomes: list[SampleOutcome], sample_shape: tuple[int, ...]) -> None:
    """Write the per-sample worst directions (unit, estimation space; zeros where none) as .npy, atomically."""
    from pathlib import Path

    from .runtime_guard import write_atomic

    if Path(path).suffix != ".npy":
        raise ConfigError("--save-direction must name a .npy file")
    directions = direction_array(outcomes, sample_shape)
    write_atomic(path, lambda fh: np.save(fh, directions), binary=True)


def direction_array(outcomes: list[SampleOutcome], sample_shape: tuple[int, ...]) -> np.ndarray:
    """The per-sample worst directions, float32 ``(n, *sample_shape)`` (unit, estimation space; zeros where none)."""
    directions = np.zeros((len(outcomes), math.prod(sample_shape)), dtype=np.float32)
    for i, o in enumerate(outcomes):
        if o.direction is not None:
            directions[i] = o.direction
    return directions.reshape((len(outcomes),) + tuple(sample_shape))


def _bound_summary(model, config: ScanConfig, pre: Preprocess, shape: tuple[int, ...]) -> dict:
    """The closed-form bound (MATH §4) in the report's units; never fails the scan."""
    from .errors import FimauditError
    from .graph import bounds_from_proto

    try:
        res = bounds_from_proto(model.proto, model.info.input.name, model.info.output.name, shape, model.info.path)
    except FimauditError as exc:
        return {"lipschitz": None, "fim_upper": None, "reason": str(exc), "family": None}
    except Exception as exc:  # the bound is extra evidence: report why it is missing
        return {"lipschitz": None, "fim_upper": None, "reason": f"graph analysis failed: {type(exc).__name__}: {exc}",
                "family": None}
    lip, upper = res.lipschitz, res.fim_upper
    if lip is not None and config.space == "data" and not pre.is_identity:
        factor = float(np.max(np.abs(pre.jacobian_diag(shape))))  # |D|_2 for F_data = D F D
        lip, upper = lip * factor, upper * factor * factor
    return {"lipschitz": lip, "fim_upper": upper, "reason": res.reason, "family": res.family}

