"""Closed-form upper bounds: per-operation L2 Lipschitz constants composed over the graph (MATH §4).

Every tensor t gets a bound L(t) on the Lipschitz constant of x -> t(x) (x the model input):
L(input) = 1, static tensors 0, a one-input operation multiplies by its constant, a sum of
two tensors adds (L_a + L_b: residual y = x + f(x) gives (1 + L_f) L(x)), a concatenation
takes sqrt(L_a^2 + L_b^2) (DenseNet: sqrt(1 + L_f^2)). A product of two input-dependent
tensors (attention, gating) has no global constant: the bound becomes None with the reason.
A Softmax/LogSoftmax producing the output is excluded (the bound is on the logit map), and
lambda_max(F) <= L^2 / 2.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx
from scipy.special import erf

from ..model.loader import load_model
from ..model.spec import logit_output
from ..results.bounds import Block, BoundResult, OpBound
from .fold import batchnorm_scale, fold_batchnorm
from .linear_ops import avgpool_operator_norm, conv_norm_method, conv_operator_norm, pool_overlap_factor
from .parse import Node, OpGraph, parse

INF = math.inf


def _max_slope(f, lo: float = -12.0, hi: float = 12.0, n: int = 200001) -> float:
    """Largest |f'| of a scalar function on a fine grid (used for smooth activations), plus a margin."""
    x = np.linspace(lo, hi, n)
    y = f(x)
    return float(np.max(np.abs(np.diff(y) / np.diff(x)))) * (1 + 1e-6)


_PHI = lambda x: 0.5 * (1 + erf(x / np.sqrt(2)))  # noqa: E731
GELU_SLOPE = _max_slope(lambda x: x * _PHI(x))  # ~1.1289
GELU_TANH_SLOPE = _max_slope(lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))))
SILU_SLOPE = _max_slope(lambda x: x / (1 + np.exp(-x)))  # ~1.0998
HARDSWISH_SLOPE = 1.5  # d/dx x*relu6(x+3)/6 = (2x+3)/6 on [-3, 3], largest at x = 3
ERF_SLOPE = 2 / math.sqrt(math.pi)

PASS_THROUGH = {
    "Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Relu", "Tanh",
    "Clip", "Softplus", "Softsign", "Abs", "Neg", "Slice", "Split", "GlobalMaxPool", "ReduceMax", "Pad",
    "Max", "Min",
}
# Operations whose constant inputs enter a norm: NaN/Inf there makes the bound meaningless (and
# LAPACK fails on it), so the bound is refused. Masks such as -inf in an Add are left alone.
WEIGHT_OPS = {"Conv", "Gemm", "MatMul", "BatchNormalization", "Mul", "Div", "LayerNormalization", "Gather"}
SLOPES = {"Sigmoid": 0.25, "Erf": ERF_SLOPE, "HardSwish": HARDSWISH_SLOPE}


def _non_finite(c: np.ndarray | None) -> bool:
    return c is not None and c.dtype.kind in "fc" and not bool(np.all(np.isfinite(c)))


