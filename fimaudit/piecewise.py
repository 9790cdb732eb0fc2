"""Piecewise-constant classifiers (INT8-quantized, binarized, tree ensembles): detection and a float surrogate.

The pointwise Fisher F(x) = J^T (diag(p) - p p^T) J of a model whose output is piecewise constant in x
is 0 almost everywhere: true and useless. ``detect_piecewise`` finds the operators that make it so on the
paths from the input to the output; ``behaves_piecewise`` checks the same from queries alone (JVP rows
exactly 0 at small steps while larger steps change the output); ``float_surrogate`` rewrites an INT8
graph (QDQ or QOperator) into a float graph whose exact Fisher the gradient graph can compute.

Wording of the one-line note lives in ``PiecewiseInfo.note`` only: every command calls it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import ops
from .errors import UnsupportedModelError

# Ops whose output is piecewise constant in their (activation) input: the operator table's ``piecewise`` kinds
# ("quantize", "step", "index", "comparison"), and here those of operators it has no entry for: the QLinear and
# integer operators (com.microsoft and default domain), the ai.onnx.ml tree ensembles and three default-domain
# operators nothing else in fimaudit reads.
QLINEAR_OPS = (
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax", "QLinearConcat",
    "QLinearReduceMean", "QLinearWhere", "QAttention", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
)
TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble")
_UNTABLED = {"DynamicQuantizeLinear": "quantize", "Hardmax": "index", "TopK": "index",
             **{op: "qlinear" for op in QLINEAR_OPS}, **{op: "tree" for op in TREE_OPS}}


def _kind(op_type: str) -> str:
    """The piecewise-constant kind of ``op_type`` ('' for none): its table entry's ``piecewise``, else ``_UNTABLED``."""
    entry = ops.entry(op_type)
    return entry.piecewise if entry is not None else _UNTABLED.get(op_type, "")


def _passes_booleans(op_type: str) -> bool:
    entry = ops.entry(op_type)
    return entry is not None and entry.passes_booleans


# Scale inputs (positions) of the QLinear operators, checked for zero / NaN at load time (the table's
# ``scale_inputs`` for QuantizeLinear and DequantizeLinear).
_SCALES: dict[str, tuple[int, ...]] = {
    "QLinearConv": (1, 4, 6), "QLinearMatMul": (1, 4, 6),
    "QGemm": (1, 4, 7), "QLinearAdd": (1, 4, 6), "QLinearMul": (1, 4, 6), "QLinearGlobalAveragePool": (1, 3),
    "QLinearAveragePool": (1, 3), "QLinearLeakyRelu": (1, 3), "QLinearSigmoid": (1, 3), "QLinearSoftmax": (1, 3),
}


