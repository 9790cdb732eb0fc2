"""Linear layers: MatMul, Gemm, Conv, ConvTranspose (weights constant, except MatMul of two activations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError
from ..verify.adjoint import ABS_FLOOR, Adj
from ..verify.conv import conv, conv_adjoint
from ..verify.intervals import Box, as_box, gamma, pos_neg, round_margin, sum_rows, unbroadcast
from .common import (Float64Unsupported, affine_jacobian, attrs, const_input, conv_pads, f64, im2col, input_at,
                     input_name, place, refuse, text, window, window_attrs)
from .registry import NO_DOUBLE, Op, register

if TYPE_CHECKING:
    from ..autodiff.emit import Emitter


# ------------------------------------------------------------------------------ derivatives (gradient graphs)
# --- matrix products -------------------------------------------------------------------

def _vjp_matmul(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    a, b = node.input
    ra, rb = len(em.shape(a)), len(em.shape(b))
    if ra < 2 or rb < 2:
        refuse(node, "1-D operands")
    out = em.shape(node.output[0])
    ga = gb = None
    if em.active(a):
        full = em.op("MatMul", [g[0], em.transpose_last2(b, rb)])
        ga = em.unbroadcast(full, out[:-2] + em.shape(a)[-2:], em.shape(a), a)
    if em.active(b):
        full = em.op("MatMul", [em.transpose_last2(a, ra), g[0]])
        gb = em.unbroadcast(full, out[:-2] + em.shape(b)[-2:], em.shape(b), b)
    return [ga, gb]


def _jvp_matmul(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    a, b = node.input
    terms = []
    if t[0]:
        terms.append(em.op("MatMul", [t[0], b]))
    if t[1]:
        terms.append(em.op("MatMul", [a, t[1]]))
    return [em.add_all(terms)]


def _vjp_gemm(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    a = attrs(node)
    A, B = node.input[:2]
    C = input_name(node, 2)
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
        refuse(node, "a weight matrix B that depends on the input (use MatMul)")
    if C and em.active(C):
        gC = em.unbroadcast(em.op("Mul", [g[0], em.scalar(beta, C)]), em.shape(node.output[0]), em.shape(C), C)
    return [gA, gB] + ([gC] if len(node.input) > 2 else [])


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



def _vjp_conv(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x, w = node.input[:2]
    if em.active(w) or (len(node.input) > 2 and node.input[2] and em.active(node.input[2])):
        refuse(node, "weights that depend on the input")
    kernel = tuple(em.shape(w)[2:])
    strides, dil, begins, ends = window(em, node, x, kernel)
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
        dx = place(em, g[0], w, x, em.shape(node.output[0])[2:], kernel, strides, dil, begins, group)
    return [dx, None] + ([None] if len(node.input) > 2 else [])


def _jvp_conv(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    if any(t[1:]):
        refuse(node, "weights that depend on the input")
    return [em.op("Conv", [t[0], node.input[1]], **attrs(node))]



# ------------------------------------------------------------------------------------- linear layers
def _gemm_parts(node, ins):
    al = float(node.attrs.get("alpha", 1.0))
    be = float(node.attrs.get("beta", 1.0))
    ta, tb = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    return al, be, ta, tb


def _gemm_p(c, n, i):
    al, be, ta, tb = _gemm_parts(n, i)
    a = np.asarray(i[0], np.float64)
    b = np.asarray(i[1], np.float64)
    y = al * ((a.T if ta else a) @ (b.T if tb else b))
    if input_at(i, 2) is not None:
        y = y + be * np.asarray(i[2], np.float64)
    return [y]


def _matmul_const_ibp(x: Box, w: np.ndarray, left: bool):
    """x @ w (left: w @ x) with x an interval: midpoint-radius form; margin gamma_n sum |w||x|."""
    mul = (lambda u, v: u @ v) if not left else (lambda u, v: v @ u)
    aw = np.abs(w)
    mid = mul(x.mid, w)
    rad = mul(x.rad, aw)
    mag = mul(np.abs(x.mid), aw) + rad
    n = w.shape[-2] if not left else w.shape[-1]
    return Box(mid - rad, mid + rad), gamma(n) * mag


def _matmul_boxes(x: Box, y: Box) -> tuple[Box, np.ndarray]:
    """x @ y with both intervals (Rump's midpoint-radius product: sound, at most 1.5x wide)."""
    xm, xr, ym, yr = x.mid, x.rad, y.mid, y.rad
    mid = xm @ ym
    rad = np.abs(xm) @ yr + xr @ np.abs(ym) + xr @ yr
    mag = np.abs(xm) @ np.abs(ym) + rad
    return Box(mid - rad, mid + rad), gamma(x.shape[-1]) * mag


def _gemm_ibp(ctx, node, ins):
    al, be, ta, tb = _gemm_parts(node, ins)
    x, w = ins[0], ins[1]
    if isinstance(x, Box) and isinstance(w, Box):
        xa = Box(x.lo.T, x.hi.T) if ta else x
        wb = Box(w.lo.T, w.hi.T) if tb else w
        out, m = _matmul_boxes(xa, wb)
    elif isinstance(x, Box):
        xa = Box(x.lo.T, x.hi.T) if ta else x
        out, m = _matmul_const_ibp(xa, np.asarray(w, np.float64).T if tb else np.asarray(w, np.float64), left=False)
    else:
        wa = np.asarray(x, np.float64).T if ta else np.asarray(x, np.float64)
        wb = Box(w.lo.T, w.hi.T) if tb else w
        out, m = _matmul_const_ibp(wb, wa, left=True)
    if al != 1.0:
        out = Box(np.minimum(al * out.lo, al * out.hi), np.maximum(al * out.lo, al * out.hi))
        m = abs(al) * m + round_margin(out.mag)
    c = input_at(ins, 2)
    if c is not None:
        cb = as_box(c)
        out = Box(out.lo + be * cb.lo if be >= 0 else out.lo + be * cb.hi, out.hi + be * cb.hi if be >= 0 else out.hi + be * cb.lo)
        m = m + round_margin(out.mag)
    return out, m


def _gemm_linear(ctx, node, a, ins, out):
    al, be, ta, tb = _gemm_parts(node, ins)
    x, w = ins[0], ins[1]
    if isinstance(x, Box) == isinstance(w, Box):
        return None  # product of two activations in a Gemm: IBP
    bias = np.zeros(a.shape[0])
    c = input_at(ins, 2)
    res: list = [None] * len(node.inputs)
    if c is not None:
        if isinstance(c, Box):
            res[2] = unbroadcast(a * be, c.shape)
        else:
            bias = bias + sum_rows(a * be, np.broadcast_to(np.asarray(c, np.float64), a.shape[1:]))
    if isinstance(x, Box):
        wm = np.asarray(w, np.float64)
        wm = wm.T if tb else wm  # (k, n)
        ax = al * (a @ wm.T)  # (S, m, k)
        res[0] = np.swapaxes(ax, 1, 2) if ta else ax
    else:
        xm = np.asarray(x, np.float64)
        xm = xm.T if ta else xm  # (m, k)
        aw = al * np.einsum("mk,smn->skn", xm, a)
        res[1] = np.swapaxes(aw, 1, 2) if tb else aw
    return res, bias



def _matmul_ibp(ctx, node, ins):
    x, w = ins[0], ins[1]
    if isinstance(x, Box) and isinstance(w, Box):
        return _matmul_boxes(x, w)
    if isinstance(x, Box):
        return _matmul_const_ibp(x, np.asarray(w, np.float64), left=False)
    return _matmul_const_ibp(w, np.asarray(x, np.float64), left=True)


def _matmul_linear(ctx, node, a, ins, out):
    x, w = ins[0], ins[1]
    if len(np.shape(x) if not isinstance(x, Box) else x.shape) < 2 or len(np.shape(w) if not isinstance(w, Box) else w.shape) < 2:
        return None
    if isinstance(x, Box) and not isinstance(w, Box):
        wm = np.asarray(w, np.float64)
        if wm.ndim < 2:
            return None
        ax = np.matmul(a, np.swapaxes(wm, -1, -2))  # (S, ..., m, k)
        return [unbroadcast(ax, x.shape), None], np.zeros(a.shape[0])
    if isinstance(w, Box) and not isinstance(x, Box):
        xm = np.asarray(x, np.float64)
        aw = np.matmul(np.swapaxes(xm, -1, -2), a)  # (S, ..., k, n)
        return [None, unbroadcast(aw, w.shape)], np.zeros(a.shape[0])
    # two activations: McCormick per product term x_ik y_kj with fixed planes (as in Mul)
    ap, an = pos_neg(a)  # (S, ..., m, n)
    lx, ux, ly = x.lo, x.hi, w.lo
    cx = np.matmul(a, np.swapaxes(ly, -1, -2))  # sum_j A_ij ly_kj
    cy = np.matmul(np.swapaxes(lx, -1, -2), ap) + np.matmul(np.swapaxes(ux, -1, -2), an)
    bias = -sum_rows(ap, np.matmul(lx, ly)) - sum_rows(an, np.matmul(ux, ly))
    return [unbroadcast(cx, x.shape), unbroadcast(cy, w.shape)], bias


def _conv_args(ctx, node, ins, x_shape):
    w = np.asarray(const_input(node, ins, 1, "weight"), np.float64)
    b = input_at(ins, 2)
    if isinstance(b, Box):
        raise UnsupportedModelError(f"Conv '{node.name}': its bias depends on the input")
    kernel = w.shape[2:]
    if "kernel_shape" in node.attrs and tuple(node.attrs["kernel_shape"]) != tuple(kernel):
        raise UnsupportedModelError(f"Conv '{node.name}': kernel_shape disagrees with the weight")
    strides, dil, begins, ends = window_attrs(ctx, node, x_shape, kernel)
    return w, (None if b is None else np.asarray(b, np.float64)), strides, dil, begins, ends, int(node.attrs.get("group", 1))


def _bias_shape(b, nd):
    return b.reshape((1, -1) + (1,) * (nd - 2))


def _conv_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    w, b, strides, dil, begins, ends, g = _conv_args(c, n, i, x.shape)
    y = conv(x, w, strides, dil, begins, ends, g)
    return [y if b is None else y + _bias_shape(b, y.ndim)]


def _conv_ibp(ctx, node, ins):
    x = ins[0]
    w, b, strides, dil, begins, ends, g = _conv_args(ctx, node, ins, x.shape)
    aw = np.abs(w)
    mid = conv(x.mid, w, strides, dil, begins, ends, g)
    both = conv(np.concatenate([x.rad, np.abs(x.mid)]), aw, strides, dil, begins, ends, g)  # one pass for |W| rad, |W| |mid|
    rad = both[: x.shape[0]]
    mag = both[x.shape[0]:] + rad
    if b is not None:
        mid = mid + _bias_shape(b, mid.ndim)
        mag = mag + np.abs(_bias_shape(b, mid.ndim))
    n = int(np.prod(w.shape[1:])) + (b is not None)
    return Box(mid - rad, mid + rad), gamma(n) * mag


def _conv_linear(ctx, node, a, ins, out):
    x = ins[0]
    w, b, strides, dil, begins, ends, g = _conv_args(ctx, node, ins, x.shape)
    s = a.shape[0]
    flat = a.reshape((s * a.shape[1],) + a.shape[2:])
    a_in = conv_adjoint(flat, w, strides, dil, begins, ends, g, x.shape[2:]).reshape((s,) + x.shape)
    bias = np.zeros(s) if b is None else sum_rows(a, np.broadcast_to(_bias_shape(b, len(out.shape)), a.shape[1:]))
    return [a_in] + [None] * (len(node.inputs) - 1), bias


def _convt_args(ctx, node, ins, x_shape):
    w = np.asarray(const_input(node, ins, 1, "weight"), np.float64)  # (C_in, M/G, *K)
    b = input_at(ins, 2)
    g = int(node.attrs.get("group", 1))
    kernel = w.shape[2:]
    nk = len(kernel)
    a = node.attrs
    strides = [int(s) for s in a.get("strides", [1] * nk)]
    dil = [int(d) for d in a.get("dilations", [1] * nk)]
    pads = [int(p) for p in a.get("pads", [0] * (2 * nk))]
    opad = [int(p) for p in a.get("output_padding", [0] * nk)]
    sp = x_shape[2:]
    if "output_shape" in a or text(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        raise UnsupportedModelError(f"ConvTranspose '{node.name}': output_shape/auto_pad SAME are not supported")
    out_sp = [strides[i] * (sp[i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - pads[i] - pads[nk + i]
              for i in range(nk)]
    return w, (None if b is None else np.asarray(b, np.float64)), strides, dil, pads[:nk], pads[nk:], g, out_sp


def _convt_apply(x, w, strides, dil, begins, ends, g, out_sp):
    return conv_adjoint(x, w, strides, dil, begins, ends, g, out_sp)


def _convt_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    w, b, st, dl, bg, en, g, osp = _convt_args(c, n, i, x.shape)
    y = _convt_apply(x, w, st, dl, bg, en, g, osp)
    return [y if b is None else y + _bias_shape(b, y.ndim)]


def _convt_ibp(ctx, node, ins):
    x = ins[0]
    w, b, st, dl, bg, en, g, osp = _convt_args(ctx, node, ins, x.shape)
    aw = np.abs(w)
    mid = _convt_apply(x.mid, w, st, dl, bg, en, g, osp)
    rad = _convt_apply(x.rad, aw, st, dl, bg, en, g, osp)
    mag = _convt_apply(np.abs(x.mid), aw, st, dl, bg, en, g, osp) + rad
    if b is not None:
        mid = mid + _bias_shape(b, mid.ndim)
        mag = mag + np.abs(_bias_shape(b, mid.ndim))
    n = int(w.shape[0] // g * np.prod(w.shape[2:])) + 1
    return Box(mid - rad, mid + rad), gamma(n) * mag


def _convt_linear(ctx, node, a, ins, out):
    x = ins[0]
    w, b, st, dl, bg, en, g, osp = _convt_args(ctx, node, ins, x.shape)
    s = a.shape[0]
    flat = a.reshape((s * a.shape[1],) + a.shape[2:])
    a_in = conv(flat, w, st, dl, bg, en, g).reshape((s,) + x.shape)  # the adjoint of the adjoint
    bias = np.zeros(s) if b is None else sum_rows(a, np.broadcast_to(_bias_shape(b, len(out.shape)), a.shape[1:]))
    return [a_in] + [None] * (len(node.inputs) - 1), bias



def _rump(am, ar, bm, br, matmul):
    """Midpoint-radius product of two interval matrices (Rump 1999): (mid, rad) of [am +- ar] @ [bm +- br]."""
    mid = matmul(am, bm)
    mag = matmul(np.abs(am), np.abs(bm))
    rad = matmul(np.abs(am), br) + matmul(ar, np.abs(bm)) + matmul(ar, br)
    return mid, rad, mag


def _matmul_boxes_jacobian(ctx, node, adj: Adj, x: Box, w: Box):
    """y = X @ W, both varying: dX = G @ W^T, dW = X^T @ G (per row of G), with intervals on both sides."""
    t = lambda v: np.swapaxes(v, -1, -2)  # noqa: E731
    adj = adj.fold()
    gx = _rump(adj.mid, adj.rad, t(w.mid)[None], t(w.rad)[None], np.matmul)
    gw = _rump(t(x.mid)[None], t(x.rad)[None], adj.mid, adj.rad, np.matmul)
    res = []
    for (mid, rad, mag), shape, n in ((gx, x.shape, w.shape[-1]), (gw, w.shape, x.shape[-2])):
        g = gamma(int(n) + 1)
        res.append(Adj(unbroadcast(mid, shape), unbroadcast(rad * (1 + g) + g * mag, shape) + ABS_FLOOR))
    return res


def _matmul_jacobian(ctx, node, adj, ins, out):
    x, w = ins[0], ins[1]
    if isinstance(x, Box) and isinstance(w, Box):
        if len(x.shape) < 2 or len(w.shape) < 2:
            raise UnsupportedModelError(f"MatMul '{node.name}': a 1-D product of two activations")
        return _matmul_boxes_jacobian(ctx, node, adj, x, w)
    return affine_jacobian(ctx, node, adj, ins, out)


def _gemm_jacobian(ctx, node, adj, ins, out):
    if isinstance(ins[0], Box) and isinstance(ins[1], Box):
        raise UnsupportedModelError(f"Gemm '{node.name}': a product of two activations has no interval Jacobian rule")
    return affine_jacobian(ctx, node, adj, ins, out)


_matmul_jacobian.generators = True  # they fold the symbols themselves where a product of two activations needs it
_gemm_jacobian.generators = True


def _conv_fan(node, ins, out: Box, var: int) -> int:
    w = np.asarray(ins[1])
    return int(w.shape[0] * np.prod(w.shape[2:])) + 1


def _convt_fan(node, ins, out: Box, var: int) -> int:
    w = np.asarray(ins[1])
    return int(w.shape[1] * np.prod(w.shape[2:])) + 1


def _product_fan(node, ins, out: Box, var: int) -> int:
    return int(max(out.shape)) + 1


# ------------------------------------------------------------------------------ global Lipschitz constants
def _lip_conv(p, node) -> None:
    from ..graph.linear_ops import conv_norm_method, conv_operator_norm  # at call time: fimaudit.graph reads this table

    g = p.g
    w = g.consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
    x = node.inputs[0]
    shape = g.shapes.get(x)
    if w is None or not g.is_var(x) or g.is_var(node.inputs[1]):
        return p.unbounded(node, f"Conv '{node.name}' without constant weights")
    if shape is None or len(shape) != 4 or w.ndim != 4:
        return p.unbounded(node, f"Conv '{node.name}': only 2-D convolutions with known input shape are bounded")
    groups = int(node.attrs.get("group", 1))
    if min(shape) < 1 or min(w.shape) < 1 or groups < 1 or shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        return p.unbounded(
            node, f"Conv '{node.name}': input shape {list(shape)} does not fit weights {list(w.shape)} (group {groups})"
        )
    if p.structural:
        return p.assign(node, p.lip(x), "not computed: the model has no global bound", None)
    w = w.astype(np.float64)
    kh, kw = w.shape[2:]
    strides = tuple(node.attrs.get("strides", [1, 1]))
    dil = tuple(node.attrs.get("dilations", [1, 1]))
    pads = conv_pads(node, shape[2:], (kh, kw), strides, dil)
    exact, check = conv_operator_norm(w, tuple(shape[1:]), strides, pads, dil, groups)
    how = f"{conv_norm_method(w, tuple(shape[1:]), strides, pads, dil, groups)}, check {check:.4g}"
    if node.inputs[1].endswith("_bnfold"):
        how += "; BatchNorm folded in"
    p.assign(node, exact * p.lip(x), how, exact)


def _lip_matmul(p, node) -> None:
    """Gemm and MatMul: the largest singular value of the constant weight."""
    g = p.g
    a, b = node.inputs[0], node.inputs[1]
    if g.is_var(a) and g.is_var(b):
        return p.unbounded(
            node, f"dot-product attention (MatMul of two activations at '{node.name}') is not globally Lipschitz "
            "(Kim et al. 2021); a bound needs a bounded input domain",
        )
    wname = b if g.is_var(a) else a
    w = g.consts.get(wname)
    if w is None:
        return p.unbounded(node, f"{node.op} '{node.name}' with weights of unknown value")
    if p.structural:
        return p.assign(node, p.lip(a if g.is_var(a) else b), "not computed: the model has no global bound", None)
    w = w.astype(np.float64)
    if node.op == "Gemm":
        if int(node.attrs.get("transA", 0)) and g.is_var(a):
            return p.unbounded(node, f"Gemm '{node.name}' transposes its input (transA=1): unsupported")
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
    return p.scale(node, factor, how, a if g.is_var(a) else b)


# ------------------------------------------------------------------------------ weight measures: layers
def _bias_of(n: onnx.NodeProto) -> str | None:
    return n.input[2] if len(n.input) > 2 and n.input[2] else None


def _conv_layer(n: onnx.NodeProto, inits: dict) -> list:
    if len(n.input) > 1 and n.input[1] in inits:
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        return [(n.input[1], _bias_of(n), w.reshape(w.shape[0], -1))]
    return []


def _gemm_layer(n: onnx.NodeProto, inits: dict) -> list:
    if len(n.input) > 1 and n.input[1] in inits:
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
        return [(n.input[1], _bias_of(n), w if trans_b else w.T)]
    return []


def _matmul_layer(n: onnx.NodeProto, inits: dict) -> list:
    out = []
    for pos, name in enumerate(n.input[:2]):
        if name in inits:
            w = numpy_helper.to_array(inits[name]).astype(np.float64)
            if w.ndim == 2:
                out.append((name, None, w.T if pos == 1 else w))
    return out


# BatchNorm folding (fimaudit.graph.fold): the weight with the following BatchNorm's per-channel scale applied.
def _conv_bn_fold(node: onnx.NodeProto, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))


def _gemm_bn_fold(node: onnx.NodeProto, w: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    if any(a.name == "transA" and a.i for a in node.attribute):
        return None
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return w * (scale[:, None] if trans_b else scale[None, :])


# ------------------------------------------------------------------ float64 lowering (autodiff.reference)
def _lower_conv(em: Emitter, node: onnx.NodeProto) -> None:
    x, w = node.input[:2]
    b = node.input[2] if len(node.input) > 2 and node.input[2] else None
    m, cg = em.shape(w)[:2]
    kernel = tuple(em.shape(w)[2:])
    group = int(attrs(node).get("group", 1))
    strides, dil, begins, ends = window(em, node, x, kernel)
    out_sp = tuple(em.shape(node.output[0])[2:])
    kk = int(np.prod(kernel))
    p = int(np.prod(out_sp))
    pointwise = all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(begins) and not any(ends)
    weight = em.value(w)
    if cg == 1 and m == group and weight is not None and not pointwise and em.opset >= 10:
        _depthwise(em, node, weight, kernel, strides, dil, begins, ends, out_sp)
        return
    cols = x if pointwise else im2col(em, x, kernel, strides, dil, begins, ends, out_sp)
    em.widest = max(em.widest, cg * group * kk * p)
    cols = em.op("Reshape", [cols, em.const(np.array([0, group, cg * kk, p], np.int64))])
    shape_w = np.array([group, m // group, cg * kk], np.int64)
    wm = f64(em, weight.reshape(shape_w)) if weight is not None else em.op("Reshape", [w, em.const(shape_w)])
    y = em.op("MatMul", [wm, cols])  # (G, M/G, Cg·kk) @ (N, G, Cg·kk, P) -> (N, G, M/G, P)
    shape_y = np.array([0, m] + list(out_sp), np.int64)
    if b is None:
        em.nodes.append(helper.make_node("Reshape", [y, em.const(shape_y)], [node.output[0]], name=node.output[0]))
        return
    y = em.op("Reshape", [y, em.const(shape_y)])
    shape_b = np.array([m] + [1] * len(kernel), np.int64)
    bias = em.value(b)
    bb = f64(em, bias.reshape(shape_b)) if bias is not None else em.op("Reshape", [b, em.const(shape_b)])
    em.nodes.append(helper.make_node("Add", [y, bb], [node.output[0]], name=node.output[0]))


def _depthwise(em: Emitter, node: onnx.NodeProto, weight: np.ndarray, kernel, strides, dil, begins, ends, out_sp) -> None:
    """A depthwise convolution (one input channel per group) as Σ over kernel offsets of strided slice ⊙ weight.

    No im2col: the stacked windows are kernel-size times the output, and the per-channel
    products would be thousands of 1-row matrix products.
    """
    x = node.input[0]
    n = len(kernel)
    spatial = em.shape(x)[2:]
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out_sp, strides, kernel, dil)]
    extra = [max(0, nd - (sp + b + e)) for nd, sp, b, e in zip(need, spatial, begins, ends)]
    if any(p < 0 for p in list(begins) + list(ends)):
        raise Float64Unsupported("negative pads")
    t = em.pad(x, [0, 0] + list(begins) + [0, 0] + [e + x_ for e, x_ in zip(ends, extra)])
    terms = []
    for off in np.ndindex(*kernel):
        starts = [o * d for o, d in zip(off, dil)]
        stops = [st + (o - 1) * s + 1 for st, o, s in zip(starts, out_sp, strides)]
        tap = weight[(slice(None), 0) + off].reshape((-1,) + (1,) * n)
        terms.append(em.op("Mul", [em.slice(t, starts, stops, range(2, 2 + n), strides), f64(em, tap)]))
    b = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if b is not None:
        bias = em.value(b)
        shape_b = np.array([weight.shape[0]] + [1] * n, np.int64)
        terms.append(f64(em, bias.reshape(shape_b)) if bias is not None else em.op("Reshape", [b, em.const(shape_b)]))
    em.nodes.append(helper.make_node("Sum", terms, [node.output[0]], name=node.output[0]))  # one pass over all terms


# ------------------------------------------------------------------------------------------------ the entries
register(
    "linear",
    Op("MatMul", nonlinear=True, refine="two activations",
       vjp=_vjp_matmul, jvp=_jvp_matmul, lipschitz=_lip_matmul, checks_weights=True,
       point=lambda c, n, i: [np.matmul(np.asarray(i[0], np.float64), np.asarray(i[1], np.float64))],
       ibp=_matmul_ibp, linear=_matmul_linear, jacobian=_matmul_jacobian, weight_inputs=(0, 1), fan=_product_fan,
       weights=_matmul_layer),
    Op("Gemm", nonlinear=True,
       vjp=_vjp_gemm, jvp=_jvp_gemm, lipschitz=_lip_matmul, checks_weights=True, point=_gemm_p, ibp=_gemm_ibp,
       linear=_gemm_linear, jacobian=_gemm_jacobian, weight_inputs=(0, 1), fan=_product_fan, weights=_gemm_layer,
       bn_fold=_gemm_bn_fold),
    Op("Conv", vjp=_vjp_conv, jvp=_jvp_conv, lipschitz=_lip_conv, checks_weights=True, point=_conv_p, ibp=_conv_ibp,
       linear=_conv_linear, jacobian=affine_jacobian, weight_inputs=(1,), fan=_conv_fan, weights=_conv_layer,
       bn_fold=_conv_bn_fold, needs_shape=True, layout="conv", float64=_lower_conv),
    Op("ConvTranspose", point=_convt_p, ibp=_convt_ibp, linear=_convt_linear, jacobian=affine_jacobian,
       weight_inputs=(1,), fan=_convt_fan, float64=NO_DOUBLE),
)

