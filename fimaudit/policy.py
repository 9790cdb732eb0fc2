"""Audit policies: a TOML file of checks ``key op value`` evaluated against an ``AuditResult``.

Format (see examples/policy.toml)::

    [audit]                       # optional: what to compute (defaults in AuditConfig)
    eps = [0.01, 0.03]
    [policy]
    name = "vendor intake"
    checks = [
      "fisher.lambda_max.median <= 50",
      "attack.worst.linf[0.03].robust_accuracy >= 0.4",   # the per-sample worst case over every attack
      "bound.finite = true",
    ]

A check is ``KEY OP VALUE`` with spaces around OP (``<=``, ``>=``, ``<``, ``>``, ``=``); VALUE is a
number or true/false. Keys are matched by the resolvers in ``KEYS``; an unknown key, operator
or value is an invalid policy (exit 2, the message names the key). A known key whose evidence
could not be computed fails its check with the reason.

Precedence (``PRECEDENCE``): an option given on the command line wins over the [audit] table; an [audit]
value wins over the command line's default. ``apply_to_config`` records which values came from where.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import AuditConfig
from .results import AuditResult, CheckResult
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, ">": lambda a, b: a > b,
    "=": lambda a, b: a == b, "==": lambda a, b: a == b,
}
_CHECK_RE = re.compile(r"^\s*(?P<key>\S+)\s+(?P<op><=|>=|==|=|<|>)\s+(?P<value>\S+)\s*$")
_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

# [audit] keys a policy may set, with their types.
AUDIT_KEYS: dict[str, type] = {
    "samples": int, "budget": int, "seed": int, "eps": list, "norm": str, "attacks": list, "gradients": str, "grad": str, "eps_from": str, "taus": list,
    "whitebox": bool, "clever_samples": int, "clever_points": int, "clever_radius": float, "metrics_samples": int, "corruptions": bool,
    "sections": list, "certify_sigma": float, "certify_n": int, "certify_radii": list, "local_bound": float,
    "verify": bool,
}


class Missing(Exception):
    """The evidence a key names is not in this audit (section unavailable); the message says why."""


@dataclass(frozen=True)
class Check:
    key: str
    op: str
    value: float | bool

    @property
    def text(self) -> str:
        return f"{self.key} {self.op} {str(self.value).lower() if isinstance(self.value, bool) else f'{self.value:g}'}"


@dataclass(frozen=True)
class Policy:
    name: str
    checks: tuple[Check, ...]
    audit: dict  # overrides for AuditConfig
    source: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "checks": [c.text for c in self.checks], "audit": self.audit}

    def eps_needed(self) -> tuple[float, ...]:
        """Radii named by attack.* keys: the audit runs them even if [audit] eps omits them."""
        out = []
        for c in self.checks:
            m = re.match(r"^attack\.\w+\.\w+\[" + _NUM + r"\]", c.key)
            if m:
                out.append(float(m.group(1)))
            m = re.match(r"^verify\.certified_accuracy\[\w+=" + _NUM + r"\]", c.key)
            if m:
                out.append(float(m.group(1)))
        return tuple(out)


# --------------------------------------------------------------------------- key resolvers
def _section(result: AuditResult, name: str) -> dict:
    sec = result.section(name)
    if sec is None:
        raise Missing(f"the audit has no {name} section")
    if sec.status != "ok":
        raise Missing(f"{name} section {sec.status}: {sec.reason}")
    return sec.data


def _stat(section: str, path: tuple[str, ...]) -> Callable[[AuditResult, re.Match], Any]:
    def get(result: AuditResult, m: re.Match) -> Any:
        d: Any = _section(result, section)
        for p in path + tuple(g for g in m.groups() if g is not None):
            d = d[p]
        return d

    return get


def _piecewise(result: AuditResult) -> dict | None:
    """The piecewise-constant record of the audited model (fimaudit.piecewise), from the model or the scan."""
    pw = (result.model or {}).get("piecewise")
    if pw:
        return pw
    sec = result.section("scan")
    return sec.data.get("piecewise") if sec is not None and sec.status == "ok" else None


def _pointwise_only(result: AuditResult) -> None:
    """The pointwise F is not applicable to a piecewise-constant model (0 almost everywhere)."""
    pw = _piecewise(result)
    if pw and pw.get("complete", True):
        ops = ", ".join(f"{k} x{v}" for k, v in (pw.get("ops") or {}).items())
        raise Missing(f"not applicable: piecewise-constant model (ops {ops}): the pointwise Fisher is 0 almost "
                      "everywhere; check fisher_smoothed.* or fisher_surrogate.* instead")


def _fisher(result: AuditResult, m: re.Match) -> Any:
    """fisher.*: the pointwise F (refused for a piecewise-constant model)."""
    _pointwise_only(result)
    return _section(result, "scan")["summary"][m.group(1)][m.group(2)]


def _fisher_other(result: AuditResult, m: re.Match) -> Any:
    """fisher_smoothed.* (summary.smoothed, scan --smoothing) and fisher_surrogate.* (summary.surrogate)."""
    which, stat = m.group(1), m.group(2)
    summary = _section(result, "scan")["summary"]
    if which == "smoothed":
        data = summary.get("smoothed")
        if not data:
            raise Missing("the scan has no smoothed Fisher (run it with --smoothing SIGMA)")
    else:
        data = summary.get("surrogate")
        if not data:
            raise Missing("the scan has no float surrogate (only INT8-quantized piecewise-constant models get one)")
        if not data.get("available", True):
            raise Missing(str(data.get("reason")))
    return data["lambda_max"][stat]


def _local_upper(result: AuditResult, m: re.Match) -> Any:
    """fisher.local_upper.*: the scan's certified local upper bounds on lambda_max(F) (scan --local-bound)."""
    _pointwise_only(result)
    loc = _section(result, "scan")["summary"].get("local_upper")
    if not loc:
        raise Missing("the scan has no local upper bound (set local_bound in [audit], or scan --local-bound EPS)")
    if not loc.get("certified"):
        raise Missing(f"no local upper bound could be certified: {loc.get('reason')}")
    return loc["fisher_upper"][m.group(1)]