@dataclass(frozen=True)
class PiecewiseInfo:
    """What makes a model piecewise constant: the operators found on input->output paths, and why it matters.

    ``ops``: (operator label, count) pairs, e.g. ("QuantizeLinear", 11); ``complete``: every path from the
    input to the output crosses one of them (the output is then piecewise constant in x; otherwise only
    part of the model is, and the pointwise Fisher misses that part); ``quantized``: the operators are
    INT8 quantization (a float surrogate may exist).
    """

    ops: tuple[tuple[str, int], ...]
    complete: bool
    quantized: bool
    reason: str
    behaviour: dict | None = None  # ``Behaviour.to_dict()`` once measured

    def ops_text(self) -> str:
        return ", ".join(f"{name} x{count}" for name, count in self.ops)

    def note(self) -> str:
        """The one line every command prints and records for such a model."""
        if not self.complete:
            return (f"partly piecewise-constant model ({self.ops_text()}): {self.reason}; the pointwise Fisher "
                    "information and gradient-based results see the smooth paths only (those operators have "
                    "derivative 0 almost everywhere) (see docs/piecewise.md)")
        return (f"piecewise-constant model ({self.ops_text()}): {self.reason}; the pointwise Fisher information, "
                "its bounds and gradient-based results are 0 almost everywhere there and are not reported as "
                "results (see docs/piecewise.md)")

    def with_behaviour(self, behaviour: "Behaviour") -> "PiecewiseInfo":
        from dataclasses import replace

        return replace(self, behaviour=behaviour.to_dict())

    def to_dict(self) -> dict:
        return {"ops": {name: count for name, count in self.ops}, "complete": self.complete,
                "quantized": self.quantized, "reason": self.reason, "behaviour": self.behaviour, "note": self.note()}


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs of the main graph, as numpy arrays."""
    out = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def check_scales(proto: onnx.ModelProto) -> None:
    """Refuse a quantized model whose constant scales are zero, negative, NaN or infinite (one line)."""
    consts = None
    for node in proto.graph.node:
        entry = ops.entry(node.op_type)
        where = entry.scale_inputs or None if entry is not None else _SCALES.get(node.op_type)
        if where is None and node.op_type == "QLinearConcat":
            where = (0,) + tuple(range(3, len(node.input), 3))
        if where is None:
            continue
        if consts is None:
            consts = _constants(proto)
        for i in where:
            name = node.input[i] if i < len(node.input) else ""
            if not name or name not in consts:
                continue
            s = np.asarray(consts[name], dtype=np.float64)
            bad = "NaN" if np.isnan(s).any() else "infinite" if np.isinf(s).any() else \
                "zero" if (s == 0).any() else "negative" if (s < 0).any() else None
            if bad:
                raise UnsupportedModelError(
                    f"quantization scale '{name}' of {node.op_type} (node '{node.name or node.output[0]}') is {bad}: "
                    "the quantized model is invalid (every scale must be positive and finite)")


def _shape_of(op_type: str) -> bool:
    """Its output depends on a tensor's shape only, never on its values (the table's ``reads_shape_only``): paths
    of values stop there."""
    entry = ops.entry(op_type)
    return entry is not None and entry.reads_shape_only


def _reach(nodes, start: set[str], forward: bool) -> set[int]:
    """Indices of nodes reachable from tensors ``start`` (forward; not through Shape/Size) or reaching them (backward)."""
    seen_t, seen_n = set(start), set()
    changed = True
    order = list(range(len(nodes))) if forward else list(reversed(range(len(nodes))))
    while changed:
        changed = False
        for i in order:
            if i in seen_n:
                continue
            n = nodes[i]
            src, dst = (n.input, n.output) if forward else (n.output, n.input)
            if forward and _shape_of(n.op_type):
                continue
            if any(t in seen_t for t in src if t):
                seen_n.add(i)
                seen_t.update(t for t in dst if t)
                changed = True
    return seen_n


def _piecewise_outputs(nodes, i: int, consumers: dict[str, list[int]], live: set[str]) -> list[str]:
    """The outputs of node ``i`` that are piecewise constant in the input (empty: none)."""
    n = nodes[i]
    op = n.op_type
    kind = _kind(op)
    if op == "TopK":  # the values are differentiable; the indices are not
        return [n.output[1]] if len(n.output) > 1 and n.output[1] else []
    if kind in ("quantize", "qlinear", "step", "tree", "index"):
        return [o for o in n.output if o]
    if kind == "comparison":
        # A comparison that only selects between input-dependent branches of a Where is a gate (ReLU-like,
        # piecewise smooth); one whose value reaches anything else is piecewise constant there.
        stack, flagged = [n.output[0]], False
        while stack and not flagged:
            t = stack.pop()
            for j in consumers.get(t, []):
                c = nodes[j]
                if _passes_booleans(c.op_type):
                    stack.extend(o for o in c.output if o)
                elif c.op_type == "Where" and c.input[0] == t and t not in c.input[1:]:
                    if not any(x in live for x in c.input[1:]):
                        flagged = True
                else:
                    flagged = True
        return [n.output[0]] if flagged else []
    return []


def detect_piecewise(proto: onnx.ModelProto, input_name: str, output_name: str) -> PiecewiseInfo | None:
    """Piecewise-constant operators on the paths from ``input_name`` to ``output_name``; None when there are none.

    QuantizeLinear/DequantizeLinear count when they act on activations (a DequantizeLinear of an
    initializer, i.e. quantized weights, is a constant and not counted); QLinear*, ConvInteger,
    MatMulInteger, DynamicQuantizeLinear, Sign/Round/Floor/Ceil, ArgMax/Hardmax/OneHot/TopK indices,
    comparisons whose value reaches the output (not only as a Where's condition between input-dependent
    branches) and ai.onnx.ml tree ensembles count.
    """
    nodes = list(proto.graph.node)
    fwd = _reach(nodes, {input_name}, forward=True)
    back = _reach(nodes, {output_name}, forward=False)
    on_path = sorted(fwd & back)
    live = {t for i in fwd for t in nodes[i].output if t} | {input_name}
    consumers: dict[str, list[int]] = {}
    for j, n in enumerate(nodes):
        for t in n.input:
            consumers.setdefault(t, []).append(j)
    cut: set[str] = set()
    found: Counter = Counter()
    for i in on_path:
        outs = _piecewise_outputs(nodes, i, consumers, live)
        if outs:
            cut.update(outs)
            found[nodes[i].op_type] += 1
    if not found:
        return None
    # DequantizeLinear of an activation reads a quantized tensor: part of the same rounding, counted beside it.
    for i in on_path:
        n = nodes[i]
        if n.op_type == "DequantizeLinear" and n.input[0] in live:
            found["DequantizeLinear"] += 1
    # Complete when the output cannot be reached from the input without crossing a piecewise-constant output.
    smooth = {input_name}
    for n in nodes:  # nodes are topologically sorted (ONNX requires it)
        if not _shape_of(n.op_type) and any(t in smooth for t in n.input if t):
            smooth.update(o for o in n.output if o and o not in cut)
    complete = output_name not in smooth
    kinds_found = {_kind(k) for k in found}
    quantized = bool(kinds_found & {"quantize", "qlinear"}) or "DequantizeLinear" in found
    kinds = []
    if quantized:
        kinds.append("integer quantization rounds activations to a grid")
    if "step" in kinds_found:
        kinds.append("sign/rounding steps")
    if "index" in kinds_found:
        kinds.append("argmax/index operators feed later layers")
    if "comparison" in kinds_found:
        kinds.append("comparisons select constant values")
    if "tree" in kinds_found:
        kinds.append("tree ensembles split on thresholds")
    reason = " and ".join(kinds) + ("" if complete else " on some paths from the input to the output")
    order = sorted(found.items(), key=lambda kv: (kv[0] != "QuantizeLinear", kv[0] != "DequantizeLinear", kv[0]))
    return PiecewiseInfo(tuple(order), complete, quantized, reason)


def piecewise_notes(model) -> list[str]:
    """The one-line note for a loaded ``Model`` that is piecewise constant ([] otherwise): every command's first note."""
    info = getattr(model.info, "piecewise", None)
    return [info.note()] if info is not None else []


