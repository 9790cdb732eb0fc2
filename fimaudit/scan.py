"""The scan job: model + data -> per-sample Fisher estimates -> ``ScanResult``.

``scan(ScanConfig(...))`` is the Python API behind ``fimaudit scan``; it never prints.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from . import __version__
from .data import Preprocess, check_labels, synthetic_data
from .errors import ConfigError
from .estimators.core import PROBES, Estimate, exact, sketch
from .estimators.hutchinson import HUTCHINSON_PROBES, hutchinson
from .estimators.power import power_fixed, power_fresh
from .estimators.subspace import SUBSPACES, LearntSubspace, dct_lowfreq_basis, deflated_sketch
from .estimators.fd import choose_step, input_scale
from .estimators.lower import fd_lower_estimate
from .images import DEFAULT_RESIZE, DataOptions, prepare
from .model import OUTPUT_KINDS, LogProbOracle, detect_output_kind, load_model
from .model.oracle import check_output_kind, to_log_probs
from .result import SampleResult, ScanResult, Stats, Summary

METHODS = ("auto", "exact", "sketch", "power", "power-fresh", "deflated")
SPACES = ("input", "data")
DEFAULT_SAMPLES_DATA = 100
DEFAULT_SAMPLES_SYNTHETIC = 16

ProgressFn = Callable[[int, int, int], None]  # (samples done, samples total, queries so far)


@dataclass(frozen=True)
class ScanConfig:
    """Every option of a scan; recorded verbatim in the report's ``config``."""

    model: str
    data: str | None = None
    samples: int | None = None
    method: str = "auto"
    probes: str = "orthogonal"
    budget: int = 2000
    seed: int = 0
    fd_step: float | None = None
    device: str = "auto"
    input_name: str | None = None
    output_name: str | None = None
    input_shape: tuple[int, ...] | None = None
    output_kind: str = "auto"
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    space: str = "input"
    input_range: tuple[float, float] = (0.0, 1.0)
    max_batch: int = 256
    threads: int = 0
    fail_above: float | None = None
    lower_bound: bool = True
    subspace: str = "dct"
    subspace_dim: int | None = None
    save_direction: str | None = None
    bounds: bool = True
    dither: float = 0.0  # 0: automatic (dither only when exact ties are detected); > 0: this sigma
    no_dither: bool = False  # keep x even with ties
    gradients: str = "fd"  # auto | graph | fd: where the Jacobian comes from (fimaudit.autodiff)
    cross_check: bool = False  # with the graph: also run the black-box plan and report its error
    trace_budget: int = 0
    trace_rse: float = 0.05
    trace_probes: str = "rademacher"
    layout: str = "auto"
    resize: str = DEFAULT_RESIZE
    channels: str = "rgb"
    preset: str | None = None
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


KL_TARGET = 1e-4
TIE_WARNING_SHARE = 0.05


def _tie_fraction(row: np.ndarray) -> float:
    """Share of a sample's coordinates equal to its most common exact value (0 when all values differ)."""
    _, counts = np.unique(np.asarray(row).ravel(), return_counts=True)
    return float(counts.max() / counts.sum()) if counts.size and counts.max() > 1 else 0.0


# Default dither: 3% of the inputs' RMS, small against the input's scale; the finite-difference
# step is kept at most sigma/10 so that a step rarely reaches a kink the dither moved away. On a
# max-pool net with a 75% constant background (tests/test_dither.py) sigma = 1% with h <= sigma/3
# left exact and sketch 7% apart on some samples; 3% with sigma/10 brought the worst to 1%.
DITHER_REL = 3e-2
STEP_OVER_DITHER = 0.1