class _Propagator:
    """Propagates per-tensor Lipschitz bounds. ``structural``: weights count as 1, no norm is computed.

    A structural pass finds in milliseconds whether the output is unbounded for any weights
    (gating, attention, division by activations): infinity only arises from the structure.
    """

    def __init__(self, g: OpGraph, structural: bool = False) -> None:
        self.g = g
        self.structural = structural
        self.L: dict[str, float] = {g.input_name: 1.0}
        self.reason: dict[str, str] = {}
        self.ops: list[OpBound] = []

    # -- helpers
    def lip(self, t: str) -> float:
        if not self.g.is_var(t):
            return 0.0
        return self.L.get(t, INF)

    def _set(self, node: Node, value: float, how: str, factor: float | None, reason: str | None = None) -> None:
        for out in node.outputs:
            if out:
                self.L[out] = value
                if not math.isfinite(value):
                    self.reason[out] = reason or self._inherited_reason(node) or f"{node.op} '{node.name}' is unbounded"
        self.ops.append(OpBound(node.name, node.op, factor if factor is None or math.isfinite(factor) else None, how))

    def _inherited_reason(self, node: Node) -> str | None:
        for i in node.inputs:
            if i in self.reason:
                return self.reason[i]
        return None

    def _unbounded(self, node: Node, reason: str) -> None:
        inherited = self._inherited_reason(node)
        self._set(node, INF, reason, None, inherited or reason)

    def _scale(self, node: Node, factor: float, how: str, src: str | None = None) -> None:
        src = src if src is not None else self.g.var_inputs(node)[0]
        self._set(node, factor * self.lip(src), how, factor)

    def _same_input_pattern(self, a: str, b: str) -> tuple[str, float] | None:
        """Recognise x * f(x) forms: GELU (erf), SiLU, HardSwish; returns (name, max slope)."""
        for x, other in ((a, b), (b, a)):
            node = self.g.producer.get(other)
            if node is None:
                continue
            if node.op == "Sigmoid" and node.inputs[0] == x:
                return "SiLU", SILU_SLOPE
            if node.op == "HardSigmoid" and node.inputs[0] == x:
                al, be = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
                return "HardSwish", _max_slope(lambda t: t * np.clip(al * t + be, 0, 1))
            if node.op == "Add":  # x * (1 + erf(x / sqrt 2)) = 2 GELU(x)
                ins = node.inputs
                erf_in = [i for i in ins if self.g.producer.get(i) is not None and self.g.producer[i].op == "Erf"]
                one = [i for i in ins if i in self.g.consts and np.allclose(self.g.consts[i], 1.0)]
                if erf_in and one:
                    div = self.g.producer.get(self.g.producer[erf_in[0]].inputs[0])
                    if div is not None and div.inputs[0] == x:
                        c = self.g.consts.get(div.inputs[1])
                        scale = None
                        if c is not None and div.op == "Div":
                            scale = float(np.ravel(c)[0])
                        elif c is not None and div.op == "Mul":
                            scale = 1.0 / float(np.ravel(c)[0])
                        if scale is not None and scale > 0:
                            slope = _max_slope(lambda t: t * (1 + erf(t / scale)))
                            return "GELU (erf form)", slope
        return None

    def _layernorm_pattern(self, num: str, den: str) -> float | None:
        """Div(c, Sqrt(ReduceMean(Pow(c, 2)) + eps)) with c centred: returns 1/sqrt(eps)."""
        sq = self.g.producer.get(den)
        if sq is None or sq.op != "Sqrt":
            return None
        add = self.g.producer.get(sq.inputs[0])
        if add is None or add.op != "Add":
            return None
        eps = [self.g.consts[i] for i in add.inputs if i in self.g.consts]
        var = [i for i in add.inputs if i not in self.g.consts]
        if not eps or len(var) != 1:
            return None
        rm = self.g.producer.get(var[0])
        if rm is None or rm.op != "ReduceMean":
            return None
        pw = self.g.producer.get(rm.inputs[0])
        if pw is None or pw.op not in ("Pow", "Mul"):
            return None
        if pw.op == "Pow" and not (pw.inputs[0] == num and np.allclose(self.g.consts.get(pw.inputs[1], np.nan), 2.0)):
            return None
        if pw.op == "Mul" and not (pw.inputs[0] == num and pw.inputs[1] == num):
            return None
        e = float(np.min(eps[0]))
        return 1.0 / math.sqrt(e) if e > 0 else None

    # -- the rules
    def visit(self, node: Node) -> None:
        g = self.g
        if not g.var_inputs(node) or node.op == "Constant":
            return
        op = node.op
        if node.domain not in ("", "ai.onnx"):
            return self._unbounded(node, f"operator '{node.domain}:{op}' has no known Lipschitz constant")
        var = g.var_inputs(node)
        if op in WEIGHT_OPS:
            bad = [i for i in node.inputs if i and not g.is_var(i) and _non_finite(g.consts.get(i))]
            if bad:
                return self._unbounded(node, f"{op} '{node.name}' has NaN or Inf in its weights ('{bad[0]}')")
        if op in PASS_THROUGH:
            if op in ("Max", "Min") and len(var) > 1:
                return self._set(node, max(self.lip(v) for v in var), "elementwise max/min of inputs", 1.0)
            return self._scale(node, 1.0, "1 (1-Lipschitz or a reshaping)")
        if op in SLOPES:
            return self._scale(node, SLOPES[op], f"max slope {SLOPES[op]:.4g}")
        if op == "LeakyRelu":
            a = abs(float(node.attrs.get("alpha", 0.01)))
            return self._scale(node, max(1.0, a), "max(1, |alpha|)")
        if op in ("Elu", "Celu"):
            a = abs(float(node.attrs.get("alpha", 1.0)))
            return self._scale(node, max(1.0, a), "max(1, alpha)")
        if op == "Selu":
            lam, a = float(node.attrs.get("gamma", 1.0507)), float(node.attrs.get("alpha", 1.6733))
            return self._scale(node, lam * max(1.0, a), "gamma * max(1, alpha)")
        if op == "HardSigmoid":
            a = abs(float(node.attrs.get("alpha", 0.2)))
            return self._scale(node, a, "alpha")
        if op == "Gelu":
            slope = GELU_TANH_SLOPE if node.attrs.get("approximate", "none") == "tanh" else GELU_SLOPE
            return self._scale(node, slope, f"max slope {slope:.4f}")
        if op == "Softmax":
            return self._scale(node, 0.5, "|diag(p) - p p^T| <= 1/2")
        if op == "LogSoftmax":
            n = g.shapes.get(node.inputs[0], (0, 0))[-1] or 1
            return self._scale(node, 1 + math.sqrt(n), "|I - 1 p^T| <= 1 + sqrt(K)")
        if op in ("Add", "Sub", "Sum"):
            total = sum(self.lip(i) for i in node.inputs if i)
            return self._set(node, total, "sum of the inputs' bounds", None)
        if op == "Concat":
            total = math.sqrt(sum(self.lip(i) ** 2 for i in node.inputs if i))
            return self._set(node, total, "sqrt of the sum of squares", None)
        handler = {
            "Mul": self._mul, "Div": self._div, "Conv": self._conv, "BatchNormalization": self._batchnorm,
            "Gemm": self._matmul, "MatMul": self._matmul, "MaxPool": self._maxpool, "AveragePool": self._avgpool,
            "ReduceMean": self._reduce, "ReduceSum": self._reduce,
        }.get(op)
        if handler is not None:
            return handler(node)
        if op == "GlobalAveragePool":
            shape = g.shapes.get(node.inputs[0])
            if shape is None:
                return self._unbounded(node, f"shape of '{node.inputs[0]}' unknown")
            n = int(np.prod(shape[2:]))
            return self._scale(node, 1 / math.sqrt(n), f"1/sqrt({n}) (mean over {n} positions)")
        if op == "LayerNormalization":
            scale = g.consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
            eps = float(node.attrs.get("epsilon", 1e-5))
            gmax = float(np.max(np.abs(scale))) if scale is not None else 1.0
            return self._scale(
                node, gmax / math.sqrt(eps),
                f"global: max|gamma|/sqrt(eps) = {gmax:.3g}/sqrt({eps:g}); LayerNorm has no tighter global constant",
            )
        if op == "Gather":
            idx = g.consts.get(node.inputs[1])
            if idx is None or node.inputs[0] not in var:
                return self._unbounded(node, f"Gather '{node.name}' with input-dependent indices")
            mult = int(np.max(np.unique(np.ravel(idx), return_counts=True)[1])) if np.size(idx) else 1
            return self._scale(node, math.sqrt(mult), "selection (sqrt of the largest repetition)", node.inputs[0])
        if op == "Expand":
            shape_in = g.shapes.get(node.inputs[0])
            shape_out = g.shapes.get(node.outputs[0])
            if shape_in is None or shape_out is None:
                return self._unbounded(node, f"shape of Expand '{node.name}' unknown")
            copies = int(np.prod(shape_out)) // max(1, int(np.prod(shape_in)))
            return self._scale(node, math.sqrt(copies), f"broadcast copies: sqrt({copies})", node.inputs[0])
        return self._unbounded(node, f"operator '{op}' (node '{node.name}') has no known Lipschitz constant")

    def _mul(self, node: Node) -> None:
        g = self.g
        var = g.var_inputs(node)
        if len(var) == 1:
            other = [i for i in node.inputs if i != var[0]][0] if len(node.inputs) > 1 else None
            c = g.consts.get(other) if other else None
            if c is None:
                return self._unbounded(node, f"Mul '{node.name}' by a static tensor of unknown value")
            m = float(np.max(np.abs(c)))
            return self._scale(node, m, f"max |constant| = {m:.4g}", var[0])
        a, b = node.inputs[0], node.inputs[1]
        pattern = self._same_input_pattern(a, b)
        if pattern is not None:
            name, slope = pattern
            x = a if g.producer.get(b) is not None and a in g.producer[b].inputs or self._feeds(a, b) else b
            return self._set(node, slope * self.lip(x), f"{name}: max slope {slope:.4f}", slope)
        gate = [i for i in (a, b) if g.producer.get(i) is not None and g.producer[i].op in ("Sigmoid", "HardSigmoid")]
        if gate:
            return self._unbounded(
                node, f"multiplicative gating '{node.name}' (squeeze-and-excitation style x * sigmoid(h(x))) has no "
                "global Lipschitz constant; a bound needs a bounded input domain",
            )
        return self._unbounded(node, f"product of two input-dependent tensors at '{node.name}' has no global Lipschitz constant")

    def _feeds(self, x: str, y: str) -> bool:
        node = self.g.producer.get(y)
        seen = 0
        while node is not None and seen < 8:
            if x in node.inputs:
                return True
            var = self.g.var_inputs(node)
            node = self.g.producer.get(var[0]) if var else None
            seen += 1
        return False

    def _div(self, node: Node) -> None:
        g = self.g
        a, b = node.inputs[0], node.inputs[1]
        if g.is_var(a) and not g.is_var(b):
            c = g.consts.get(b)
            if c is None or np.min(np.abs(c)) == 0:
                return self._unbounded(node, f"Div '{node.name}' by a static tensor of unknown or zero value")
            m = 1.0 / float(np.min(np.abs(c)))
            return self._scale(node, m, f"1/min|constant| = {m:.4g}", a)
        ln = self._layernorm_pattern(a, b) if g.is_var(a) and g.is_var(b) else None
        if ln is not None:
            return self._set(node, ln * self.lip(a), "LayerNorm (decomposed) normalisation: global 1/sqrt(eps)", ln)
        return self._unbounded(node, f"division by an input-dependent tensor at '{node.name}' has no global Lipschitz constant")

    def _conv(self, node: Node) -> None:
        g = self.g
        w = g.consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
        x = node.inputs[0]
        shape = g.shapes.get(x)
        if w is None or not g.is_var(x) or g.is_var(node.inputs[1]):
            return self._unbounded(node, f"Conv '{node.name}' without constant weights")
        if shape is None or len(shape) != 4 or w.ndim != 4:
            return self._unbounded(node, f"Conv '{node.name}': only 2-D convolutions with known input shape are bounded")
        groups = int(node.attrs.get("group", 1))
        if min(shape) < 1 or min(w.shape) < 1 or groups < 1 or shape[1] != w.shape[1] * groups or w.shape[0] % groups:
            return self._unbounded(
                node, f"Conv '{node.name}': input shape {list(shape)} does not fit weights {list(w.shape)} (group {groups})"
            )
        if self.structural:
            return self._set(node, self.lip(x), "not computed: the model has no global bound", None)
        w = w.astype(np.float64)
        kh, kw = w.shape[2:]
        strides = tuple(node.attrs.get("strides", [1, 1]))
        dil = tuple(node.attrs.get("dilations", [1, 1]))
        pads = _conv_pads(node, shape[2:], (kh, kw), strides, dil)
        exact, check = conv_operator_norm(w, tuple(shape[1:]), strides, pads, dil, groups)
        how = f"{conv_norm_method(w, tuple(shape[1:]), strides, pads, dil, groups)}, check {check:.4g}"
        if node.inputs[1].endswith("_bnfold"):
            how += "; BatchNorm folded in"
        self._set(node, exact * self.lip(x), how, exact)

    def _batchnorm(self, node: Node) -> None:
        c = [self.g.consts.get(i) for i in node.inputs[1:5]]
        if len(c) < 4 or any(v is None for v in c):
            return self._unbounded(node, f"BatchNormalization '{node.name}' without constant statistics")
        scale = batchnorm_scale(c[0], c[3], float(node.attrs.get("epsilon", 1e-5)))
        if scale is None:  # negative or NaN variance, non-finite gamma: no constant
            return self._unbounded(node, f"BatchNormalization '{node.name}' has negative or NaN variance")
        m = float(np.max(np.abs(scale)))
        return self._scale(node, m, "max |gamma / sqrt(var + eps)|", node.inputs[0])

    def _matmul(self, node: Node) -> None:
        g = self.g
        a, b = node.inputs[0], node.inputs[1]
        if g.is_var(a) and g.is_var(b):
            return self._unbounded(
                node, f"dot-product attention (MatMul of two activations at '{node.name}') is not globally Lipschitz "
                "(Kim et al. 2021); a bound needs a bounded input domain",
            )
        wname = b if g.is_var(a) else a
        w = g.consts.get(wname)
        if w is None:
            return self._unbounded(node, f"{node.op} '{node.name}' with weights of unknown value")
        if self.structural:
            return self._set(node, self.lip(a if g.is_var(a) else b), "not computed: the model has no global bound", None)
        w = w.astype(np.float64)
        if node.op == "Gemm":
            if int(node.attrs.get("transA", 0)) and g.is_var(a):
                return self._unbounded(node, f"Gemm '{node.name}' transposes its input (transA=1): unsupported")
            alpha = abs(float(node.attrs.get("alpha", 1.0)))
        else:
            alpha = 1.0
        if w.ndim <= 1:
            s = float(np.linalg.norm(w))
        elif w.ndim == 2:
            s = float(np.linalg.norm(w, 2))
        else:
            s = float(max(np.linalg.norm(m, 2) for m in w.reshape(-1, *w.shape[-2:])))
        factor = alpha * s * (1 + 1e-9)
        consumers = g.consumers.get(node.outputs[0], [])
        how = "largest singular value of the weight" + (f" (alpha {alpha:g})" if alpha != 1 else "")
        if len(consumers) == 1 and consumers[0].op == "BatchNormalization":
            how += "; BatchNorm follows (bounded separately)"
        return self._scale(node, factor, how, a if g.is_var(a) else b)

    def _maxpool(self, node: Node) -> None:
        shape = self.g.shapes.get(node.inputs[0])
        if shape is None or len(shape) != 4:
            return self._unbounded(node, f"MaxPool '{node.name}' with unknown input shape")
        k = tuple(node.attrs["kernel_shape"])
        s = tuple(node.attrs.get("strides", [1, 1]))
        d = tuple(node.attrs.get("dilations", [1, 1]))
        pads = _conv_pads(node, shape[2:], k, s, d)
        overlap = pool_overlap_factor(shape[2:], k, s, pads, d)
        return self._scale(node, math.sqrt(overlap), f"sqrt(windows per pixel = {overlap})")

    def _avgpool(self, node: Node) -> None:
        shape = self.g.shapes.get(node.inputs[0])
        if shape is None or len(shape) != 4:
            return self._unbounded(node, f"AveragePool '{node.name}' with unknown input shape")
        k = tuple(node.attrs["kernel_shape"])
        s = tuple(node.attrs.get("strides", [1, 1]))
        pads = _conv_pads(node, shape[2:], k, s, (1, 1))
        norm = avgpool_operator_norm(shape[1], shape[2:], k, s, pads, bool(node.attrs.get("count_include_pad", 0)))
        return self._scale(node, norm, "exact operator norm of the averaging")

    def _reduce(self, node: Node) -> None:
        shape = self.g.shapes.get(node.inputs[0])
        if shape is None:
            return self._unbounded(node, f"{node.op} '{node.name}' with unknown input shape")
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            c = self.g.consts.get(node.inputs[1])
            axes = None if c is None else [int(a) for a in np.ravel(c)]
        if axes is None:
            axes = list(range(len(shape)))
        n = int(np.prod([shape[a] for a in axes]))
        factor = 1 / math.sqrt(n) if node.op == "ReduceMean" else math.sqrt(n)
        return self._scale(node, factor, f"{'1/' if node.op == 'ReduceMean' else ''}sqrt({n})")