# ---------------------------------------------------------------------------- behaviour
@dataclass(frozen=True)
class Behaviour:
    """Queries only: how many small-step JVP rows were exactly 0 and how many large steps changed the output."""

    probes: int
    zero_rows: int  # central differences at step h exactly 0 (every class)
    changed_rows: int  # log p changed at the large step
    h: float
    large: float
    queries: int

    @property
    def piecewise(self) -> bool:
        return 2 * self.zero_rows > self.probes and self.changed_rows > 0

    def to_dict(self) -> dict:
        return {"probes": self.probes, "zero_rows": self.zero_rows, "changed_rows": self.changed_rows,
                "h": self.h, "large": self.large, "queries": self.queries, "piecewise": self.piecewise}

    def text(self) -> str:
        return (f"{self.zero_rows} of {self.probes} central differences at step {self.h:.2g} exactly 0, "
                f"{self.changed_rows} of {self.probes} steps of {self.large:.2g} change the output")


def behaves_piecewise(logp: Callable[[np.ndarray], np.ndarray], x: np.ndarray, rng: np.random.Generator, *,
                      probes: int = 4, h: float | None = None, large: float | None = None) -> Behaviour:
    """Probe ``logp`` (rows -> log-probabilities, e.g. ``LogProbOracle.logp``) at one point ``x``.

    Along ``probes`` seeded unit directions v: the central difference logp(x + h v) - logp(x - h v) at
    a small step (default 1e-5 of |x|: each coordinate moves about 1e-5 of its RMS, well above float32
    resolution, so a smooth model's output changes, yet rarely across a rounding boundary of an INT8 grid)
    and logp(x + L v) - logp(x) at a large one (default 0.5 |x|). Costs 3 * probes + 1 queries.
    """
    x = np.asarray(x, dtype=np.float64)
    norm = float(np.linalg.norm(x)) or 1.0
    h = 1e-5 * norm if h is None else float(h)
    large = 0.5 * norm if large is None else float(large)
    v = rng.standard_normal((probes,) + x.shape)
    v /= np.sqrt(np.sum(v.reshape(probes, -1) ** 2, axis=1)).reshape((probes,) + (1,) * x.ndim)
    rows = np.concatenate([x[None] + h * v, x[None] - h * v, x[None] + large * v, x[None]], axis=0)
    out = np.asarray(logp(rows), dtype=np.float64)
    plus, minus, far, centre = out[:probes], out[probes:2 * probes], out[2 * probes:3 * probes], out[-1]
    zero = int(np.sum(np.all(plus == minus, axis=1)))
    changed = int(np.sum(np.any(far != centre[None], axis=1)))
    return Behaviour(probes, zero, changed, h, large, rows.shape[0])


