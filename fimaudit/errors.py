"""One exception family; every error carries a one-line message meant for the user."""

from __future__ import annotations


class FimauditError(Exception):
    """Base class: ``str(err)`` is a single line fit for stderr; the CLI exits with 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep user-facing messages on one line whatever the cause text held.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


class ModelLoadError(FimauditError):
    """The model file is missing, corrupt, unsafe or cannot be run."""


class UnsupportedModelError(FimauditError):
    """The model loads but cannot be audited (integer input, non-tensor output, unknown op)."""


class DataError(FimauditError):
    """The data file or synthetic-data options do not fit the model."""


class ConfigError(FimauditError):
    """Options that contradict each other or the model (budget too small, bad shape string)."""


class ModelOutputError(FimauditError):
    """The model produced NaN/Inf or outputs that do not match the declared kind."""


class ResourceError(FimauditError):
    """The input declares more memory or time than the run may use; refused before work starts."""


class OptionError(ConfigError, ValueError):
    """A bad option value given to the Python API (``fimaudit.scan(..., samples=0)``): also a ``ValueError``."""