def _attack_value(result: AuditResult, m: re.Match) -> Any:
    attack, norm, eps, what, tau = m.group(1), m.group(2), float(m.group(3)), m.group(4), m.group(5)
    data = _section(result, "attacks")
    if attack == "worst":  # the per-sample worst case over the audit's attacks (audit.worst_case)
        table = (data.get("worst_case") or {}).get("robust_accuracy") or {}
        if what == "robust_accuracy" and data.get("norm") == norm:
            for k, v in table.items():
                if k != "per-sample" and math.isclose(float(k), eps, rel_tol=1e-9, abs_tol=1e-12):
                    return v
        if what == "robust_ratio" and data.get("norm") == norm:
            for k, per_tau in ((data.get("worst_case") or {}).get("robust_ratio") or {}).items():
                if k != "per-sample" and math.isclose(float(k), eps, rel_tol=1e-9, abs_tol=1e-12):
                    return _tau(per_tau, tau)
        raise Missing(f"no worst case over the attacks at {norm} eps {eps:g} in this audit")
    for run in data["runs"]:
        if run["config"]["attack"] == attack and run["config"]["norm"] == norm:
            for r in run["results"]:
                if math.isclose(r["eps"], eps, rel_tol=1e-9, abs_tol=1e-12):
                    return r["robust_accuracy"] if what == "robust_accuracy" else _tau(r["robust_ratio"], tau)
    raise Missing(f"no {attack} {norm} attack at eps {eps:g} in this audit")


def _per_sample_value(result: AuditResult, m: re.Match) -> Any:
    attack, norm, what, tau = m.group(1), m.group(2), m.group(3), m.group(4)
    data = _section(result, "attacks")
    for run in data["runs"]:
        ps = run.get("per_sample_radius")
        if run["config"]["attack"] == attack and run["config"]["norm"] == norm and ps:
            return ps["robust_accuracy"] if what == "robust_accuracy" else _tau(ps["robust_ratio"], tau)
    raise Missing(f"no {attack} {norm} attack at per-sample radii in this audit (audit --eps-from KEY)")


def _tau(table: dict, tau: str | None) -> float:
    if tau is None:
        raise Missing("robust_ratio needs a tolerance: robust_ratio[tau=0.1]")
    for k, v in table.items():
        if math.isclose(float(k), float(tau)):
            return v
    raise Missing(f"robust ratio at tau {tau} was not computed (the audit's taus: {', '.join(table)})")