# ---------------------------------------------------------------------------- float surrogate
@dataclass(frozen=True)
class Surrogate:
    """The float rewrite of a quantized graph (``model``), or why there is none (``reason``)."""

    model: onnx.ModelProto | None
    reason: str | None
    rewritten: dict = field(default_factory=dict)  # op type -> count of nodes rewritten

    DESCRIPTION = ("float surrogate: the same graph with rounding removed (each requantization of an activation "
                   "keeps its saturation as a clip to the representable range, so fused ReLUs stay; the input's own "
                   "quantization is not clipped), weights and biases dequantized to float; its Fisher is the Fisher "
                   "of that float model, not of the quantized one, which is 0 almost everywhere")


_QRANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127), np.dtype(np.uint16): (0, 65535),
           np.dtype(np.int16): (-32768, 32767), np.dtype(np.int32): (-2**31, 2**31 - 1)}


class _Rewriter:
    def __init__(self, proto: onnx.ModelProto, input_name: str) -> None:
        self.proto = proto
        self.consts = _constants(proto)
        self.inits: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self.scale_of: dict[str, np.ndarray] = {}  # value-space tensor -> its (former) quantization scale
        self.count: Counter = Counter()
        self.k = 0
        self.input_name = input_name
        nodes = list(proto.graph.node)
        # tensors that depend on the input's values: a step op on them is the model's function
        self.live = {t for i in _reach(nodes, {input_name}, forward=True) for t in nodes[i].output if t} | {input_name}

    def const(self, value: np.ndarray, hint: str) -> str:
        self.k += 1
        name = f"__sur_{hint}_{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        self.consts[name] = np.asarray(value, dtype=np.float32)
        return name

    def value(self, name: str, what: str) -> np.ndarray:
        if not name or name not in self.consts:
            raise _NoSurrogate(f"{what} is not a constant")
        return np.asarray(self.consts[name])

    def zp(self, node, i: int, like: np.ndarray | None = None) -> np.ndarray:
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            return np.zeros((), dtype=np.uint8 if like is None else like.dtype)
        return self.value(name, f"the zero point of {node.op_type}")

    @staticmethod
    def _axis_shape(scale: np.ndarray, rank: int, axis: int) -> np.ndarray:
        if scale.ndim == 0 or rank == 0:
            return scale
        shape = [1] * rank
        shape[axis % rank] = scale.size
        return scale.reshape(shape)

    def dequant(self, q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int = 1) -> np.ndarray:
        s = self._axis_shape(np.asarray(scale, dtype=np.float64), q.ndim, axis)
        z = self._axis_shape(np.asarray(zp, dtype=np.float64), q.ndim, axis)
        return s * (q.astype(np.float64) - z)

    def clip(self, x: str, scale: np.ndarray, zp: np.ndarray, out: str) -> None:
        """Saturation of a requantization as a clip in value space: [s (qmin - zp), s (qmax - zp)]."""
        qmin, qmax = _QRANGE.get(np.asarray(zp).dtype, (0, 255))
        s = np.asarray(scale, dtype=np.float64)
        z = np.asarray(zp, dtype=np.float64)
        if s.size != 1 or z.size != 1:
            raise _NoSurrogate("a per-channel activation quantization is not rewritten")
        lo, hi = float(s * (qmin - z)), float(s * (qmax - z))
        mid = out + "__sur_min"
        self.nodes.append(helper.make_node("Min", [x, self.const(np.array(hi), "hi")], [mid]))
        self.nodes.append(helper.make_node("Max", [mid, self.const(np.array(lo), "lo")], [out]))
        self.scale_of[out] = s.reshape(())

    def operand(self, node, i: int, si: int, zi: int, axis: int = 1) -> str:
        """Input ``i`` of a QLinear op in value space: an activation as is, a constant dequantized."""
        name = node.input[i]
        if name in self.consts:
            q = self.value(name, "a quantized weight")
            w = self.dequant(q, self.value(node.input[si], "a scale"), self.zp(node, zi, q), axis)
            return self.const(w, "w")
        return name

    def run(self) -> None:
        self.after_quant: set[str] = set()  # tensors downstream of a quantization
        for node in self.proto.graph.node:
            self.rewrite(node)
            if _kind(node.op_type) in ("quantize", "qlinear") or any(t in self.after_quant for t in node.input):
                self.after_quant.update(o for o in node.output if o)

    def rewrite(self, node) -> None:
        op, ins, outs = node.op_type, list(node.input), list(node.output)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "QuantizeLinear":
            self.count[op] += 1
            scale = self.value(ins[1], "the scale of QuantizeLinear")
            zp = self.zp(node, 2)
            if ins[0] in self.consts:  # a constant quantized here: round it once, keep its float value
                x = np.asarray(self.consts[ins[0]], dtype=np.float64)
                qmin, qmax = _QRANGE.get(zp.dtype, (0, 255))
                axis = int(attrs.get("axis", 1))
                s = self._axis_shape(scale.astype(np.float64), x.ndim, axis)
                z = self._axis_shape(zp.astype(np.float64), x.ndim, axis)
                q = np.clip(np.round(x / s) + z, qmin, qmax)
                self.consts[outs[0]] = (s * (q - z)).astype(np.float32)
                self.inits.append(numpy_helper.from_array(self.consts[outs[0]], outs[0]))
                return
            if ins[0] not in self.after_quant:
                # The input's own quantization (no quantization before it): its range is the calibration data's, and
                # clipping it would drop every direction that leaves that range (half of a dithered constant
                # background); the surrogate keeps them.
                self.nodes.append(helper.make_node("Identity", [ins[0]], [outs[0]]))
                self.scale_of[outs[0]] = np.asarray(scale, dtype=np.float64).reshape(())
                return
            self.clip(ins[0], scale, zp, outs[0])
        elif op == "DequantizeLinear":
            self.count[op] += 1
            if ins[0] in self.consts:
                q = self.value(ins[0], "a quantized weight")
                zp = self.zp(node, 2, q)
                w = self.dequant(q, self.value(ins[1], "a scale"), zp, int(attrs.get("axis", 1)))
                self.consts[outs[0]] = w.astype(np.float32)
                self.inits.append(numpy_helper.from_array(self.consts[outs[0]], outs[0]))
            else:
                self.nodes.append(helper.make_node("Identity", [ins[0]], [outs[0]]))
        elif op == "QLinearConv":
            self.count[op] += 1
            x = ins[0]
            w_q = self.value(ins[3], "the QLinearConv weight")
            ws = self.value(ins[4], "a scale").astype(np.float64)
            w = self.const(self.dequant(w_q, ws, self.zp(node, 5, w_q), 0), "w")
            args = [x, w]
            if len(ins) > 8 and ins[8]:
                b = self.value(ins[8], "the QLinearConv bias").astype(np.float64)
                args.append(self.const(b * float(self.value(ins[1], "a scale")) * ws.reshape(-1), "b"))
            mid = outs[0] + "__sur_f"
            self.nodes.append(helper.make_node("Conv", args, [mid], **attrs))
            self.clip(mid, self.value(ins[6], "a scale"), self.zp(node, 7), outs[0])
        elif op in ("QLinearMatMul", "QLinearAdd", "QLinearMul"):
            self.count[op] += 1
            a = self.operand(node, 0, 1, 2, axis=-1)
            b = self.operand(node, 3, 4, 5, axis=-1)
            mid = outs[0] + "__sur_f"
            self.nodes.append(helper.make_node({"QLinearMatMul": "MatMul", "QLinearAdd": "Add",
                                                "QLinearMul": "Mul"}[op], [a, b], [mid]))
            if len(ins) > 6 and ins[6]:
                self.clip(mid, self.value(ins[6], "a scale"), self.zp(node, 7), outs[0])
            else:
                self.nodes.append(helper.make_node("Identity", [mid], [outs[0]]))
        elif op == "QGemm":
            self.count[op] += 1
            trans_b = int(attrs.get("transB", 0))
            a = self.operand(node, 0, 1, 2)
            b = self.operand(node, 3, 4, 5, axis=0 if trans_b else 1)
            args = [a, b]
            if len(ins) > 6 and ins[6]:
                c = self.value(ins[6], "the QGemm bias").astype(np.float64)
                sb = self.value(ins[4], "a scale").astype(np.float64).reshape(-1)
                args.append(self.const(c * float(self.value(ins[1], "a scale")) * sb, "c"))
            keep = {k: v for k, v in attrs.items() if k in ("alpha", "transA", "transB")}
            mid = outs[0] + "__sur_f"
            self.nodes.append(helper.make_node("Gemm", args, [mid], **keep))
            if len(ins) > 7 and ins[7]:
                self.clip(mid, self.value(ins[7], "a scale"), self.zp(node, 8), outs[0])
            else:
                self.nodes.append(helper.make_node("Identity", [mid], [outs[0]]))
        elif op in ("QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearLeakyRelu", "QLinearSigmoid"):
            self.count[op] += 1
            if int(attrs.pop("channels_last", 0)):
                raise _NoSurrogate(f"{op} with channels_last is not rewritten")
            float_op = op.replace("QLinear", "")
            mid = outs[0] + "__sur_f"
            self.nodes.append(helper.make_node(float_op, [ins[0]], [mid], **attrs))
            self.clip(mid, self.value(ins[3], "a scale"), self.zp(node, 4), outs[0])
        elif op == "QLinearConcat":
            self.count[op] += 1
            parts = [self.operand(node, i, i + 1, i + 2) for i in range(2, len(ins), 3)]
            mid = outs[0] + "__sur_f"
            self.nodes.append(helper.make_node("Concat", parts, [mid], axis=int(attrs.get("axis", 1))))
            self.clip(mid, self.value(ins[0], "a scale"), self.zp(node, 1), outs[0])
        elif op in ("ConvInteger", "MatMulInteger"):
            self.count[op] += 1
            # Integer units out: (a - a_zp) (b - b_zp); the activation is in value space s (a - a_zp).
            a, b = ins[0], ins[1]
            if a in self.consts or a not in self.scale_of:
                raise _NoSurrogate(f"{op}: the scale of its activation input is not a constant")
            a_int = outs[0] + "__sur_a"
            self.nodes.append(helper.make_node("Div", [a, self.const(self.scale_of[a], "s")], [a_int]))
            bq = self.value(b, f"the {op} weight")
            bz = self.zp(node, 3, bq)
            axis = 0 if op == "ConvInteger" else -1
            w = self.const(bq.astype(np.float64) - self._axis_shape(bz.astype(np.float64), bq.ndim, axis), "w")
            keep = attrs if op == "ConvInteger" else {}
            self.nodes.append(helper.make_node("Conv" if op == "ConvInteger" else "MatMul", [a_int, w], outs, **keep))
        elif op == "DynamicQuantizeLinear":
            raise _NoSurrogate("DynamicQuantizeLinear computes its scale from the input at run time (dynamic "
                               "quantization): no fixed float surrogate")
        elif _kind(op) == "qlinear":
            raise _NoSurrogate(f"{op} is not rewritten to float")
        elif _kind(op) in ("step", "tree", "index", "comparison"):
            if any(t in self.live for t in ins):
                raise _NoSurrogate(f"{op} on activations is part of the model's function, not an artefact of "
                                   "quantization: it has no float counterpart")
            self.nodes.append(node)
        else:
            self.nodes.append(node)


