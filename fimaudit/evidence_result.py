"""Frozen results of ``attack``, ``metrics``, ``clever`` and ``compare``: ``to_dict``/``from_dict``, ``schema_version``.

Each holds its JSON body read-only (``result["results"]`` reads it); the kind decides the renderers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from .result import clean as _clean

EVIDENCE_SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class EvidenceResult:
    body: Mapping[str, Any]
    schema_version: str = EVIDENCE_SCHEMA_VERSION
    KIND: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        missing = [k for k in self.REQUIRED if k not in self.body]
        if missing:
            raise ValueError(f"{self.KIND} result lacks {', '.join(missing)}")
        object.__setattr__(self, "body", MappingProxyType(copy.deepcopy(dict(self.body))))

    @property
    def kind(self) -> str:
        return self.KIND

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)

    def to_dict(self) -> dict:
        return {"schema_version": self.schema_version, "kind": self.KIND, **_clean(copy.deepcopy(dict(self.body)))}

    @classmethod
    def of(cls, body: dict) -> "EvidenceResult":
        """A result from a job's fresh body (no ``kind``/``schema_version`` keys needed)."""
        rest = {k: v for k, v in body.items() if k not in ("kind", "schema_version")}
        return cls(rest)

    @classmethod
    def from_dict(cls, d: dict) -> "EvidenceResult":
        version = str(d.get("schema_version", ""))
        if d.get("kind") != cls.KIND:
            raise ValueError(f"not a {cls.KIND} result (kind {d.get('kind')!r})")
        if version.split(".")[0] != EVIDENCE_SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"unsupported {cls.KIND} schema_version {version!r} (this fimaudit reads {EVIDENCE_SCHEMA_VERSION})")
        return cls({k: v for k, v in d.items() if k not in ("kind", "schema_version")}, version)


class AttackResult(EvidenceResult):
    KIND = "attack"
    REQUIRED = ("model", "config", "clean_accuracy", "results")


class MetricsResult(EvidenceResult):
    KIND = "metrics"
    REQUIRED = ("model", "config", "metrics", "corruptions")


class CleverResult(EvidenceResult):
    KIND = "clever"
    REQUIRED = ("model", "config", "samples", "summary")


class CompareResult(EvidenceResult):
    KIND = "compare"
    REQUIRED = ("rows", "correlations", "target", "config")


class VerifyResult(EvidenceResult):
    """``fimaudit verify`` (fimaudit.verify.run); its own renderers (fimaudit.report.verify), not the evidence tables."""

    KIND = "verify"
    REQUIRED = ("model", "config", "method", "clean_accuracy", "results", "samples")


EVIDENCE_KINDS: dict[str, type[EvidenceResult]] = {c.KIND: c for c in (AttackResult, MetricsResult, CleverResult, CompareResult)}
