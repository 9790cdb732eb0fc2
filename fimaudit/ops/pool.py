"""Pooling and reductions: MaxPool, AveragePool, the global pools, ReduceMean/Sum/Max."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper
from scipy import sparse

from ..errors import UnsupportedModelError
from ..verify.adjoint import Adj
from ..verify.conv import conv, conv_adjoint, out_size, window_argmax_offsets, window_reduce
from ..verify.intervals import Box, gamma, pos_neg, sum_rows
from .common import (Float64Unsupported, affine_jacobian, attrs, axes_arg, const_value, conv_pads, f64, im2col,
                     jvp_linear, lip_one, none_rest, place, refuse, text, window, window_attrs)
from .registry import NO_DOUBLE, Op, register

if TYPE_CHECKING:
    from ..autodiff.emit import Emitter


# ------------------------------------------------------------------------------ derivatives (gradient graphs)
def _vjp_gap(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    n = int(np.prod(em.shape(x)[2:]))
    return [em.expand_like(em.op("Div", [g[0], em.scalar(float(n), x)]), x)]


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


def _vjp_avgpool(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    a = attrs(node)
    kernel = tuple(a["kernel_shape"])
    strides, dil, begins, ends = window(em, node, x, kernel)
    if any(d != 1 for d in dil):
        refuse(node, "dilated average pooling")
    spatial = em.shape(x)[2:]
    out_sp = em.shape(node.output[0])[2:]
    include = int(a.get("count_include_pad", 0))
    div = pool_divisor(kernel, strides, begins, ends, spatial, out_sp, include)
    c = em.shape(x)[1]
    scaled = em.op("Div", [g[0], em.const(div[None, None].astype(em.dtype(x)))])
    ones = em.const(np.ones((c, 1) + kernel, dtype=em.dtype(x)))
    return [place(em, scaled, ones, x, out_sp, kernel, strides, [1] * len(kernel), begins, c)]


def tiled_maxpool(node: onnx.NodeProto, opset: int) -> bool:
    """A 2-D max-pool with non-overlapping tiles (stride = kernel, no padding, no dilation) at opset >= 11.

    Its derivatives need no indices output: the picked element of each tile is found by
    comparing the tile's strided slices with the pooled value (first match in row-major
    order), which is cheaper than onnxruntime's MaxPool with indices.
    """
    a = attrs(node)
    k = list(a.get("kernel_shape", []))
    return (opset >= 11 and len(k) == 2 and list(a.get("strides", [1, 1])) == k and not any(a.get("pads", [0] * 4))
            and all(d == 1 for d in a.get("dilations", [1, 1])) and text(a.get("auto_pad", "NOTSET")) in ("NOTSET", "VALID")
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


def _vjp_maxpool(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    a = attrs(node)
    if tiled_maxpool(node, em.opset):
        kernel = tuple(a["kernel_shape"])
        masks = _tile_masks(em, node, kernel, em.shape(x)[2:], em.shape(node.output[0])[2:])
        return [_maxpool_tiles(em, g[0], masks, kernel, em.shape(x)[2:], em.shape(node.output[0])[2:])]
    if int(a.get("storage_order", 0)) != 0:
        refuse(node, "column-major indices (storage_order=1)")
    idx = node.output[1] if len(node.output) > 1 and node.output[1] else None
    if idx is None:
        refuse(node, "no indices output (opset < 8)")
    kernel = tuple(a["kernel_shape"])
    strides, dil, begins, _ = window(em, node, x, kernel)
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
    return [place(em, flat, em.const(kern), x, out_sp, kernel, strides, dil, begins, c)]


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


def _jvp_maxpool(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    if tiled_maxpool(node, em.opset):
        x, y = node.input[0], node.output[0]
        kernel, spatial, out_sp = tuple(attrs(node)["kernel_shape"]), em.shape(x)[2:], em.shape(y)[2:]
        masks = _tile_masks(em, node, kernel, spatial, out_sp)
        parts = _tile_slices(em, t[0], kernel, spatial, out_sp, 0.0)
        return [em.add_all([em.op("Mul", [p, m]) for p, m in zip(parts, masks)]), None]
    idx = node.output[1] if len(node.output) > 1 and node.output[1] else None
    if idx is None or int(attrs(node).get("storage_order", 0)) != 0:
        refuse(node, "no row-major indices output")
    flat = em.op("Reshape", [t[0], em.const(np.array([-1], np.int64))])
    return [em.op("Gather", [flat, idx], axis=0), None]



def _reduce_axes_em(em: Emitter, node: onnx.NodeProto) -> tuple[list[int], bool]:
    rank = len(em.shape(node.input[0]))
    a = attrs(node)
    keep = bool(a.get("keepdims", 1))
    if "axes" in a:
        axes = list(a["axes"])
    elif len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in const_value(em, node, node.input[1], "the axes")]
    else:
        axes = []
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return [], keep
        axes = list(range(rank))
    return sorted(ax + rank if ax < 0 else ax for ax in axes), keep


def _vjp_reduce(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    axes, keep = _reduce_axes_em(em, node)
    gy = g[0]
    if not axes:
        return [gy] + [None] * (len(node.input) - 1)
    if not keep:
        gy = em.unsqueeze(gy, axes)
    if node.op_type == "ReduceMean":
        n = int(np.prod([em.shape(x)[a] for a in axes]))
        gy = em.op("Div", [gy, em.scalar(float(n), x)])
    return [em.expand_like(gy, x)] + [None] * (len(node.input) - 1)


# ---------------------------------------------------------------------------------------- pooling
def pool_args(ctx, node, x_shape):
    kernel = [int(k) for k in node.attrs["kernel_shape"]]
    return (kernel,) + tuple(window_attrs(ctx, node, x_shape, kernel))


def _maxpool_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    kernel, st, dl, bg, en = pool_args(c, n, x.shape)
    return [window_reduce(x, kernel, st, dl, bg, en, np.maximum, -np.inf)]


def _maxpool_ibp(ctx, node, ins):
    x = ins[0]
    if len(node.outputs) > 1 and node.outputs[1]:
        raise UnsupportedModelError(f"MaxPool '{node.name}': the Indices output is not supported")
    kernel, st, dl, bg, en = pool_args(ctx, node, x.shape)
    return Box(window_reduce(x.lo, kernel, st, dl, bg, en, np.maximum, -np.inf),
               window_reduce(x.hi, kernel, st, dl, bg, en, np.maximum, -np.inf)), 0.0


def _maxpool_linear(ctx, node, a, ins, out):
    """max over a window >= the window element with the largest lower bound (a line of slope 1 on it);
    max <= the window's largest upper bound (a constant). Exact when that element dominates the window."""
    x = ins[0]
    kernel, st, dl, bg, en = pool_args(ctx, node, x.shape)
    views_lo, out_sp = window_argmax_offsets(x.lo, kernel, st, dl, bg, en)
    views_hi, _ = window_argmax_offsets(x.hi, kernel, st, dl, bg, en)
    lo_stack = np.stack(views_lo)
    best = np.argmax(lo_stack, axis=0)  # offset index per output
    best_lo = np.take_along_axis(lo_stack, best[None], 0)[0]
    hi_stack = np.stack(views_hi)
    others_hi = np.where(np.arange(len(views_hi)).reshape((-1,) + (1,) * best.ndim) == best[None], -np.inf, hi_stack).max(0)
    exact = best_lo >= others_hi  # this element dominates: max = x_best exactly
    ap, an = pos_neg(a)
    # lower bound of A.y: A+ uses y >= x_best; A- uses y <= x_best (exact) or the constant max hi
    coef = ap + np.where(exact[None], an, 0.0)  # coefficient on x_best, (S, *out)
    const_hi = np.where(exact, 0.0, out.hi)
    bias = sum_rows(an, const_hi)
    # scatter coef back onto the chosen input positions
    n, c = x.shape[:2]
    idx_in = np.arange(int(np.prod(x.shape)), dtype=np.float64).reshape(x.shape) + 1
    views_idx, _ = window_argmax_offsets(idx_in, kernel, st, dl, bg, en)
    chosen = np.take_along_axis(np.stack(views_idx), best[None], 0)[0]  # 1-based flat input index (-inf: pad)
    chosen = np.where(np.isfinite(chosen), chosen, 0).astype(np.int64).reshape(-1)
    s = a.shape[0]
    a_in = np.zeros((s, int(np.prod(x.shape)) + 1))
    coef2 = coef.reshape(s, -1)
    for r in range(s):
        a_in[r] = np.bincount(chosen, weights=coef2[r], minlength=a_in.shape[1])
    return [a_in[:, 1:].reshape((s,) + x.shape)], bias



