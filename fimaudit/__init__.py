"""fimaudit: audit ONNX classifiers for input-space Fisher information (local fragility)."""

from __future__ import annotations

import os
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import FimauditError

if TYPE_CHECKING:
    from .results import ScanResult
    from .scan import ScanConfig


def scan(model: str | os.PathLike, data: str | os.PathLike | None = None, /, **options: Any) -> ScanResult:
    """Scan ``model`` (an ONNX path) on ``data`` (``.npy``, ``.npz`` or an image folder; None: synthetic inputs).

    Keyword-only options mirror the CLI's (``--max-batch`` is ``max_batch``), with the same types and checks; a bad
    value raises ``fimaudit.errors.OptionError``, a ``ValueError`` (and a ``FimauditError``) that names the option:

    - ``samples`` (int >= 1 or None), ``budget`` (int, queries per sample), ``seed`` (int >= 0)
    - ``scale``: a number or a fraction such as ``"1/255"``; ``mean``, ``std``: a number (every channel), a sequence
      of numbers (one per channel) or a string ``"0.485,0.456,0.406"``; ``preset``: ``"imagenet"``, ``"inception"``,
      ``"unit"`` or ``"none"`` (instead of scale/mean/std)
    - ``input_range``: ``(lo, hi)`` or ``"lo,hi"``; ``input_shape``: ``(C, H, W)`` or ``"3,224,224"``
    - ``method``, ``probes``, ``space``, ``gradients``, ``layout``, ``resize``, ``channels``, ``device``,
      ``output_kind``: the CLI's choices, as strings; ``classes``: a file of class names (image folders)
    - ``dither``, ``smoothing``, ``fd_step``, ``trace_rse``: numbers; ``no_dither``, ``cross_check``, ``bounds``,
      ``lower_bound``: booleans; ``max_batch``, ``threads``, ``trace_budget``, ``subspace_dim``: ints
    - ``progress``: a callable ``(done, total, queries)``

    Returns the same ``ScanResult`` the CLI renders (``result.to_dict()`` is its JSON report). Raises
    ``FimauditError`` on bad input (model, data).
    """
    from .scan import ScanConfig
    from .scan import scan as _scan

    progress = options.pop("progress", None)
    if progress is not None and not callable(progress):
        raise _option_error("scan", "progress must be a callable (done, total, queries)")
    config = _config(ScanConfig, "scan", model, data, options)
    return _scan(config, progress)


def _option_error(fn: str, message: str) -> Exception:
    from .errors import OptionError

    return OptionError(f"{fn}(): {message}")


_INTS = {"samples": 1, "budget": 1, "seed": 0, "max_batch": 1, "threads": 0, "trace_budget": 0, "subspace_dim": 0,
         "certify_n": 1, "clever_samples": 1, "clever_points": 1, "metrics_samples": 1}
_FLOATS = ("dither", "smoothing", "fd_step", "trace_rse", "fail_above")
_BOOLS = ("no_dither", "cross_check", "bounds", "lower_bound")
_PATHS = ("classes", "save_direction")


def _config(cls: type, fn: str, model: Any, data: Any, options: dict) -> Any:
    """``cls`` from the API's keyword options, each checked as the CLI checks it; OptionError names a bad one."""
    from dataclasses import fields

    from .errors import ConfigError
    from .images import DataOptions

    accepted = sorted(f.name for f in fields(cls) if f.name not in ("model", "data", "extra"))
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise _option_error(fn, f"unknown option '{unknown[0]}' (accepted: {', '.join(accepted)})")
    if not isinstance(model, (str, os.PathLike)):
        raise _option_error(fn, f"model must be a path to an ONNX file, not {type(model).__name__}")
    if data is not None and not isinstance(data, (str, os.PathLike)):
        raise _option_error(fn, f"data must be a path (.npy, .npz or an image folder) or None, not {type(data).__name__}")
    try:
        values = _api_options(options, fn)
        config = cls(model=os.fspath(model), data=None if data is None else os.fspath(data), **values)
        config.validate()
        DataOptions.of(config).validate()
    except ConfigError as exc:
        if isinstance(exc, ValueError):
            raise
        raise _option_error(fn, str(exc)) from None  # the CLI's message, naming the option by its flag
    return config


