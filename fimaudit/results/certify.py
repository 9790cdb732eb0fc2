"""The result of ``certify`` (``kind`` "certify"): each sample's certificate, certified accuracy per radius.

Randomized smoothing's certificates (fimaudit.certify computes them); ``metric`` reads a policy value by name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError
from .base import SCHEMA_VERSION, check_kind, clean, read_version
from .scan import Stats

_RADIUS_KEY = re.compile(r"(certified_accuracy|certified)\[r=([^\]]+)\]")


@dataclass(frozen=True)
class CertifiedSample:
    """One sample's certificate. ``prediction`` and ``radius`` are None when CERTIFY abstains."""

    index: int
    label: int | None
    base_prediction: int  # the base classifier at the clean point
    selected: int  # the smoothed classifier's candidate class from the n0 selection draws
    prediction: int | None
    abstain: bool
    n_a: int  # estimation draws that landed on the selected class
    p_a_lower: float
    radius: float | None
    queries: int

    @property
    def correct(self) -> bool | None:
        """Smoothed prediction equals the label (an abstention is never correct)."""
        if self.label is None:
            return None
        return (not self.abstain) and self.prediction == self.label

    def to_dict(self) -> dict:
        return clean(asdict(self) | {"correct": self.correct})

    @classmethod
    def from_dict(cls, d: dict) -> "CertifiedSample":
        return cls(
            index=int(d["index"]),
            label=None if d.get("label") is None else int(d["label"]),
            base_prediction=int(d["base_prediction"]),
            selected=int(d["selected"]),
            prediction=None if d.get("prediction") is None else int(d["prediction"]),
            abstain=bool(d["abstain"]),
            n_a=int(d["n_a"]),
            p_a_lower=float(d["p_a_lower"]),
            radius=None if d.get("radius") is None else float(d["radius"]),
            queries=int(d["queries"]),
        )


@dataclass(frozen=True)
class RadiusRow:
    """Certified accuracy at one radius: share of samples certified correct with radius ≥ r."""

    radius: float
    accuracy: float | None  # None without labels
    certified: float  # share certified (any class) with radius >= r

    def to_dict(self) -> dict:
        return clean(asdict(self))


def certified_rows(samples: Sequence[CertifiedSample], radii: Sequence[float]) -> tuple[RadiusRow, ...]:
    """Cohen et al.'s certified accuracy (and the label-free certified share) at each radius."""
    n = len(samples)
    labelled = n > 0 and all(s.label is not None for s in samples)
    rows = []
    for r in radii:
        ok = [s for s in samples if not s.abstain and s.radius is not None and s.radius >= r]
        acc = sum(1 for s in ok if s.prediction == s.label) / n if labelled else None
        rows.append(RadiusRow(float(r), acc, len(ok) / n if n else 0.0))
    return tuple(rows)


@dataclass(frozen=True)
class CertifySummary:
    certified_accuracy: tuple[RadiusRow, ...]
    radius: Stats  # over the samples that were certified
    abstain_rate: float
    clean_accuracy: float | None  # base classifier at the clean points
    smoothed_accuracy: float | None  # smoothed prediction right (abstentions count as wrong)
    queries_total: int
    seconds: float
    runtime_fraction: float | None

    def to_dict(self) -> dict:
        return {
            "certified_accuracy": [r.to_dict() for r in self.certified_accuracy],
            "radius": self.radius.to_dict(),
            "abstain_rate": clean(self.abstain_rate),
            "clean_accuracy": clean(self.clean_accuracy),
            "smoothed_accuracy": clean(self.smoothed_accuracy),
            "queries_total": self.queries_total,
        }

    def timing_dict(self) -> dict:
        """Wall-clock fields, kept apart from the results so that equal seeds give equal results."""
        return {"seconds": clean(self.seconds), "runtime_fraction": clean(self.runtime_fraction)}

    @classmethod
    def from_dict(cls, d: dict) -> "CertifySummary":
        return cls(
            certified_accuracy=tuple(
                RadiusRow(float(r["radius"]), r.get("accuracy"), float(r["certified"])) for r in d["certified_accuracy"]
            ),
            radius=Stats.from_dict(d["radius"]),
            abstain_rate=float(d["abstain_rate"]),
            clean_accuracy=d.get("clean_accuracy"),
            smoothed_accuracy=d.get("smoothed_accuracy"),
            queries_total=int(d["queries_total"]),
            seconds=float(d.get("seconds") or 0.0),
            runtime_fraction=d.get("runtime_fraction"),
        )


@dataclass(frozen=True)
class CertifyResult:
    """Everything ``certify`` learnt. ``execution`` says how it ran (workers, providers), not what it found;
    it is written under ``timing`` with the wall-clock fields."""

    model: dict
    runtime: dict
    config: dict
    units: dict
    samples: tuple[CertifiedSample, ...]
    summary: CertifySummary
    notes: tuple[str, ...] = field(default_factory=tuple)
    execution: dict = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION
    kind: str = "certify"

    def certified_accuracy(self, radius: float) -> float | None:
        """Certified accuracy at any radius (not only the listed ones); None without labels."""
        return certified_rows(self.samples, [radius])[0].accuracy

    def metrics(self) -> dict[str, float | None]:
        """Flat named values for an audit policy (``certify.<name> >= X``), one per listed radius."""
        s = self.summary
        out: dict[str, float | None] = {}
        for row in s.certified_accuracy:
            out[f"certified_accuracy[r={row.radius:g}]"] = row.accuracy
            out[f"certified[r={row.radius:g}]"] = row.certified
        out.update({"abstain_rate": s.abstain_rate, "clean_accuracy": s.clean_accuracy,
                    "smoothed_accuracy": s.smoothed_accuracy, "radius.median": s.radius.median,
                    "radius.mean": s.radius.mean})
        return out

    def metric(self, name: str) -> float | None:
        """One policy value by name; ``certified_accuracy[r=R]`` and ``certified[r=R]`` take any radius R."""
        m = _RADIUS_KEY.fullmatch(name.strip())
        if m:
            try:
                radius = float(m.group(2))
            except ValueError:
                radius = -1.0
            if not (np.isfinite(radius) and radius >= 0):
                raise ConfigError(f"certify.{name}: the radius must be a nonnegative number")
            row = certified_rows(self.samples, [radius])[0]
            return row.accuracy if m.group(1) == "certified_accuracy" else row.certified
        values = self.metrics()
        if name not in values:
            raise ConfigError(f"certify has no value '{name}' (it has certified_accuracy[r=R], certified[r=R], "
                              f"{', '.join(k for k in values if '[' not in k)})")
        return values[name]

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "schema_version": self.schema_version,
            "model": clean(self.model),
            "runtime": clean(self.runtime),
            "config": clean(self.config),
            "units": clean(self.units),
            "samples": [s.to_dict() for s in self.samples],
            "summary": self.summary.to_dict(),
            "notes": list(self.notes),
            # How it ran (workers, per-worker providers and seconds) varies between equal runs: it goes with timing.
            "timing": self.summary.timing_dict() | {"execution": clean(self.execution)},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CertifyResult":
        check_kind(d, "certify")
        read_version(d, "certify")
        return cls(
            model=d["model"],
            runtime=d["runtime"],
            config=d["config"],
            units=d.get("units", {}),
            samples=tuple(CertifiedSample.from_dict(s) for s in d["samples"]),
            summary=CertifySummary.from_dict({**d["summary"], **(d.get("timing") or {})}),
            notes=tuple(d.get("notes", ())),
            execution=(d.get("timing") or {}).get("execution", {}),
        )