def _avgpool_parts(ctx, node, x_shape):
    kernel, st, dl, bg, en = pool_args(ctx, node, x_shape)
    if any(d != 1 for d in dl):
        raise UnsupportedModelError(f"AveragePool '{node.name}': dilations are not supported")
    sp = x_shape[2:]
    out_sp = [out_size(sp[i], kernel[i], st[i], 1, bg[i], en[i]) for i in range(len(kernel))]
    div = pool_divisor(kernel, st, bg, en, sp, out_sp, int(node.attrs.get("count_include_pad", 0)))
    c = x_shape[1]
    w = np.ones((c, 1) + tuple(kernel))
    return w, st, dl, bg, en, c, div, int(np.prod(kernel))


def _avgpool_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    w, st, dl, bg, en, ch, div, k = _avgpool_parts(c, n, x.shape)
    return [conv(x, w, st, dl, bg, en, ch) / div]


def _avgpool_ibp(ctx, node, ins):
    x = ins[0]
    w, st, dl, bg, en, ch, div, k = _avgpool_parts(ctx, node, x.shape)
    lo = conv(x.lo, w, st, dl, bg, en, ch) / div
    hi = conv(x.hi, w, st, dl, bg, en, ch) / div
    mag = conv(x.mag, w, st, dl, bg, en, ch) / div
    return Box(lo, hi), gamma(k + 1) * mag


