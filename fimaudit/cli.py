"""Command line: parses options, dispatches to the core, maps exit codes; nothing else.

Exit codes: 0 success (policy or gate passed), 1 a policy check or the ``--fail-above`` gate failed,
2 bad input, error or ``--timeout`` elapsed (one line on stderr, ``fimaudit: error: ...``, never a
traceback; ``compare`` still writes the models finished in time, its report marked ``"partial": true``),
130/143 interrupted by SIGINT/SIGTERM (one line; no report written, temporary files removed).

Progress goes to stderr only (``fimaudit.progress``): a bar in a terminal, else a line at most every 10 s with
the elapsed time and an estimate of the remaining time; ``-q`` silences it.

Shared options
--------------
Options that mean the same thing in several commands (``--data``, ``--scale``, ``--seed``,
``--json``, ``-q``, ...) are declared ONCE, in the registry below, with the function that
parses and checks their value. A command names the *groups* it takes, and receives the parsed
values as one ``Opts`` object; a malformed value (``--scale abc``, ``--samples 0``) is one
``fimaudit: error:`` line and exit 2 in every command, before the command runs.

Groups (a command takes the union of the groups it names):

* ``graph``  -- which tensors to audit: ``--input``, ``--output``, ``--input-shape``.
* ``run``    -- ``graph`` plus running the model: ``--output-kind``, ``--device``, ``--max-batch``, ``--threads``.
* ``data``   -- ``run`` plus the samples: ``--data``, ``--samples``, ``--scale``, ``--mean``, ``--std``,
  ``--input-range``, ``--seed``. Every data-taking command (scan, attack, metrics, clever, compare, audit).
* ``budget`` -- ``--budget`` (queries per sample).
* ``out``    -- ``--json`` and ``-q/--quiet``.

To add an option to every data-taking command (e.g. ``--layout``):

1. register it next to the others below::

       shared_option("layout", ("--layout",), str, "auto", "Input layout.", groups=("data",),
                     parse=_choice("--layout", ("auto", "NCHW", "NHWC")), metavar="[auto|NCHW|NHWC]")

   ``parse`` turns the raw value into the typed one and raises ``ConfigError`` naming the flag;
   ``config=False`` keeps it out of the core configs (like ``--json``). Register before the commands.
   ``metavar`` is what the help shows for the value (``N``, ``FILE``, ``[a|b]``; a flag has none);
   ``none_means`` what a None default does (``all``, ``auto``), shown as the default.
2. add a field of the same name to each config that takes data (``ScanConfig``, ``AttackConfig``,
   ``MetricsConfig``, ``AuditConfig``, ``CertifyConfig``). ``opts.config(Cls, ...)`` passes every config
   option by name, so a config that lacks the field fails the CLI tests at once
   (``tests/test_cli_options.py::test_configs_take_every_shared_option`` names it).
3. add a bad-value case to ``tests/test_cli_options.py`` (one table covers every command).

A new command: ``@command("name", "data", "out")`` over ``def name_cmd(opts: Opts, <own options>) -> int``;
the body returns an exit code and raises ``FimauditError`` for bad input. Per-command defaults:
``defaults={"samples": 500}``; ``...`` as a default makes the option required; ``none_means={"samples": "100"}``
what a None default does in this command. The help is the first documentation: give each own option a
``metavar`` and, when None means "automatic", a ``show_default`` text (tests/test_help.py checks every command).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import OptionInfo

# Only light modules at the top: `fimaudit --help` must not import numpy's heavy neighbours (onnx, onnxruntime,
# scipy, matplotlib); each command imports the core it runs inside its body (tests/test_imports.py checks).
from .choices import (CHANNEL_ORDERS, DEFAULT_RESIZE, LAYOUTS, OUTPUT_KINDS, PRESETS, RESIZE_POLICIES, eval_fraction,
                      parse_floats, parse_input_shape, parse_range)
from .errors import ConfigError, FimauditError
from .runtime_guard import Interrupted, RunTimeout, guarded_run
from .runtime_guard import write_atomic as atomic_file

if TYPE_CHECKING:
    from .results import ScanResult

EXIT_OK, EXIT_GATE, EXIT_ERROR = 0, 1, 2


def _err(message: str) -> None:
    sys.stderr.write(f"fimaudit: error: {message}\n")
    sys.stderr.flush()


def _usage_error(prefix: str, exc: Exception) -> typer.Exit:
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    _err(prefix + " ".join(message.split()))
    return typer.Exit(EXIT_ERROR)


def _flag_help_option(option: Any) -> Any:
    """``--help`` is a flag: no value metavar in the help (typer would show ``<bool>``)."""
    if option is not None and getattr(option, "metavar", None) is None:
        option.metavar = ""
    return option


class _Command(TyperCommand):
    """Usage errors (unknown option, ``--samples abc``, missing argument) as one line and exit 2."""

    def get_help_option(self, ctx: typer.Context) -> Any:
        return _flag_help_option(super().get_help_option(ctx))

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as exc:  # typer's (vendored click's) UsageError and BadParameter
            raise _usage_error(f"{self.name}: ", exc) from None


class _Group(TyperGroup):
    """An unknown command or root option as one line and exit 2."""

    def get_help_option(self, ctx: typer.Context) -> Any:
        return _flag_help_option(super().get_help_option(ctx))

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as exc:
            raise _usage_error("", exc) from None

    def resolve_command(self, ctx: typer.Context, args: list[str]):  # type: ignore[no-untyped-def]
        try:
            return super().resolve_command(ctx, args)
        except typer.TyperException as exc:
            raise _usage_error("", exc) from None


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    help="Audit ONNX classifiers for input-space Fisher information (exact or sketched), with bounds, attacks and "
    "certificates. By default the Jacobians are exact, from a gradient graph built from the ONNX model and "
    "self-checked against finite differences; if it cannot be built or fails the check, black-box "
    "finite-difference queries are used and the reason is reported.",
)


# --------------------------------------------------------------------------- shared options
@dataclass(frozen=True)
class SharedOption:
    """One option used by several commands: its flags, the type typer parses, and our own check."""

    name: str  # attribute on Opts and field name in the core configs
    flags: tuple[str, ...]
    annotation: Any  # what typer parses the text into (str, int, Optional[Path], bool)
    default: Any
    help: str
    parse: Callable[[Any], Any]
    config: bool  # passed to the core configs by opts.config()
    metavar: str  # what the value looks like in the help: N, FILE, [auto|cpu|cuda]; "" for a flag
    none_means: Optional[str] = None  # the help's default when the default is None ("all", "the only input")


OPTIONS: dict[str, SharedOption] = {}
GROUPS: dict[str, list[str]] = {"graph": [], "run": [], "data": [], "budget": [], "out": [], "cluster": []}
# A group includes the groups listed here (run = graph + its own, data = run + its own).
_INCLUDES = {"run": ("graph",), "data": ("run",)}


def _same(value: Any) -> Any:
    return value


def shared_option(
    name: str,
    flags: tuple[str, ...],
    annotation: Any,
    default: Any,
    help: str,
    *,
    groups: tuple[str, ...],
    parse: Callable[[Any], Any] = _same,
    config: bool = True,
    metavar: Optional[str] = None,
    none_means: Optional[str] = None,
) -> None:
    """Register an option once; every command taking one of ``groups`` gets it, parsed by ``parse``.

    ``metavar`` is required for a value (a flag has none); ``none_means`` says in the help what a None
    default does (a command's ``defaults`` or ``none_means`` override it).
    """
    if name in OPTIONS:
        raise ValueError(f"shared option {name} registered twice")
    if metavar is None and annotation is not bool:
        raise ValueError(f"shared option {name} needs a metavar for the help")
    OPTIONS[name] = SharedOption(name, flags, annotation, default, help, parse, config,
                                 "" if annotation is bool else metavar, none_means)
    for g in groups:
        GROUPS.setdefault(g, []).append(name)


def _resolve(groups: tuple[str, ...]) -> list[str]:
    names: list[str] = []

    def add(g: str) -> None:
        if g not in GROUPS:
            raise ValueError(f"unknown option group {g}")
        for inc in _INCLUDES.get(g, ()):
            add(inc)
        names.extend(n for n in GROUPS[g] if n not in names)

    for g in groups:
        add(g)
    return names


def _choice(flag: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ConfigError(f"{flag} must be one of {', '.join(allowed)}, not '{value}'")
        return value

    return parse


def _optional_choice(flag: str, allowed: tuple[str, ...]) -> Callable[[Optional[str]], Optional[str]]:
    check = _choice(flag, allowed)
    return lambda value: None if value is None else check(value)


def _at_least(flag: str, low: int) -> Callable[[Optional[int]], Optional[int]]:
    def parse(value: Optional[int]) -> Optional[int]:
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, not {value}")
        return value

    return parse


def _scale(text: str) -> float:
    try:
        value = eval_fraction(text)
    except ValueError:
        raise ConfigError(f"--scale '{text}' must be a number such as 0.00392 or 1/255") from None
    if value == 0:
        raise ConfigError("--scale must be nonzero")
    return value


def _floats(flag: str, fallback: float) -> Callable[[str], tuple[float, ...]]:
    return lambda text: parse_floats(text, flag) or (fallback,)


def _seconds(value: Optional[float]) -> Optional[float]:
    if value is not None and not (0 < value < 1e9):
        raise ConfigError(f"--timeout must be a positive number of seconds, not {value:g}")
    return value


def _optional_str(value: Optional[Path]) -> Optional[str]:
    return None if value is None else str(value)


def _input_shape(text: Optional[str]) -> Optional[tuple[int, ...]]:
    return None if text is None else parse_input_shape(text)


def _one_of(allowed: tuple[str, ...]) -> str:
    """A short choice list as the help's metavar, ``[auto|cpu|cuda]``; long ones get a noun, the list in the help."""
    return "[" + "|".join(allowed) + "]"


shared_option("input_name", ("--input",), Optional[str], None, "Input to audit when the model has several.",
              groups=("graph",), metavar="NAME", none_means="the only input")
shared_option("output_name", ("--output",), Optional[str], None, "Output to audit when the model has several.",
              groups=("graph",), metavar="NAME", none_means="the only float output")
shared_option("input_shape", ("--input-shape",), Optional[str], None,
              "Per-sample shape C,H,W for dynamic dimensions.", groups=("graph",), parse=_input_shape,
              metavar="C,H,W", none_means="from the model")
shared_option("output_kind", ("--output-kind",), str, "auto",
              "auto | logits | probabilities | log-probabilities (auto: detected from the outputs on the data).",
              groups=("run",), parse=_choice("--output-kind", ("auto",) + OUTPUT_KINDS), metavar="KIND")
shared_option("device", ("--device",), str, "auto", "Where the model runs (auto: CUDA only if it really loads).",
              groups=("run",), parse=_choice("--device", ("auto", "cpu", "cuda")),
              metavar=_one_of(("auto", "cpu", "cuda")))
shared_option("max_batch", ("--max-batch",), int, 256, "Most rows per onnxruntime call.", groups=("run",),
              parse=_at_least("--max-batch", 1), metavar="N")
shared_option("threads", ("--threads",), int, 0, "onnxruntime intra-op threads (0: its default).", groups=("run",),
              parse=_at_least("--threads", 0), metavar="N")
shared_option("data", ("--data",), Optional[Path], None,
              ".npy (inputs), .npz (x, optional integer labels y) in the model's input layout, or a folder of "
              "PNG/JPEG/BMP images (labels from subfolders or labels.csv).",
              groups=("data",), parse=_optional_str, metavar="PATH", none_means="seeded synthetic inputs")
shared_option("samples", ("--samples",), Optional[int], None, "Use the first N samples.", groups=("data",),
              parse=_at_least("--samples", 1), metavar="N", none_means="all")
shared_option("scale", ("--scale",), str, "1",
              "Stored data x scale = image/attack space (e.g. 1/255 for uint8 pixels); eps is in these units.",
              groups=("data",), parse=_scale, metavar="NUMBER")
shared_option("mean", ("--mean",), str, "0", "Model input = (x*scale - mean)/std; one value or one per channel.",
              groups=("data",), parse=_floats("--mean", 0.0), metavar="LIST")
shared_option("std", ("--std",), str, "1", "Std, one value or one per channel.", groups=("data",),
              parse=_floats("--std", 1.0), metavar="LIST")
shared_option("preset", ("--preset",), Optional[str], None,
              "Named normalisation: imagenet | inception | unit | none (instead of --scale/--mean/--std).",
              groups=("data",), parse=_optional_choice("--preset", tuple(PRESETS)), metavar="NAME",
              none_means="off")
shared_option("layout", ("--layout",), str, "auto", "Input layout (auto: read from the graph, else from the shape).",
              groups=("data",), parse=_choice("--layout", LAYOUTS), metavar=_one_of(LAYOUTS))
shared_option("resize", ("--resize",), str, DEFAULT_RESIZE,
              "Image folders: shorter-side+center-crop | stretch to the model's size.", groups=("data",),
              parse=_choice("--resize", RESIZE_POLICIES), metavar="POLICY")
shared_option("channels", ("--channels",), str, "rgb", "Image folders: channel order the model expects.",
              groups=("data",), parse=_choice("--channels", CHANNEL_ORDERS), metavar=_one_of(CHANNEL_ORDERS))
shared_option("classes", ("--classes",), Optional[Path], None,
              "Image folders: a file of class names, one per line, in the model's output order; maps subfolder or "
              "labels.csv names to the model's class indices.", groups=("data",), parse=_optional_str,
              metavar="FILE", none_means="sorted names, when their count matches the model's")
shared_option("input_range", ("--input-range",), str, "0,1",
              "Valid range of inputs after --scale (attacks clip to it; synthetic inputs are drawn in it).",
              groups=("data",), parse=lambda text: None if text is None else parse_range(text), metavar="LO,HI")
shared_option("seed", ("--seed",), int, 0, "Seed for every random choice: same seed, same numbers.",
              groups=("data",), parse=_at_least("--seed", 0), metavar="N")  # numpy seeds are nonnegative
shared_option("budget", ("--budget",), int, 2000, "Maximum queries per sample (never exceeded).",
              groups=("budget",), parse=_at_least("--budget", 1), metavar="N")
shared_option("workers", ("--workers",), Optional[int], None,
              "Spread samples over N local Dask worker processes (needs the distributed extra).",
              groups=("cluster",), parse=_at_least("--workers", 1), config=False, metavar="N",
              none_means="this process")
shared_option("scheduler", ("--scheduler",), Optional[str], None,
              "Spread samples over the Dask cluster at this address.",
              groups=("cluster",), config=False, metavar="tcp://HOST:PORT")
shared_option("json", ("--json",), Optional[str], None, "Write the JSON result here ('-': stdout).",
              groups=("out",), config=False, metavar="FILE")
shared_option("timeout", ("--timeout",), Optional[float], None,
              "Stop the whole run after SECONDS: one line, exit 2, nothing written (compare writes the models finished, "
              "marked partial).", groups=("out",), config=False,
              parse=_seconds, metavar="SECONDS", none_means="no limit")
shared_option("quiet", ("--quiet", "-q"), bool, False,
              "No progress (bar or log lines) and no table (errors still go to stderr).",
              groups=("out",), config=False)


class Opts:
    """Parsed shared options of one command run: ``opts.scale``, ``opts.config(ScanConfig, model=...)``."""

    def __init__(self, values: dict[str, Any], given: frozenset[str] = frozenset()) -> None:
        self._values = dict(values)
        # options given on the command line (or by an environment variable), not left at their defaults: click's
        # ParameterSource. A policy's [audit] value yields to these and only to these (audit_cmd).
        self.__dict__["given"] = frozenset(given)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"this command does not take the shared option {name}") from None

    def config_fields(self) -> dict[str, Any]:
        """The options that the core configs take, by field name."""
        return {k: v for k, v in self._values.items() if OPTIONS[k].config}

    def config(self, cls: type, **own: Any) -> Any:
        """``cls(**shared options, **own)``; ``own`` wins. A config lacking a shared field is a bug: it raises."""
        names = {f.name for f in fields(cls)}
        shared = self.config_fields()
        missing = [k for k in shared if k not in names]
        if missing:
            raise TypeError(f"{cls.__name__} lacks shared option fields {missing}")
        return cls(**{**shared, **own})

    def execution(self):
        """Where per-sample work runs (``--workers``/``--scheduler``), checked; None for this process."""
        from .distributed import Execution

        ex = Execution(workers=self._values.get("workers"), scheduler=self._values.get("scheduler"))
        ex.validate()
        return ex if ex.distributed else None


