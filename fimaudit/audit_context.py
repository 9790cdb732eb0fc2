"""What a reader of an audit needs besides the evidence: data, preprocessing, units, policy file, versions.

``audit_context`` builds the ``context`` dict of an ``AuditResult`` (``"context"`` in audit.json); the
dossier prints it so that the page stands alone. It is a pure function of what it is given, except for
the versions of the installed packages (read once here, never the clock).
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any

EPS_UNITS = "attack units: data x --scale, before --mean/--std"


def versions() -> dict[str, str | None]:
    """fimaudit, onnxruntime, onnx, numpy and Python versions of this process."""
    from ._version import __version__

    out: dict[str, str | None] = {"fimaudit": __version__}
    for name in ("onnxruntime", "onnx", "numpy"):
        try:
            out[name] = str(__import__(name).__version__)
        except Exception:  # an import failure must not cost the audit its context
            out[name] = None
    out["python"] = platform.python_version()
    return out


def policy_file(path: str | Path | None) -> dict | None:
    """{file, sha256} of the policy file's bytes (None without a policy)."""
    if path is None:
        return None
    p = Path(path)
    return {"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def audit_context(cfg: Any, samples: int | None, prep_config: dict | None, scan: dict | None,
                  policy: dict | None = None) -> dict:
    """The context dict: ``cfg`` an AuditConfig, ``samples`` how many were read, ``prep_config`` the loader's
    preprocessing (layout, how, scale/mean/std), ``scan`` the scan section's data when it ran."""
    pre = prep_config or {}
    layout = pre.get("layout") or {}
    grad_used = ((scan or {}).get("run") or {}).get("gradients_used") or {}
    return {
        "data": cfg.data,
        "samples": samples,
        "preprocessing": {
            "scale": float(pre.get("scale", cfg.scale)),
            "mean": [float(v) for v in pre.get("mean", cfg.mean)],
            "std": [float(v) for v in pre.get("std", cfg.std)],
            "how": pre.get("how"),
            "preset": pre.get("preset"),
            "layout": layout.get("name"),
            "layout_evidence": layout.get("evidence"),
            "input_range": [float(v) for v in cfg.input_range],
        },
        "eps_units": f"{EPS_UNITS} ({cfg.norm})",
        "units": {
            "eps": f"{EPS_UNITS}; norm {cfg.norm}",
            "fisher": "per model-input unit (the tensor the model receives, after --scale/--mean/--std)",
            "fim_radius": "model-input units, L2: 1/sqrt(lambda_max)",
            "clever": "attack units (data x --scale), L2",
            "certify": "model-input units, L2",
            "bound": "model-input units, L2",
        },
        "policy": policy,
        "versions": versions(),
        "seed": cfg.seed,
        "gradients": {"requested": cfg.gradients, "scan": grad_used.get("source"),
                      "reason": grad_used.get("reason")},
    }
