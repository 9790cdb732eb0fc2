"""fimaudit: audit ONNX classifiers for input-space Fisher information (local fragility)."""

__version__ = "0.1.0"

from .errors import FimauditError  # noqa: E402
from .result import ScanResult  # noqa: E402
from .scan import ScanConfig  # noqa: E402
from .scan import scan as _scan  # noqa: E402


def scan(model: str, data: str | None = None, **options) -> ScanResult:
    """Scan ``model`` (an ONNX path); ``options`` are the fields of ``ScanConfig``.

    Returns the same ``ScanResult`` the CLI renders. Raises ``FimauditError`` on bad input.
    """
    progress = options.pop("progress", None)
    return _scan(ScanConfig(model=str(model), data=None if data is None else str(data), **options), progress)


__all__ = ["scan", "ScanConfig", "ScanResult", "FimauditError", "__version__"]