def _conv_pads(node: Node, hw, k, strides, dil) -> tuple[int, int, int, int]:
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, kk, s, dd in zip(hw, k, strides, dil):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (kk - 1) * dd + 1 - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads.append((lo, total - lo))
        return (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    if auto == "VALID":
        return (0, 0, 0, 0)
    p = list(node.attrs.get("pads", [0, 0, 0, 0]))
    return tuple(int(v) for v in p)  # type: ignore[return-value]


# ------------------------------------------------------------------------- blocks
def detect_blocks(g: OpGraph, prop: _Propagator) -> list[Block]:
    """Recognise residual, dense, attention, gating, conv-stack and MLP-head blocks."""
    blocks: list[Block] = []
    covered: set[str] = set()
    order = {t: n.index for n in g.nodes for t in n.outputs}
    order[g.input_name] = -1

    def ratio(out: str, inp: str) -> float | None:
        lo, li = prop.lip(out), prop.lip(inp)
        if not math.isfinite(lo) or not math.isfinite(li) or li == 0:
            return None
        return lo / li

    def span(start: str, end_node: Node) -> list[str]:
        anc = set()
        for i in g.var_inputs(end_node):
            anc |= g.ancestors(i)
        return [n.name for n in g.nodes if order.get(start, -1) < n.index <= end_node.index and any(o in anc or o in end_node.outputs for o in n.outputs)]

    attn = [n for n in g.nodes if n.op == "MatMul" and len(g.var_inputs(n)) == 2]
    softmax_attn = [n for n in g.nodes if n.op == "Softmax" and any(
        c.op == "MatMul" and len(g.var_inputs(c)) == 2 for c in g.consumers.get(n.outputs[0], []))]
    for k, sm in enumerate(softmax_attn):
        blocks.append(Block(f"attention{k}", "transformer-attention", None, (sm.name,),
                            "softmax(Q K^T / sqrt(d)) V: not globally Lipschitz", "unbounded",
                            "softmax(Q K^T / sqrt(d)) V multiplies two input-dependent tensors: no global constant"))
        covered.add(sm.name)
    lns = [n for n in g.nodes if n.op == "LayerNormalization"]
    ln_decomp = [n for n in g.nodes if n.op == "Div" and prop._layernorm_pattern(n.inputs[0], n.inputs[1]) is not None]
    for n in lns + ln_decomp:
        blocks.append(Block(n.name, "layernorm", ratio(n.outputs[0], n.inputs[0]), (n.name,),
                            "global bound from epsilon (decomposed form)" if n.op == "Div" else "global bound from epsilon",
                            span=(n.inputs[0], n.outputs[0])))
    for n in g.nodes:
        var = g.var_inputs(n)
        if n.op == "Add" and len(var) == 2:
            a, b = var
            anc_a, anc_b = g.ancestors(a), g.ancestors(b)
            common = anc_a & anc_b
            if not common:
                continue
            start = max(common, key=lambda t: order.get(t, -1))
            if softmax_attn and any(sm.index > order.get(start, -1) and sm.index < n.index for sm in softmax_attn):
                kind = "transformer-residual (attention)"
            elif any(g.producer.get(t) is not None and g.producer[t].op in ("Gemm", "MatMul") for t in (anc_a | anc_b) - g.ancestors(start)) and not any(
                g.producer.get(t) is not None and g.producer[t].op == "Conv" for t in (anc_a | anc_b) - g.ancestors(start)):
                kind = "transformer-residual (mlp)" if (lns or ln_decomp) else "residual"
            else:
                shortcut = "identity" if start in (a, b) else "projection"
                kind = f"resnet-residual ({shortcut} shortcut)"
            nodes = tuple(span(start, n))
            covered.update(nodes)
            blocks.append(Block(n.name, kind, ratio(n.outputs[0], start), nodes, f"from '{start}'",
                                span=(start, n.outputs[0])))
        elif n.op == "Concat" and len(var) >= 2:
            ancs = [g.ancestors(v) for v in var]
            if any(var[i] in ancs[j] for i in range(len(var)) for j in range(len(var)) if i != j):
                start = [v for v in var if any(v in ancs[j] for j in range(len(var)) if var[j] != v)][0]
                nodes = tuple(span(start, n))
                covered.update(nodes)
                blocks.append(Block(n.name, "densenet-layer", ratio(n.outputs[0], start), nodes,
                                    "concatenation of the input and a branch", span=(start, n.outputs[0])))
        elif n.op == "Mul" and len(var) == 2 and prop._same_input_pattern(*n.inputs[:2]) is None:
            if any(g.producer.get(i) is not None and g.producer[i].op in ("Sigmoid", "HardSigmoid") for i in var):
                blocks.append(Block(n.name, "squeeze-excitation", None, (n.name,), "x * sigmoid(h(x)): no global constant",
                                    "unbounded", "x * sigmoid(h(x)) multiplies two input-dependent tensors: no global constant"))
                covered.add(n.name)
    # Conv stacks (VGG stages): Conv/BN/activation runs up to a pooling, outside other blocks.
    stage: list[Node] = []
    stage_in: str | None = None
    k = 0

    def close(end: Node | None) -> None:
        nonlocal stage, stage_in, k
        if stage and any(s.op == "Conv" for s in stage) and stage_in is not None:
            last = end or stage[-1]
            blocks.append(Block(f"conv_stage{k}", "vgg-conv-stack", ratio(last.outputs[0], stage_in),
                                tuple(s.name for s in stage) + ((end.name,) if end else ()),
                                f"{sum(s.op == 'Conv' for s in stage)} conv layers", span=(stage_in, last.outputs[0])))
            k += 1
        stage, stage_in = [], None

    for n in g.nodes:
        if n.name in covered or not g.var_inputs(n):
            close(None)
            continue
        if n.op in ("Conv", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "HardSwish"):
            if not stage:
                stage_in = g.var_inputs(n)[0]
            stage.append(n)
        elif n.op in ("MaxPool", "AveragePool") and stage:
            close(n)
        else:
            close(None)
    close(None)
    # MLP head: the Gemm/MatMul-with-weights chain feeding the output.
    head: list[Node] = []
    node = g.producer.get(g.output_name)
    while node is not None and node.op in ("Gemm", "MatMul", "Relu", "Tanh", "Sigmoid", "Flatten", "Reshape", "Softmax",
                                           "LogSoftmax", "Gelu", "Identity", "Dropout", "Add"):
        if node.op in ("MatMul",) and len(g.var_inputs(node)) == 2:
            break
        if node.op == "Add" and len(g.var_inputs(node)) == 2:
            break
        head.append(node)
        var = g.var_inputs(node)
        node = g.producer.get(var[0]) if var else None
    dense = [h for h in head if h.op in ("Gemm", "MatMul")]
    if dense and g.var_inputs(head[-1]):
        first = head[-1]
        head_out = head[0].inputs[0] if head[0].op in ("Softmax", "LogSoftmax") else head[0].outputs[0]
        blocks.append(Block("head", "mlp-head", ratio(head_out, g.var_inputs(first)[0]),
                            tuple(h.name for h in reversed(head)), f"{len(dense)} dense layers",
                            span=(g.var_inputs(first)[0], head_out)))
    del attn
    index = {n.name: n.index for n in g.nodes}
    return sorted(blocks, key=lambda b: max((index.get(n, -1) for n in b.nodes), default=-1))


def label_blocks(blocks: list[Block], prop: "_Propagator", model_reason: str | None) -> list[Block]:
    """Each block bounded, unbounded (with what in it has no global constant) or not computed (with why).

    The structural pass (weights counted as 1) tells a block that is unbounded itself (its output unbounded while
    its input is not) from one whose constant was simply not measured: the model had no finite bound, so no weight
    norm was computed, or the block's input is already unbounded upstream, so no ratio to it means anything."""
    out = []
    intrinsic = [b for b in blocks if b.status == "unbounded"]  # attention, gating: decided where recognised
    for b in blocks:
        if b.status:
            out.append(b)
            continue
        if b.lipschitz is not None:
            out.append(replace(b, status="bounded", reason=None))
            continue
        inner = next((x for x in intrinsic if set(x.nodes) <= set(b.nodes)), None)
        if inner is not None:
            out.append(replace(b, status="unbounded", reason=f"contains {inner.name}: {inner.reason}"))
            continue
        if b.span is None:
            out.append(replace(b, status="not computed", reason="its input and output tensors are unknown"))
            continue
        inp, outp = b.span
        li, lo = prop.lip(inp), prop.lip(outp)
        if not math.isfinite(li):
            first = next((x.name for x in out if x.status == "unbounded"), None)
            out.append(replace(b, status="not computed",
                               reason="its input is already unbounded upstream" + (f" (after {first})" if first else "")
                                      + ": no ratio to it is measured"))
        elif not math.isfinite(lo):
            out.append(replace(b, status="unbounded", reason=prop.reason.get(outp) or "a part of it has no known "
                                                                                      "Lipschitz constant"))
        elif li == 0:
            out.append(replace(b, status="not computed", reason="its input does not depend on the model input"))
        elif prop.structural:
            out.append(replace(b, status="not computed",
                               reason="bounded in structure; its weight norms were not computed because the model as "
                                      "a whole has no finite bound (see the model's reason)"))
        else:
            out.append(replace(b, status="not computed", reason="no ratio of its output to its input bound"))
    return out


def classify(blocks: list[Block], g: OpGraph) -> str | None:
    kinds = {b.kind.split(" ")[0] for b in blocks}
    if "transformer-attention" in kinds:
        return "transformer"
    if "densenet-layer" in kinds:
        return "densenet"
    if "resnet-residual" in kinds:
        return "resnet"
    if "vgg-conv-stack" in kinds or any(n.op == "Conv" for n in g.nodes):
        return "vgg"
    if any(n.op in ("Gemm", "MatMul") for n in g.nodes):
        return "mlp"
    return None


def compute_bounds(model_path: str, input_name: str | None = None, output_name: str | None = None,
                   input_shape: tuple[int, ...] | None = None) -> BoundResult:
    """Load (validated) and bound a model file."""
    m = load_model(model_path, input_name=input_name, output_name=output_name, input_shape=input_shape, device="cpu")
    return bounds_from_proto(m.proto, m.info.input.name, m.info.output.name, m.sample_shape, str(model_path))


def bounds_from_proto(proto: onnx.ModelProto, input_name: str, output_name: str, sample_shape: tuple[int, ...],
                      label: str = "") -> BoundResult:
    folded = fold_batchnorm(proto)
    n_folded = sum(n.op_type == "BatchNormalization" for n in proto.graph.node) - sum(
        n.op_type == "BatchNormalization" for n in folded.graph.node)
    g = parse(folded, input_name, output_name, tuple(sample_shape))
    walk = logit_output({t: (n.op, n.inputs) for t, n in g.producer.items()}, output_name)
    target = walk.logits
    excluded = walk.final_op if walk.logits != output_name else None
    # Decide "no global bound" (gating, attention, ...) from the structure before computing any norm.
    prop = _Propagator(g, structural=True)
    for node in g.nodes:
        prop.visit(node)
    if math.isfinite(prop.lip(target)):
        prop = _Propagator(g)
        for node in g.nodes:
            prop.visit(node)
    lip = prop.lip(target)
    reason = None
    if not math.isfinite(lip):
        reason = prop.reason.get(target) or "a part of the graph has no known Lipschitz constant"
    blocks = detect_blocks(g, prop)
    if prop.structural:  # weights were not measured: no block constant means anything
        blocks = [replace(b, lipschitz=None) for b in blocks]
    blocks = label_blocks(blocks, prop, reason)
    notes = []
    if excluded:
        notes.append(f"the final {excluded} is excluded: the bound is on the logit map")
    if n_folded:
        notes.append(f"{n_folded} BatchNormalization layer(s) folded into the preceding Conv/Gemm")
    if any(o.op == "LayerNormalization" for o in g.nodes):
        notes.append("LayerNorm is bounded globally by max|gamma|/sqrt(eps), far above its typical local slope")
    finite = math.isfinite(lip)
    return BoundResult(
        model=label,
        lipschitz=lip if finite else None,
        fim_upper=0.5 * lip * lip if finite else None,
        reason=reason,
        family=classify(blocks, g),
        blocks=tuple(blocks),
        ops=tuple(prop.ops),
        excluded_output_op=excluded,
        notes=tuple(notes),
    )

