"""Command line: ``fimaudit scan`` and ``fimaudit report``; thin over the core.

Exit codes: 0 success (gate passed), 1 the ``--fail-above`` gate failed, 2 bad input or error.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .data import eval_fraction, parse_floats, parse_range
from .errors import ConfigError, FimauditError
from .model.loader import parse_input_shape
from .report import render_json, renderer_for
from .report.terminal import render_to_console
from .result import ScanResult
from .scan import ScanConfig, scan

app = typer.Typer(
    add_completion=False,
    help="Audit ONNX classifiers: input-space Fisher information, exact or sketched, from black-box queries.",
)

EXIT_OK, EXIT_GATE, EXIT_ERROR = 0, 1, 2


def _err(message: str) -> None:
    sys.stderr.write(f"fimaudit: error: {message}\n")
    sys.stderr.flush()


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (``-``: stdout) via a temporary file, so no half-written report remains."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{path} is a folder; give a file name for the report")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {path}: folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report should get the usual mode
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _run_guarded(fn) -> int:
    try:
        return fn()
    except FimauditError as exc:
        _err(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_ERROR
    except MemoryError:
        _err("out of memory; lower --max-batch or --budget")
        return EXIT_ERROR
    except Exception as exc:  # an internal bug: still one line, traceback on request
        if os.environ.get("FIMAUDIT_DEBUG"):
            raise
        _err(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (set FIMAUDIT_DEBUG=1 for the traceback)")
        return EXIT_ERROR


@app.command("scan")
def scan_cmd(
    model: Path = typer.Argument(..., help="ONNX classifier to audit.", show_default=False),
    data: Optional[Path] = typer.Option(None, "--data", help=".npy (inputs) or .npz (x, optional y) in the model's input layout."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Scan the first N samples (default 100, or 16 synthetic)."),
    method: str = typer.Option(
        "auto", "--method", help="auto | exact | sketch | power | power-fresh | deflated. auto: exact when 2d+1 <= budget."
    ),
    probes: str = typer.Option("orthogonal", "--probes", help="Sketch probes: orthogonal | gaussian."),
    subspace: str = typer.Option("dct", "--subspace", help="deflated: dct (low frequencies) | learnt (earlier samples)."),
    subspace_dim: Optional[int] = typer.Option(None, "--subspace-dim", help="deflated: subspace size (default budget/4)."),
    save_direction: Optional[str] = typer.Option(
        None, "--save-direction", help="Write each sample's worst unit direction to this .npy file."
    ),
    budget: int = typer.Option(2000, "--budget", help="Maximum queries per sample (never exceeded)."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice: same seed, same numbers."),
    fd_step: Optional[float] = typer.Option(None, "--fd-step", help="Finite-difference step h (default: chosen and checked)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (auto: CUDA only if it really loads)."),
    input_name: Optional[str] = typer.Option(None, "--input", help="Input to audit when the model has several."),
    output_name: Optional[str] = typer.Option(None, "--output", help="Output to audit when the model has several."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Per-sample shape C,H,W for dynamic dimensions."),
    output_kind: str = typer.Option("auto", "--output-kind", help="auto | logits | probabilities | log-probabilities."),
    scale: str = typer.Option("1", "--scale", help="Model input = (x*scale - mean)/std; e.g. 1/255 for uint8 pixels."),
    mean: str = typer.Option("0", "--mean", help="Mean, one value or one per channel."),
    std: str = typer.Option("1", "--std", help="Std, one value or one per channel."),
    space: str = typer.Option("input", "--space", help="Report per model-input unit (input) or per stored-data unit (data)."),
    input_range: str = typer.Option("0,1", "--input-range", help="LO,HI of synthetic inputs when no --data is given."),
    max_batch: int = typer.Option(256, "--max-batch", help="Most rows per onnxruntime call."),
    threads: int = typer.Option(0, "--threads", help="onnxruntime intra-op threads (0: its default)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the JSON report here ('-': stdout)."),
    report_path: Optional[str] = typer.Option(
        None, "--report", help="Also write a report file (.html, .md, .txt, .json)."
    ),
    fail_above: Optional[float] = typer.Option(None, "--fail-above", help="Exit 1 when the median lambda_max exceeds X."),
    no_bounds: bool = typer.Option(False, "--no-bounds", help="Skip the closed-form bound from the weights."),
    trace_budget: int = typer.Option(
        0, "--trace-budget", help="Queries per sample for a separate Hutchinson trace (0: trace from the probes)."
    ),
    trace_rse: float = typer.Option(0.05, "--trace-rse", help="Hutchinson stops at this relative standard error."),
    trace_probes: str = typer.Option("rademacher", "--trace-probes", help="Hutchinson probes: rademacher | gaussian."),
    dither: float = typer.Option(
        0.0, "--dither", help="Add Gaussian noise of this std to each input first (breaks ReLU/max-pool ties)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table (errors still go to stderr)."),
) -> None:
    """Estimate lambda_max and trace of the input-space Fisher information at each sample."""

    def body() -> int:
        try:
            scale_v = eval_fraction(scale)
        except ValueError:
            raise ConfigError(f"--scale '{scale}' must be a number such as 0.00392 or 1/255") from None
        config = ScanConfig(
            model=str(model),
            data=None if data is None else str(data),
            samples=samples,
            method=method,
            probes=probes,
            budget=budget,
            seed=seed,
            fd_step=fd_step,
            device=device,
            input_name=input_name,
            output_name=output_name,
            input_shape=None if input_shape is None else parse_input_shape(input_shape),
            output_kind=output_kind,
            scale=scale_v,
            mean=parse_floats(mean, "--mean") or (0.0,),
            std=parse_floats(std, "--std") or (1.0,),
            space=space,
            input_range=parse_range(input_range),
            max_batch=max_batch,
            threads=threads,
            fail_above=fail_above,
            subspace=subspace,
            subspace_dim=subspace_dim,
            save_direction=save_direction,
            bounds=not no_bounds,
            dither=dither,
            trace_budget=trace_budget,
            trace_rse=trace_rse,
            trace_probes=trace_probes,
        )
        config.validate()
        err_console = Console(stderr=True)
        to_stdout = json_path == "-"
        show = not quiet
        if show:
            with Progress(
                TextColumn("[bold]scanning"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("samples"),
                TextColumn("{task.fields[queries]} queries"),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            ) as bar:
                task = bar.add_task("scan", total=None, queries=0)

                def progress(done: int, total: int, queries: int) -> None:
                    bar.update(task, completed=done, total=total, queries=queries)

                result = scan(config, progress)
        else:
            result = scan(config)
        if json_path is not None:
            write_atomic(json_path, render_json(result))
        if report_path is not None:
            write_atomic(report_path, renderer_for(None, report_path)(result))
        if show:
            render_to_console(result, err_console if to_stdout else Console())
        return _gate(result, fail_above, quiet)

    raise typer.Exit(_run_guarded(body))


def _gate(result: ScanResult, fail_above: float | None, quiet: bool) -> int:
    if fail_above is None:
        return EXIT_OK
    median = result.summary.lambda_max.median
    if median is not None and median > fail_above:
        if not quiet:
            sys.stderr.write(f"fimaudit: gate failed: median lambda_max {median:.4g} > --fail-above {fail_above:g}\n")
        return EXIT_GATE
    return EXIT_OK


@app.command("bounds")
def bounds_cmd(
    model: Path = typer.Argument(..., help="ONNX classifier to bound from its weights.", show_default=False),
    input_name: Optional[str] = typer.Option(None, "--input", help="Input to use when the model has several."),
    output_name: Optional[str] = typer.Option(None, "--output", help="Output to use when the model has several."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Per-sample shape C,H,W for dynamic dimensions."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the JSON result here ('-': stdout)."),
    ops: bool = typer.Option(False, "--ops", help="Also list every operation's constant."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table."),
) -> None:
    """Closed-form upper bound on lambda_max(F) from the exported weights (per-block Lipschitz constants)."""

    def body() -> int:
        from .graph import compute_bounds
        from .report.bounds import render_bounds

        result = compute_bounds(
            str(model), input_name=input_name, output_name=output_name,
            input_shape=None if input_shape is None else parse_input_shape(input_shape),
        )
        if json_path is not None:
            write_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
        if not quiet:
            render_bounds(result, Console(stderr=True) if json_path == "-" else Console(), show_ops=ops)
        return EXIT_OK

    raise typer.Exit(_run_guarded(body))


def _floats_list(text: str, flag: str) -> tuple[float, ...]:
    vals = parse_floats(text, flag)
    if vals is None or any(v < 0 for v in vals):
        raise ConfigError(f"{flag} '{text}' must be nonnegative numbers separated by commas")
    return vals


@app.command("attack")
def attack_cmd(
    model: Path = typer.Argument(..., help="ONNX classifier to attack.", show_default=False),
    data: Path = typer.Option(..., "--data", help=".npz with x and integer labels y."),
    attack: str = typer.Option("pgd", "--attack", help="fgsm | bim | pgd | square."),
    norm: str = typer.Option("linf", "--norm", help="linf | l2."),
    eps: str = typer.Option("0.03", "--eps", help="Radius or comma list, in attack units (data x --scale)."),
    budget: int = typer.Option(2000, "--budget", help="Maximum queries per sample and eps."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Attack the first N samples."),
    input_range: str = typer.Option("0,1", "--input-range", help="Valid range LO,HI of attack-space inputs."),
    scale: str = typer.Option("1", "--scale", help="Attack space = stored data x scale (e.g. 1/255)."),
    mean: str = typer.Option("0", "--mean", help="Model input = (attack-space x - mean)/std."),
    std: str = typer.Option("1", "--std", help="Std, one value or one per channel."),
    taus: str = typer.Option("0.05,0.1,0.2,0.5,1", "--tau", help="Tolerances for the robust ratio."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Iterations of BIM/PGD (default 10)."),
    grad: str = typer.Option("auto", "--grad", help="Gradients for FGSM/BIM/PGD: auto | fd | zo."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the JSON report here ('-': stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table."),
) -> None:
    """Robust accuracy and robust ratio under a black-box attack at one or more eps."""

    def body() -> int:
        from .evidence import AttackConfig, run_attack

        try:
            scale_v = eval_fraction(scale)
        except ValueError:
            raise ConfigError(f"--scale '{scale}' must be a number such as 1/255") from None
        if norm not in ("linf", "l2"):
            raise ConfigError(f"--norm must be linf or l2, not '{norm}'")
        cfg = AttackConfig(
            model=str(model), data=str(data), attack=attack, norm=norm, eps=_floats_list(eps, "--eps"),
            budget=budget, samples=samples, input_range=parse_range(input_range), scale=scale_v,
            mean=parse_floats(mean, "--mean") or (0.0,), std=parse_floats(std, "--std") or (1.0,),
            seed=seed, taus=_floats_list(taus, "--tau"), steps=steps, grad=grad, device=device,
        )
        rep = run_attack(cfg)
        if json_path is not None:
            write_atomic(json_path, json.dumps(rep, indent=2) + "\n")
        if not quiet:
            from rich.table import Table

            console = Console(stderr=True) if json_path == "-" else Console()
            t = Table(title=f"{attack} ({norm}) on {model.name}: clean accuracy {100 * rep['clean_accuracy']:.1f}%",
                      title_justify="left")
            t.add_column("eps", justify="right")
            t.add_column("robust acc.", justify="right")
            for tau in cfg.taus:
                t.add_column(f"RR tau={tau:g}", justify="right")
            t.add_column("queries", justify="right")
            for r in rep["results"]:
                t.add_row(f"{r['eps']:g}", f"{100 * r['robust_accuracy']:.1f}%",
                          *[f"{100 * r['robust_ratio'][f'{tau:g}']:.1f}%" for tau in cfg.taus], str(r["queries_total"]))
            console.print(t)
        return EXIT_OK

    raise typer.Exit(_run_guarded(body))


@app.command("metrics")
def metrics_cmd(
    model: Path = typer.Argument(..., help="ONNX classifier.", show_default=False),
    data: Path = typer.Option(..., "--data", help=".npz with x and integer labels y."),
    samples: int = typer.Option(500, "--samples", help="Use the first N samples."),
    scale: str = typer.Option("1", "--scale", help="Images = data x scale, in [0, 1] (e.g. 1/255)."),
    mean: str = typer.Option("0", "--mean", help="Model input = (image - mean)/std."),
    std: str = typer.Option("1", "--std"),
    seed: int = typer.Option(0, "--seed"),
    no_corruptions: bool = typer.Option(False, "--no-corruptions", help="Skip the natural corruptions."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the JSON report here ('-': stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Performance, uncertainty, weight norms, path norm, sharpness and corruption robustness of one model."""

    def body() -> int:
        from .metrics.suite import MetricsConfig, run_metrics

        cfg = MetricsConfig(model=str(model), data=str(data), samples=samples, scale=eval_fraction(scale),
                            mean=parse_floats(mean, "--mean") or (0.0,), std=parse_floats(std, "--std") or (1.0,),
                            seed=seed, corruptions=not no_corruptions)
        rep = run_metrics(cfg)
        if json_path is not None:
            write_atomic(json_path, json.dumps(rep, indent=2) + "\n")
        if not quiet:
            from rich.table import Table

            from .report.terminal import _fmt

            console = Console(stderr=True) if json_path == "-" else Console()
            t = Table(title=f"Metrics of {model.name}", title_justify="left")
            t.add_column("metric")
            t.add_column("value", justify="right")
            for k, v in rep["metrics"].items():
                t.add_row(k, _fmt(v))
            console.print(t)
            if rep["corruptions"]:
                c = Table(title="Accuracy under corruptions (severity 0-5)", title_justify="left")
                c.add_column("corruption")
                for sev in range(6):
                    c.add_column(str(sev), justify="right")
                for name, row in rep["corruptions"].items():
                    c.add_row(name, *[f"{100 * row[str(s)]:.1f}" for s in range(6)])
                console.print(c)
        return EXIT_OK

    raise typer.Exit(_run_guarded(body))


