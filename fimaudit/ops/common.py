"""Helpers shared by the operator families: derivative emission, interval arithmetic and interval VJPs.

Nothing here knows a particular operator; the rules that do live in the family modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from ..errors import UnsupportedModelError
from ..verify.adjoint import ABS_FLOOR, Adj
from ..verify.intervals import Box, gamma
from .registry import TABLE

if TYPE_CHECKING:
    from ..autodiff.emit import Emitter


# ------------------------------------------------------------------------------------ derivative emission
def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def input_name(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def const_value(em: Emitter, node: onnx.NodeProto, name: str, what: str) -> np.ndarray:
    v = em.value(name) if name else None
    if v is None:
        from ..autodiff.emit import GradientUnsupported  # at call time: the autodiff package reads this table

        raise GradientUnsupported(node.op_type, node.name or node.output[0], f"{what} is not known at build time")
    return np.asarray(v)


def refuse(node: onnx.NodeProto, why: str) -> None:
    from ..autodiff.emit import GradientUnsupported

    raise GradientUnsupported(node.op_type, node.name or node.output[0], why)


# windowed ops (Conv, pools): pads resolved, and the transpose of a strided window
def window(em: Emitter, node: onnx.NodeProto, x: str, kernel: tuple[int, ...]):
    """Strides, dilations and (begin, end) pads of a windowed op, with auto_pad resolved."""
    a = attrs(node)
    n = len(kernel)
    spatial = em.shape(x)[2:]
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    pads = list(a.get("pads", [0] * (2 * n)))
    auto = text(a.get("auto_pad", "NOTSET"))
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


def place(em: Emitter, g: str, weight: str, x: str, out_spatial, kernel, strides, dil, begins, group: int) -> str:
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


def axis_of(node: onnx.NodeProto, rank: int, default: int) -> int:
    ax = int(attrs(node).get("axis", default))
    return ax + rank if ax < 0 else ax


def refuse_batch_axis(em: Emitter, node: onnx.NodeProto, axis: int) -> None:
    if axis == 0 and em.batch_dynamic:
        refuse(node, "an operation along the batch axis")


def jvp_linear(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    """Operators linear in their first input: apply them to the tangent."""
    if any(t[1:]):
        refuse(node, "shape or index inputs that depend on the input")
    return [em.op(node.op_type, [t[0]] + list(node.input[1:]), **attrs(node))]


# ------------------------------------------------------------------------------- the bound engine (verify)
def text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def input_at(ins, i, default=None):
    return ins[i] if len(ins) > i and ins[i] is not None else default


def const_input(node, ins, i, what: str):
    v = input_at(ins, i)
    if isinstance(v, Box):
        raise UnsupportedModelError(f"{node.op} '{node.name}': its {what} depends on the input; the bound engine "
                                    "needs it constant")
    return v


def mul_box(x: Box, y: Box) -> Box:
    """Elementwise product of two intervals (the four corner products)."""
    c = np.stack(np.broadcast_arrays(x.lo * y.lo, x.lo * y.hi, x.hi * y.lo, x.hi * y.hi))
    return Box(c.min(axis=0), c.max(axis=0))


def static_only(name):
    def ibp(ctx, node, ins):
        raise UnsupportedModelError(f"{name} '{node.name}' depends on the input: no bound rule for it")

    return ibp


def axes_arg(node, ins, i):
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    v = input_at(ins, i)
    return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]


def window_attrs(ctx, node, x_shape, kernel):
    a = node.attrs
    nk = len(kernel)
    sp = x_shape[2:]
    strides = [int(s) for s in a.get("strides", [1] * nk)]
    dil = [int(d) for d in a.get("dilations", [1] * nk)]
    pads = [int(p) for p in a.get("pads", [0] * (2 * nk))]
    auto = text(a.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nk)
        for i in range(nk):
            o = -(-sp[i] // strides[i])
            total = max(0, (o - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - sp[i])
            small = total // 2
            pads[i], pads[nk + i] = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
    elif auto == "VALID":
        pads = [0] * (2 * nk)
    if any(p < 0 for p in pads):
        raise UnsupportedModelError(f"{node.op} '{node.name}': negative pads")
    if int(a.get("ceil_mode", 0)):
        # ceil mode: extend the end pads so that floor division gives the ceil output size
        for i in range(nk):
            span = (kernel[i] - 1) * dil[i] + 1
            total = sp[i] + pads[i] + pads[nk + i] - span
            if total % strides[i]:
                extra = strides[i] - total % strides[i]
                if ((total + extra) // strides[i]) * strides[i] < sp[i] + pads[i]:  # last window starts inside
                    pads[nk + i] += extra
    return strides, dil, pads[:nk], pads[nk:]


# ----------------------------------------------------------------------------------------- interval VJPs
def none_rest(node, first):
    return [first] + [None] * (len(node.inputs) - 1)


def default_fan(node, ins, out: Box, var: int) -> int:
    """Most terms any element of the input's cotangent sums (its float32 rounding: gamma of it); an op whose
    entry has its own ``fan`` (Conv, Gemm, ...) uses that instead."""
    size_in = max(1, int(np.prod(ins[var].shape)))
    return int(np.ceil(np.prod(out.shape) / size_in)) + 1


def affine_jacobian(ctx, node, adj: Adj, ins, out: Box):
    """A linear op in its varying inputs (weights constant): the CROWN rule is its exact transpose."""
    r = TABLE[node.op]
    res_mid = r.linear(ctx, node, adj.mid, ins, out)
    if res_mid is None:
        raise UnsupportedModelError(f"{node.op} '{node.name}': no interval Jacobian rule for this form")
    widx = r.weight_inputs
    abs_ins = [np.abs(np.asarray(v, np.float64)) if (k in widx and v is not None and not isinstance(v, Box)) else v
               for k, v in enumerate(ins)]
    var = next(k for k, v in enumerate(ins) if isinstance(v, Box))
    g = gamma((r.fan or default_fan)(node, ins, out, var))
    res_rad = r.linear(ctx, node, adj.rad * (1 + g) + g * (np.abs(adj.mid) + adj.absgen), abs_ins, out)
    res_gen = None
    if adj.gen is not None:  # the symbols' generators map exactly (stacked as extra rows)
        n_g, rows = adj.gen.shape[0], adj.mid.shape[0]
        res_gen = r.linear(ctx, node, adj.gen.reshape((n_g * rows,) + adj.mid.shape[1:]), ins, out)[0]
    outs = []
    for k, (m, rr) in enumerate(zip(res_mid[0], res_rad[0])):
        if m is None or not isinstance(ins[k], Box):
            outs.append(None)
            continue
        m = np.asarray(m, np.float64)
        gk = None if res_gen is None else np.asarray(res_gen[k], np.float64).reshape((n_g,) + m.shape)
        outs.append(Adj(m, np.abs(np.asarray(rr, np.float64)) + ABS_FLOOR, gk, adj.ids if gk is not None else ()))
    return outs


affine_jacobian.generators = True


def derivative_rule(drange):
    """An elementwise op y = f(x): the cotangent times [f'_lo, f'_hi] over the input's interval."""

    def jac(ctx, node, adj, ins, out):
        x = ins[0]
        lo, hi = drange(node, np.minimum(x.lo, x.hi), np.maximum(x.lo, x.hi))
        if ctx.cache.get("jac_symbols", True):
            return none_rest(node, adj.symbolic_times(lo, hi, node.index))
        return none_rest(node, adj.times(lo, hi))

    jac.generators = True
    return jac



