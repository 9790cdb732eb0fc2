"""The audit command's job: the policy in (its ``[audit]`` table under the command line's options, its checks
decided on the result), the dossier out (audit.json, audit.html, audit.md, junit.xml), the exit lines.

``plan_audit`` checks everything before anything runs; ``audit_job`` runs ``fimaudit.audit.run_audit`` on the plan's
config and evaluates the policy; ``write_dossier`` renders every page first, then writes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import AuditConfig, run_audit
from .errors import ConfigError
from .results import AuditResult

AUDIT_FILES = {"audit.json": "json", "audit.html": "html", "audit.md": "markdown", "junit.xml": "junit"}


def timestamp() -> str:
    """UTC time of the run; SOURCE_DATE_EPOCH (the reproducible-builds convention) fixes it."""
    import datetime as dt

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    except ValueError:
        raise ConfigError(f"SOURCE_DATE_EPOCH '{epoch}' must be whole seconds since 1970") from None
    return when.replace(microsecond=0).isoformat()


def default_audit_folder(model: Path) -> Path:
    """``./fimaudit-audit-<model stem>``: where ``audit`` writes its dossier without ``--out`` (and without ``--json``).

    Refused (one line, before anything runs) when that folder exists and holds anything but an earlier dossier: an
    unrelated folder is never written into silently. An earlier dossier there is replaced, as ``--out`` does.
    """
    folder = Path(f"fimaudit-audit-{model.stem}")
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"no --out given and the default dossier path {folder} is a file; give --out DIR")
        other = sorted(p.name for p in folder.iterdir() if p.name not in AUDIT_FILES)
        if other:
            raise ConfigError(f"no --out given and the default dossier folder {folder}{os.sep} holds other files "
                              f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); give --out DIR")
    return folder


@dataclass(frozen=True)
class AuditPlan:
    """``fimaudit audit`` before it runs: the config (policy's ``[audit]`` applied under the command line), the
    policy, and where the dossier goes (``default_out``: no --out and no --json, so ./fimaudit-audit-MODEL)."""

    config: AuditConfig
    policy: Any = None
    policy_path: Path | None = None
    out: Path | None = None
    default_out: bool = False


def plan_audit(fields: dict, policy_path: Path | None, out: Path | None, json_path: str | None,
               given: frozenset = frozenset()) -> AuditPlan:
    """Check everything an audit needs before it runs (policy, output folder, config): bad input fails here."""
    from .policy import apply_to_config, load_policy

    policy = None if policy_path is None else load_policy(policy_path)
    default_out = out is None and json_path is None
    if default_out:
        out = default_audit_folder(Path(fields["model"]))
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")
    cfg = AuditConfig(**apply_to_config(policy, fields, given))
    cfg.validate()
    return AuditPlan(cfg, policy, policy_path, out, default_out)


def audit_job(plan: AuditPlan, execution=None) -> AuditResult:
    """Run the audit of ``plan`` and decide its policy's checks; the result carries its creation time and context."""
    from .audit_context import policy_file
    from .policy import evaluate

    created = timestamp()
    result = run_audit(plan.config, execution=execution)
    checks = () if plan.policy is None else evaluate(plan.policy, result)
    context = None if result.context is None else {**result.context, "policy": policy_file(plan.policy_path)}
    return AuditResult(result.model, result.config, result.sections, checks,
                       None if plan.policy is None else plan.policy.to_dict(), created, context=context)


def write_dossier(result: AuditResult, out: Path, write: Callable[[str, str], None]) -> None:
    """audit.json, audit.html, audit.md and junit.xml in ``out``: every page rendered first, then written."""
    from .report import render

    pages = {name: render(result, fmt) for name, fmt in AUDIT_FILES.items()}
    out.mkdir(exist_ok=True)
    for name, text in pages.items():
        write(str(out / name), text)


def failed_check_lines(result: AuditResult) -> list[str]:
    """One stderr line per failed check (``-q`` still says why a CI log is red)."""
    return [f"fimaudit: check failed: {c.text} (value {'not computed' if c.value is None else c.value}"
            f"{f'; {c.reason}' if c.reason else ''})" for c in result.checks if not c.passed]
