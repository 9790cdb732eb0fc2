"""The command-line framework: shared options, the ``command`` decorator, guarded runs, output and exit codes.

fimaudit/cli.py holds the commands themselves (each: options -> config -> subject -> job -> result -> renderer ->
exit code); this module holds what every command shares.

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
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

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

EXIT_OK, EXIT_GATE, EXIT_ERROR = 0, 1, 2


def err(message: str) -> None:
    sys.stderr.write(f"fimaudit: error: {message}\n")
    sys.stderr.flush()


def _usage_error(prefix: str, exc: Exception) -> typer.Exit:
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    err(prefix + " ".join(message.split()))
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
        err(exc.message)
        return EXIT_ERROR
    except FimauditError as exc:
        err(str(exc))
        return EXIT_ERROR
    except MemoryError:
        err("out of memory; lower --max-batch or --budget")
        return EXIT_ERROR
    except Exception as exc:  # an internal bug: still one line, traceback on request
        if os.environ.get("FIMAUDIT_DEBUG"):
            raise
        err(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (set FIMAUDIT_DEBUG=1 for the traceback)")
        return EXIT_ERROR


def run_job(opts: Opts, title: str, job: Callable[[], Any]) -> Any:
    """``job()`` with progress on stderr (fimaudit.progress: a bar in a terminal, a line every 10 s in a log)."""
    from .progress import reporting

    with reporting(title, opts.quiet):
        return job()


def finish(opts: Opts, result: Any, code: int = EXIT_OK) -> int:
    """The end of every command: ``--json FILE`` gets the result's JSON (fimaudit.results.dumps, the one JSON
    writer); unless -q, the text renderer's string (what ``fimaudit report`` prints from that JSON) goes to stdout,
    or to stderr when the JSON goes to stdout. Returns ``code``."""
    from .report import render
    from .results import dumps

    if opts.json is not None:
        write_atomic(opts.json, dumps(result))
    if not opts.quiet:
        out = sys.stderr if opts.json == "-" else sys.stdout
        out.write(render(result, "text"))
        out.flush()
    return code


def deprecated_alias(old_flag: str, old_value: Any, new_flag: str, new_value: Any, default: Any) -> Any:
    """The value of ``new_flag``, or of its deprecated spelling ``old_flag`` (with a warning on stderr)."""
    if old_value is None:
        return new_value
    if new_value != default and new_value != old_value:
        raise ConfigError(f"{old_flag} {old_value} and {new_flag} {new_value} contradict each other: give {new_flag} only")
    sys.stderr.write(f"fimaudit: warning: {old_flag} is deprecated, write {new_flag} (the old spelling works until "
                     "the next release)\n")
    return old_value


