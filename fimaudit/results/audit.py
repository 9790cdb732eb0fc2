"""The audit's result (``kind`` "audit"): its sections (each a command's own JSON result, or a reason), policy checks.

fimaudit/report/audit.schema.json describes the format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .._version import __version__
from .base import SCHEMA_VERSION, check_kind, clean, read_version

STATUSES = ("ok", "unavailable", "error")


@dataclass(frozen=True)
class Section:
    """One kind of evidence: ``data`` is that command's own JSON result, or empty with a reason."""

    name: str
    status: str  # ok | unavailable | error
    reason: str | None
    data: dict
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "reason": self.reason, "seconds": clean(self.seconds),
                "data": clean(self.data)}

    @classmethod
    def from_dict(cls, d: dict) -> "Section":
        if d["status"] not in STATUSES:
            raise ValueError(f"section {d.get('name')}: unknown status {d['status']!r}")
        return cls(str(d["name"]), str(d["status"]), d.get("reason"), dict(d.get("data") or {}),
                   float(d.get("seconds") or 0.0))


@dataclass(frozen=True)
class CheckResult:
    """One policy check: ``key op threshold`` evaluated to ``value``; ``reason`` when it could not be."""

    key: str
    op: str
    threshold: Any
    value: Any
    passed: bool
    reason: str | None = None

    @property
    def text(self) -> str:
        thr = str(self.threshold).lower() if isinstance(self.threshold, bool) else f"{self.threshold:g}"
        return f"{self.key} {self.op} {thr}"

    def to_dict(self) -> dict:
        return clean(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "CheckResult":
        return cls(d["key"], d["op"], d["threshold"], d.get("value"), bool(d["passed"]), d.get("reason"))


@dataclass(frozen=True)
class AuditResult:
    model: dict
    config: dict
    sections: tuple[Section, ...]
    checks: tuple[CheckResult, ...] = ()
    policy: dict | None = None
    created: str | None = None  # passed in by the caller: renderers never read the clock
    fimaudit: str = __version__
    schema_version: str = SCHEMA_VERSION
    kind: str = "audit"
    context: dict | None = None  # fimaudit.audit_context: data, preprocessing, units, policy file, versions

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    @property
    def verdict(self) -> str:
        if not self.checks:
            return "no policy"
        return "pass" if all(c.passed for c in self.checks) else "fail"

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "fimaudit": self.fimaudit,
            "created": self.created,
            "model": clean(self.model),
            "config": clean(self.config),
            "verdict": self.verdict,
            "policy": clean(self.policy),
            "checks": [c.to_dict() for c in self.checks],
            "sections": [s.to_dict() for s in self.sections],
        } | ({} if self.context is None else {"context": clean(self.context)})

    @classmethod
    def from_dict(cls, d: dict) -> "AuditResult":
        check_kind(d, "audit")
        read_version(d, "audit")
        return cls(
            model=d["model"], config=d["config"], sections=tuple(Section.from_dict(s) for s in d["sections"]),
            checks=tuple(CheckResult.from_dict(c) for c in d.get("checks", ())), policy=d.get("policy"),
            created=d.get("created"), fimaudit=str(d.get("fimaudit", "")),
            context=d.get("context"),
        )
