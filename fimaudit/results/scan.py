"""The scan's result (``kind`` "scan"): per-sample values, the summary, what the run decided; ``to_dict``/``from_dict``.

The JSON report is ``ScanResult.to_dict()``; any renderer re-renders a saved report through ``ScanResult.from_dict``.
fimaudit/report/scan.schema.json describes the format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .base import SCHEMA_VERSION, check_kind, clean, read_version

_clean = clean  # this module's own uses


@dataclass(frozen=True)
class Stats:
    """Aggregate of per-sample values (MATH: mean, median, 90th percentile, max, count)."""

    mean: float | None
    median: float | None
    p90: float | None
    max: float | None
    count: int

    @classmethod
    def of(cls, values: list[float | None]) -> "Stats":
        vals = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
        if vals.size == 0:
            return cls(None, None, None, None, 0)
        return cls(
            float(np.mean(vals)),
            float(np.median(vals)),
            float(np.percentile(vals, 90)),
            float(np.max(vals)),
            int(vals.size),
        )

    def to_dict(self) -> dict:
        return clean(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        return cls(d.get("mean"), d.get("median"), d.get("p90"), d.get("max"), int(d.get("count", 0)))


@dataclass(frozen=True)
class SampleResult:
    index: int
    label: int | None
    predicted: int
    lambda_max: float | None  # None: not reported (piecewise-constant model)
    lambda_max_ci: tuple[float, float] | None
    trace: float | None
    trace_se: float
    lower_bound: float | None
    queries: int
    method: str
    probes: int
    top_eigenvalues: tuple[float, ...] = ()
    kl_ratio: float | None = None  # KL(p(x)||p(x+eps v)) / (eps^2/2 v^T F v); ~1 when F is right
    trace_ci: tuple[float, float] | None = None
    trace_method: str = ""
    # lower_bound is certified (exact Jacobian); lower_estimate is the finite-difference value
    # with its margin measured along v ("not certified: finite differences").
    lower_estimate: float | None = None
    lower_check: dict | None = None  # kind, margin, the independent finite-difference check
    dither: float | None = None  # sigma of the dither added to this sample, if any
    exact: dict | None = None  # gradient graph: path (rows | lanczos), products, cross-check against the black box
    # Piecewise-constant models (fimaudit.piecewise): lambda_max/trace/bounds above are None (F is 0 almost
    # everywhere); the float surrogate's exact lambda_max and predicted class stand beside them.
    surrogate_lambda_max: float | None = None
    surrogate_predicted: int | None = None
    # --smoothing: F_sigma of the Gaussian-smoothed model (lambda_max/trace above are then F_sigma's): sigma,
    # lambda_max, lambda_max_ci, trace, trace_ci, draws, queries, ci, predicted, p_sigma_max
    smoothed: dict | None = None
    # --local-bound EPS: certified upper bounds over the L-inf ball around the point (fimaudit.verify.local):
    # eps, fisher_upper (>= lambda_max(F) everywhere in the ball), lipschitz, over_measured, reason, ...
    local_upper: dict | None = None

    def to_dict(self) -> dict:
        out = clean(asdict(self))
        for key in ("surrogate_lambda_max", "surrogate_predicted", "smoothed", "local_upper"):
            if out.get(key) is None:
                out.pop(key, None)  # present only where they apply: pointwise reports are unchanged
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "SampleResult":
        ci = d.get("lambda_max_ci")
        return cls(
            index=int(d["index"]),
            label=d.get("label"),
            predicted=int(d["predicted"]),
            lambda_max=None if d.get("lambda_max") is None else float(d["lambda_max"]),
            lambda_max_ci=None if ci is None else (float(ci[0]), float(ci[1])),
            trace=None if d.get("trace") is None else float(d["trace"]),
            trace_se=float(d["trace_se"]) if d.get("trace_se") is not None else float("nan"),
            lower_bound=d.get("lower_bound"),
            queries=int(d["queries"]),
            method=str(d["method"]),
            probes=int(d.get("probes", 0)),
            top_eigenvalues=tuple(d.get("top_eigenvalues", ())),
            kl_ratio=d.get("kl_ratio"),
            trace_ci=None if d.get("trace_ci") is None else (float(d["trace_ci"][0]), float(d["trace_ci"][1])),
            trace_method=str(d.get("trace_method", "")),
            lower_estimate=d.get("lower_estimate"),
            lower_check=d.get("lower_check"),
            dither=d.get("dither"),
            exact=d.get("exact"),
            surrogate_lambda_max=d.get("surrogate_lambda_max"),
            surrogate_predicted=d.get("surrogate_predicted"),
            smoothed=d.get("smoothed"),
            local_upper=d.get("local_upper"),
        )


@dataclass(frozen=True)
class Summary:
    lambda_max: Stats
    trace: Stats
    lower_bound: Stats
    accuracy: float | None
    queries_total: int
    calibration_queries: int
    seconds: float
    runtime_fraction: float | None  # share of wall time inside onnxruntime's run
    lower_estimate: Stats = field(default_factory=lambda: Stats(None, None, None, None, 0))
    surrogate: dict | None = None  # piecewise-constant models: the float surrogate's exact Fisher and agreement
    # --smoothing: sigma (median over samples), sigma_source, rule, draws, and Stats of lambda_max and trace of F_sigma
    smoothed: dict | None = None
    # --local-bound: eps, Stats of fisher_upper / lipschitz / over_measured (upper / measured), violations, ...
    local_upper: dict | None = None

    def to_dict(self) -> dict:
        out = self._core()
        if self.surrogate is not None:
            out["surrogate"] = clean(self.surrogate)
        if self.smoothed is not None:
            out["smoothed"] = clean(self.smoothed)
        if self.local_upper is not None:
            out["local_upper"] = clean(self.local_upper)
        return out

    def _core(self) -> dict:
        return {
            "lambda_max": self.lambda_max.to_dict(),
            "trace": self.trace.to_dict(),
            "lower_bound": self.lower_bound.to_dict(),
            "lower_estimate": self.lower_estimate.to_dict(),
            "accuracy": clean(self.accuracy),
            "queries_total": self.queries_total,
            "calibration_queries": self.calibration_queries,
        }

    def timing_dict(self) -> dict:
        """Wall-clock fields, kept apart from the results so that equal seeds give equal results."""
        return {"seconds": clean(self.seconds), "runtime_fraction": clean(self.runtime_fraction)}

    @classmethod
    def from_dict(cls, d: dict) -> "Summary":
        return cls(
            lambda_max=Stats.from_dict(d["lambda_max"]),
            trace=Stats.from_dict(d["trace"]),
            lower_bound=Stats.from_dict(d.get("lower_bound", {"count": 0})),
            accuracy=d.get("accuracy"),
            queries_total=int(d["queries_total"]),
            calibration_queries=int(d.get("calibration_queries", 0)),
            seconds=float(d.get("seconds") or 0.0),
            runtime_fraction=d.get("runtime_fraction"),
            lower_estimate=Stats.from_dict(d.get("lower_estimate", {"count": 0})),
            surrogate=d.get("surrogate"),
            smoothed=d.get("smoothed"),
            local_upper=d.get("local_upper"),
        )


RUN_FIELDS = ("method_used", "subspace_dim_used", "probes_per_sample", "samples_scanned", "data_source", "tie_share",
              "dither_used", "gradients_used", "cross_check_result")


@dataclass(frozen=True)
class RunInfo:
    """What the scan decided and found while running (the options themselves are in ``config``)."""

    method_used: str  # the estimator the plan chose (auto resolves to exact or sketch)
    subspace_dim_used: int  # deflation subspace dimension r (0 without deflation)
    probes_per_sample: int  # k: coordinates for exact, probes for the sketches
    samples_scanned: int
    data_source: str  # the data file, or "synthetic"
    tie_share: float  # median share of each input's most common exact value
    dither_used: dict | None = None  # sigma (None: F at x), source (auto | user), tie_share
    gradients_used: dict | None = None  # Jacobian source: graph or fd, the self-check's figures or the refusal reason
    cross_check_result: dict | None = None  # --cross-check: the black-box estimator's error against the graph

    def to_dict(self) -> dict:
        return clean(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "RunInfo":
        return cls(
            method_used=str(d["method_used"]),
            subspace_dim_used=int(d.get("subspace_dim_used") or 0),
            probes_per_sample=int(d["probes_per_sample"]),
            samples_scanned=int(d.get("samples_scanned") or 0),
            data_source=str(d.get("data_source", "")),
            tie_share=float(d.get("tie_share") or 0.0),
            dither_used=d.get("dither_used"),
            gradients_used=d.get("gradients_used"),
            cross_check_result=d.get("cross_check_result"),
        )


@dataclass(frozen=True)
class ScanResult:
    """Everything a scan learnt; what the CLI renders and ``fimaudit.scan`` returns."""

    model: dict
    runtime: dict
    config: dict
    run: RunInfo
    units: dict
    finite_differences: dict
    samples: tuple[SampleResult, ...]
    summary: Summary
    notes: tuple[str, ...] = field(default_factory=tuple)
    bound: dict | None = None
    schema_version: str = SCHEMA_VERSION
    piecewise: dict | None = None  # fimaudit.piecewise.PiecewiseInfo.to_dict(): why F is not reported
    kind: str = field(default="scan", init=False)

    def to_dict(self) -> dict:
        extra = {} if self.piecewise is None else {"piecewise": clean(self.piecewise)}
        return extra | {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "model": clean(self.model),
            "runtime": clean(self.runtime),
            "config": clean(self.config),
            "run": self.run.to_dict(),
            "units": clean(self.units),
            "finite_differences": clean(self.finite_differences),
            "bound": clean(self.bound),
            "samples": [s.to_dict() for s in self.samples],
            "summary": self.summary.to_dict(),
            "notes": list(self.notes),
            "timing": self.summary.timing_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ScanResult":
        read_version(d, "scan")
        check_kind(d, "scan")
        config = dict(d["config"])
        if "run" in d:
            run = RunInfo.from_dict(d["run"])
        else:  # a 1.0 report kept the run outputs inside config
            run = RunInfo.from_dict(config)
            for key in RUN_FIELDS:
                config.pop(key, None)
        return cls(
            model=d["model"],
            runtime=d["runtime"],
            config=config,
            run=run,
            units=d.get("units", {}),
            finite_differences=d.get("finite_differences", {}),
            samples=tuple(SampleResult.from_dict(s) for s in d["samples"]),
            # Reports before schema 1.1 kept the wall-clock fields inside the summary.
            summary=Summary.from_dict({**d["summary"], **(d.get("timing") or {})}),
            notes=tuple(d.get("notes", ())),
            bound=d.get("bound"),
            piecewise=d.get("piecewise"),
        )