def _avgpool_linear(ctx, node, a, ins, out):
    x = ins[0]
    w, st, dl, bg, en, ch, div, k = _avgpool_parts(ctx, node, x.shape)
    s = a.shape[0]
    scaled = (a / div).reshape((s * a.shape[1],) + a.shape[2:])
    return [conv_adjoint(scaled, w, st, dl, bg, en, ch, x.shape[2:]).reshape((s,) + x.shape)], np.zeros(s)



def _reduce_axes(ctx, node, ins, nd):
    axes = axes_arg(node, ins, 1)
    if axes is None:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return ()
        return tuple(range(nd))
    return tuple(sorted(a % nd for a in axes))


def _reduce_p(mean: bool):
    def point(c, n, i):
        x = np.asarray(i[0], np.float64)
        axes = _reduce_axes(c, n, i, x.ndim)
        keep = bool(int(n.attrs.get("keepdims", 1)))
        return [(x.mean if mean else x.sum)(axis=axes, keepdims=keep)]

    return point


def _reduce_ibp(mean: bool):
    def ibp(ctx, node, ins):
        x = ins[0]
        axes = _reduce_axes(ctx, node, ins, len(x.shape))
        keep = bool(int(node.attrs.get("keepdims", 1)))
        f = np.mean if mean else np.sum
        cnt = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        out = Box(f(x.lo, axis=axes, keepdims=keep), f(x.hi, axis=axes, keepdims=keep))
        return out, gamma(cnt + 1) * f(x.mag, axis=axes, keepdims=keep)

    return ibp


def _reduce_linear(mean: bool):
    def linear(ctx, node, a, ins, out):
        x = ins[0]
        axes = _reduce_axes(ctx, node, ins, len(x.shape))
        cnt = int(np.prod([x.shape[ax] for ax in axes])) if axes else 1
        keep_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        ak = a.reshape((a.shape[0],) + keep_shape)
        a_in = np.broadcast_to(ak / cnt if mean else ak, (a.shape[0],) + x.shape).copy()
        return [a_in] + [None] * (len(node.inputs) - 1), np.zeros(a.shape[0])

    return linear



def _gap_node_axes(x_shape):
    return tuple(range(2, len(x_shape)))


def _gap_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    return [x.mean(axis=_gap_node_axes(x.shape), keepdims=True)]


