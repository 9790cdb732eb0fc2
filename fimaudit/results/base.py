"""What every result kind shares: the schema version, JSON-safe values, the version check and the one JSON writer."""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np

# One version for every kind (see the package docstring). 2.0: every result names its `kind` and all kinds share
# this number; 1.x were the per-kind versions before that (scan 1.0-1.2, the others 1.0), still read.
SCHEMA_VERSION = "2.0"
READS = ("1", "2")  # majors this fimaudit reads


class Result(Protocol):
    """What renderers and ``dumps`` rely on: a ``kind`` and a JSON body."""

    @property
    def kind(self) -> str: ...

    def to_dict(self) -> dict: ...


def clean(value: Any) -> Any:
    """JSON-safe plain values: numpy scalars to Python, tuples to lists, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [clean(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if np.isfinite(f) else None
    return value


def read_version(d: dict, kind: str) -> str:
    """The ``schema_version`` of saved result ``d`` of ``kind``, checked: ValueError naming it when unreadable."""
    version = str(d.get("schema_version", ""))
    if version.split(".")[0] not in READS:
        raise ValueError(f"unsupported {kind} report schema_version {version!r} (this fimaudit reads 1.x and "
                         f"{SCHEMA_VERSION})")
    return version


def check_kind(d: dict, kind: str) -> None:
    """ValueError unless saved result ``d`` says it is ``kind`` (scan and bounds files of schema 1.x name none)."""
    if d.get("kind", kind if kind in ("scan", "bounds") else None) != kind:
        raise ValueError(f"not a {kind} result (kind {d.get('kind')!r})")


def dumps(result: Result | dict) -> str:
    """The one way a result is written as JSON: two-space indent, NaN/inf never (they are None), a final newline."""
    body = result if isinstance(result, dict) else result.to_dict()
    return json.dumps(body, indent=2, allow_nan=False) + "\n"