def dither_points(points: np.ndarray, tie_share: float, config: "ScanConfig") -> tuple[np.ndarray, dict]:
    """Decide where F is evaluated: x, or a seeded dithered point x + sigma xi (MATH §1: F needs a differentiable point).

    With exact ties (a constant background puts ReLU/max-pool units exactly at kinks, where F
    is not defined and every source would measure a different one-sided mixture) the default
    is x + sigma xi with sigma = DITHER_REL * the inputs' RMS; ``--dither SIGMA`` sets sigma,
    ``--no-dither`` keeps x. Returns the points and a record of the decision (with a note).
    """
    user = config.dither > 0
    tied = tie_share >= TIE_WARNING_SHARE
    units = "data" if config.space == "data" else "model-input"
    if user:
        sigma, source = float(config.dither), "user"
    elif tied and not config.no_dither:
        sigma, source = DITHER_REL * input_scale(points), "auto"
    else:
        sigma, source = 0.0, None
    record = {"sigma": sigma if sigma > 0 else None, "source": source, "tie_share": tie_share, "note": ""}
    if sigma > 0:
        xi = np.random.default_rng([config.seed, 4]).standard_normal(points.shape)
        why = (f"{100 * tie_share:.0f}% of each input's values are exact ties (a constant background), where ReLU/"
               "max-pool units sit at kinks and F is not defined; " if source == "auto" else "")
        record["note"] = (
            f"{why}F is evaluated at the dithered points x + sigma*xi (seeded Gaussian xi, sigma = {sigma:.3g} {units} "
            f"units{', set by --dither' if source == 'user' else ', 3% of the input RMS'}) so that every estimator "
            "measures the same differentiable point; --no-dither keeps x"
        )
        return points + sigma * xi, record
    if tied:
        record["note"] = (
            f"{100 * tie_share:.0f}% of each input's values are exact ties (a constant background): ReLU/max-pool "
            "units can sit exactly at kinks, where F is not defined and central differences average one-sided "
            "derivatives, so estimators along different directions can disagree (kept by --no-dither)"
        )
    return points, record


def kl_check(oracle: LogProbOracle, x0: np.ndarray, logp0: np.ndarray, v: np.ndarray, quad: float, h: float) -> float | None:
    """Ratio KL(p(x) || p(x + eps v)) / (eps^2/2 v^T F v) for a small eps (one query); ~1 when F is right.

    eps is chosen so the predicted KL is ``KL_TARGET`` (capped at 100 h).
    """
    if quad <= 0:
        return None
    eps = min(np.sqrt(2 * KL_TARGET / quad), 100 * h)
    lp = oracle.logp((x0.reshape(-1) + eps * v).reshape((1,) + oracle.sample_shape))[0]
    kl = float(np.sum(np.exp(logp0) * (logp0 - lp)))
    return float(kl / (0.5 * eps * eps * quad))


def _runtime(model) -> dict:
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


