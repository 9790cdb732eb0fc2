"""fimaudit: audit ONNX classifiers for input-space Fisher information (local fragility)."""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import FimauditError

if TYPE_CHECKING:
    from .result import ScanResult
    from .scan import ScanConfig


def scan(model: str, data: str | None = None, **options) -> ScanResult:
    """Scan ``model`` (an ONNX path); ``options`` are the fields of ``ScanConfig`` (the CLI's option names with
    underscores: ``samples``, ``scale``, ``mean``, ``std``, ``budget``, ``gradients``, ``seed``, ...).

    ``scale`` takes a number or a fraction such as ``"1/255"``; ``mean`` and ``std`` one number or one per
    channel. Returns the same ``ScanResult`` the CLI renders. Raises ``FimauditError`` on bad input.
    """
    from .scan import ScanConfig
    from .scan import scan as _scan

    progress = options.pop("progress", None)
    return _scan(ScanConfig(model=str(model), data=None if data is None else str(data), **_api_options(options)),
                 progress)


def _api_options(options: dict) -> dict:
    """Python values as the CLI would parse them: ``scale="1/255"``, ``mean=0.286`` (a number for every channel)."""
    from .choices import eval_fraction
    from .errors import ConfigError

    out = dict(options)
    if isinstance(out.get("scale"), str):
        try:
            out["scale"] = eval_fraction(out["scale"])
        except ValueError:
            raise ConfigError(f"scale '{out['scale']}' must be a number such as 0.00392 or 1/255") from None
    for key in ("mean", "std"):
        value = out.get(key)
        if isinstance(value, (int, float)):
            out[key] = (float(value),)
        elif value is not None and not isinstance(value, str):
            out[key] = tuple(float(v) for v in value)
    for key in ("input_range", "input_shape"):
        if isinstance(out.get(key), list):
            out[key] = tuple(out[key])
    return out


# Loaded on first use (PEP 562), so that `import fimaudit` and `fimaudit --help` do not import onnx,
# onnxruntime or scipy.
_LAZY = {"ScanConfig": "scan", "ScanResult": "result"}


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