# ----------------------------------------------------------------------------------------- parsing and bounds
def known_inputs(f):
    """A constant-folding rule ``f(node, ins)`` run only when every input's value is known (else None: unknown)."""

    def fold(node, ins, shapes):
        if any(v is None for v in ins):
            return None
        return f(node, ins)

    return fold


def lip_one(p, node) -> None:
    """1-Lipschitz maps and pure reshapings (no op-specific knowledge)."""
    p.scale(node, 1.0, "1 (1-Lipschitz or a reshaping)")


def lip_sum(p, node) -> None:
    """A sum of tensors: the sum of their bounds (residual y = x + f(x): (1 + L_f) L(x))."""
    p.assign(node, sum(p.lip(i) for i in node.inputs if i), "sum of the inputs' bounds", None)


def conv_pads(node, hw, k, strides, dil) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pads of a 2-D windowed op (``fimaudit.graph.parse.Node``), auto_pad resolved."""
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

# --------------------------------------------------- float64 lowering (fimaudit.autodiff.reference)
class Float64Unsupported(Exception):
    """The float64 copy cannot run in onnxruntime (an operator without a double kernel or rewrite, see an entry's
    ``float64``)."""


def f64(em: Emitter, value) -> str:
    """A float64 constant (the lowering emitter keeps large ones outside the model)."""
    return em.const(np.asarray(value, dtype=np.float64))


def im2col(em: Emitter, x: str, kernel, strides, dil, begins, ends, out_sp) -> str:
    """im2col: x (N, C, *S) -> (N, C, *kernel, *out) with the window elements at each output position.

    Zero padding, then one strided Slice per kernel offset, stacked (opset >= 10); before
    opset 10 (no stepped Slice), one Gather per spatial axis with the (k, out) index table
    k·d + o·s, which turns that axis into two, and a Transpose putting the kernel axes first.
    """
    spatial = em.shape(x)[2:]
    c = em.shape(x)[1]
    n = len(kernel)
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out_sp, strides, kernel, dil)]
    extra = [max(0, nd - (sp + b + e)) for nd, sp, b, e in zip(need, spatial, begins, ends)]
    if any(p < 0 for p in list(begins) + list(ends)):
        raise Float64Unsupported("negative pads")
    t = em.pad(x, [0, 0] + list(begins) + [0, 0] + [e + x_ for e, x_ in zip(ends, extra)])
    if em.opset >= 10:
        parts = []
        for off in np.ndindex(*kernel):
            starts = [o * d for o, d in zip(off, dil)]
            stops = [st + (o - 1) * s + 1 for st, o, s in zip(starts, out_sp, strides)]
            parts.append(em.unsqueeze(em.slice(t, starts, stops, range(2, 2 + n), strides), [2]))
        stacked = em.op("Concat", parts, axis=2) if len(parts) > 1 else parts[0]
        return em.op("Reshape", [stacked, em.const(np.array([0, c] + list(kernel) + list(out_sp), np.int64))])
    for i in range(n):
        idx = np.arange(kernel[i])[:, None] * dil[i] + np.arange(out_sp[i])[None, :] * strides[i]
        t = em.op("Gather", [t, em.const(idx.astype(np.int64))], axis=2 + 2 * i)
    if any(k > 1 for k in kernel[1:]):  # (k0, O0, k1, O1, ...) -> (k0, k1, ..., O0, O1, ...)
        perm = [0, 1] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)]
        t = em.op("Transpose", [t], perm=perm)
    # Without the Transpose only size-1 kernel axes are out of place: the same memory, relabelled.
    return em.op("Reshape", [t, em.const(np.array([0, c] + list(kernel) + list(out_sp), np.int64))])