def _worst_robust_ratio(result: AuditResult, m: re.Match) -> float:
    """robust_ratio[tau=T]: the per-sample worst case over the audit's attacks (audit.worst_case: a sample counts
    only if it withstood every attack at that eps), then the smallest over the eps. Audits saved before the
    per-sample probability changes were recorded fall back to the smallest ratio of any one attack run."""
    data = _section(result, "attacks")
    table = (data.get("worst_case") or {}).get("robust_ratio")
    if table:
        vals = [_tau(per_tau, m.group(1)) for per_tau in table.values()]
    else:
        vals = [_tau(r["robust_ratio"], m.group(1)) for run in data["runs"]
                for r in run["results"] + ([run["per_sample_radius"]] if run.get("per_sample_radius") else [])]
    if not vals:
        raise Missing("no attack results")
    return min(vals)


def _bound_finite(result: AuditResult, m: re.Match) -> bool:
    return _section(result, "bounds").get("fim_upper") is not None


def _corruption(result: AuditResult, m: re.Match) -> float:
    data = _section(result, "metrics")
    met = data["metrics"]
    key = f"corruption_{m.group(1)}"
    if data.get("corruptions_skipped"):
        raise Missing(data["corruptions_skipped"])
    if met.get(key) is None:
        raise Missing("corruptions were not computed (corruptions = false, or images outside [0, 1] after --scale)")
    return met[key]


def _certified(result: AuditResult, m: re.Match) -> float:
    data = _section(result, "certify")
    r = float(m.group(1))
    for row in data["summary"]["certified_accuracy"]:
        if math.isclose(float(row["radius"]), r, abs_tol=1e-12):
            if row.get("accuracy") is None:
                raise Missing("certified accuracy needs labels")
            return row["accuracy"]
    raise Missing(f"certified accuracy at radius {r:g} was not computed (add it to [audit] certify_radii)")


def _verified(result: AuditResult, m: re.Match) -> float:
    """verify.certified_accuracy[NORM=EPS]: the audit's verify section (bound propagation) at that eps."""
    data = _section(result, "verify")
    norm, eps = m.group(1), float(m.group(2))
    if data["set"]["norm"] != norm:
        raise Missing(f"the audit verified {data['set']['norm']} balls, not {norm} (set [audit] norm)")
    for row in data["results"]:
        if row["eps"] != "inf" and math.isclose(float(row["eps"]), eps, rel_tol=1e-9, abs_tol=1e-12):
            return row["certified_accuracy"]
    raise Missing(f"verified accuracy at {norm} eps {eps:g} was not computed (add it to [audit] eps)")


# (pattern, resolver, kind): kind "number" or "bool". Later sections add theirs here (e.g. certify.*).
KEYS: list[tuple[re.Pattern, Callable[[AuditResult, re.Match], Any], str]] = [
    (re.compile(r"^fisher\.(lambda_max|trace|lower_bound)\.(mean|median|p90|max)$"), _fisher, "number"),
    (re.compile(r"^fisher\.local_upper\.(mean|median|p90|max)$"), _local_upper, "number"),
    (re.compile(r"^fisher_(smoothed|surrogate)\.lambda_max\.(mean|median|p90|max)$"), _fisher_other, "number"),
    (re.compile(r"^clean\.accuracy$"), lambda r, m: _section(r, "scan")["summary"]["accuracy"], "number"),
    (re.compile(r"^bound\.finite$"), _bound_finite, "bool"),
    (re.compile(r"^preprocessing\.sane$"), lambda r, m: _section(r, "preprocessing")["sane"], "bool"),
    (re.compile(r"^bound\.(fim_upper|lipschitz)$"), _stat("bounds", ()), "number"),
    (re.compile(r"^attack\.(\w+)\.(linf|l2)\[" + _NUM + r"\]\.(robust_accuracy|robust_ratio)(?:\[tau=" + _NUM + r"\])?$"),
     _attack_value, "number"),
    (re.compile(r"^attack\.(\w+)\.(linf|l2)\[per-sample\]\.(robust_accuracy|robust_ratio)(?:\[tau=" + _NUM + r"\])?$"),
     _per_sample_value, "number"),
    (re.compile(r"^robust_ratio\[tau=" + _NUM + r"\]$"), _worst_robust_ratio, "number"),
    (re.compile(r"^corruptions\.mean_(relative_accuracy|accuracy_gap|relative_confidence|uncertainty_shift)$"),
     _corruption, "number"),
    (re.compile(r"^clever\.(median_score|fit_ok_share)$"), _stat("clever", ("summary",)), "number"),
    (re.compile(r"^validity\.spearman$"), _stat("validity", ("spearman",)), "number"),
    (re.compile(r"^certify\.certified_accuracy\[r=" + _NUM + r"\]$"), _certified, "number"),
    (re.compile(r"^verify\.certified_accuracy\[(linf|l2)=" + _NUM + r"\]$"), _verified, "number"),
]