def scan(config: ScanConfig, progress: ProgressFn | None = None) -> ScanResult:
    """Run a scan. Raises ``FimauditError`` subclasses for bad input (one-line messages)."""
    t_start = time.perf_counter()
    config.validate()
    model = load_model(
        config.model,
        input_name=config.input_name,
        output_name=config.output_name,
        input_shape=config.input_shape,
        device=config.device,
        max_batch=config.max_batch,
        threads=config.threads,
    )
    shape = model.sample_shape
    d = model.d
    prepared = prepare(
        model, config.data, config.samples or DEFAULT_SAMPLES_DATA, config.scale, tuple(config.mean),
        tuple(config.std), DataOptions(config.layout, config.resize, config.channels, config.preset),
    )
    pre = prepared.pre
    notes: list[str] = list(model.info.notes) + list(prepared.notes)
    rng_data = np.random.default_rng([config.seed, 1])

    if prepared.dataset is not None:
        dataset = prepared.dataset
        total_available = dataset.x.shape[0]
        if config.samples is None:
            notes.append(f"scanned the first {total_available} samples (set --samples to change)")
        if config.space == "data":
            points = np.asarray(dataset.x, dtype=np.float64)
            to_input = lambda rows: pre.apply(rows, shape)  # noqa: E731
        else:
            points = pre.apply(dataset.x, shape)
            to_input = None
    else:
        if not pre.is_identity:
            notes.append("--scale/--mean/--std are ignored for synthetic inputs (drawn in model-input units)")
        dataset = synthetic_data(shape, config.samples or DEFAULT_SAMPLES_SYNTHETIC, config.input_range, rng_data)
        points = dataset.x
        to_input = None
        notes.append(
            "NOT REPRESENTATIVE: no --data given, so samples are synthetic uniform inputs in "
            f"[{config.input_range[0]:g}, {config.input_range[1]:g}]; real data can differ by orders of magnitude"
        )

    tie_share = float(np.median([_tie_fraction(row) for row in points]))
    points, dither = dither_points(points, tie_share, config)
    if dither["note"]:
        notes.append(dither["note"])
    sigma = dither["sigma"] or 0.0

    kind_oracle = LogProbOracle(model, "logits", to_input)
    raw_centre = kind_oracle.raw(points)  # one centre query per sample
    if config.output_kind == "auto":
        kind = detect_output_kind(raw_centre, model.info.final_op)
        kind_source = "detected from the outputs"
    else:
        kind = config.output_kind
        check_output_kind(raw_centre, kind, model.info.output.name)
        kind_source = "given by --output-kind"
    oracle = LogProbOracle(model, kind, to_input)
    logp_centre = to_log_probs(raw_centre, kind)
    probs = np.exp(logp_centre)
    predicted = np.argmax(logp_centre, axis=1)
    n_classes = int(logp_centre.shape[1])
    if dataset.y is not None:
        check_labels(dataset.y, n_classes, dataset.source)

    chosen = plan(config.method, d, config.budget, config.lower_bound, config.subspace_dim, config.trace_budget)
    method, k = chosen.method, chosen.k
    q0 = model.queries
    step = choose_step(
        oracle, points[0], input_scale(points), np.random.default_rng([config.seed, 2]), config.fd_step,
        max_step=sigma * STEP_OVER_DITHER if sigma > 0 else None,
    )
    if step.relative_discrepancy is not None and step.relative_discrepancy > 0.05:
        notes.append(
            f"finite differences are unstable here: JVPs at h and h/2 differ by {100 * step.relative_discrepancy:.1f}% "
            "(kinks or round-off); estimates carry that error"
        )
    calibration = model.queries - q0
    graph, gradients_record = _gradient_choice(model, kind, config, points, to_input, notes)

    n = points.shape[0]
    samples: list[SampleResult] = []
    directions = np.zeros((n, d), dtype=np.float32) if config.save_direction else None
    learnt = LearntSubspace(d) if method == "deflated" and config.subspace == "learnt" else None
    dct_basis = dct_lowfreq_basis(shape, chosen.r) if method == "deflated" and config.subspace == "dct" else None
    jacobians = _JacobianBatches(graph, points, to_input)
    if progress:
        progress(0, n, model.queries)
    for i in range(n):
        before = model.queries
        rng = np.random.default_rng([config.seed, 3, i])
        p = probs[i]
        exact_info = None
        if graph is not None:
            s_exact = jacobians.get(i, n_classes)
            est, check, exact_info = _estimate_graph(graph, oracle, points[i], logp_centre[i], step, rng, config, s_exact,
                                                     chosen, dct_basis, learnt, to_input, pre, shape)
        else:
            est, check = _estimate(chosen, oracle, points[i], p, step, rng, config, dct_basis, learnt), None
        trace, trace_se, trace_ci, trace_how = est.trace, est.trace_se, None, "probes"
        if chosen.trace and chosen.method != "exact" and graph is None:
            te = hutchinson(oracle, points[i], p, step.h, chosen.trace, rng, probes=config.trace_probes,
                            rse_target=config.trace_rse)
            trace, trace_se, trace_ci = te.trace, te.se, te.ci
            trace_how = f"hutchinson-{config.trace_probes} ({te.probes} probes, stopped by {te.stopped_by})"
        kl_ratio = None
        if check is None and chosen.checks and est.direction is not None:
            check = fd_lower_estimate(oracle, points[i], logp_centre[i], est.direction, step.h)
        if check is not None and est.direction is not None:
            kl_ratio = kl_check(oracle, points[i], logp_centre[i], est.direction, check.quadratic_form, step.h)
        if learnt is not None and est.direction is not None:
            learnt.add(est.direction)
        if directions is not None and est.direction is not None:
            directions[i] = est.direction
        spent = model.queries - before + 1  # + the centre query made up front
        if spent > config.budget:  # a planning bug, never a user error
            raise AssertionError(f"sample {i} spent {spent} queries over the budget {config.budget}")
        samples.append(
            SampleResult(
                index=i,
                label=None if dataset.y is None else int(dataset.y[i]),
                predicted=int(predicted[i]),
                lambda_max=est.lambda_max,
                lambda_max_ci=est.lambda_max_ci,
                trace=trace,
                trace_se=trace_se,
                trace_ci=trace_ci,
                trace_method=_trace_method(chosen, graph, exact_info, trace_how),
                lower_bound=check.value if check is not None and check.certified else None,
                lower_estimate=check.value if check is not None and not check.certified else None,
                lower_check=None if check is None else check.to_dict(),
                dither=sigma if sigma > 0 else None,
                exact=exact_info,
                queries=spent,
                method=est.method,
                probes=est.probes,
                top_eigenvalues=est.top_eigenvalues,
                kl_ratio=kl_ratio,
            )
        )
        if progress:
            progress(i + 1, n, model.queries)
    if directions is not None:
        _save_directions(config.save_direction, directions.reshape((n,) + shape))

    seconds = time.perf_counter() - t_start
    accuracy = None if dataset.y is None else float(np.mean(predicted == dataset.y))
    summary = Summary(
        lambda_max=Stats.of([s.lambda_max for s in samples]),
        trace=Stats.of([s.trace for s in samples]),
        lower_bound=Stats.of([s.lower_bound for s in samples]),
        lower_estimate=Stats.of([s.lower_estimate for s in samples]),
        accuracy=accuracy,
        queries_total=model.queries,
        calibration_queries=calibration,
        seconds=seconds,
        runtime_fraction=model.run_seconds / seconds if seconds > 0 else None,
    )
    info = model.info
    model_dict = {
        "path": info.path,
        "sha256": info.sha256,
        "input": info.input.to_dict() | {"sample_shape": list(shape), "d": d},
        "output": info.output.to_dict() | {"kind": kind, "kind_source": kind_source, "classes": n_classes},
        "ir_version": info.ir_version,
        "opsets": info.opsets,
    }
    units = _units(config.space, pre, prepared.images, config.preset)
    bound = _bound_summary(model, config, pre, shape) if config.bounds else None
    if bound is not None and bound.get("fim_upper"):
        lam = summary.lambda_max
        bound["measured_over_bound"] = {
            "median": None if lam.median is None else lam.median / bound["fim_upper"],
            "max": None if lam.max is None else lam.max / bound["fim_upper"],
        }
        if lam.max is not None and lam.max > bound["fim_upper"]:
            notes.append("a measured lambda_max exceeds the closed-form bound: please report this as a bug")
    cfg = asdict(config)
    cfg.pop("extra", None)
    cfg["method_used"] = method
    cfg["subspace_dim_used"] = chosen.r
    cfg["probes_per_sample"] = k
    cfg["samples_scanned"] = n
    cfg["data_source"] = dataset.source
    cfg["tie_share"] = tie_share
    cfg["dither_used"] = {k: v for k, v in dither.items() if k != "note"}
    cfg["gradients_used"] = gradients_record
    if graph is not None:
        cfg["method_used"] = samples[0].method if samples else method
        cfg["probes_per_sample"] = samples[0].probes if samples else k
        errs = [s.exact["cross_check"]["relative_error"] for s in samples
                if s.exact and s.exact.get("cross_check") and s.exact["cross_check"].get("relative_error") is not None]
        if errs:
            cfg["cross_check_result"] = {"method": method, "samples": len(errs), "median_relative_error": float(np.median(errs)),
                                  "max_relative_error": float(np.max(errs))}
    cfg["preprocess"] = prepared.config
    return ScanResult(
        model=model_dict,
        runtime=_runtime(model),
        config=cfg,
        units=units,
        finite_differences=step.to_dict(),
        bound=bound,
        samples=tuple(samples),
        summary=summary,
        notes=tuple(notes),
    )


