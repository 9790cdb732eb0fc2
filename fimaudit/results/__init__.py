"""Every result a command returns, one class per ``kind``, and the one way they are read and written as JSON.

Kinds: ``scan`` (ScanResult), ``bounds`` (BoundResult), ``attack`` (AttackResult), ``clever`` (CleverResult),
``metrics`` (MetricsResult), ``compare`` (CompareResult), ``certify`` (CertifyResult), ``verify`` (VerifyResult) and
``audit`` (AuditResult, whose sections hold the other kinds' JSON). Jobs build them, renderers (fimaudit.report)
read them; this package imports neither.

Schema versions: every JSON result carries ``"kind"`` and ``"schema_version": "MAJOR.MINOR"``, one number shared by
all kinds (``SCHEMA_VERSION``). MINOR grows when fields are added (old readers ignore them); MAJOR when a field
changes meaning or moves. 2.0 gave every kind its ``kind`` and the shared number; files of 1.x (per-kind numbers:
scan 1.0-1.2, the others 1.0; scan and bounds without ``kind``) are still read, their kind told from their fields.
A result read from a file is held in the current form, so writing it again gives 2.0.

``dumps(result)`` is the one JSON writer (two-space indent, NaN/inf written as null, final newline); ``load(raw)``
reads any kind back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .audit import STATUSES, AuditResult, CheckResult, Section
from .base import SCHEMA_VERSION, Result, clean, dumps
from .bounds import Block, BoundResult, OpBound
from .certify import CertifiedSample, CertifyResult, CertifySummary, RadiusRow
from .evidence import (EVIDENCE_KINDS, AttackResult, CleverResult, CompareResult, EvidenceResult, MetricsResult,
                       VerifyResult)
from .scan import RunInfo, SampleResult, ScanResult, Stats, Summary

LOADERS: dict[str, Callable[[dict], Any]] = {
    "scan": ScanResult.from_dict, "bounds": BoundResult.from_dict, "certify": CertifyResult.from_dict,
    "audit": AuditResult.from_dict, "verify": VerifyResult.from_dict,
    **{k: c.from_dict for k, c in EVIDENCE_KINDS.items()},
}
KINDS = tuple(LOADERS)


def kind_of(raw: Any) -> str:
    """The kind of a saved JSON result; 1.x scan and bounds files name none and are told by their fields."""
    if not isinstance(raw, dict):
        raise ValueError("a result is a JSON object")
    if "kind" in raw:
        kind = raw["kind"]
    elif "blocks" in raw and "fim_upper" in raw:
        kind = "bounds"
    else:
        kind = "scan"
    if kind not in LOADERS:
        raise ValueError(f"unknown result kind {kind!r} (re-renderable: {', '.join(LOADERS)})")
    return kind


def load(raw: Any) -> Any:
    """The result object of a saved JSON result (ValueError, KeyError or TypeError when it is not one)."""
    return LOADERS[kind_of(raw)](raw)


__all__ = ["EVIDENCE_KINDS", "KINDS", "LOADERS", "SCHEMA_VERSION", "STATUSES", "AttackResult", "AuditResult", "Block",
           "BoundResult", "CertifiedSample", "CertifyResult", "CertifySummary", "CheckResult", "CleverResult",
           "CompareResult", "EvidenceResult", "MetricsResult", "OpBound", "RadiusRow", "Result", "RunInfo",
           "SampleResult", "ScanResult", "Section", "Stats", "Summary", "VerifyResult", "clean", "dumps", "kind_of",
           "load"]