def _resolver(key: str) -> tuple[Callable[[AuditResult, re.Match], Any], re.Match, str] | None:
    for pattern, fn, kind in KEYS:
        m = pattern.match(key)
        if m:
            return fn, m, kind
    return None


# --------------------------------------------------------------------------- parsing
def parse_check(text: str, where: str = "policy") -> Check:
    if not isinstance(text, str):
        raise ConfigError(f"{where}: a check must be a string such as 'clean.accuracy >= 0.9', not {text!r}")
    m = _CHECK_RE.match(text)
    if not m:
        raise ConfigError(f"{where}: check '{text}' must be 'KEY OP VALUE' with spaces around OP (<=, >=, <, >, =)")
    key, op, raw = m.group("key"), m.group("op"), m.group("value")
    found = _resolver(key)
    if found is None:
        raise ConfigError(f"{where}: unknown key '{key}' in check '{text}' (see examples/policy.toml for the keys)")
    kind = found[2]
    if kind == "bool":
        if raw.lower() not in ("true", "false") or op not in ("=", "=="):
            raise ConfigError(f"{where}: key '{key}' takes '= true' or '= false', not '{op} {raw}'")
        return Check(key, "=", raw.lower() == "true")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{where}: key '{key}' needs a number, not '{raw}'") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: key '{key}' needs a finite number, not '{raw}'")
    return Check(key, op, value)


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"policy not found: {p}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read policy {p}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy {p.name} is not valid TOML: {exc}") from None
    return policy_from_dict(raw, p.name)


def policy_from_dict(raw: dict, source: str = "") -> Policy:
    unknown = [k for k in raw if k not in ("audit", "policy")]
    if unknown:
        raise ConfigError(f"policy {source}: unknown table '{unknown[0]}' (allowed: [audit], [policy])")
    pol = raw.get("policy", {})
    if not isinstance(pol, dict):
        raise ConfigError(f"policy {source}: [policy] must be a table")
    extra = [k for k in pol if k not in ("name", "checks")]
    if extra:
        raise ConfigError(f"policy {source}: unknown key 'policy.{extra[0]}' (allowed: name, checks)")
    checks_raw = pol.get("checks", [])
    if not isinstance(checks_raw, list) or not checks_raw:
        raise ConfigError(f"policy {source}: 'policy.checks' must be a non-empty list of strings")
    checks = tuple(parse_check(c, f"policy {source}") for c in checks_raw)
    audit = raw.get("audit", {})
    if not isinstance(audit, dict):
        raise ConfigError(f"policy {source}: [audit] must be a table")
    if "grad" in audit:
        if "gradients" in audit:
            raise ConfigError(f"policy {source}: give audit.gradients only (audit.grad is its deprecated spelling)")
        import sys

        sys.stderr.write(f"fimaudit: warning: policy {source}: audit.grad is deprecated, write audit.gradients "
                         "(the old key is read until the next release)\n")
    for k, v in audit.items():
        want = AUDIT_KEYS.get(k)
        if want is None:
            raise ConfigError(f"policy {source}: unknown key 'audit.{k}' (allowed: {', '.join(AUDIT_KEYS)})")
        ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
        if want is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            raise ConfigError(f"policy {source}: 'audit.{k}' must be a {want.__name__}, not {v!r}")
    return Policy(str(pol.get("name", source)), checks, dict(audit), source)


PRECEDENCE = ("an option given on the command line wins over the policy's [audit] table; the policy's value wins over "
              "the command line's default")