class _NoSurrogate(Exception):
    pass


def float_surrogate(proto: onnx.ModelProto, input_name: str, output_name: str) -> Surrogate:
    """Rewrite a quantized graph into float (see ``Surrogate.DESCRIPTION``); never raises for a model it cannot do.

    Every graph output is kept (``output_name`` names the audited one, for symmetry with ``detect_piecewise``).
    """
    rw = _Rewriter(proto, input_name)
    try:
        rw.run()
    except _NoSurrogate as exc:
        return Surrogate(None, f"no float surrogate: {exc}", dict(rw.count))
    if not rw.count:
        return Surrogate(None, "no float surrogate: the model has no quantized operators", {})
    graph = proto.graph
    used = {t for n in rw.nodes for t in n.input} | {o.name for o in graph.output}
    produced = {o for n in rw.nodes for o in n.output}
    inits = [t for t in list(graph.initializer) + rw.inits if t.name in used and t.name not in produced]
    seen, unique = set(), []
    for t in inits:
        if t.name not in seen:
            seen.add(t.name)
            unique.append(t)
    inputs = [i for i in graph.input if i.name not in seen or i.name == input_name]
    new_graph = helper.make_graph(rw.nodes, graph.name or "surrogate", inputs, list(graph.output), unique)
    model = helper.make_model(new_graph, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    return Surrogate(model, None, dict(rw.count))


__all__ = ["Behaviour", "PiecewiseInfo", "Surrogate", "behaves_piecewise", "check_scales", "detect_piecewise",
           "float_surrogate", "piecewise_notes"]