@app.command("clever")
def clever_cmd(
    model: Path = typer.Argument(..., help="ONNX classifier.", show_default=False),
    data: Path = typer.Option(..., "--data", help=".npz with x and integer labels y."),
    norm: str = typer.Option("l2", "--norm", help="l2 | linf."),
    radius: float = typer.Option(2.0, "--radius", help="Radius R of the sampling ball (attack units); caps the score."),
    points: int = typer.Option(50, "--points", help="Points sampled per sample (2d queries each), in batches of 10."),
    seeds: int = typer.Option(3, "--seeds", help="Repeat with this many seeds and report the spread."),
    samples: int = typer.Option(5, "--samples", help="Use the first N samples."),
    input_range: str = typer.Option("0,1", "--input-range", help="Valid range LO,HI of attack-space inputs."),
    scale: str = typer.Option("1", "--scale", help="Attack space = data x scale (e.g. 1/255)."),
    mean: str = typer.Option("0", "--mean"),
    std: str = typer.Option("1", "--std"),
    seed: int = typer.Option(0, "--seed"),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the JSON report here ('-': stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """CLEVER scores (extreme-value estimate of the minimal adversarial distance) with their spread over seeds."""

    def body() -> int:
        from .evidence import AttackConfig, run_clever

        cfg = AttackConfig(model=str(model), data=str(data), samples=samples, input_range=parse_range(input_range),
                           scale=eval_fraction(scale), mean=parse_floats(mean, "--mean") or (0.0,),
                           std=parse_floats(std, "--std") or (1.0,), seed=seed, budget=10**9)
        rep = run_clever(cfg, norm, radius, points, seeds)
        if json_path is not None:
            write_atomic(json_path, json.dumps(rep, indent=2) + "\n")
        if not quiet:
            from rich.table import Table

            console = Console(stderr=True) if json_path == "-" else Console()
            t = Table(title=f"CLEVER ({norm}, R = {radius:g}) over {seeds} seeds", title_justify="left")
            for col in ("sample", "label", "mean score", "spread (std)", "queries"):
                t.add_column(col, justify="right")
            for s_ in rep["samples"]:
                t.add_row(str(s_["index"]), str(s_["label"]), f"{s_['mean']:.4g}", f"{s_['spread']:.2g}", str(s_["queries"]))
            console.print(t)
            sm = rep["summary"]
            console.print(f"median score {sm['median_score']:.4g}; median relative spread over seeds "
                          f"{sm['median_relative_spread']:.2%}; Weibull fit accepted in {sm['fit_ok_share']:.0%} of runs")
        return EXIT_OK

    raise typer.Exit(_run_guarded(body))


@app.command("compare")
def compare_cmd(
    models: list[Path] = typer.Argument(None, help="ONNX models (or use --manifest).", show_default=False),
    data: Optional[Path] = typer.Option(None, "--data", help=".npz with x and y, shared by the models."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="A zoo manifest: each model with its own data."),
    scale: str = typer.Option("1", "--scale", help="Attack space = data x scale (shared models)."),
    mean: str = typer.Option("0", "--mean"),
    std: str = typer.Option("1", "--std"),
    samples: int = typer.Option(20, "--samples", help="Samples per model."),
    eps_linf: float = typer.Option(0.03, "--eps-linf", help="L-inf radius for PGD and Square."),
    eps_l2: float = typer.Option(0.5, "--eps-l2", help="L2 radius for PGD; CLEVER uses 4x it as its ball."),
    budget: int = typer.Option(2000, "--budget", help="Queries per sample for scans and attacks."),
    clever_points: int = typer.Option(20, "--clever-points", help="CLEVER: points sampled per sample (2d queries each)."),
    clever_samples: int = typer.Option(5, "--clever-samples", help="CLEVER: samples per model."),
    no_metrics: bool = typer.Option(False, "--no-metrics", help="Skip the weight/sharpness/corruption metrics."),
    seed: int = typer.Option(0, "--seed"),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the JSON report here ('-': stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Compare models: accuracy, Fisher spectral norms, bounds, RA, RR and CLEVER, with rank correlations."""

    def body() -> int:
        from .evidence import ModelSpec, compare_models

        specs: list[ModelSpec] = []
        if manifest is not None:
            try:
                entries = json.loads(manifest.read_text())["models"]
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(f"cannot read manifest {manifest}: {exc}") from None
            for e in entries:
                pp = e["preprocess"]
                specs.append(ModelSpec(str(manifest.parent / e["file"]), str(manifest.parent / e["data"]),
                                       float(pp["scale"]), (float(pp["mean"]),), (float(pp["std"]),), e["name"]))
        for m in models or []:
            if data is None:
                raise ConfigError("--data is needed for models given on the command line")
            specs.append(ModelSpec(str(m), str(data), eval_fraction(scale), parse_floats(mean, "--mean") or (0.0,),
                                   parse_floats(std, "--std") or (1.0,), m.stem))
        if len(specs) < 2:
            raise ConfigError("compare needs at least two models")
        rep = compare_models(specs, samples=samples, eps_linf=eps_linf, eps_l2=eps_l2, budget=budget, seed=seed,
                             clever_points=clever_points, clever_samples=clever_samples, with_metrics=not no_metrics,
                             progress=None if quiet else (lambda name: sys.stderr.write(f"done: {name}\n")))
        if json_path is not None:
            write_atomic(json_path, json.dumps(rep, indent=2) + "\n")
        if not quiet:
            from .report.compare import render_compare

            render_compare(rep, Console(stderr=True) if json_path == "-" else Console())
        return EXIT_OK

    raise typer.Exit(_run_guarded(body))


@app.command("report")
def report_cmd(
    saved: Path = typer.Argument(..., help="A JSON report written by `fimaudit scan --json`."),
    fmt: Optional[str] = typer.Option(
        None, "--format", help="text | markdown | html | json (default: from --out, else text)."
    ),
    out: str = typer.Option("-", "--out", "-o", help="Output file ('-': stdout)."),
) -> None:
    """Re-render a saved JSON report in another format."""

    def body() -> int:
        try:
            raw = json.loads(saved.read_text(encoding="utf-8"))
            result = ScanResult.from_dict(raw)
        except FileNotFoundError:
            raise ConfigError(f"report not found: {saved}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{saved} is not a fimaudit scan report ({type(exc).__name__}: {exc})") from None
        write_atomic(out, renderer_for(fmt, out)(result))
        return EXIT_OK

    raise typer.Exit(_run_guarded(body))


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from . import __version__

        typer.echo(f"fimaudit {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def main() -> None:
    app()