def _gap_ibp(ctx, node, ins):
    x = ins[0]
    axes = _gap_node_axes(x.shape)
    cnt = int(np.prod(x.shape[2:]))
    return (Box(x.lo.mean(axis=axes, keepdims=True), x.hi.mean(axis=axes, keepdims=True)),
            gamma(cnt + 1) * x.mag.mean(axis=axes, keepdims=True))


def _gap_linear(ctx, node, a, ins, out):
    x = ins[0]
    cnt = int(np.prod(x.shape[2:]))
    return [np.broadcast_to(a / cnt, (a.shape[0],) + x.shape).copy()], np.zeros(a.shape[0])



# ------------------------------------------------------------------------------ max pooling
def _maxpool_jacobian(ctx, node, adj: Adj, ins, out: Box):
    """Route each window's cotangent to every element that can be its maximum: [0, 1] each, exactly 1
    when one element's lower bound is at least every other's upper bound."""
    x = ins[0]
    key = ("maxpool_jac", node.index)
    kernel, st, dl, bg, en = pool_args(ctx, node, x.shape)
    lo_views, out_sp = window_argmax_offsets(x.lo, kernel, st, dl, bg, en)
    hi_views, _ = window_argmax_offsets(x.hi, kernel, st, dl, bg, en)
    if key not in ctx.cache:
        idx = np.arange(1, int(np.prod(x.shape)) + 1, dtype=np.float64).reshape(x.shape)
        idx_views, _ = window_argmax_offsets(idx, kernel, st, dl, bg, en)
        ctx.cache[key] = [np.where(np.isfinite(v), v, 0).astype(np.int64).reshape(-1) for v in idx_views]
    idx_views = ctx.cache[key]
    lo_stack = np.stack(lo_views)  # (offsets, N, C, *O)
    hi_stack = np.stack(hi_views)
    best_lo = lo_stack.max(axis=0)
    cand = (hi_stack >= best_lo[None]) & np.isfinite(hi_stack)
    dominated = ctx.cache.get("jac_hints", {}).get(("maxpool_dominated", node.index))
    if dominated is not None and dominated.shape == cand.shape:
        cand &= ~dominated  # certified x_best - x_j > 0 over the set (fimaudit.verify.local.sharpen)
    unique = cand.sum(axis=0) == 1
    n_out = int(np.prod(best_lo.shape))
    n_in = int(np.prod(x.shape))
    r = adj.mid.shape[0]
    mid_cols, rad_cols, rows, cols = [], [], [], []
    for o, cand_o in enumerate(cand):
        d_lo = (cand_o & unique).astype(np.float64)
        d_hi = cand_o.astype(np.float64)
        part = adj.times(d_lo, d_hi)
        mid_cols.append(part.mid.reshape(r, -1))
        rad_cols.append(part.rad.reshape(r, -1))
        rows.append(np.arange(n_out) + o * n_out)
        cols.append(idx_views[o])
    rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
    p = sparse.csr_matrix((np.ones(rows_a.size), (rows_a, cols_a)), shape=(n_out * len(cand), n_in + 1))
    mid = np.asarray((p.T @ np.concatenate(mid_cols, axis=1).T).T)
    rad = np.asarray((p.T @ np.concatenate(rad_cols, axis=1).T).T)
    res = Adj(mid[:, 1:].reshape((r,) + x.shape), rad[:, 1:].reshape((r,) + x.shape)).widen(gamma(len(cand) + 1))
    return none_rest(node, res)


def _global_maxpool_jacobian(ctx, node, adj: Adj, ins, out: Box):
    x = ins[0]
    axes = tuple(range(2, len(x.shape)))
    best_lo = x.lo.max(axis=axes, keepdims=True)
    cand = x.hi >= best_lo
    unique = cand.sum(axis=axes, keepdims=True) == 1
    a = Adj(np.broadcast_to(adj.mid, (adj.mid.shape[0],) + x.shape), np.broadcast_to(adj.rad, (adj.rad.shape[0],) + x.shape))
    return none_rest(node, a.times((cand & unique).astype(np.float64), cand.astype(np.float64)))