def _trace_method(chosen: Plan, graph, exact_info: dict | None, trace_how: str) -> str:
    """How the trace was obtained: exact (all of S), Hutchinson over VJPs (Lanczos path) or from the probes."""
    if graph is not None:
        return "exact" if exact_info and exact_info["path"] == "rows" else "hutchinson-rademacher (VJP probes)"
    return "exact" if chosen.method == "exact" else trace_how


def _gradient_choice(model, kind: str, config: ScanConfig, points: np.ndarray, to_input, notes: list[str]):
    """Build and self-check the gradient graph (``--gradients auto|graph``): (choice or None, its record for the report)."""
    if config.gradients == "fd":
        return None, {"requested": "fd", "source": "fd", "reason": "finite differences requested (--gradients fd)"}
    from .autodiff.select import build_gradient_source

    rows = to_input(points[:2]) if to_input is not None else points[:2]
    choice = build_gradient_source(model, kind, config.gradients, rows, np.random.default_rng([config.seed, 5]),
                                   threads=config.threads)
    record = {k: v for k, v in choice.to_dict().items() if k != "build_seconds"}  # same seed, same report
    if choice.source != "graph":
        notes.append(f"gradients: finite differences (black-box), because the {choice.reason}")
        return None, record
    return choice, record


# Exact Jacobians of several samples come from one batched run of K VJPs each, capped in rows
# and in the float64 numbers held (K x d per sample).
GRAPH_BATCH_ROWS = 2048
GRAPH_BATCH_NUMBERS = 16_000_000


