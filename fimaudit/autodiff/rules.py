"""Derivative rules per ONNX operator: reverse mode (VJP) and forward mode (JVP).

A VJP rule gets the node and the cotangents of its outputs (``None`` where an output has
none) and returns one cotangent per input (``None`` for inactive inputs). A JVP rule gets
the tangents of the inputs (``None`` for inactive ones) and returns one tangent per output.
Rules read static per-sample shapes and the values of inactive tensors (pads, axes, indices)
from the probe run held by the ``Emitter``; they never bake the batch size into a constant
when the graph keeps a symbolic batch axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from .emit import Emitter, GradientUnsupported

Rule = Callable[[Emitter, onnx.NodeProto, list], list]
VJP: dict[str, Rule] = {}
JVP: dict[str, Rule] = {}

# Outputs of these operators carry no derivative (integer results, shapes, comparisons,
# piecewise-constant maps whose derivative is zero almost everywhere).
NON_DIFFERENTIABLE = {
    "Shape", "Size", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or",
    "Xor", "ArgMax", "ArgMin", "NonZero", "ConstantOfShape", "Constant", "Range", "Floor", "Ceil",
    "Round", "Sign", "IsNaN", "IsInf", "EyeLike", "RandomNormal", "RandomUniform",
    "RandomNormalLike", "RandomUniformLike", "Multinomial", "OneHot",
}


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _inp(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _const_value(em: Emitter, node: onnx.NodeProto, name: str, what: str) -> np.ndarray:
    v = em.value(name) if name else None
    if v is None:
        raise GradientUnsupported(node.op_type, node.name or node.output[0], f"{what} is not known at build time")
    return np.asarray(v)


def vjp(*ops: str):
    def deco(fn: Rule) -> Rule:
        for op in ops:
            VJP[op] = fn
        return fn
    return deco


def jvp(*ops: str):
    def deco(fn: Rule) -> Rule:
        for op in ops:
            JVP[op] = fn
        return fn
    return deco


def _refuse(node: onnx.NodeProto, why: str) -> None:
    raise GradientUnsupported(node.op_type, node.name or node.output[0], why)


# --- elementwise unary: dy = f'(x) * dx; the same factor serves both modes --------------

def _unary_factor(em: Emitter, node: onnx.NodeProto) -> str:
    """The elementwise derivative dy/dx of a unary node, as a tensor shaped like x."""
    x, y, a, op = node.input[0], node.output[0], attrs(node), node.op_type
    one = em.scalar(1.0, x)
    if op == "Relu":
        # y = max(x, 0): the 0/1 mask of x > 0 is y > 0 (Greater + Cast: 40% cheaper than Sign in onnxruntime).
        return em.mask(em.op("Greater", [y, em.scalar(0.0, y)]), y)
    if op == "LeakyRelu":
        alpha = em.scalar(a.get("alpha", 0.01), x)
        return em.op("Where", [em.op("Greater", [x, em.scalar(0.0, x)]), one, alpha])
    if op == "PRelu":
        return em.op("Where", [em.op("Greater", [x, em.scalar(0.0, x)]), one, node.input[1]])
    if op == "Sigmoid":
        return em.op("Mul", [y, em.op("Sub", [one, y])])
    if op == "Tanh":
        return em.op("Sub", [one, em.op("Mul", [y, y])])
    if op == "Elu":
        alpha = em.scalar(a.get("alpha", 1.0), x)
        return em.op("Where", [em.op("Greater", [x, em.scalar(0.0, x)]), one, em.op("Add", [y, alpha])])
    if op == "Selu":
        alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
        return em.op("Where", [em.op("Greater", [x, em.scalar(0.0, x)]), em.scalar(gamma, x),
                               em.op("Add", [y, em.scalar(alpha * gamma, x)])])
    if op == "Softplus":
        return em.op("Sigmoid", [x])
    if op == "Softsign":
        d = em.op("Add", [one, em.op("Abs", [x])])
        return em.op("Reciprocal", [em.op("Mul", [d, d])])
    if op == "Erf":
        return em.op("Mul", [em.scalar(2.0 / math.sqrt(math.pi), x), em.op("Exp", [em.op("Neg", [em.op("Mul", [x, x])])])])
    if op == "Exp":
        return y
    if op == "Log":
        return em.op("Reciprocal", [x])
    if op == "Sqrt":
        return em.op("Div", [em.scalar(0.5, x), y])
    if op == "Reciprocal":
        return em.op("Neg", [em.op("Mul", [y, y])])
    if op == "Abs":
        return em.op("Sign", [x])
    if op == "Sin":
        return em.op("Cos", [x])
    if op == "Cos":
        return em.op("Neg", [em.op("Sin", [x])])
    if op == "HardSigmoid":
        alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
        z = em.op("Add", [em.op("Mul", [x, em.scalar(alpha, x)]), em.scalar(beta, x)])
        inside = em.op("And", [em.op("Greater", [z, em.scalar(0.0, x)]), em.op("Less", [z, one])])
        return em.op("Mul", [em.mask(inside, x), em.scalar(alpha, x)])
    if op == "HardSwish":
        # y = x * clip(x/6 + 1/2, 0, 1); y' = clip(...) + x/6 inside (-3, 3)
        h = em.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
        inside = em.op("And", [em.op("Greater", [x, em.scalar(-3.0, x)]), em.op("Less", [x, em.scalar(3.0, x)])])
        return em.op("Add", [h, em.op("Mul", [em.mask(inside, x), em.op("Div", [x, em.scalar(6.0, x)])])])
    if op == "Clip":
        lo = a.get("min") if em.opset < 11 else None
        hi = a.get("max") if em.opset < 11 else None
        lo_name = em.scalar(lo, x) if lo is not None else _inp(node, 1)
        hi_name = em.scalar(hi, x) if hi is not None else _inp(node, 2)
        conds = []
        if lo_name:
            conds.append(em.op("Greater", [x, lo_name]))
        if hi_name:
            conds.append(em.op("Less", [x, hi_name]))
        if not conds:
            return em.expand_like(one, x)
        c = conds[0] if len(conds) == 1 else em.op("And", conds)
        return em.mask(c, x)
    raise AssertionError(op)


UNARY = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Softsign", "Erf", "Exp",
         "Log", "Sqrt", "Reciprocal", "Abs", "Sin", "Cos", "HardSigmoid", "HardSwish", "Clip")


@vjp(*UNARY)
def _vjp_unary(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    if node.op_type == "PRelu" and em.active(node.input[1]):
        _refuse(node, "a slope that depends on the input")
    if node.op_type == "Clip" and any(em.active(n) for n in node.input[1:] if n):
        _refuse(node, "bounds that depend on the input")
    return [em.op("Mul", [g[0], _unary_factor(em, node)])] + [None] * (len(node.input) - 1)


@jvp(*UNARY)
def _jvp_unary(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    if any(t[1:]):
        _refuse(node, "parameters that depend on the input")
    return [em.op("Mul", [t[0], _unary_factor(em, node)])]


@vjp("Neg")
def _vjp_neg(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [em.op("Neg", [g[0]])]


@jvp("Neg")
def _jvp_neg(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    return [em.op("Neg", [t[0]])]


@vjp("Identity", "Dropout")
def _vjp_identity(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [g[0]] + [None] * (len(node.input) - 1)


@jvp("Identity", "Dropout")
def _jvp_identity(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    return [t[0]] + [None] * (len(node.output) - 1)


@vjp("Cast")
def _vjp_cast(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [em.cast_like(g[0], node.input[0])]


@jvp("Cast")
def _jvp_cast(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    return [em.op("Cast", [t[0]], to=attrs(node)["to"])]


# --- broadcasting binary ops ---------------------------------------------------------

def _ub(em: Emitter, g: str, node: onnx.NodeProto, i: int) -> str:
    return em.unbroadcast(g, em.shape(node.output[0]), em.shape(node.input[i]), node.input[i])


@vjp("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min")
def _vjp_binary(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    op, (a, b), y, g0 = node.op_type, node.input[:2], node.output[0], g[0]
    act_a, act_b = em.active(a), em.active(b)
    ga = gb = None
    if op == "Add":
        ga, gb = g0, g0
    elif op == "Sub":
        ga, gb = g0, (em.op("Neg", [g0]) if act_b else None)
    elif op == "Mul":
        ga = em.op("Mul", [g0, b]) if act_a else None
        gb = em.op("Mul", [g0, a]) if act_b else None
    elif op == "Div":
        ga = em.op("Div", [g0, b]) if act_a else None
        gb = em.op("Neg", [em.op("Div", [em.op("Mul", [g0, y]), b])]) if act_b else None
    elif op == "Pow":
        if act_b:
            _refuse(node, "an exponent that depends on the input")
        bb = em.cast_like(b, a)
        ga = em.op("Mul", [g0, em.op("Mul", [bb, em.op("Pow", [a, em.op("Sub", [bb, em.scalar(1.0, a)])])])])
    else:  # Max / Min with two inputs: the derivative follows the selected operand (ties to the first)
        if len(node.input) != 2:
            _refuse(node, "more than two operands")
        pick_a = em.greater_equal(a, b) if op == "Max" else em.less_equal(a, b)
        ma = em.mask(pick_a, y)
        ga = em.op("Mul", [g0, ma]) if act_a else None
        gb = em.op("Mul", [g0, em.op("Sub", [em.scalar(1.0, y), ma])]) if act_b else None
    return [_ub(em, ga, node, 0) if (act_a and ga) else None, _ub(em, gb, node, 1) if (act_b and gb) else None]


@jvp("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min")
def _jvp_binary(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    op, (a, b), y = node.op_type, node.input[:2], node.output[0]
    ta, tb = t[0], t[1]
    terms: list[str] = []
    if op == "Add":
        terms = [x for x in (ta, tb) if x]
    elif op == "Sub":
        terms = [x for x in (ta, em.op("Neg", [tb]) if tb else None) if x]
    elif op == "Mul":
        terms = [x for x in (em.op("Mul", [ta, b]) if ta else None, em.op("Mul", [tb, a]) if tb else None) if x]
    elif op == "Div":
        terms = [x for x in (em.op("Div", [ta, b]) if ta else None,
                             em.op("Neg", [em.op("Div", [em.op("Mul", [tb, y]), b])]) if tb else None) if x]
    elif op == "Pow":
        if tb:
            _refuse(node, "an exponent that depends on the input")
        bb = em.cast_like(b, a)
        terms = [em.op("Mul", [ta, em.op("Mul", [bb, em.op("Pow", [a, em.op("Sub", [bb, em.scalar(1.0, a)])])])])]
    else:
        if len(node.input) != 2:
            _refuse(node, "more than two operands")
        pick_a = em.greater_equal(a, b) if op == "Max" else em.less_equal(a, b)
        ma = em.mask(pick_a, y)
        if ta:
            terms.append(em.op("Mul", [ta, ma]))
        if tb:
            terms.append(em.op("Mul", [tb, em.op("Sub", [em.scalar(1.0, y), ma])]))
    out = em.add_all(terms)
    return [em.op("Add", [out, em.zeros_like(y)])]


@vjp("Sum")
def _vjp_sum(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [_ub(em, g[0], node, i) if em.active(n) else None for i, n in enumerate(node.input)]


@jvp("Sum")
def _jvp_sum(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    return [em.op("Add", [em.add_all([x for x in t if x]), em.zeros_like(node.output[0])])]


@vjp("Where")
def _vjp_where(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    c, a, b = node.input
    zero = em.scalar(0.0, node.output[0])
    ga = _ub(em, em.op("Where", [c, g[0], zero]), node, 1) if em.active(a) else None
    gb = _ub(em, em.op("Where", [c, zero, g[0]]), node, 2) if em.active(b) else None
    return [None, ga, gb]


@jvp("Where")
def _jvp_where(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    c, a, b = node.input
    zero = em.scalar(0.0, node.output[0])
    ta = t[1] if t[1] else zero
    tb = t[2] if t[2] else zero
    return [em.op("Add", [em.op("Where", [c, ta, tb]), em.zeros_like(node.output[0])])]


# --- matrix products -------------------------------------------------------------------

@vjp("MatMul")
def _vjp_matmul(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    a, b = node.input
    ra, rb = len(em.shape(a)), len(em.shape(b))
    if ra < 2 or rb < 2:
        _refuse(node, "1-D operands")
    out = em.shape(node.output[0])
    ga = gb = None
    if em.active(a):
        full = em.op("MatMul", [g[0], em.transpose_last2(b, rb)])
        ga = em.unbroadcast(full, out[:-2] + em.shape(a)[-2:], em.shape(a), a)
    if em.active(b):
        full = em.op("MatMul", [em.transpose_last2(a, ra), g[0]])
        gb = em.unbroadcast(full, out[:-2] + em.shape(b)[-2:], em.shape(b), b)
    return [ga, gb]


@jvp("MatMul")
def _jvp_matmul(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    a, b = node.input
    terms = []
    if t[0]:
        terms.append(em.op("MatMul", [t[0], b]))
    if t[1]:
        terms.append(em.op("MatMul", [a, t[1]]))
    return [em.add_all(terms)]


@vjp("Gemm")
def _vjp_gemm(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    a = attrs(node)
    A, B = node.input[:2]
    C = _inp(node, 2)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
    gA = gB = gC = None
    z = [em.scalar(0.0, A)] if em.opset < 11 else []  # C is optional from opset 11 only
    if em.active(A):
        if ta == 0:
            gA = em.op("Gemm", [g[0], B] + z, alpha=alpha, transB=1 - tb)
        else:
            gA = em.op("Gemm", [B, g[0]] + z, alpha=alpha, transA=tb, transB=1)
    if em.active(B):
        _refuse(node, "a weight matrix B that depends on the input (use MatMul)")
    if C and em.active(C):
        gC = em.unbroadcast(em.op("Mul", [g[0], em.scalar(beta, C)]), em.shape(node.output[0]), em.shape(C), C)
    return [gA, gB] + ([gC] if len(node.input) > 2 else [])


@jvp("Gemm")
def _jvp_gemm(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    a = attrs(node)
    A, B = node.input[:2]
    kw = {"alpha": float(a.get("alpha", 1.0)), "transA": int(a.get("transA", 0)), "transB": int(a.get("transB", 0))}
    z = [em.scalar(0.0, A)] if em.opset < 11 else []
    terms = []
    if t[0]:
        terms.append(em.op("Gemm", [t[0], B] + z, **kw))
    if t[1]:
        terms.append(em.op("Gemm", [A, t[1]] + z, **kw))
    if len(t) > 2 and t[2]:
        terms.append(em.op("Add", [em.op("Mul", [t[2], em.scalar(float(a.get("beta", 1.0)), node.output[0])]),
                                   em.zeros_like(node.output[0])]))
    return [em.add_all(terms)]


# --- convolution and pooling -----------------------------------------------------------

def _window(em: Emitter, node: onnx.NodeProto, x: str, kernel: tuple[int, ...]):
    """Strides, dilations and (begin, end) pads of a windowed op, with auto_pad resolved."""
    a = attrs(node)
    n = len(kernel)
    spatial = em.shape(x)[2:]
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    pads = list(a.get("pads", [0] * (2 * n)))
    auto = _s(a.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n)
        for i in range(n):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial[i])
            small = total // 2
            pads[i], pads[n + i] = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
    elif auto == "VALID":
        pads = [0] * (2 * n)
    return strides, dil, pads[:n], pads[n:]


def _place(em: Emitter, g: str, weight: str, x: str, out_spatial, kernel, strides, dil, begins, group: int) -> str:
    """Transpose of a strided window op: ConvTranspose without pads, then crop/zero-pad to x's size."""
    n = len(kernel)
    spatial = em.shape(x)[2:]
    sizes = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out_spatial, strides, kernel, dil)]
    ends = [max(0, size - b - sp) for size, b, sp in zip(sizes, begins, spatial)]
    extra = [max(0, sp - (size - b)) for size, b, sp in zip(sizes, begins, spatial)]
    if all(b >= 0 for b in begins) and all(e < max(s, d) for e, s, d in zip(extra, strides, dil)):
        # The crop and the zero rows at the end done by ConvTranspose itself (pads, output_padding):
        # a separate Slice of its output cost more than the transposed convolution at 224 px.
        return em.op("ConvTranspose", [g, weight], strides=list(strides), dilations=list(dil), group=int(group),
                     kernel_shape=list(kernel), pads=list(begins) + ends, output_padding=extra)
    full = em.op("ConvTranspose", [g, weight], strides=list(strides), dilations=list(dil), group=int(group),
                 kernel_shape=list(kernel))
    pads = [0, 0] + [-b for b in begins] + [0, 0]
    for i in range(n):
        size = (out_spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1
        pads.append(spatial[i] - (size - begins[i]))
    return em.pad(full, pads)


@vjp("Conv")
def _vjp_conv(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x, w = node.input[:2]
    if em.active(w) or (len(node.input) > 2 and node.input[2] and em.active(node.input[2])):
        _refuse(node, "weights that depend on the input")
    kernel = tuple(em.shape(w)[2:])
    strides, dil, begins, ends = _window(em, node, x, kernel)
    group = int(attrs(node).get("group", 1))
    weight = em.value(w)
    reach = [(k - 1) * d for k, d in zip(kernel, dil)]
    if weight is not None and all(s == 1 for s in strides) and all(b <= r and e <= r for b, e, r in zip(begins, ends, reach)):
        # Stride 1: the transpose is a convolution with the flipped, transposed kernel
        # (onnxruntime's Conv is several times faster than its ConvTranspose).
        m, cg = weight.shape[:2]
        wt = weight.reshape((group, m // group, cg) + kernel).swapaxes(1, 2).reshape((cg * group, m // group) + kernel)
        wt = np.flip(wt, axis=tuple(range(2, wt.ndim)))
        pads = [r - b for r, b in zip(reach, begins)] + [r - e for r, e in zip(reach, ends)]
        dx = em.op("Conv", [g[0], em.const(np.ascontiguousarray(wt))], pads=pads, dilations=list(dil), group=group,
                   kernel_shape=list(kernel))
    else:
        dx = _place(em, g[0], w, x, em.shape(node.output[0])[2:], kernel, strides, dil, begins, group)
    return [dx, None] + ([None] if len(node.input) > 2 else [])


@jvp("Conv")
def _jvp_conv(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    if any(t[1:]):
        _refuse(node, "weights that depend on the input")
    return [em.op("Conv", [t[0], node.input[1]], **attrs(node))]


@vjp("BatchNormalization")
def _vjp_bn(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [em.op("Mul", [g[0], _bn_factor(em, node)])] + [None] * (len(node.input) - 1)


@jvp("BatchNormalization")
def _jvp_bn(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    return [em.op("Mul", [t[0], _bn_factor(em, node)])] + [None] * (len(node.output) - 1)


def _bn_factor(em: Emitter, node: onnx.NodeProto) -> str:
    a = attrs(node)
    if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
        _refuse(node, "training mode (batch statistics)")
    if any(em.active(n) for n in node.input[1:]):
        _refuse(node, "parameters that depend on the input")
    scale = _const_value(em, node, node.input[1], "the scale")
    var = _const_value(em, node, node.input[4], "the running variance")
    eps = float(a.get("epsilon", 1e-5))
    factor = (scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps))
    rank = len(em.shape(node.input[0]))
    return em.const(factor.reshape((-1,) + (1,) * (rank - 2)).astype(em.dtype(node.input[0])))


@vjp("GlobalAveragePool")
def _vjp_gap(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    n = int(np.prod(em.shape(x)[2:]))
    return [em.expand_like(em.op("Div", [g[0], em.scalar(float(n), x)]), x)]


@jvp("GlobalAveragePool", "AveragePool", "ReduceMean", "ReduceSum", "Flatten", "Reshape", "Transpose", "Squeeze",
     "Unsqueeze", "Expand", "Slice", "Gather")
def _jvp_linear(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    """Operators linear in their first input: apply them to the tangent."""
    if any(t[1:]):
        _refuse(node, "shape or index inputs that depend on the input")
    return [em.op(node.op_type, [t[0]] + list(node.input[1:]), **attrs(node))]


def pool_divisor(kernel, strides, begins, ends, spatial, out_sp, include: bool) -> np.ndarray:
    """AveragePool's divisor per output position: the window's overlap with the input (or with the
    padded input when ``include``, count_include_pad), per axis, multiplied."""
    div = np.ones(tuple(out_sp), dtype=np.float64)
    for i, (k, s, b, e, n, o) in enumerate(zip(kernel, strides, begins, ends, spatial, out_sp)):
        start = np.arange(o) * s - b
        lo, hi = (-b, n + e) if include else (0, n)
        cnt = np.minimum(start + k, hi) - np.maximum(start, lo)
        shape = [1] * len(out_sp)
        shape[i] = o
        div = div * cnt.reshape(shape)
    return div


@vjp("AveragePool")
def _vjp_avgpool(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    a = attrs(node)
    kernel = tuple(a["kernel_shape"])
    strides, dil, begins, ends = _window(em, node, x, kernel)
    if any(d != 1 for d in dil):
        _refuse(node, "dilated average pooling")
    spatial = em.shape(x)[2:]
    out_sp = em.shape(node.output[0])[2:]
    include = int(a.get("count_include_pad", 0))
    div = pool_divisor(kernel, strides, begins, ends, spatial, out_sp, include)
    c = em.shape(x)[1]
    scaled = em.op("Div", [g[0], em.const(div[None, None].astype(em.dtype(x)))])
    ones = em.const(np.ones((c, 1) + kernel, dtype=em.dtype(x)))
    return [_place(em, scaled, ones, x, out_sp, kernel, strides, [1] * len(kernel), begins, c)]


def tiled_maxpool(node: onnx.NodeProto, opset: int) -> bool:
    """A 2-D max-pool with non-overlapping tiles (stride = kernel, no padding, no dilation) at opset >= 11.

    Its derivatives need no indices output: the picked element of each tile is found by
    comparing the tile's strided slices with the pooled value (first match in row-major
    order), which is cheaper than onnxruntime's MaxPool with indices.
    """
    a = attrs(node)
    k = list(a.get("kernel_shape", []))
    return (opset >= 11 and len(k) == 2 and list(a.get("strides", [1, 1])) == k and not any(a.get("pads", [0] * 4))
            and all(d == 1 for d in a.get("dilations", [1, 1])) and _s(a.get("auto_pad", "NOTSET")) in ("NOTSET", "VALID")
            and int(a.get("storage_order", 0)) == 0)


def _tile_slices(em: Emitter, t: str, kernel, spatial, out_sp, fill: float) -> list[str]:
    """The kh*kw strided slices t[:, :, a::kh, b::kw], cropped or padded (with ``fill``) to the pooled size."""
    (kh, kw), (h, w), (oh, ow) = kernel, spatial, out_sp
    big = np.iinfo(np.int64).max
    out = []
    for a in range(kh):
        for b in range(kw):
            sl = em.slice(t, [a, b], [big, big], [2, 3], [kh, kw])
            na, nb = len(range(a, h, kh)), len(range(b, w, kw))
            if na > oh or nb > ow:
                sl = em.slice(sl, [0, 0], [oh, ow], [2, 3])
            if na < oh or nb < ow:
                pads = em.const(np.array([0, 0, 0, 0, 0, 0, max(0, oh - na), max(0, ow - nb)], np.int64))
                sl = em.op("Pad", [sl, pads, em.scalar(fill, t)], mode="constant")
            out.append(sl)
    return out


def _tile_masks(em: Emitter, node: onnx.NodeProto, kernel, spatial, out_sp) -> list[str]:
    """Per tile offset, 0/1 where that offset holds the tile's first maximum."""
    x, y = node.input[0], node.output[0]
    masks, taken = [], None
    for sl in _tile_slices(em, x, kernel, spatial, out_sp, -np.inf):
        eq = em.op("Equal", [sl, y])
        first = eq if taken is None else em.op("And", [eq, em.op("Not", [taken])])
        taken = eq if taken is None else em.op("Or", [taken, eq])
        masks.append(em.mask(first, x))
    return masks


@vjp("MaxPool")
def _vjp_maxpool(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    a = attrs(node)
    if tiled_maxpool(node, em.opset):
        kernel = tuple(a["kernel_shape"])
        masks = _tile_masks(em, node, kernel, em.shape(x)[2:], em.shape(node.output[0])[2:])
        return [_maxpool_tiles(em, g[0], masks, kernel, em.shape(x)[2:], em.shape(node.output[0])[2:])]
    if int(a.get("storage_order", 0)) != 0:
        _refuse(node, "column-major indices (storage_order=1)")
    idx = node.output[1] if len(node.output) > 1 and node.output[1] else None
    if idx is None:
        _refuse(node, "no indices output (opset < 8)")
    kernel = tuple(a["kernel_shape"])
    strides, dil, begins, _ = _window(em, node, x, kernel)
    spatial = em.shape(x)[2:]
    out_sp = em.shape(node.output[0])[2:]
    c = em.shape(x)[1]
    plane = int(np.prod(spatial))
    # The index within one (n, c) plane of the element the pool picked.
    local = em.op("Mod", [idx, em.const(np.array(plane, np.int64))]) if em.opset >= 10 else em.op(
        "Sub", [idx, em.op("Mul", [em.op("Div", [idx, em.const(np.array(plane, np.int64))]),
                                  em.const(np.array(plane, np.int64))])])
    # For each kernel offset, the flat position it reads at each output (-1 where in padding);
    # the cotangent goes to offset j where the picked index equals that position.
    offsets = list(np.ndindex(*kernel))
    masked = []
    for off in offsets:
        pos = np.zeros(out_sp, dtype=np.int64)
        valid = np.ones(out_sp, dtype=bool)
        for i in range(len(kernel)):
            coord = np.arange(out_sp[i]) * strides[i] - begins[i] + off[i] * dil[i]
            shape = [1] * len(kernel)
            shape[i] = out_sp[i]
            coord = coord.reshape(shape)
            valid = valid & (coord >= 0) & (coord < spatial[i])
            pos = pos * spatial[i] + coord
        pos = np.where(valid, pos, -1)
        hit = em.mask(em.op("Equal", [local, em.const(pos[None, None])]), g[0])
        masked.append(em.unsqueeze(em.op("Mul", [g[0], hit]), [2]))
    stacked = em.op("Concat", masked, axis=2)  # (N, C, k, *out)
    flat = em.op("Reshape", [stacked, em.const(np.array([0, c * len(offsets)] + list(out_sp), np.int64))])
    em.shapes[flat] = (em.shape(g[0])[0], c * len(offsets)) + tuple(out_sp)
    kern = np.zeros((c * len(offsets), 1) + kernel, dtype=em.dtype(x))
    for ci in range(c):
        for j, off in enumerate(offsets):
            kern[(ci * len(offsets) + j, 0) + off] = 1.0
    return [_place(em, flat, em.const(kern), x, out_sp, kernel, strides, dil, begins, c)]


def _maxpool_tiles(em: Emitter, g: str, masks: list[str], kernel, spatial, out_sp) -> str:
    """Non-overlapping 2-D max-pool: the masked cotangents of the kh x kw tile offsets, interleaved back.

    Only Mul in output space, Concat and one Reshape: no scatter, no transposed convolution.
    """
    (kh, kw), (oh, ow), (h, w) = kernel, out_sp, spatial
    rows = []
    for a in range(kh):
        parts = [em.unsqueeze(em.op("Mul", [g, masks[a * kw + b]]), [3, 5]) for b in range(kw)]
        rows.append(em.op("Concat", parts, axis=5) if kw > 1 else parts[0])
    tiles = em.op("Concat", rows, axis=3) if kh > 1 else rows[0]
    up = em.op("Reshape", [tiles, em.const(np.array([0, 0, oh * kh, ow * kw], np.int64))])
    return em.pad(up, [0, 0, 0, 0, 0, 0, h - oh * kh, w - ow * kw])


@jvp("MaxPool")
def _jvp_maxpool(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    if tiled_maxpool(node, em.opset):
        x, y = node.input[0], node.output[0]
        kernel, spatial, out_sp = tuple(attrs(node)["kernel_shape"]), em.shape(x)[2:], em.shape(y)[2:]
        masks = _tile_masks(em, node, kernel, spatial, out_sp)
        parts = _tile_slices(em, t[0], kernel, spatial, out_sp, 0.0)
        return [em.add_all([em.op("Mul", [p, m]) for p, m in zip(parts, masks)]), None]
    idx = node.output[1] if len(node.output) > 1 and node.output[1] else None
    if idx is None or int(attrs(node).get("storage_order", 0)) != 0:
        _refuse(node, "no row-major indices output")
    flat = em.op("Reshape", [t[0], em.const(np.array([-1], np.int64))])
    return [em.op("Gather", [flat, idx], axis=0), None]


# --- shape ops ---------------------------------------------------------------------------

@vjp("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def _vjp_reshape(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [em.reshape_like(g[0], node.input[0])] + [None] * (len(node.input) - 1)


@vjp("Transpose")
def _vjp_transpose(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    rank = len(em.shape(node.input[0]))
    perm = list(attrs(node).get("perm", list(range(rank))[::-1]))
    inv = [0] * rank
    for i, p in enumerate(perm):
        inv[p] = i
    return [em.op("Transpose", [g[0]], perm=inv)]


@vjp("Expand")
def _vjp_expand(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    return [em.unbroadcast(g[0], em.shape(node.output[0]), em.shape(x), x), None]


def _axis(node: onnx.NodeProto, rank: int, default: int) -> int:
    ax = int(attrs(node).get("axis", default))
    return ax + rank if ax < 0 else ax


def _refuse_batch_axis(em: Emitter, node: onnx.NodeProto, axis: int) -> None:
    if axis == 0 and em.batch_dynamic:
        _refuse(node, "an operation along the batch axis")


@vjp("Concat")
def _vjp_concat(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    rank = len(em.shape(node.output[0]))
    axis = _axis(node, rank, 0)
    _refuse_batch_axis(em, node, axis)
    out, start = [], 0
    for name in node.input:
        size = em.shape(name)[axis]
        out.append(em.slice(g[0], [start], [start + size], [axis]) if em.active(name) else None)
        start += size
    return out


@jvp("Concat")
def _jvp_concat(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    parts = [ti if ti else em.zeros_like(name) for ti, name in zip(t, node.input)]
    return [em.op("Concat", parts, axis=attrs(node).get("axis", 0))]


@vjp("Split")
def _vjp_split(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    rank = len(em.shape(node.input[0]))
    axis = _axis(node, rank, 0)
    _refuse_batch_axis(em, node, axis)
    parts = [gi if gi else em.zeros_like(o) for gi, o in zip(g, node.output)]
    return [em.op("Concat", parts, axis=axis)] + [None] * (len(node.input) - 1)


@jvp("Split")
def _jvp_split(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    outs = em.op("Split", [t[0]] + list(node.input[1:]), n_out=len(node.output), **attrs(node))
    return list(outs) if isinstance(outs, list) else [outs]


def _slice_params(em: Emitter, node: onnx.NodeProto):
    shape = em.shape(node.input[0])
    rank = len(shape)
    if em.opset < 10:
        a = attrs(node)
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = list(_const_value(em, node, node.input[1], "the start"))
        ends = list(_const_value(em, node, node.input[2], "the end"))
        axes = list(_const_value(em, node, _inp(node, 3), "the axes")) if _inp(node, 3) else list(range(len(starts)))
        steps = list(_const_value(em, node, _inp(node, 4), "the steps")) if _inp(node, 4) else [1] * len(starts)
    return shape, rank, starts, ends, [int(a) + rank if int(a) < 0 else int(a) for a in axes], steps


@vjp("Slice")
def _vjp_slice(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    shape, rank, starts, ends, axes, steps = _slice_params(em, node)
    gx = g[0]
    pads = [0] * (2 * rank)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        _refuse_batch_axis(em, node, ax)
        idx = np.arange(shape[ax])[slice(int(st), int(en), int(sp))]
        if int(sp) == 1:
            pads[ax] = int(idx[0]) if idx.size else 0
            pads[rank + ax] = shape[ax] - (int(idx[-1]) + 1 if idx.size else 0)
        else:
            gx = _scatter_axis(em, gx, idx, ax, shape[ax], rank, em.dtype(node.input[0]))
    return [em.pad(gx, pads)] + [None] * (len(node.input) - 1)


def _scatter_axis(em: Emitter, g: str, idx: np.ndarray, axis: int, n: int, rank: int, dtype) -> str:
    """Transpose of taking positions ``idx`` along ``axis``: a product with a one-hot matrix."""
    onehot = np.zeros((idx.size, n), dtype=dtype)
    onehot[np.arange(idx.size), idx] = 1.0
    perm = [i for i in range(rank) if i != axis] + [axis]
    inv = [perm.index(i) for i in range(rank)]
    moved = em.op("Transpose", [g], perm=perm)
    return em.op("Transpose", [em.op("MatMul", [moved, em.const(onehot)])], perm=inv)


@vjp("Gather")
def _vjp_gather(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    data, indices = node.input
    shape = em.shape(data)
    rank = len(shape)
    axis = _axis(node, rank, 0)
    _refuse_batch_axis(em, node, axis)
    idx = _const_value(em, node, indices, "the indices").astype(np.int64)
    n = shape[axis]
    flat = np.where(idx < 0, idx + n, idx).reshape(-1)
    gy = g[0]
    # Bring the cotangent to data's rank: one axis of len(flat) where the indices' axes were.
    if idx.ndim != 1:
        target = [0] * axis + [flat.size] + list(shape[axis + 1:])
        gy = em.op("Reshape", [gy, em.const(np.array(target, np.int64))])
    return [_scatter_axis(em, gy, flat, axis, n, rank, em.dtype(data)), None]


@vjp("Pad")
def _vjp_pad(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    shape = em.shape(x)
    rank = len(shape)
    a = attrs(node)
    mode = _s(a.get("mode", "constant"))
    if em.opset < 11:
        pads = list(a["pads"])
    else:
        pads = [int(p) for p in _const_value(em, node, node.input[1], "the pads")]
        if len(node.input) > 3 and node.input[3]:
            axes = [int(v) for v in _const_value(em, node, node.input[3], "the axes")]
            full = [0] * (2 * rank)
            for i, ax in enumerate(axes):
                ax = ax + rank if ax < 0 else ax
                full[ax], full[rank + ax] = pads[i], pads[len(axes) + i]
            pads = full
    if mode == "constant":
        return [em.pad(g[0], [-p for p in pads])] + [None] * (len(node.input) - 1)
    if mode not in ("reflect", "edge"):
        _refuse(node, f"pad mode '{mode}'")
    gx = g[0]
    # Separable: undo one axis at a time; the cotangent of each padded border folds back
    # onto the rows it copied (mirrored for reflect, the edge row for edge).
    for ax in range(rank):
        b, e, n = pads[ax], pads[rank + ax], shape[ax]
        if b == 0 and e == 0:
            continue
        _refuse_batch_axis(em, node, ax)
        if b < 0 or e < 0:
            _refuse(node, "negative pads in reflect/edge mode")
        inner = em.slice(gx, [b], [b + n], [ax])
        terms = [inner]
        if mode == "reflect":
            if b:
                part = em.op("Gather", [gx, em.const(np.arange(b - 1, -1, -1, dtype=np.int64))], axis=ax)
                # part[j] = g[b-1-j] lands on x[j+1], j < b
                padv = [0] * (2 * rank)
                padv[ax], padv[rank + ax] = 1, n - 1 - b
                terms.append(em.pad(part, padv))
            if e:
                part = em.op("Gather", [gx, em.const(np.arange(b + n + e - 1, b + n - 1, -1, dtype=np.int64))], axis=ax)
                # part[j] = g[b+n+e-1-j] lands on x[n-1-e+j], j < e
                padv = [0] * (2 * rank)
                padv[ax], padv[rank + ax] = n - 1 - e, 1
                terms.append(em.pad(part, padv))
        else:
            if b:
                part = em.reduce_sum(em.slice(gx, [0], [b], [ax]), [ax], keepdims=True)
                padv = [0] * (2 * rank)
                padv[rank + ax] = n - 1
                terms.append(em.pad(part, padv))
            if e:
                part = em.reduce_sum(em.slice(gx, [b + n], [b + n + e], [ax]), [ax], keepdims=True)
                padv = [0] * (2 * rank)
                padv[ax] = n - 1
                terms.append(em.pad(part, padv))
        gx = em.add_all(terms)
    return [gx] + [None] * (len(node.input) - 1)


@jvp("Pad")
def _jvp_pad(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    if any(t[1:]):
        _refuse(node, "pads that depend on the input")
    a = attrs(node)
    mode = _s(a.get("mode", "constant"))
    if em.opset < 11:
        a = dict(a)
        if mode == "constant":
            a["value"] = 0.0
        return [em.op("Pad", [t[0]], **a)]
    ins = [t[0], node.input[1]]
    if mode == "constant" and len(node.input) > 3 and node.input[3]:
        ins += ["", node.input[3]]
    elif mode != "constant" and len(node.input) > 2:
        ins += list(node.input[2:])
    return [em.op("Pad", ins, **a)]


# --- reductions and normalisations ----------------------------------------------------

def _reduce_axes(em: Emitter, node: onnx.NodeProto) -> tuple[list[int], bool]:
    rank = len(em.shape(node.input[0]))
    a = attrs(node)
    keep = bool(a.get("keepdims", 1))
    if "axes" in a:
        axes = list(a["axes"])
    elif len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in _const_value(em, node, node.input[1], "the axes")]
    else:
        axes = []
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return [], keep
        axes = list(range(rank))
    return sorted(ax + rank if ax < 0 else ax for ax in axes), keep


@vjp("ReduceSum", "ReduceMean")
def _vjp_reduce(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    axes, keep = _reduce_axes(em, node)
    gy = g[0]
    if not axes:
        return [gy] + [None] * (len(node.input) - 1)
    if not keep:
        gy = em.unsqueeze(gy, axes)
    if node.op_type == "ReduceMean":
        n = int(np.prod([em.shape(x)[a] for a in axes]))
        gy = em.op("Div", [gy, em.scalar(float(n), x)])
    return [em.expand_like(gy, x)] + [None] * (len(node.input) - 1)


def _softmax_axes(em: Emitter, node: onnx.NodeProto) -> list[int]:
    rank = len(em.shape(node.input[0]))
    if em.opset >= 13:
        return [_axis(node, rank, -1)]
    # Before opset 13 the input is coerced to 2-D at ``axis``: normalised over every later axis.
    return list(range(_axis(node, rank, 1), rank))


@vjp("Softmax")
@jvp("Softmax")
def _softmax_product(em: Emitter, node: onnx.NodeProto, d: list) -> list:
    """y ⊙ (d − Σ d ⊙ y): softmax's Jacobian diag(y) − y yᵀ is symmetric, so one rule serves both modes."""
    y = node.output[0]
    axes = _softmax_axes(em, node)
    s = em.reduce_sum(em.op("Mul", [d[0], y]), axes, keepdims=True)
    return [em.op("Mul", [y, em.op("Sub", [d[0], s])])]


@vjp("LogSoftmax")
def _vjp_logsoftmax(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    y = node.output[0]
    axes = _softmax_axes(em, node)
    s = em.reduce_sum(g[0], axes, keepdims=True)
    return [em.op("Sub", [g[0], em.op("Mul", [em.op("Exp", [y]), s])])]


@jvp("LogSoftmax")
def _jvp_logsoftmax(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    y = node.output[0]
    axes = _softmax_axes(em, node)
    s = em.reduce_sum(em.op("Mul", [t[0], em.op("Exp", [y])]), axes, keepdims=True)
    return [em.op("Sub", [t[0], s])]


def _layernorm_parts(em: Emitter, node: onnx.NodeProto):
    x = node.input[0]
    if any(em.active(n) for n in node.input[1:] if n):
        _refuse(node, "scale or bias that depend on the input")
    rank = len(em.shape(x))
    axes = list(range(_axis(node, rank, -1), rank))
    mean, inv = node.output[1], node.output[2]
    xhat = em.op("Mul", [em.op("Sub", [x, mean]), inv])
    return axes, xhat, inv


def _layernorm_core(em: Emitter, axes: list[int], v: str, xhat: str, inv: str, x: str) -> str:
    """(v - mean(v) - xhat * mean(v * xhat)) * inv over the normalised axes."""
    n = float(np.prod([em.shape(x)[a] for a in axes]))
    m1 = em.op("Div", [em.reduce_sum(v, axes), em.scalar(n, x)])
    m2 = em.op("Div", [em.reduce_sum(em.op("Mul", [v, xhat]), axes), em.scalar(n, x)])
    return em.op("Mul", [em.op("Sub", [em.op("Sub", [v, m1]), em.op("Mul", [xhat, m2])]), inv])


@vjp("LayerNormalization")
def _vjp_layernorm(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    axes, xhat, inv = _layernorm_parts(em, node)
    gh = em.op("Mul", [g[0], node.input[1]])
    return [_layernorm_core(em, axes, gh, xhat, inv, node.input[0])] + [None] * (len(node.input) - 1)


@jvp("LayerNormalization")
def _jvp_layernorm(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    axes, xhat, inv = _layernorm_parts(em, node)
    core = _layernorm_core(em, axes, t[0], xhat, inv, node.input[0])
    return [em.op("Mul", [core, node.input[1]]), None, None]




def _resize_matrix(em: Emitter, node: onnx.NodeProto, axis: int, rank: int, n_in: int, n_out: int,
                   double: bool = False) -> np.ndarray:
    """The (n_out, n_in) interpolation matrix of a Resize/Upsample along one axis, by resizing the identity.

    Resize modes nearest, linear and cubic are separable: the map along each axis is the
    same node applied to a one-axis input. onnxruntime runs it once here, at build time, so
    every coordinate-transformation and rounding mode is the runtime's own. ``double``: in
    float64 by onnx's reference evaluator instead (onnxruntime has no double Resize), for the
    self-check's float64 copy of the model.
    """
    from ..model.session import create_session

    a = attrs(node)
    shape_in = [n_in] + [1] * (rank - 1)
    shape_in[axis] = n_in
    per_axis = [1.0] * rank
    per_axis[axis] = n_out / n_in
    sizes = [n_in] + [1] * (rank - 1)
    sizes[axis] = n_out
    inits = []
    if node.op_type == "Upsample" or em.opset < 11:
        scales = np.array(per_axis, np.float32)
        scales[axis] = float(em.value(node.input[1]).reshape(-1)[axis]) if node.op_type == "Upsample" or len(node.input) > 1 \
            else scales[axis]
        inputs = ["x", "scales"]
        inits.append(onnx.numpy_helper.from_array(scales, "scales"))
        if "scales" in a:  # Upsample-7 keeps scales as an attribute
            inputs = ["x"]
            a = {**a, "scales": [float(v) for v in scales]}
            inits = []
    else:
        use_sizes = len(node.input) > 3 and node.input[3]
        if use_sizes:
            inputs = ["x", "", "", "sizes"]
            inits.append(onnx.numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        else:
            scales = np.ones(rank, np.float32)
            scales[axis] = float(em.value(node.input[2]).reshape(-1)[axis])
            inputs = ["x", "", "scales"]
            inits.append(onnx.numpy_helper.from_array(scales, "scales"))
    one = helper.make_node(node.op_type, inputs, ["y"], **a)
    elem = onnx.TensorProto.DOUBLE if double else onnx.TensorProto.FLOAT
    graph = helper.make_graph([one], "axis", [helper.make_tensor_value_info("x", elem, shape_in)],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", em.opset)])
    model.ir_version = 8
    eye = np.eye(n_in, dtype=np.float64 if double else np.float32).reshape(shape_in)
    if double:
        from onnx.reference import ReferenceEvaluator

        out = np.asarray(ReferenceEvaluator(model).run(None, {"x": eye})[0], dtype=np.float64)
    else:
        session, _ = create_session(model.SerializeToString(), device="cpu", threads=1)
        out = np.asarray(session.run(None, {"x": eye})[0], dtype=np.float64)
    out = np.moveaxis(out, axis, -1).reshape(n_in, -1)
    if out.shape[1] != n_out:
        _refuse(node, "an output size the per-axis interpolation does not reproduce")
    return out.T  # (n_out, n_in): column i is the response to the i-th unit input


@vjp("Resize", "Upsample")
def _vjp_resize(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x, y = node.input[0], node.output[0]
    a = attrs(node)
    if _s(a.get("coordinate_transformation_mode", "")) == "tf_crop_and_resize":
        _refuse(node, "tf_crop_and_resize (a region of interest)")
    if any(em.active(n) for n in node.input[1:] if n):
        _refuse(node, "scales or sizes that depend on the input")
    sin, sout = em.shape(x), em.shape(y)
    rank = len(sin)
    gx = g[0]
    for ax in range(rank):
        if sin[ax] == sout[ax]:
            continue
        _refuse_batch_axis(em, node, ax)
        m = _resize_matrix(em, node, ax, rank, sin[ax], sout[ax])
        perm = [i for i in range(rank) if i != ax] + [ax]
        inv = [perm.index(i) for i in range(rank)]
        moved = em.op("Transpose", [gx], perm=perm)
        gx = em.op("Transpose", [em.op("MatMul", [moved, em.const(m.astype(em.dtype(x)))])], perm=inv)
    return [gx] + [None] * (len(node.input) - 1)


@jvp("Resize", "Upsample")
def _jvp_resize(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    if any(t[1:]):
        _refuse(node, "scales or sizes that depend on the input")
    return [em.op(node.op_type, [t[0]] + list(node.input[1:]), **attrs(node))]
