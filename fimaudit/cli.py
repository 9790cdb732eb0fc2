"""The commands: each is options -> config -> subject -> job -> result -> renderer -> exit code.

fimaudit/commandline.py holds what every command shares (the shared options, ``@command``, guarded runs, ``finish``:
JSON and text out); the jobs (fimaudit.scan, .evidence, .certify, .verify.run, .graph, .audit) do the work, including
policies, manifests and the dossier; fimaudit/report renders the result. Exit codes: commandline's docstring.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

# Only light modules at the top: `fimaudit --help` must not import numpy's heavy neighbours (onnx, onnxruntime,
# scipy, matplotlib); each command imports the core it runs inside its body (tests/test_imports.py checks).
from .choices import parse_domain, parse_eps_or_inf, parse_nonnegative
from .commandline import (EXIT_ERROR, EXIT_GATE, EXIT_OK, GROUPS, OPTIONS, Opts, app, command, deprecated_alias, err,
                          finish, run_job, write_atomic)
from .errors import ConfigError

__all__ = ["GROUPS", "OPTIONS", "app", "main"]

# --samples when not given, for scan and certify: fimaudit.scan.DEFAULT_SAMPLES_DATA/_SYNTHETIC, repeated
# here so that the help does not import the scan (tests/test_help.py checks that they agree).
SCAN_SAMPLES_DATA, SCAN_SAMPLES_SYNTHETIC = 100, 16
# `fimaudit compare` defaults (fimaudit.evidence.COMPARE_*, repeated for the same reason; tests/test_help.py checks)
COMPARE_SAMPLES, COMPARE_BUDGET, COMPARE_CLEVER_SAMPLES, COMPARE_CLEVER_POINTS, COMPARE_METRIC_SAMPLES = 10, 2000, 3, 20, 100


@command("scan", "data", "budget", "cluster", "out",
         none_means={"samples": f"{SCAN_SAMPLES_DATA} with --data, else {SCAN_SAMPLES_SYNTHETIC}"})
def scan_cmd(
    opts: Opts,
    model: Path = typer.Argument(..., help="ONNX classifier to audit.", show_default=False),
    method: str = typer.Option(
        "auto", "--method", metavar="METHOD",
        help="auto | exact | sketch | power | power-fresh | deflated. auto: exact when 2d+1 <= budget.",
    ),
    probes: str = typer.Option("orthogonal", "--probes", metavar="[orthogonal|gaussian]", help="Sketch probes."),
    subspace: str = typer.Option("dct", "--subspace", metavar="[dct|learnt]",
                                 help="deflated: dct (low frequencies) | learnt (earlier samples)."),
    subspace_dim: Optional[int] = typer.Option(None, "--subspace-dim", metavar="N", show_default="budget/4",
                                               help="deflated: subspace size."),
    save_direction: Optional[str] = typer.Option(
        None, "--save-direction", metavar="FILE", help="Write each sample's worst unit direction to this .npy file."
    ),
    fd_step: Optional[float] = typer.Option(None, "--fd-step", metavar="H", show_default="chosen and checked",
                                            help="Finite-difference step h."),
    space: str = typer.Option("input", "--space", metavar="[input|data]",
                              help="Report per model-input unit (input) or per stored-data unit (data)."),
    report_path: Optional[str] = typer.Option(
        None, "--report", metavar="FILE", help="Also write a report file (.html, .md, .txt, .json)."
    ),
    fail_above: Optional[float] = typer.Option(None, "--fail-above", metavar="X",
                                               help="Exit 1 when the median lambda_max exceeds X."),
    no_bounds: bool = typer.Option(False, "--no-bounds", help="Skip the closed-form bound from the weights."),
    trace_budget: int = typer.Option(
        0, "--trace-budget", metavar="N",
        help="Queries per sample for a separate Hutchinson trace (0: trace from the probes).",
    ),
    trace_rse: float = typer.Option(0.05, "--trace-rse", metavar="FLOAT",
                                    help="Hutchinson stops at this relative standard error."),
    trace_probes: str = typer.Option("rademacher", "--trace-probes", metavar="[rademacher|gaussian]",
                                     help="Hutchinson probes."),
    dither: float = typer.Option(
        0.0, "--dither", metavar="SIGMA", show_default="auto",
        help="Evaluate F at x + SIGMA*xi (seeded Gaussian xi). auto: SIGMA = 3% of the input RMS, only when exact "
        "input ties (constant backgrounds) make F undefined at x; else x itself.",
    ),
    no_dither: bool = typer.Option(False, "--no-dither", help="Keep the samples as they are even with exact ties."),
    smoothing: Optional[float] = typer.Option(
        None, "--smoothing", metavar="SIGMA", show_default="off",
        help="Estimate the Fisher information F_sigma of the Gaussian-smoothed model E[p(x + SIGMA*eps)] (SIGMA in "
        "the units of --space) instead of the pointwise F: meaningful for piecewise-constant (quantized, binarized) "
        "models, whose pointwise F is 0 almost everywhere.",
    ),
    gradients: str = typer.Option(
        "auto", "--gradients", metavar="[auto|graph|fd]",
        help="Exact Jacobians from a gradient graph of the model (graph: self-checked against finite differences; "
        "auto falls back with the reason) or black-box finite differences (fd).",
    ),
    cross_check: bool = typer.Option(
        False, "--cross-check", help="With the graph: also run the black-box estimator on the same samples and report its error."
    ),
    local_bound: Optional[float] = typer.Option(
        None, "--local-bound", metavar="EPS", show_default="off",
        help="Also certify, per sample, an upper bound on lambda_max(F) and on the logits' L2 Lipschitz constant over "
        "the L-inf ball of radius EPS (units of --space) around it, from bounds on the Jacobian over the ball "
        "(0: at the point): lower bound <= lambda_max <= local upper.",
    ),
) -> int:
    """Estimate lambda_max and trace of the input-space Fisher information at each sample."""
    from .policy import fail_above_gate
    from .scan import ScanConfig, scan

    config = opts.config(
        ScanConfig, model=str(model), method=method, probes=probes, fd_step=fd_step, space=space,
        fail_above=fail_above, subspace=subspace, subspace_dim=subspace_dim, save_direction=save_direction,
        bounds=not no_bounds, dither=dither, no_dither=no_dither, gradients=gradients, cross_check=cross_check,
        smoothing=smoothing, trace_budget=trace_budget, trace_rse=trace_rse, trace_probes=trace_probes,
        local_bound=local_bound,
    )
    config.validate()
    execution = opts.execution()
    result = run_job(opts, "scan", lambda: scan(config, None, execution))
    if report_path is not None:
        from .report import renderer_for

        write_atomic(report_path, renderer_for(None, report_path)(result))
    gate = fail_above_gate(result, fail_above)
    code = finish(opts, result, EXIT_OK if gate is None else EXIT_GATE)
    if gate is not None:  # said even with -q: an exit code 1 alone does not tell a CI log why
        sys.stderr.write(gate + "\n")
    return code


@command("bounds", "graph", "out")
def bounds_cmd(
    opts: Opts,
    model: Path = typer.Argument(..., help="ONNX classifier to bound from its weights.", show_default=False),
    ops: bool = typer.Option(False, "--ops", help="Also list every operation's constant."),
    domain: Optional[str] = typer.Option(
        None, "--domain", metavar="LO,HI", show_default="off",
        help="Also bound the logits over the whole input box [LO, HI] (model-input units) by interval propagation: "
        "finite for attention and LayerNorm models, which have no global constant.",
    ),
) -> int:
    """Closed-form upper bound on lambda_max(F) from the exported weights (per-block Lipschitz constants)."""
    from .graph import bounds_job
    from .subject import OpenOptions, open_subject

    box = None if domain is None else parse_domain(domain)
    subject = open_subject(OpenOptions(str(model), device="cpu", **opts.config_fields()))  # the bound and the box
    return finish(opts, bounds_job(subject, box, show_ops=ops))


@command("attack", "data", "budget", "cluster", "out", defaults={"data": ...})
def attack_cmd(
    opts: Opts,
    model: Path = typer.Argument(..., help="ONNX classifier to attack.", show_default=False),
    attack: str = typer.Option(
        "pgd", "--attack", metavar="ATTACK",
        help="fgsm | bim | pgd | square (black-box) | rays (linf) | hsja (l2) (decision-based: the predicted class only) | "
        "pgd-wb | apgd (white-box: exact gradients from the model's gradient graph, with Square run beside it for "
        "sanity flags) | transfer (APGD on --surrogate's gradients, every step judged on the model).",
    ),
    surrogate: Optional[Path] = typer.Option(
        None, "--surrogate", metavar="FILE", show_default="none",
        help="--attack transfer: a differentiable ONNX model taking the same input (e.g. the float twin of a "
        "quantized or binarized model); its gradients drive APGD, the model alone decides success.",
    ),
    norm: str = typer.Option("linf", "--norm", metavar="[linf|l2]", help="Norm of the radius eps."),
    eps: Optional[str] = typer.Option(None, "--eps", metavar="LIST", show_default="0.03; none with --eps-from",
                                      help="Radius or comma list, in attack units (data x --scale)."),
    eps_from: Optional[str] = typer.Option(
        None, "--eps-from", metavar="KEY", show_default="off",
        help="Also attack each sample at its own radius: array KEY of the --data .npz, one value per sample, in "
        "--eps units (a single value serves every sample). The report lists each sample's radius.",
    ),
    taus: str = typer.Option("0.05,0.1,0.2,0.5,1", "--tau", metavar="LIST", help="Tolerances for the robust ratio."),
    steps: Optional[int] = typer.Option(None, "--steps", metavar="N", show_default="10 for BIM/PGD, 100 white-box",
                                        help="Iterations of BIM/PGD and of the white-box attacks."),
    gradients: str = typer.Option(
        "auto", "--gradients", metavar="[auto|graph|fd|zo]",
        help="Black-box FGSM/BIM/PGD: fd (central differences, 2d+2 queries per step) or zo (zeroth-order "
        "estimates), auto picks by budget; white-box pgd-wb/apgd: graph (auto falls back with the reason). Every "
        "evaluation is a counted query.",
    ),
    grad: Optional[str] = typer.Option(None, "--grad", hidden=True, help="Deprecated spelling of --gradients."),
    loss: str = typer.Option("ce", "--loss", metavar="[ce|dlr]",
                             help="White-box loss: ce (cross-entropy) | dlr (difference of logits ratio)."),
    restarts: int = typer.Option(1, "--restarts", metavar="N",
                                 help="White-box runs per sample (the first from x, then random starts)."),
    min_distance: bool = typer.Option(
        False, "--min-distance", help="White-box: also each sample's smallest adversarial L2 and L-inf distance found "
        "(binary search over eps with APGD).",
    ),
) -> int:
    """Robust accuracy and robust ratio under a black-box or white-box attack at one or more eps."""
    from .evidence import AttackConfig, run_attack

    if norm not in ("linf", "l2"):
        raise ConfigError(f"--norm must be linf or l2, not '{norm}'")
    gradients = deprecated_alias("--grad", grad, "--gradients", gradients, "auto")
    eps_list = parse_nonnegative(eps, "--eps") if eps is not None else (() if eps_from else (0.03,))
    cfg = opts.config(AttackConfig, model=str(model), attack=attack, norm=norm, eps=eps_list, eps_from=eps_from,
                      taus=parse_nonnegative(taus, "--tau"), steps=steps, gradients=gradients, loss=loss,
                      restarts=restarts, min_distance=min_distance, surrogate=None if surrogate is None else str(surrogate))
    execution = opts.execution()
    return finish(opts, run_job(opts, "attack", lambda: run_attack(cfg, execution=execution)))


@command("metrics", "data", "out", defaults={"data": ..., "samples": 500}, exclude=("input_range",))
def metrics_cmd(
    opts: Opts,
    model: Path = typer.Argument(..., help="ONNX classifier.", show_default=False),
    no_corruptions: bool = typer.Option(False, "--no-corruptions", help="Skip the natural corruptions."),
) -> int:
    """Performance, uncertainty, weight norms, path norm, sharpness and corruption robustness of one model."""
    from .metrics.suite import MetricsConfig, run_metrics

    cfg = opts.config(MetricsConfig, model=str(model), corruptions=not no_corruptions)
    return finish(opts, run_job(opts, "metrics", lambda: run_metrics(cfg)))


@command("clever", "data", "out", defaults={"data": ..., "samples": 5})
def clever_cmd(
    opts: Opts,
    model: Path = typer.Argument(..., help="ONNX classifier.", show_default=False),
    norm: str = typer.Option("l2", "--norm", metavar="[l2|linf]", help="Norm of the adversarial distance."),
    radius: float = typer.Option(2.0, "--radius", metavar="R",
                                 help="Radius R of the sampling ball (attack units); caps the score."),
    points: int = typer.Option(50, "--points", metavar="N",
                               help="Points sampled per sample (2d queries each), in batches of 10."),
    seeds: int = typer.Option(3, "--seeds", metavar="N", help="Repeat with this many seeds and report the spread."),
    gradients: str = typer.Option("auto", "--gradients", metavar="[auto|graph|fd]",
                                  help="Exact margin gradients from the model's gradient graph (self-checked) instead "
                                  "of 2d finite-difference queries per point (fd)."),
) -> int:
    """CLEVER scores (extreme-value estimate of the minimal adversarial distance) with their spread over seeds."""
    from .evidence import CleverConfig, clever_job

    cfg = opts.config(CleverConfig, model=str(model), norm=norm, radius=radius, points=points, seeds=seeds,
                      gradients=gradients)
    return finish(opts, run_job(opts, "clever", lambda: clever_job(None, cfg)))


@command("compare", "data", "budget", "cluster", "out", defaults={"samples": COMPARE_SAMPLES, "budget": COMPARE_BUDGET},
         none_means={"data": "each model's own, from --manifest"})
def compare_cmd(
    opts: Opts,
    models: list[Path] = typer.Argument(None, help="ONNX models (or use --manifest).", show_default=False),
    manifest: Optional[Path] = typer.Option(None, "--manifest", metavar="FILE",
                                            help="A zoo manifest: each model with its own data."),
    eps_linf: float = typer.Option(0.03, "--eps-linf", metavar="FLOAT", help="L-inf radius for PGD and Square."),
    eps_l2: float = typer.Option(0.5, "--eps-l2", metavar="FLOAT",
                                 help="L2 radius for PGD; CLEVER uses 4x it as its ball."),
    clever_points: int = typer.Option(COMPARE_CLEVER_POINTS, "--clever-points", metavar="N",
                                      help="CLEVER: points sampled per sample (exact gradients from the gradient graph "
                                      "when it passes its self-check, else 2d queries each)."),
    clever_samples: int = typer.Option(COMPARE_CLEVER_SAMPLES, "--clever-samples", metavar="N",
                                       help="CLEVER: samples per model."),
    metric_samples: int = typer.Option(COMPARE_METRIC_SAMPLES, "--metric-samples", metavar="N",
                                       help="Samples for the metric suite (sharpness, corruptions, the attacked set)."),
    no_metrics: bool = typer.Option(False, "--no-metrics", help="Skip the weight/sharpness/corruption metrics."),
    validity: bool = typer.Option(
        False, "--validity", help="Per model: Spearman rho of the FIM-predicted radius sqrt(2 KL*/lambda_max) with each "
        "sample's minimal adversarial L2 distance (white-box search when the gradient graph passes its self-check).",
    ),
    kl_star: float = typer.Option(0.1, "--kl-star", metavar="NATS",
                                  help="KL* (nats) of the predicted radius; rho does not depend on it."),
) -> int:
    """Compare models: accuracy, Fisher spectral norms, bounds, RA, RR and CLEVER, with rank correlations.

    Per model, cheap sections first: scan (+ bound), PGD L-inf, Square L-inf, PGD L2, CLEVER, metric suite. """ \
        """The defaults (10 samples, 3 CLEVER samples, 100 metric samples) finish the README's 14-model manifest """ \
        """in under 5 minutes on 2 cores (docs/compare.md).

    With --timeout the models finished in time are kept: the report is written, marked partial (JSON """ \
        """"partial": true, "unfinished" with each model's reason), and the exit code is 2.
    """
    from .evidence import CompareConfig, compare_job, partial_message

    cfg = opts.config(CompareConfig, models=tuple(str(m) for m in models or ()),
                      manifest=None if manifest is None else str(manifest), eps_linf=eps_linf, eps_l2=eps_l2,
                      clever_points=clever_points, clever_samples=clever_samples, metrics=not no_metrics,
                      metric_samples=metric_samples, validity=validity, kl_star=kl_star)
    execution = opts.execution()
    result = run_job(opts, "compare", lambda: compare_job(cfg, execution))
    partial = partial_message(result, opts.json)
    code = finish(opts, result, EXIT_OK if partial is None else EXIT_ERROR)
    if partial is not None:
        err(partial)
    return code


@command("certify", "data", "cluster", "out",
         none_means={"samples": f"{SCAN_SAMPLES_DATA} with --data, else {SCAN_SAMPLES_SYNTHETIC}"})
def certify_cmd(
    opts: Opts,
    model: Path = typer.Argument(..., help="ONNX classifier to certify.", show_default=False),
    sigma: float = typer.Option(..., "--sigma", metavar="SIGMA",
                                help="Std of the Gaussian noise (in --space units); sets the scale of radii."),
    n0: int = typer.Option(100, "--n0", metavar="N",
                           help="Noisy queries per sample to select the smoothed prediction."),
    n: int = typer.Option(100_000, "--n", metavar="N", help="Noisy queries per sample to bound its probability."),
    alpha: float = typer.Option(0.001, "--alpha", metavar="FLOAT",
                                help="Each certificate fails with probability at most alpha."),
    radii: str = typer.Option("0,0.25,0.5,0.75,1", "--radii", metavar="LIST",
                              help="Radii at which to report certified accuracy."),
    space: str = typer.Option("input", "--space", metavar="[input|data]",
                              help="Noise and radii per model-input unit (input) or stored-data unit (data)."),
) -> int:
    """Certified L2 radius per sample by Gaussian randomized smoothing (Cohen et al. 2019), certified accuracy."""
    from .certify import CertifyConfig, certify

    config = opts.config(CertifyConfig, model=str(model), sigma=sigma, n0=n0, n=n, alpha=alpha,
                         radii=parse_nonnegative(radii, "--radii"), space=space)
    config.validate()
    execution = opts.execution()
    return finish(opts, run_job(opts, "certify", lambda: certify(config, None, execution)))


@command("verify", "data", "cluster", "out", defaults={"data": ...})
def verify_cmd(
    opts: Opts,
    model: Path = typer.Argument(..., help="ONNX classifier to verify.", show_default=False),
    norm: str = typer.Option("linf", "--norm", metavar="[linf|l2]", help="Norm of the radius eps."),
    eps: Optional[str] = typer.Option(None, "--eps", metavar="LIST", show_default="0.03; none with --eps-from",
                                      help="Radius or comma list, in attack units (data x --scale); inf: the whole "
                                      "--input-range box."),
    eps_from: Optional[str] = typer.Option(
        None, "--eps-from", metavar="KEY", show_default="off",
        help="Also verify each sample at its own radius: array KEY of the --data .npz (--eps units).",
    ),
    method: str = typer.Option("crown", "--method", metavar="[crown|ibp]",
                               help="crown: linear bounds back-substituted to the input (IBP where an operator has "
                               "no relaxation); ibp: interval bounds only."),
    bisect: bool = typer.Option(True, "--bisect/--no-bisect",
                                help="Also find each sample's largest verified radius by bisection."),
    branches: int = typer.Option(0, "--branches", metavar="N",
                                 help="--method crown: split up to N unstable ReLUs per sample and eps when the bound "
                                 "alone does not verify (branch and bound; 0: off)."),
) -> int:
    """Sound robustness verification: per sample and eps, is every other class's margin provably positive?"""
    from .verify.run import VerifyConfig, run_verify

    eps_list = parse_eps_or_inf(eps) if eps is not None else (() if eps_from else (0.03,))
    if branches < 0:
        raise ConfigError("--branches must be >= 0")
    cfg = opts.config(VerifyConfig, model=str(model), norm=norm, eps=eps_list, eps_from=eps_from, method=method,
                      bisect=bisect, branches=branches)
    cfg.validate()
    execution = opts.execution()
    return finish(opts, run_job(opts, "verifying", lambda: run_verify(cfg, None, execution)))


@command("audit", "data", "budget", "cluster", "out", defaults={"samples": 20, "input_range": None},
         none_means={"input_range": "0,1, or the data's own range when they lie outside [0, 1]"})
def audit_cmd(
    opts: Opts,
    model: Path = typer.Argument(..., help="ONNX classifier to audit.", show_default=False),
    policy_path: Optional[Path] = typer.Option(None, "--policy", metavar="FILE",
                                               help="TOML policy: checks and what to compute."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                       show_default="./fimaudit-audit-MODEL, unless --json is given",
                                       help="Folder for audit.json, audit.html, audit.md, junit.xml."),
    eps_from: Optional[str] = typer.Option(
        None, "--eps-from", metavar="KEY", show_default="off",
        help="The attacks also run each sample at its own radius (array KEY of the --data .npz, --eps units).",
    ),
) -> int:
    """Every kind of evidence, one policy, one dossier: exit 0 all checks pass, 1 a check fails, 2 bad input."""
    from .audit_command import AUDIT_FILES, audit_job, failed_check_lines, plan_audit, write_dossier

    # input_range None (not given): automatic, [0, 1] or derived from the data when they lie outside it
    plan = plan_audit({**opts.config_fields(), "model": str(model), "eps_from": eps_from}, policy_path, out, opts.json,
                      opts.given)
    execution = opts.execution()
    result = run_job(opts, "audit", lambda: audit_job(plan, execution))
    if plan.out is not None:
        write_dossier(result, plan.out, write_atomic)
    code = finish(opts, result, EXIT_GATE if result.verdict == "fail" else EXIT_OK)
    if opts.quiet:
        sys.stderr.writelines(line + "\n" for line in failed_check_lines(result))
    if plan.default_out:
        sys.stderr.write(f"fimaudit: note: no --out given: the dossier ({', '.join(AUDIT_FILES)}) is in {plan.out}{os.sep}\n")
    return code


@command("report")
def report_cmd(
    opts: Opts,
    saved: Path = typer.Argument(..., help="A JSON result written by `fimaudit scan`, `bounds`, `attack`, `clever`, `metrics`, `compare`, "
                               "`certify` or `verify` with --json, or by `fimaudit audit`."),
    fmt: Optional[str] = typer.Option(
        None, "--format", metavar="FORMAT", show_default="from --out, else text",
        help="text | markdown | html | json | junit (audit).",
    ),
    out: str = typer.Option("-", "--out", "-o", metavar="FILE", help="Output file ('-': stdout)."),
) -> int:
    """Re-render a saved JSON report: as text, exactly what the command printed; or in another format."""
    from .report import load_result, renderer_for

    try:
        raw = json.loads(saved.read_text(encoding="utf-8"))
        kind, result = load_result(raw)
    except FileNotFoundError:
        raise ConfigError(f"report not found: {saved}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {saved}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{saved} is not a fimaudit result ({type(exc).__name__}: {exc})") from None
    write_atomic(out, renderer_for(fmt, out, kind)(result))
    return EXIT_OK


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, metavar=""),
) -> None:
    if version:
        from ._version import __version__

        typer.echo(f"fimaudit {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def main() -> None:
    app()
