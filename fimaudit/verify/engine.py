"""The bound engine: the model's graph evaluated on intervals (IBP) and linear bounds back-substituted (CROWN).

Usage (the API other code calls)::

    g = BoundGraph.from_model(model)                 # or BoundGraph(proto, input_name, output_name, sample_shape)
    s = InputSet.linf(x0, eps, input_range, pre)     # fimaudit.verify.sets: the perturbation set
    b = g.intervals(s)                               # Bounds: every tensor's interval (IBP, + CROWN refinement)
    b[name] -> Box                                   # forward interval of any tensor (pre-activations included)
    g.preactivations(b) -> {tensor: Box}             # the inputs of every nonlinear operator
    g.lower(b, s, tensor, A) -> (S,)                 # CROWN lower bound of A . tensor over the set
    g.margins(b, s, label) -> (K,)                   # lower bounds of z_y - z_k (CROWN on the final spec)

Everything is float64 and sound for the float32 evaluation of the model by onnxruntime: every interval
is widened by the operator's rounding margin (fimaudit.verify.intervals) and the backward pass
subtracts |Lambda|.margin at each node it passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UnsupportedModelError
from .. import ops
from .intervals import LOWER_SLOPES, U32, Box, OpContext, concretize_lower, round_margin

SLACK64 = 1e-11  # relative slack for the float64 arithmetic of the backward pass and its concretisation
ROW_BYTES = 256 * 1024 * 1024  # largest coefficient tensor (spec rows x tensor size x 8 bytes) per backward pass


@dataclass
class Bounds:
    """Forward intervals of every tensor the input reaches (widened by rounding margins), and the margins."""

    boxes: dict[str, Box]
    margins: dict[str, np.ndarray]
    refined: list[str] = field(default_factory=list)  # tensors whose interval CROWN tightened

    def __getitem__(self, name: str) -> Box:
        return self.boxes[name]

    def __contains__(self, name: str) -> bool:
        return name in self.boxes


class BoundGraph:
    """A validated ONNX graph ready for interval and linear bound propagation (batch 1)."""

    def __init__(self, proto, input_name: str, output_name: str, sample_shape: tuple[int, ...]) -> None:
        from ..graph.parse import parse

        self.opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.graph = parse(proto, input_name, output_name, tuple(sample_shape))
        self.input_name, self.output_name = input_name, output_name
        self.sample_shape = tuple(sample_shape)
        self.input_shape = (1,) + self.sample_shape
        self.ctx = OpContext(self.opset, self.graph.shapes)
        self.consts: dict[str, np.ndarray] = dict(self.graph.consts)
        self.var_nodes = []
        for node in self.graph.nodes:
            if node.op == "Constant":
                continue
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedModelError(f"the bound engine has no rule for operator {node.domain}:{node.op} "
                                            f"(node '{node.name}')")
            if not any(self.graph.is_var(o) for o in node.outputs):
                self._fold(node)
                continue
            r = ops.entry(node.op)
            if r is None or not r.has("ibp"):
                why = f": {r.reason('ibp')}" if r is not None else ""
                raise UnsupportedModelError(f"the bound engine has no rule for operator {node.op} (node '{node.name}')"
                                            f"{why}; verify supports: " + ", ".join(ops.supported("ibp")))
            self.var_nodes.append(node)
        self.logit_name = self._logits(output_name)

    @classmethod
    def from_model(cls, model) -> "BoundGraph":
        """From a loaded ``fimaudit.model.Model`` (its validated proto and chosen input/output)."""
        return cls(model.proto, model.info.input.name, model.info.output.name, model.sample_shape)

    # ------------------------------------------------------------------ constants and the float64 reference
    def _fold(self, node) -> None:
        if all(o in self.consts for o in node.outputs if o):
            return
        r = ops.entry(node.op)
        ins = [self.consts.get(i) if i else None for i in node.inputs]
        if node.op == "Shape" and node.inputs[0] in self.graph.shapes:
            self.consts[node.outputs[0]] = np.array(self.graph.shapes[node.inputs[0]], dtype=np.int64)
            return
        if r is None or not r.has("point") or any(i and v is None for i, v in zip(node.inputs, ins)):
            raise UnsupportedModelError(f"cannot fold the constant operator {node.op} (node '{node.name}') for bounds")
        for name, val in zip(node.outputs, r.point(self.ctx, node, ins)):
            self.consts[name] = np.asarray(val)

    def _logits(self, name: str) -> str:
        """The tensor whose argmax the model outputs: through a final Softmax/LogSoftmax (monotone) and Identity
        (the operator table's ``logit_walk`` roles "softmax" and "copy")."""
        node = self.graph.producer.get(name)
        while (node is not None and ops.entry(node.op) is not None and ops.entry(node.op).logit_walk in ("softmax", "copy")
               and self.graph.is_var(node.inputs[0])):
            name = node.inputs[0]
            node = self.graph.producer.get(name)
        return name

    def _ins(self, node, values: dict) -> list:
        return [None if not i else (values[i] if self.graph.is_var(i) else self.consts.get(i)) for i in node.inputs]

    def evaluate(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every tensor of the graph at x (one sample, sample shape or (1, *sample)) in float64."""
        values = {self.input_name: np.asarray(x, dtype=np.float64).reshape(self.input_shape)}
        for node in self.var_nodes:
            outs = ops.TABLE[node.op].point(self.ctx, node, self._ins(node, values))
            for name, v in zip(node.outputs, outs):
                values[name] = np.asarray(v, dtype=np.float64)
        return values

    # --------------------------------------------------------------------------------------------- IBP
    def intervals(self, input_set, refine: str | bool = False, refine_limit: int = 4096,
                  splits: dict[str, Box] | None = None) -> Bounds | None:
        """Interval of every tensor over ``input_set`` (``fimaudit.verify.sets.InputSet``).

        ``refine``: also tighten the inputs of nonlinear operators by CROWN (``True``: all of them;
        ``"auto"``: when their total size is at most ``refine_limit`` elements, e.g. small MLPs and
        convnets). Refined intervals are intersected with the IBP ones (both are sound).
        ``splits`` (branch and bound): extra bounds of some tensors, valid on a part of the set (a ReLU branch);
        the result then holds on that part only. None when the splits are contradictory (an empty branch).
        """
        box = input_set.model_box(self.input_shape)
        m_in = round_margin(box.mag)  # the float32 cast of the model input
        boxes = {self.input_name: box.widen(m_in)}
        margins = {self.input_name: m_in}
        targets = self.refine_targets(refine, refine_limit)
        bounds = Bounds(boxes, margins)
        for node in self.var_nodes:
            ins = [None if not i else (boxes[i] if self.graph.is_var(i) else self.consts.get(i)) for i in node.inputs]
            out, margin = ops.TABLE[node.op].ibp(self.ctx, node, ins)
            name = node.outputs[0]
            m = np.broadcast_to(np.asarray(margin, dtype=np.float64), out.shape)
            out = out.widen(m)
            if not (np.all(np.isfinite(out.lo)) and np.all(np.isfinite(out.hi))):
                bad = Box(np.nan_to_num(out.lo, nan=-np.inf), np.nan_to_num(out.hi, nan=np.inf))
                out = bad
            if splits and name in splits:
                out = Box(np.maximum(out.lo, splits[name].lo), np.minimum(out.hi, splits[name].hi))
            boxes[name] = out
            margins[name] = m
            if name in targets and np.all(np.isfinite(out.lo)) and np.all(np.isfinite(out.hi)):
                mask = self._refine_mask(name, out)
                count = int(mask.sum())
                if count and (refine != "auto" or count <= refine_limit):
                    lo, hi = self.crown_box(bounds, input_set, name, mask)
                    boxes[name] = Box(np.maximum(out.lo, lo), np.minimum(out.hi, hi))
                    bounds.refined.append(name)
            if np.any(boxes[name].lo > boxes[name].hi):
                return None
        return bounds

    def preactivations(self, bounds: Bounds) -> dict[str, Box]:
        """The intervals of the varying inputs of every nonlinear operator (e.g. ReLU pre-activations)."""
        out = {}
        for node in self.var_nodes:
            if ops.TABLE[node.op].nonlinear:
                for i in node.inputs:
                    if i and self.graph.is_var(i) and i in bounds:
                        out[i] = bounds[i]
        return out

    def refine_targets(self, refine, limit: int) -> set[str]:
        """The tensors whose intervals CROWN refines: the inputs of the relaxed nodes (none when ``refine`` is off)."""
        if not refine:
            return set()
        names = []
        for node in self.var_nodes:
            var = [i for i in node.inputs if i and self.graph.is_var(i)]
            when = ops.TABLE[node.op].refine
            if when == "always" or (when == "two activations" and len(var) == 2):
                names += [i for i in var if i != self.input_name]
        return set(dict.fromkeys(names))

    def _refine_mask(self, name: str, box: Box) -> np.ndarray:
        """Elements worth tightening: for a tensor read only by ReLU/LeakyReLU, the unstable ones (interval across
        0: a stable neuron's relaxation is exact whatever its bounds); otherwise all."""
        cons = self.graph.consumers.get(name, [])
        if cons and all(ops.entry(c.op) is not None and ops.entry(c.op).kink_at_zero for c in cons):
            return (box.lo < 0) & (box.hi > 0)
        return np.ones(box.shape, dtype=bool)

    def crown_box(self, bounds: Bounds, input_set, name: str, mask: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """CROWN lower and upper bounds of the elements of tensor ``name`` (where ``mask``; -inf/+inf elsewhere)."""
        shape = bounds[name].shape
        n = int(np.prod(shape))
        which = np.flatnonzero(np.ones(n, bool) if mask is None else np.asarray(mask).reshape(-1))
        m = which.size
        biggest = max(int(np.prod(b.shape)) for b in bounds.boxes.values())
        rows = max(1, min(2 * m, ROW_BYTES // (8 * max(biggest, 1))))
        lo = np.full(n, -np.inf)
        hi = np.full(n, np.inf)
        eye_rows = np.concatenate([which, which])
        signs = np.concatenate([np.ones(m), -np.ones(m)])
        res = np.empty(2 * m)
        for start in range(0, 2 * m, rows):
            idx = eye_rows[start:start + rows]
            a = np.zeros((len(idx), n))
            a[np.arange(len(idx)), idx] = signs[start:start + rows]
            res[start:start + rows] = self.lower(bounds, input_set, name, a.reshape((len(idx),) + shape))
        lo[which] = res[:m]
        hi[which] = -res[m:]
        return lo.reshape(shape), hi.reshape(shape)

    # ------------------------------------------------------------------------------------------- CROWN
    def backward(self, bounds: Bounds, name: str, a0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Back-substitute A0 . tensor down to the model input: returns (A_in (S, *input_shape), bias (S,), absacc (S,))
        with A0 . t >= A_in . u + bias for every u in the set (u: the float32 model input)."""
        a0 = np.asarray(a0, dtype=np.float64)
        s = a0.shape[0]
        coeffs: dict[str, np.ndarray] = {name: a0}
        bias = np.zeros(s)
        absacc = np.zeros(s)
        order = [n for n in self.var_nodes]
        for node in reversed(order):
            out = node.outputs[0]
            a = coeffs.pop(out, None)
            if a is None:
                continue
            r = ops.TABLE[node.op]
            res = None
            if r.has("linear"):
                ins = [None if not i else (bounds[i] if self.graph.is_var(i) else self.consts.get(i)) for i in node.inputs]
                if all(np.all(np.isfinite(b.lo)) and np.all(np.isfinite(b.hi)) for b in ins if isinstance(b, Box)):
                    res = r.linear(self.ctx, node, a, ins, bounds[out])
            if res is None:  # no relaxation: the node's (widened) interval
                c = concretize_lower(a, bounds[out])
                bias += c
                absacc += np.abs(c)
                continue
            m = bounds.margins[out]
            loss = np.abs(a).reshape(s, -1) @ m.reshape(-1)
            bias -= loss
            a_ins, b = res
            bias += b
            absacc += np.abs(b) + loss
            for i, ai in zip(node.inputs, a_ins):
                if ai is None or not i or not self.graph.is_var(i):
                    continue
                coeffs[i] = coeffs[i] + ai if i in coeffs else ai
        a_in = coeffs.get(self.input_name)
        if a_in is None:
            a_in = np.zeros((s,) + self.input_shape)
        return a_in, bias, absacc

    def lower(self, bounds: Bounds, input_set, name: str, a0: np.ndarray) -> np.ndarray:
        """CROWN lower bound of A0 . tensor ``name`` over the set (one value per row of A0)."""
        a_in, bias, absacc = self.backward(bounds, name, a0)
        s = a_in.shape[0]
        m_in = bounds.margins[self.input_name]
        loss = np.abs(a_in).reshape(s, -1) @ np.broadcast_to(m_in, self.input_shape).reshape(-1)
        value, mag = input_set.lower(a_in.reshape((s,) + self.sample_shape))
        total = value + bias - loss
        return total - SLACK64 * (absacc + mag + loss) - np.finfo(np.float64).tiny

    def spec(self, label: int, n_classes: int) -> np.ndarray:
        """C: the rows e_y - e_k for every k != y, shaped (K - 1, *logit_shape)."""
        shape = self.graph.shapes.get(self.logit_name, (1, n_classes))
        rows = []
        for k in range(n_classes):
            if k == label:
                continue
            r = np.zeros(n_classes)
            r[label], r[k] = 1.0, -1.0
            rows.append(r.reshape(shape))
        return np.stack(rows)

    def margins(self, bounds: Bounds, input_set, label: int, method: str = "crown") -> np.ndarray:
        """Lower bounds of z_y - z_k for every class k (+inf at k = y) over the set: IBP or CROWN (then the
        larger of the two, both sound)."""
        z = bounds[self.logit_name]
        k = int(np.prod(z.shape))
        lo, hi = z.lo.reshape(-1), z.hi.reshape(-1)
        ibp = lo[label] - hi
        out = ibp.copy()
        if method == "crown":
            c = self.spec(label, k)
            others = [j for j in range(k) if j != label]
            best = ibp[others]
            for mode in LOWER_SLOPES:  # every choice of ReLU lower slopes is sound: keep each row's best
                self.ctx.cache["lower_slope"] = mode
                try:
                    best = np.maximum(best, self.lower(bounds, input_set, self.logit_name, c))
                finally:
                    self.ctx.cache.pop("lower_slope", None)
            out[others] = best
        out[label] = np.inf
        return out


def supported_ops() -> tuple[str, ...]:
    """Operators the bound engine evaluates (a float64 rule; those with an interval rule may depend on the input)."""
    return ops.supported("point")


def relaxed_ops() -> tuple[str, ...]:
    """Operators with a linear relaxation (CROWN); the others are concretised by their interval."""
    return ops.supported("linear")


__all__ = ["BoundGraph", "Bounds", "U32", "relaxed_ops", "supported_ops"]