def _shown_default(value: Any, none_means: Optional[str]) -> bool | str:
    """typer's ``show_default``: the value, or what None means (``[default: (all)]``); nothing when required."""
    if value is ...:
        return False
    if value is None:
        return none_means or False
    return True


def command(name: str, *groups: str, defaults: dict[str, Any] | None = None, exclude: tuple[str, ...] = (),
            none_means: dict[str, str] | None = None):
    """Register ``fn(opts, **own) -> exit code`` as a command taking the shared options of ``groups``.

    ``none_means`` overrides, for this command, what the help says a None default does (``{"samples": "100"}``).
    """
    defaults = defaults or {}
    none_means = none_means or {}
    shared = [OPTIONS[n] for n in _resolve(groups) if n not in exclude]

    def deco(fn: Callable[..., int]) -> Callable[..., None]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]
        for p in own:  # a flag takes no value: no metavar in the help (typer would show <bool>)
            if p.annotation is bool and isinstance(p.default, OptionInfo) and p.default.metavar is None:
                p.default.metavar = ""
        extra = [
            inspect.Parameter(
                o.name, inspect.Parameter.KEYWORD_ONLY, annotation=o.annotation,
                default=typer.Option(defaults.get(o.name, o.default), *o.flags, help=o.help, metavar=o.metavar,
                                     rich_help_panel="Shared options",
                                     show_default=_shown_default(defaults.get(o.name, o.default),
                                                                 none_means.get(o.name, o.none_means))),
            )
            for o in shared
        ]

        def wrapper(**kwargs: Any) -> None:
            ctx = kwargs.pop("_click_context")
            raw = {o.name: kwargs.pop(o.name) for o in shared}
            given = frozenset(name for name in [*raw, *kwargs] if _on_command_line(ctx, name))

            def body() -> int:
                opts = Opts({o.name: o.parse(raw[o.name]) for o in shared}, given)
                return fn(opts, **kwargs)

            raise typer.Exit(_run_guarded(body, raw.get("timeout")))

        params = own + extra + [inspect.Parameter("_click_context", inspect.Parameter.KEYWORD_ONLY,
                                                  annotation=typer.Context)]
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        app.command(name, cls=_Command)(wrapper)
        return wrapper

    return deco