class _JacobianBatches:
    """S (model-input units) for the samples of a scan, computed chunk by chunk over samples (rows path only)."""

    def __init__(self, choice, points: np.ndarray, to_input) -> None:
        self.choice, self.points, self.to_input = choice, points, to_input
        self.start, self.block = 0, None

    def get(self, i: int, k: int) -> np.ndarray | None:
        from .estimators.exact_source import LANCZOS_FROM_CLASSES

        if self.choice is None or k >= LANCZOS_FROM_CLASSES:
            return None  # Lanczos: S is never formed
        d = int(np.prod(self.points.shape[1:]))
        if self.block is None or not (self.start <= i < self.start + len(self.block)):
            m = max(1, min(GRAPH_BATCH_ROWS // k, GRAPH_BATCH_NUMBERS // (k * d)))
            rows = self.points[i : i + m]
            rows = self.to_input(rows) if self.to_input is not None else rows
            self.start, self.block = i, self.choice.engine.jacobians(np.asarray(rows, dtype=np.float64))[1]
        return self.block[i - self.start]


def _estimate_graph(choice, oracle, x, logp0, step, rng, config: ScanConfig, s_exact, chosen: Plan, dct_basis,
                    learnt, to_input, pre: Preprocess, shape) -> tuple[Estimate, "object", dict]:
    """Exact estimate from the gradient graph at one sample, its certified lower bound and the optional cross-check.

    ``s_exact``: this sample's S in model-input units from a batched run over samples, or None.
    """
    from .estimators.exact_source import exact_from_source

    scale = None if to_input is None else pre.jacobian_diag(shape)
    src = choice.at(np.asarray(x).reshape(-1), logp0=logp0, to_input=to_input, input_scale=scale)
    if s_exact is not None:
        src.set_jacobian(s_exact)
    p = np.exp(logp0)
    res = exact_from_source(src, p, rng, oracle=oracle, x0=x, h=step.h)
    info = {"source": "graph", "path": res.path, "products": res.products if s_exact is None else int(p.size),
            "batched_over_samples": s_exact is not None, "tolerance": res.tolerance,
            "cross_check": None}
    if config.cross_check:
        bb = _estimate(chosen, oracle, x, p, step, rng, config, dct_basis, learnt)
        lam = res.estimate.lambda_max
        info["cross_check"] = {"method": bb.method, "lambda_max": bb.lambda_max, "queries": bb.queries,
                               "relative_error": abs(bb.lambda_max - lam) / lam if lam > 0 else None}
    return res.estimate, res.lower, info
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


def _estimate(chosen: Plan, oracle, x, p, step, rng, config: ScanConfig, dct_basis, learnt) -> Estimate:
    """Run the planned estimator at one sample (the checks are made by the caller)."""
    h, err = step.h, step.relative_discrepancy
    if chosen.method == "exact":
        return exact(oracle, x, p, h)
    if chosen.method == "sketch":
        return sketch(oracle, x, p, h, chosen.k, rng, probes=config.probes, check_lower_bound=False)
    if chosen.method == "power":
        return power_fixed(oracle, x, p, h, chosen.k, rng, probes=config.probes, check_lower_bound=False)
    if chosen.method == "power-fresh":
        return power_fresh(oracle, x, p, h, chosen.k, rng, fd_rel_error=err)
    if chosen.method == "deflated":
        if learnt is not None:
            basis = learnt.basis(chosen.r)
            # Unused subspace queries go to the complement sketch, keeping the sample's cost.
            k = chosen.k + (chosen.r - basis.shape[0])
            name = "deflated-learnt"
        else:
            basis, k, name = dct_basis, chosen.k, "deflated-dct"
        return deflated_sketch(oracle, x, p, h, basis, k, rng, probes=config.probes, check_lower_bound=False, name=name)
    raise ConfigError(f"unknown method {chosen.method}")


def _save_directions(path: str, directions: np.ndarray) -> None:
    """Write the per-sample worst directions (unit, estimation space) as .npy, atomically."""
    from pathlib import Path

    from .runtime_guard import write_atomic

    if Path(path).suffix != ".npy":
        raise ConfigError("--save-direction must name a .npy file")
    write_atomic(path, lambda fh: np.save(fh, directions), binary=True)


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