def apply_to_config(policy: Policy | None, fields: dict, given: frozenset[str] | set[str] | None = None) -> dict:
    """AuditConfig keyword arguments: ``fields`` (the command line's values), with the policy's [audit] table.

    The precedence rule (``PRECEDENCE``): a key in ``given`` (an option given on the command line, not left at its
    default) keeps the command line's value; every other [audit] key takes the policy's value. ``given`` None: the
    policy wins for every key (the Python API, where ``fields`` are the caller's defaults). The values taken from the
    policy are recorded as ``from_policy`` and the policy values the command line overrode as ``overridden``
    (``{key: {"policy": v, "command_line": w}}``); the dossier lists both.
    """
    out = dict(fields)
    if policy is None:
        return out
    given = frozenset(given or ())
    from_policy: dict[str, Any] = {}
    overridden: dict[str, Any] = {}
    for k, v in policy.audit.items():
        if k == "grad":  # the old spelling of gradients (deprecated; load_policy notes it)
            k = "gradients"
        value = tuple(v) if isinstance(v, list) else v
        if k in given:
            overridden[k] = {"policy": v, "command_line": list(out[k]) if isinstance(out[k], tuple) else out[k]}
            continue
        out[k] = value
        from_policy[k] = v
    out["from_policy"] = from_policy
    out["overridden"] = overridden
    need = policy.eps_needed()
    if need:
        out["eps"] = tuple(sorted(set(out.get("eps", AuditConfig.eps)) | set(need)))
    radii = [float(m.group(1)) for c in policy.checks for m in [re.match(r"^certify\.certified_accuracy\[r=" + _NUM, c.key)] if m]
    if radii:
        out["certify_radii"] = tuple(sorted(set(out.get("certify_radii", AuditConfig.certify_radii)) | set(radii)))
    if any(c.key.startswith("verify.") for c in policy.checks):
        out["verify"] = True
    if out.get("local_bound") is None and any(c.key.startswith("fisher.local_upper.") for c in policy.checks):
        out["local_bound"] = 0.0  # a check on the local upper bound with no radius: the bound at each point
    taus = [float(m.group(1)) for c in policy.checks for m in [re.search(r"\[tau=" + _NUM + r"\]", c.key)] if m]
    if taus:
        out["taus"] = tuple(sorted(set(out.get("taus", AuditConfig.taus)) | set(taus)))
    return out


def evaluate(policy: Policy, result: AuditResult) -> tuple[CheckResult, ...]:
    """Each check against the result; evidence that is missing fails the check with its reason."""
    out = []
    for c in policy.checks:
        fn, m, _kind = _resolver(c.key)  # type: ignore[misc]
        try:
            value = fn(result, m)
        except Missing as exc:
            out.append(CheckResult(c.key, c.op, c.value, None, False, str(exc)))
            continue
        if value is None:
            out.append(CheckResult(c.key, c.op, c.value, None, False, "the value could not be computed"))
            continue
        out.append(CheckResult(c.key, c.op, c.value, value, bool(OPS[c.op](value, c.value))))
    # Wrong preprocessing makes every other number meaningless: when the clean predictions fail the sanity rule
    # (fimaudit.sanity) and the policy does not check it itself, the audit adds the failing check.
    sec = result.section("preprocessing")
    if (sec is not None and sec.status == "ok" and sec.data.get("sane") is False
            and not any(c.key == "preprocessing.sane" for c in policy.checks)):
        out.append(CheckResult("preprocessing.sane", "=", True, False, False,
                               "added by fimaudit: " + str(sec.data.get("note"))))
    return tuple(out)


def fail_above_gate(result, fail_above: float | None) -> str | None:
    """``--fail-above X`` is the one-line policy ``fisher.lambda_max.median <= X``: the line saying why it failed,
    else None."""
    if fail_above is None:
        return None
    from .results import AuditResult, Section

    policy = Policy("--fail-above", (parse_check(f"fisher.lambda_max.median <= {fail_above!r}", "--fail-above"),), {})
    wrapped = AuditResult(result.model, result.config, (Section("scan", "ok", None, result.to_dict()),))
    failed = [c for c in evaluate(policy, wrapped) if not c.passed]
    if not failed:
        return None
    value = "not computed" if failed[0].value is None else f"{failed[0].value:.4g}"
    return f"fimaudit: gate failed: median lambda_max {value} > --fail-above {fail_above:g}"