# Local bounds (fimaudit.verify.local): every entry whose upper bound reaches its window's largest lower bound
# (loose: the global max) leaves the derivative undecided.
def _global_maxpool_undecided(node, box: Box, consts: dict | None = None) -> np.ndarray:
    axes = tuple(range(2, len(box.shape)))
    best = box.lo.max(axis=axes, keepdims=True)
    cand = box.hi >= best
    multi = cand.sum(axis=axes, keepdims=True) > 1
    return np.flatnonzero((cand & multi).reshape(-1))


def _maxpool_undecided(node, box: Box, consts: dict | None = None) -> np.ndarray:
    lo = box.lo.reshape(-1)
    kernel, st, dl, bg, en = pool_args(None, node, box.shape)
    lo_v, _ = window_argmax_offsets(box.lo, kernel, st, dl, bg, en)
    hi_v, _ = window_argmax_offsets(box.hi, kernel, st, dl, bg, en)
    idx = np.arange(1, lo.size + 1, dtype=np.float64).reshape(box.shape)
    idx_v, _ = window_argmax_offsets(idx, kernel, st, dl, bg, en)
    best = np.stack(lo_v).max(axis=0)
    cand = (np.stack(hi_v) >= best[None]) & np.isfinite(np.stack(hi_v))
    multi = cand.sum(axis=0) > 1
    chosen = np.stack(idx_v)[cand & multi[None]]
    return np.unique(chosen[np.isfinite(chosen)].astype(np.int64) - 1)


def _maxpool_outputs(node: onnx.NodeProto, opset: int, prefix: str) -> None:
    """The indices output (the rules route cotangents through it), unless the pool tiles the input."""
    if not tiled_maxpool(node, opset) and (len(node.output) < 2 or not node.output[1]):
        if len(node.output) < 2:
            node.output.append("")
        node.output[1] = prefix + "_indices"


# ------------------------------------------------------------------------------ global Lipschitz constants
def _lip_maxpool(p, node) -> None:
    from ..graph.linear_ops import pool_overlap_factor  # at call time: fimaudit.graph reads this table

    shape = p.g.shapes.get(node.inputs[0])
    if shape is None or len(shape) != 4:
        return p.unbounded(node, f"MaxPool '{node.name}' with unknown input shape")
    k = tuple(node.attrs["kernel_shape"])
    s = tuple(node.attrs.get("strides", [1, 1]))
    d = tuple(node.attrs.get("dilations", [1, 1]))
    pads = conv_pads(node, shape[2:], k, s, d)
    overlap = pool_overlap_factor(shape[2:], k, s, pads, d)
    return p.scale(node, math.sqrt(overlap), f"sqrt(windows per pixel = {overlap})")


def _lip_avgpool(p, node) -> None:
    from ..graph.linear_ops import avgpool_operator_norm

    shape = p.g.shapes.get(node.inputs[0])
    if shape is None or len(shape) != 4:
        return p.unbounded(node, f"AveragePool '{node.name}' with unknown input shape")
    k = tuple(node.attrs["kernel_shape"])
    s = tuple(node.attrs.get("strides", [1, 1]))
    pads = conv_pads(node, shape[2:], k, s, (1, 1))
    norm = avgpool_operator_norm(shape[1], shape[2:], k, s, pads, bool(node.attrs.get("count_include_pad", 0)))
    return p.scale(node, norm, "exact operator norm of the averaging")


def _lip_reduce(p, node) -> None:
    shape = p.g.shapes.get(node.inputs[0])
    if shape is None:
        return p.unbounded(node, f"{node.op} '{node.name}' with unknown input shape")
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        c = p.g.consts.get(node.inputs[1])
        axes = None if c is None else [int(a) for a in np.ravel(c)]
    if axes is None:
        axes = list(range(len(shape)))
    n = int(np.prod([shape[a] for a in axes]))
    factor = 1 / math.sqrt(n) if node.op == "ReduceMean" else math.sqrt(n)
    return p.scale(node, factor, f"{'1/' if node.op == 'ReduceMean' else ''}sqrt({n})")


