"""The operator table: one ``Op`` per ONNX operator, holding everything fimaudit knows about it.

Hooks hold either a rule (a callable) or a ``Reason`` (why fimaudit has no rule), so that a missing rule is a
stated fact rather than an absent key:

  * ``vjp`` / ``jvp``: derivative emission for the gradient graphs (``fimaudit.autodiff``),
    ``rule(em, node, cotangents | tangents) -> list`` (see ``fimaudit.autodiff.emit``);
  * ``lipschitz``: the global L2 Lipschitz constant of the closed-form bounds (``fimaudit.graph.bounds``),
    ``rule(prop, node) -> None`` records it on the propagator (``prop.scale``, ``assign``, ``unbounded``);
  * ``point`` / ``ibp`` / ``linear`` / ``jacobian``: the bound engine (``fimaudit.verify``): float64
    evaluation, interval bound propagation, CROWN's backward step, the interval VJP;
  * ``fold``: constant folding while parsing (``fimaudit.graph.parse``), ``rule(node, ins, shapes) -> list | None``;
  * ``weights``: how the weight measures read a layer (``fimaudit.metrics.weights``),
    ``rule(node, inits) -> [(weight name, bias name | None, (out, in) matrix)]``;
  * ``float64``: the float64 copy run by onnxruntime (``fimaudit.autodiff.reference``): None (the default)
    when its CPU provider has a double kernel and the node runs as it is, a rule ``(em, node) -> None``
    writing nodes of double-capable operators that compute the node's outputs under the same names, or a
    Reason completing "<operator> has ..." when neither (the numpy reference evaluator runs the copy instead).

Plain fields:

  * ``shape``: how its output shapes are known; ``needs_shape``: parsing must know its first input's shape
    (its Lipschitz rule reads it); ``reads_shape_only``: its output depends on its input's shape alone;
  * ``nondiff``: why its outputs carry no derivative (empty: they do); ``outputs``: ``(node, opset, prefix)``
    names the optional outputs its derivative rules read (MaxPool's indices) on the gradient graphs' copy;
  * ``checks_weights``: NaN/Inf in its constant inputs refuses the Lipschitz bound;
  * ``weight_inputs``: inputs whose constant values are weights (|w| for the interval VJP's radius);
    ``fan``: the most terms one element of an input's cotangent sums (its float32 rounding);
  * ``nonlinear``: its inputs are pre-activations (its output interval is not affine in theirs); ``refine``:
    when CROWN refines its inputs' intervals ("always", or "two activations" for a product of two);
    ``kink_at_zero``: piecewise linear with one kink at 0 (an input interval of one sign makes it exact);
    ``undecided``: ``(node, box, consts) -> flat indices`` of the input entries whose interval leaves its
    derivative undecided (the local bounds sharpen those);
  * ``logit_walk``: what the walks from a model's output back to its logits see in it: "copy" (the output
    is the input: both walks look through it), "moves" (it only moves or relabels values: the loader's walk,
    ``fimaudit.model.spec.logit_output``, looks through it), "softmax" (a monotone normaliser: its input is
    the logits, for the loader and for the bound engine's ``_logits``);
  * ``rowwise``: it acts on each row (sample) alone, so the gradient graphs may compute it once per point
    before repeating per cotangent (``fimaudit.autodiff.graph._untile``; Slice and Pad also need constant
    sizes off the batch axis there);
  * ``piecewise``: its output is piecewise constant in its input (``fimaudit.piecewise``): "quantize"
    (rounding to an integer grid), "step" (sign and rounding), "index" (argmax-like indices), "comparison"
    (boolean; it counts only when its value reaches more than a Where's condition); ``passes_booleans``: a
    comparison's boolean value flows through it unchanged in kind (the comparison walk follows it);
    ``scale_inputs``: positions of its quantization scales (refused when zero, negative, NaN or infinite);
  * ``layout``: its role when ``fimaudit.model.layout`` traces pixels to the first Conv; ``bn_fold``:
    ``(node, weight, scale) -> weight | None``, a following BatchNormalization folds into it
    (``fimaudit.graph.fold``).

Families of operators live in ``elementwise``, ``linear``, ``pool``, ``shape``, ``norm``, ``quant`` and
``other``; ``fimaudit.ops.table()`` imports them all on first use. ``docs/operators.md`` is generated from
the table (``python -m fimaudit.ops --markdown``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any


class Reason(str):
    """Why an operator has no rule for a hook (a hook holds either a callable rule or a Reason)."""


# The reasons given when a family does not state a more specific one.
NO_GRADIENT = Reason("no derivative rule")
NO_LIPSCHITZ = Reason("no known Lipschitz constant")
NO_INTERVAL = Reason("no interval rule")
IBP_ONLY = Reason("no linear relaxation: CROWN concretises it by its interval")
NO_JACOBIAN = Reason("no interval Jacobian rule")
NOT_FOLDED = Reason("not folded while parsing: its value stays unknown")
NOT_A_LAYER = Reason("not a weight layer")
NO_VALUE = Reason("no float64 evaluation")
NO_DOUBLE = Reason("no double kernel in onnxruntime")  # a ``float64`` reason: read as "<operator> has ..."

Hook = Any  # Callable | Reason

HOOKS = ("vjp", "jvp", "lipschitz", "point", "ibp", "linear", "jacobian", "fold", "weights")
LAYOUT_ROLES = ("", "conv", "keeps axes", "normalise", "transpose")
REFINE_WHEN = ("", "always", "two activations")
LOGIT_WALK = ("", "copy", "moves", "softmax")
PIECEWISE = ("", "quantize", "step", "index", "comparison")


@dataclass(frozen=True)
class Op:
    """Everything fimaudit knows about one ONNX operator (default domain). See the module docstring."""

    name: str
    family: str = ""
    shape: str = "onnx shape inference"
    vjp: Hook = NO_GRADIENT
    jvp: Hook = NO_GRADIENT
    nondiff: str = ""
    outputs: Callable | None = None
    lipschitz: Hook = NO_LIPSCHITZ
    checks_weights: bool = False
    point: Hook = NO_VALUE
    ibp: Hook = NO_INTERVAL
    linear: Hook = IBP_ONLY
    jacobian: Hook = NO_JACOBIAN
    nonlinear: bool = False
    refine: str = ""
    kink_at_zero: bool = False
    undecided: Callable | None = None
    weight_inputs: tuple[int, ...] = ()
    fan: Callable | None = None
    fold: Hook = NOT_FOLDED
    reads_shape_only: bool = False
    needs_shape: bool = False
    layout: str = ""
    weights: Hook = NOT_A_LAYER
    bn_fold: Callable | None = None
    float64: Hook | None = None
    logit_walk: str = ""
    rowwise: bool = False
    piecewise: str = ""
    passes_booleans: bool = False
    scale_inputs: tuple[int, ...] = ()
    note: str = ""

    def has(self, hook: str) -> bool:
        """Whether ``hook`` holds a rule (not a Reason)."""
        return callable(getattr(self, hook))

    def rule(self, hook: str) -> Callable | None:
        v = getattr(self, hook)
        return v if callable(v) else None

    def reason(self, hook: str) -> str:
        """Why there is no rule for ``hook`` ('' when there is one)."""
        v = getattr(self, hook)
        return "" if callable(v) else str(v)


# The one registry, keyed by op type. Tests replace entries with ``dataclasses.replace`` (monkeypatch.setitem);
# readers therefore look entries up at call time.
TABLE: dict[str, Op] = {}


def register(family: str, *ops: Op) -> None:
    """Add the entries of one family module (each operator once, in one family)."""
    for op in ops:
        if op.name in TABLE:
            raise ValueError(f"operator {op.name} is registered twice ({TABLE[op.name].family}, {family})")
        for hook in HOOKS:
            v = getattr(op, hook)
            if not (callable(v) or (isinstance(v, Reason) and v)):
                raise TypeError(f"{op.name}.{hook} must be a rule or a Reason, not {v!r}")
        if op.layout not in LAYOUT_ROLES:
            raise ValueError(f"{op.name}: unknown layout role {op.layout!r}")
        if op.refine not in REFINE_WHEN:
            raise ValueError(f"{op.name}: unknown refine condition {op.refine!r}")
        if op.piecewise not in PIECEWISE:
            raise ValueError(f"{op.name}: unknown piecewise kind {op.piecewise!r}")
        if op.logit_walk not in LOGIT_WALK:
            raise ValueError(f"{op.name}: unknown logit walk role {op.logit_walk!r}")
        if not (op.float64 is None or callable(op.float64) or (isinstance(op.float64, Reason) and op.float64)):
            raise TypeError(f"{op.name}.float64 must be None, a rule or a Reason, not {op.float64!r}")
        TABLE[op.name] = Op(**{**{f.name: getattr(op, f.name) for f in fields(Op)}, "family": family})


def entry(name: str) -> Op | None:
    return TABLE.get(name)


def supported(hook: str) -> tuple[str, ...]:
    """Operators with a rule for ``hook``, sorted."""
    return tuple(sorted(k for k, op in TABLE.items() if op.has(hook)))


def with_flag(flag: str) -> tuple[str, ...]:
    """Operators whose plain field ``flag`` is set (truthy), sorted."""
    return tuple(sorted(k for k, op in TABLE.items() if getattr(op, flag)))


def differentiable() -> tuple[str, ...]:
    """Operators whose outputs carry a derivative and that have both derivative rules."""
    return tuple(sorted(k for k, op in TABLE.items() if not op.nondiff and op.has("vjp") and op.has("jvp")))


def markdown() -> str:
    """docs/operators.md: the table, one row per operator (a tick for a rule, else the reason's number)."""
    cols = ("vjp", "jvp", "lipschitz", "point", "ibp", "linear", "jacobian", "fold", "weights")
    reasons: list[str] = []

    def cell(op: Op, hook: str) -> str:
        if op.has(hook):
            return "yes"
        r = op.reason(hook)
        if r not in reasons:
            reasons.append(r)
        return f"({reasons.index(r) + 1})"

    lines = [
        "# Operators",
        "",
        "Generated from the operator table (`fimaudit/ops/`) by `python -m fimaudit.ops --markdown > docs/operators.md`;",
        "a test checks that this file is current. One entry per ONNX operator holds every rule fimaudit has for it:",
        "derivatives for the gradient graphs (vjp, jvp), the global Lipschitz constant of the closed-form bounds,",
        "the bound engine's float64 evaluation (point), interval (ibp), CROWN (linear) and interval-Jacobian rules,",
        "constant folding while parsing, how the weight measures read a layer, and how the float64 copy runs it",
        "(other: rewritten for onnxruntime, or why onnxruntime cannot run it in double). Adding an operator is one",
        "`Op(...)` entry, its rules beside it, in its family module (`fimaudit/ops/elementwise.py`, `linear.py`,",
        "`pool.py`, `shape.py`, `norm.py`, `quant.py`, `other.py`); then regenerate this file. A cell is `yes` for",
        "a rule, else the number of the reason fimaudit has none (listed below the table).",
        "",
        "| operator | family | " + " | ".join(cols) + " | other |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for name in sorted(TABLE):
        op = TABLE[name]
        other = []
        if op.nondiff:
            other.append("no derivative: " + op.nondiff)
        if op.layout:
            other.append("layout: " + op.layout)
        if op.bn_fold:
            other.append("BatchNorm folds in")
        if callable(op.float64):
            other.append("float64: rewritten")
        elif op.float64 is not None:
            other.append("float64: " + str(op.float64))
        if op.logit_walk:
            other.append("logit walk: " + op.logit_walk)
        if op.rowwise:
            other.append("row by row")
        if op.piecewise:
            other.append("piecewise constant: " + op.piecewise)
        if op.checks_weights:
            other.append("weights checked")
        if op.needs_shape:
            other.append("input shape probed")
        if op.nonlinear:
            other.append("nonlinear" + (f", refined: {op.refine}" if op.refine else ""))
        if op.shape != "onnx shape inference":
            other.append("shape: " + op.shape)
        if op.note:
            other.append(op.note)
        lines.append(f"| {name} | {op.family} | " + " | ".join(cell(op, c) for c in cols) + " | " + "; ".join(other) + " |")
    lines += ["", "Reasons:", ""]
    lines += [f"{i + 1}. {r}" for i, r in enumerate(reasons)]
    return "\n".join(lines) + "\n"