def _on_command_line(ctx: Any, name: str) -> bool:
    """Whether option ``name`` was given on the command line (or by an environment variable), not defaulted."""
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


# --------------------------------------------------------------------------- I/O and exit codes
def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (``-``: stdout) via a temporary file, so no half-written report remains."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_file(path, lambda fh: fh.write(text))


def _run_guarded(fn: Callable[[], int], timeout: float | None = None) -> int:
    from .sanity import hold_warnings, release_warnings

    hold_warnings()
    code = EXIT_ERROR
    try:
        code = _run_guarded_body(fn, timeout)
        return code
    finally:
        release_warnings(code in (EXIT_OK, EXIT_GATE))


def _run_guarded_body(fn: Callable[[], int], timeout: float | None) -> int:
    try:
        # SIGINT/SIGTERM and --timeout unwind the run, temporary files removed. numpy's overflow and
        # invalid-value warnings on hostile numbers would add lines to stderr: NaN/Inf are checked where
        # they matter and become one-line errors.
        with guarded_run(timeout), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn()
    except Interrupted as exc:
        sys.stderr.write(f"fimaudit: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:  # a Ctrl-C outside the guarded block
        sys.stderr.write("fimaudit: interrupted by SIGINT; no report was written\n")
        return 130
    except RunTimeout as exc:
        _err(exc.message)
        return EXIT_ERROR
    except FimauditError as exc:
        _err(str(exc))
        return EXIT_ERROR
    except MemoryError:
        _err("out of memory; lower --max-batch or --budget")
        return EXIT_ERROR
    except Exception as exc:  # an internal bug: still one line, traceback on request
        if os.environ.get("FIMAUDIT_DEBUG"):
            raise
        _err(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (set FIMAUDIT_DEBUG=1 for the traceback)")
        return EXIT_ERROR


def _write_json(opts: Opts, result: Any) -> None:
    """``--json FILE``: the result's JSON (fimaudit.results.dumps, the one JSON writer)."""
    if opts.json is not None:
        from .results import dumps

        write_atomic(opts.json, dumps(result))


def _show(opts: Opts, result: Any) -> None:
    """The result's text (the registry's text renderer: what ``fimaudit report`` prints from the JSON), unless -q;
    on stderr when the JSON goes to stdout."""
    if not opts.quiet:
        from .report import render

        out = sys.stderr if opts.json == "-" else sys.stdout
        out.write(render(result, "text"))
        out.flush()


def _deprecated_alias(old_flag: str, old_value: Any, new_flag: str, new_value: Any, default: Any) -> Any:
    """The value of ``new_flag``, or of its deprecated spelling ``old_flag`` (with a warning on stderr)."""
    if old_value is None:
        return new_value
    if new_value != default and new_value != old_value:
        raise ConfigError(f"{old_flag} {old_value} and {new_flag} {new_value} contradict each other: give {new_flag} only")
    sys.stderr.write(f"fimaudit: warning: {old_flag} is deprecated, write {new_flag} (the old spelling works until "
                     "the next release)\n")
    return old_value


def _floats_list(text: str, flag: str) -> tuple[float, ...]:
    vals = parse_floats(text, flag)
    if vals is None or any(v < 0 for v in vals):
        raise ConfigError(f"{flag} '{text}' must be nonnegative numbers separated by commas")
    return vals


# --------------------------------------------------------------------------- commands
# --samples when not given, for scan and certify: fimaudit.scan.DEFAULT_SAMPLES_DATA/_SYNTHETIC, repeated
# here so that the help does not import the scan (tests/test_help.py checks that they agree).
SCAN_SAMPLES_DATA, SCAN_SAMPLES_SYNTHETIC = 100, 16


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
    from .report import renderer_for
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
    result = _with_progress(opts.quiet, "scan", lambda progress: scan(config, progress, execution))
    _write_json(opts, result)
    if report_path is not None:
        write_atomic(report_path, renderer_for(None, report_path)(result))
    _show(opts, result)
    return _gate(result, fail_above, opts.quiet)


def _gate(result: ScanResult, fail_above: float | None, quiet: bool) -> int:
    """``--fail-above X`` is the one-line policy ``fisher.lambda_max.median <= X``."""
    if fail_above is None:
        return EXIT_OK
    from .policy import Policy, evaluate, parse_check
    from .results import AuditResult, Section

    policy = Policy("--fail-above", (parse_check(f"fisher.lambda_max.median <= {fail_above!r}", "--fail-above"),), {})
    wrapped = AuditResult(result.model, result.config, (Section("scan", "ok", None, result.to_dict()),))
    failed = [c for c in evaluate(policy, wrapped) if not c.passed]
    if failed:  # said even with -q: an exit code 1 alone does not tell a CI log why
        c = failed[0]
        value = "not computed" if c.value is None else f"{c.value:.4g}"
        sys.stderr.write(f"fimaudit: gate failed: median lambda_max {value} > --fail-above {fail_above:g}\n")
    return EXIT_GATE if failed else EXIT_OK


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
    from dataclasses import replace

    from .graph import bounds_from_proto
    from .subject import OpenOptions, open_subject

    box = _domain_range(domain) if domain is not None else None
    subject = open_subject(OpenOptions(str(model), device="cpu", **opts.config_fields()))  # the bound and the box
    result = bounds_from_proto(subject.proto, subject.info.input.name, subject.info.output.name, subject.sample_shape,
                               str(model))
    over = None
    if box is not None:
        from .verify import domain_bounds

        z = domain_bounds(subject.model(), box)
        over = {"input_range": list(box), "method": "ibp", "units": "model-input units",
                "logits_lower": [float(v) for v in z.lo.reshape(-1)], "logits_upper": [float(v) for v in z.hi.reshape(-1)]}
    result = replace(result, show_ops=ops, domain_bounds=over)
    _write_json(opts, result)
    _show(opts, result)
    return EXIT_OK


def _domain_range(text: str) -> tuple[float, float]:
    try:
        return parse_range(text)
    except ConfigError:
        raise ConfigError(f"--domain '{text}' must be LO,HI with LO < HI") from None


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
    gradients = _deprecated_alias("--grad", grad, "--gradients", gradients, "auto")
    eps_list = _floats_list(eps, "--eps") if eps is not None else (() if eps_from else (0.03,))
    cfg = opts.config(AttackConfig, model=str(model), attack=attack, norm=norm, eps=eps_list, eps_from=eps_from,
                      taus=_floats_list(taus, "--tau"), steps=steps, gradients=gradients, loss=loss, restarts=restarts,
                      min_distance=min_distance, surrogate=None if surrogate is None else str(surrogate))
    execution = opts.execution()
    result = _with_progress(opts.quiet, "attack", lambda _p: run_attack(cfg, execution=execution))
    _write_json(opts, result)
    _show(opts, result)
    return EXIT_OK


@command("metrics", "data", "out", defaults={"data": ..., "samples": 500}, exclude=("input_range",))
def metrics_cmd(
    opts: Opts,
    model: Path = typer.Argument(..., help="ONNX classifier.", show_default=False),
    no_corruptions: bool = typer.Option(False, "--no-corruptions", help="Skip the natural corruptions."),
) -> int:
    """Performance, uncertainty, weight norms, path norm, sharpness and corruption robustness of one model."""
    from .metrics.suite import MetricsConfig, run_metrics

    cfg = opts.config(MetricsConfig, model=str(model), corruptions=not no_corruptions)
    result = _with_progress(opts.quiet, "metrics", lambda _p: run_metrics(cfg))
    _write_json(opts, result)
    _show(opts, result)
    return EXIT_OK


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
    from .evidence import AttackConfig, run_clever

    cfg = opts.config(AttackConfig, model=str(model))
    result = _with_progress(opts.quiet, "clever", lambda _p: run_clever(cfg, norm, radius, points, seeds,
                                                                         gradients=gradients))
    _write_json(opts, result)
    _show(opts, result)
    return EXIT_OK


# `fimaudit compare` defaults: chosen so that the README's `compare --manifest sample_models/manifest.json` (14
# models, two of them 96x96) finishes within 5 minutes on 2 CPU cores (docs/compare.md has the per-section profile).
COMPARE_SAMPLES, COMPARE_BUDGET, COMPARE_CLEVER_SAMPLES, COMPARE_CLEVER_POINTS, COMPARE_METRIC_SAMPLES = 10, 2000, 3, 20, 100


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
    from .evidence import ModelSpec, compare_models
    from .progress import reporting

    if clever_samples < 1 or clever_points < 10 or metric_samples < 1:
        raise ConfigError("--clever-samples and --metric-samples must be >= 1, --clever-points >= 10")
    per_model = ("data", "samples", "scale", "mean", "std", "seed", "budget")  # set per spec or passed explicitly
    common = {k: v for k, v in opts.config_fields().items() if k not in per_model}
    specs: list[ModelSpec] = [] if manifest is None else _manifest_specs(manifest, opts.input_range)
    for m in models or []:
        if opts.data is None:
            raise ConfigError("--data is needed for models given on the command line")
        specs.append(ModelSpec(str(m), opts.data, opts.scale, opts.mean, opts.std, m.stem, opts.input_range))
    if len(specs) < 2:
        raise ConfigError("compare needs at least two models")
    with reporting("compare", opts.quiet):
        result = compare_models(specs, samples=opts.samples, eps_linf=eps_linf, eps_l2=eps_l2, budget=opts.budget,
                                seed=opts.seed, clever_points=clever_points, clever_samples=clever_samples,
                                with_metrics=not no_metrics, metric_samples=metric_samples, options=common,
                                execution=opts.execution(), with_validity=validity, kl_star=kl_star)
    _write_json(opts, result)
    _show(opts, result)
    if result.get("partial"):
        left = ", ".join(u["model"] for u in result["unfinished"])
        where = "" if opts.json is None else f"; partial report written to {opts.json}"
        _err(f"compare stopped: {result['stopped']['reason']}; {len(result['rows'])} of "
             f"{len(result['rows']) + len(result['unfinished'])} models finished; not finished: {left}{where}")
        return EXIT_ERROR
    return EXIT_OK


def _manifest_specs(manifest: Path, input_range: tuple[float, float]) -> list:
    """The models of a zoo manifest (``{"models": [{"name", "file", "data", "preprocess": {scale, mean, std}}]}``),
    paths relative to the manifest's folder; a malformed entry is one line naming it."""
    from .evidence import ModelSpec

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


def _with_progress(quiet: bool, title: str, run: Callable[[Any], Any]) -> Any:
    """``run(None)`` with progress on stderr (fimaudit.progress: a bar in a terminal, a line every 10 s in a log)."""
    from .progress import reporting

    with reporting(title, quiet):
        return run(None)


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
                         radii=_floats_list(radii, "--radii"), space=space)
    config.validate()
    execution = opts.execution()
    result = _with_progress(opts.quiet, "certify", lambda progress: certify(config, progress, execution))
    _write_json(opts, result)
    _show(opts, result)
    return EXIT_OK


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

    eps_list = _eps_list(eps) if eps is not None else (() if eps_from else (0.03,))
    if branches < 0:
        raise ConfigError("--branches must be >= 0")
    cfg = opts.config(VerifyConfig, model=str(model), norm=norm, eps=eps_list, eps_from=eps_from, method=method,
                      bisect=bisect, branches=branches)
    cfg.validate()
    result = _with_progress(opts.quiet, "verifying", lambda progress: run_verify(cfg, progress, opts.execution()))
    _write_json(opts, result)
    _show(opts, result)
    return EXIT_OK


def _eps_list(text: str) -> tuple[float, ...]:
    """--eps of verify: numbers or fractions, and inf (the whole input box)."""
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok.lower() in ("inf", "infinity"):
            out.append(float("inf"))
            continue
        try:
            out.append(eval_fraction(tok))
        except ValueError:
            raise ConfigError(f"--eps '{text}' must be numbers (or inf) separated by commas") from None
    if not out:
        raise ConfigError("--eps needs at least one number")
    return tuple(out)


AUDIT_FILES = {"audit.json": "json", "audit.html": "html", "audit.md": "markdown", "junit.xml": "junit"}


def _timestamp() -> str:
    """UTC time of the run; SOURCE_DATE_EPOCH (the reproducible-builds convention) fixes it."""
    import datetime as dt

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    except ValueError:
        raise ConfigError(f"SOURCE_DATE_EPOCH '{epoch}' must be whole seconds since 1970") from None
    return when.replace(microsecond=0).isoformat()


def default_audit_folder(model: Path) -> Path:
    """``./fimaudit-audit-<model stem>``: where ``audit`` writes its dossier without ``--out`` (and without ``--json``).

    Refused (one line, before anything runs) when that folder exists and holds anything but an earlier dossier: an
    unrelated folder is never written into silently. An earlier dossier there is replaced, as ``--out`` does.
    """
    folder = Path(f"fimaudit-audit-{model.stem}")
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"no --out given and the default dossier path {folder} is a file; give --out DIR")
        other = sorted(p.name for p in folder.iterdir() if p.name not in AUDIT_FILES)
        if other:
            raise ConfigError(f"no --out given and the default dossier folder {folder}{os.sep} holds other files "
                              f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); give --out DIR")
    return folder


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
    from .audit import AuditConfig, AuditResult, run_audit
    from .policy import apply_to_config, evaluate, load_policy
    from .report import render

    policy = None if policy_path is None else load_policy(policy_path)
    default_out = out is None and opts.json is None
    if default_out:  # no --out and no --json: the dossier goes to a default folder, named on stderr
        out = default_audit_folder(model)
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")
    # input_range None (not given): automatic, [0, 1] or derived from the data when they lie outside it
    fields = {**opts.config_fields(), "model": str(model), "eps_from": eps_from}
    cfg = AuditConfig(**apply_to_config(policy, fields, opts.given))
    cfg.validate()
    execution = opts.execution()
    created = _timestamp()
    result = _with_progress(opts.quiet, "audit", lambda _progress: run_audit(cfg, execution=execution))
    checks = () if policy is None else evaluate(policy, result)
    from .audit_context import policy_file

    context = None if result.context is None else {**result.context, "policy": policy_file(policy_path)}
    result = AuditResult(result.model, result.config, result.sections, checks,
                         None if policy is None else policy.to_dict(), created, context=context)
    if out is not None:
        pages = {name: render(result, fmt) for name, fmt in AUDIT_FILES.items()}  # all, then write
        out.mkdir(exist_ok=True)
        for name, text in pages.items():
            write_atomic(str(out / name), text)
    _write_json(opts, result)
    _show(opts, result)
    if opts.quiet and result.verdict == "fail":  # -q: still one line per failed check, so a red CI log says why
        for c in result.checks:
            if not c.passed:
                value = "not computed" if c.value is None else c.value
                why = f"; {c.reason}" if c.reason else ""
                sys.stderr.write(f"fimaudit: check failed: {c.text} (value {value}{why})\n")
    if default_out:
        sys.stderr.write(f"fimaudit: note: no --out given: the dossier ({', '.join(AUDIT_FILES)}) is in {out}{os.sep}\n")
    return EXIT_OK if result.verdict != "fail" else EXIT_GATE


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