def _api_options(options: dict, fn: str = "scan") -> dict:
    """Python values as the CLI would parse them: ``scale="1/255"``, ``mean=0.286`` (a number for every channel)."""
    from .choices import eval_fraction, parse_floats, parse_input_shape, parse_range
    from .errors import ConfigError

    def bad(message: str) -> Exception:
        return _option_error(fn, message)

    out = dict(options)
    for key, low in _INTS.items():
        if key in out and out[key] is not None:
            v = out[key]
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(f"{key} must be an integer, not {v!r}")
            if v < low:
                raise bad(f"{key} must be >= {low}, not {v}")
    for key in _FLOATS:
        if key in out and out[key] is not None:
            v = out[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
                raise bad(f"{key} must be a finite number, not {v!r}")
            out[key] = float(v)
    for key in _BOOLS:
        if key in out and not isinstance(out[key], bool):
            raise bad(f"{key} must be True or False, not {out[key]!r}")
    for key in _PATHS:
        if out.get(key) is not None:
            if not isinstance(out[key], (str, os.PathLike)):
                raise bad(f"{key} must be a path, not {out[key]!r}")
            out[key] = os.fspath(out[key])
    if "scale" in out:
        v = out["scale"]
        try:
            if isinstance(v, bool):
                raise ValueError
            value = eval_fraction(v) if isinstance(v, str) else float(v)
        except (TypeError, ValueError):
            raise bad(f"scale {v!r} must be a number such as 0.00392 or a fraction such as '1/255'") from None
        if value == 0 or value != value or abs(value) == float("inf"):
            raise bad(f"scale must be a nonzero finite number, not {v!r}")
        out["scale"] = value
    for key in ("mean", "std"):
        if key not in out:
            continue
        v = out[key]
        try:
            if isinstance(v, str):
                vals = parse_floats(v, key)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                vals = (float(v),)
            else:
                vals = tuple(float(t) for t in v if not isinstance(t, bool))
                if len(vals) != len(v):
                    raise ValueError
        except (TypeError, ValueError, ConfigError):
            raise bad(f"{key} must be a number, a sequence of numbers (one per channel) or a string such as "
                      f"'0.485,0.456,0.406', not {v!r}") from None
        if not vals or any(t != t or abs(t) == float("inf") for t in vals):
            raise bad(f"{key} needs finite numbers, not {v!r}")
        if key == "std" and any(t <= 0 for t in vals):
            raise bad(f"std must be positive, not {v!r}")
        out[key] = vals
    if out.get("input_range") is not None:
        v = out["input_range"]
        try:
            rng = parse_range(v) if isinstance(v, str) else tuple(float(t) for t in v)
        except (TypeError, ValueError, ConfigError):
            rng = ()
        if len(rng) != 2 or not rng[0] < rng[1]:
            raise bad(f"input_range must be (lo, hi) with lo < hi, or 'lo,hi', not {v!r}")
        out["input_range"] = rng
    if out.get("input_shape") is not None:
        v = out["input_shape"]
        try:
            shape = parse_input_shape(v) if isinstance(v, str) else tuple(int(t) for t in v)
        except (TypeError, ValueError, FimauditError):
            shape = ()
        if not shape or any(t <= 0 for t in shape):
            raise bad(f"input_shape must be positive integers such as (3, 224, 224) or '3,224,224', not {v!r}")
        out["input_shape"] = shape
    return out


# Loaded on first use (PEP 562), so that `import fimaudit` and `fimaudit --help` do not import onnx,
# onnxruntime or scipy.
_LAZY = {"ScanConfig": "scan", "ScanResult": "results"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``fimaudit.scan`` stays the function above when the submodule ``fimaudit.scan`` is first imported.

    The import system sets a package attribute to each submodule it loads; loaded lazily (by the CLI or the
    function itself), the submodule would otherwise replace the function. ``import fimaudit.scan as m``
    therefore gives the function, as it always did; ``sys.modules["fimaudit.scan"]`` is the module.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "scan" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = ["scan", "ScanConfig", "ScanResult", "FimauditError", "__version__"]
