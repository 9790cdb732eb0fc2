"""fimaudit: audit ONNX classifiers for input-space Fisher information (local fragility)."""

from ._version import __version__
from .errors import FimauditError
from .result import ScanResult
from .scan import ScanConfig
from .scan import scan as _scan


def scan(model: str, data: str | None = None, **options) -> ScanResult:
    """Scan ``model`` (an ONNX path); ``options`` are the fields of ``ScanConfig``.

    Returns the same ``ScanResult`` the CLI renders. Raises ``FimauditError`` on bad input.
    """
    progress = options.pop("progress", None)
    return _scan(ScanConfig(model=str(model), data=None if data is None else str(data), **options), progress)


__all__ = ["scan", "ScanConfig", "ScanResult", "FimauditError", "__version__"]