def _lip_gap(p, node) -> None:
    shape = p.g.shapes.get(node.inputs[0])
    if shape is None:
        return p.unbounded(node, f"shape of '{node.inputs[0]}' unknown")
    n = int(np.prod(shape[2:]))
    return p.scale(node, 1 / math.sqrt(n), f"1/sqrt({n}) (mean over {n} positions)")


# ------------------------------------------------------------------ float64 lowering (autodiff.reference)
def _lower_avgpool(em: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    a = attrs(node)
    kernel = tuple(a["kernel_shape"])
    strides, dil, begins, ends = window(em, node, x, kernel)
    if any(d != 1 for d in dil):
        raise Float64Unsupported("dilated average pooling")
    spatial = em.shape(x)[2:]
    out_sp = tuple(em.shape(node.output[0])[2:])
    include = int(a.get("count_include_pad", 0))
    div = pool_divisor(kernel, strides, begins, ends, spatial, out_sp, include)  # as the AveragePool VJP rule
    win = im2col(em, x, kernel, strides, [1] * len(kernel), begins, ends, out_sp)
    em.widest = max(em.widest, em.shape(x)[1] * int(np.prod(kernel)) * int(np.prod(out_sp)))
    total = em.reduce_sum(win, list(range(2, 2 + len(kernel))), keepdims=False)
    em.nodes.append(helper.make_node("Div", [total, f64(em, div)], [node.output[0]], name=node.output[0]))


def _lower_gap(em: Emitter, node: onnx.NodeProto) -> None:
    axes = list(range(2, len(em.shape(node.input[0]))))
    if em.opset >= 18:
        em.nodes.append(helper.make_node("ReduceMean", [node.input[0], em.const(np.array(axes, np.int64))],
                                         [node.output[0]], name=node.output[0], keepdims=1))
    else:
        em.nodes.append(helper.make_node("ReduceMean", [node.input[0]], [node.output[0]], name=node.output[0], axes=axes,
                                         keepdims=1))


# ------------------------------------------------------------------------------------------------ the entries
register(
    "pool",
    Op("MaxPool", nonlinear=True, refine="always", undecided=_maxpool_undecided,
       vjp=_vjp_maxpool, jvp=_jvp_maxpool, outputs=_maxpool_outputs, lipschitz=_lip_maxpool, point=_maxpool_p,
       ibp=_maxpool_ibp,
       linear=_maxpool_linear, jacobian=_maxpool_jacobian, needs_shape=True),
    Op("AveragePool", vjp=_vjp_avgpool, jvp=jvp_linear, lipschitz=_lip_avgpool, point=_avgpool_p, ibp=_avgpool_ibp,
       linear=_avgpool_linear, jacobian=affine_jacobian, needs_shape=True, float64=_lower_avgpool),
    Op("GlobalAveragePool", vjp=_vjp_gap, jvp=jvp_linear, lipschitz=_lip_gap, point=_gap_p, ibp=_gap_ibp,
       linear=_gap_linear, jacobian=affine_jacobian, needs_shape=True, float64=_lower_gap),
    Op("GlobalMaxPool", nonlinear=True, undecided=_global_maxpool_undecided, float64=NO_DOUBLE,
       lipschitz=lip_one,
       point=lambda c, n, i: [np.asarray(i[0], np.float64).max(axis=_gap_node_axes(np.shape(i[0])), keepdims=True)],
       ibp=lambda c, n, i: (i[0].map(lambda v: v.max(axis=_gap_node_axes(v.shape), keepdims=True)), 0.0),
       jacobian=_global_maxpool_jacobian),
    Op("ReduceMean", vjp=_vjp_reduce, jvp=jvp_linear, lipschitz=_lip_reduce, point=_reduce_p(True),
       ibp=_reduce_ibp(True), linear=_reduce_linear(True), jacobian=affine_jacobian, needs_shape=True),
    Op("ReduceSum", vjp=_vjp_reduce, jvp=jvp_linear, lipschitz=_lip_reduce, point=_reduce_p(False),
       ibp=_reduce_ibp(False), linear=_reduce_linear(False), jacobian=affine_jacobian, needs_shape=True),
    Op("ReduceMax", lipschitz=lip_one),
)
