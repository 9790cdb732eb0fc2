"""Data movement and shape computations: reshapes, slices, gathers, pads, concatenation, resizing, Shape."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper
from scipy import sparse

from ..verify.intervals import Box, OpContext, as_box, sum_rows
from .common import (Float64Unsupported, affine_jacobian, attrs, axes_arg, axis_of, const_value, f64, input_at,
                     input_name, jvp_linear, known_inputs, lip_one, refuse, refuse_batch_axis, static_only, text)
from .registry import TABLE, Op, Reason, register

if TYPE_CHECKING:
    from ..autodiff.emit import Emitter


# ------------------------------------------------------------------------------ derivatives (gradient graphs)
# --- shape ops ---------------------------------------------------------------------------

def _vjp_reshape(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    return [em.reshape_like(g[0], node.input[0])] + [None] * (len(node.input) - 1)


def _vjp_transpose(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    rank = len(em.shape(node.input[0]))
    perm = list(attrs(node).get("perm", list(range(rank))[::-1]))
    inv = [0] * rank
    for i, p in enumerate(perm):
        inv[p] = i
    return [em.op("Transpose", [g[0]], perm=inv)]


def _vjp_expand(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    return [em.unbroadcast(g[0], em.shape(node.output[0]), em.shape(x), x), None]



def _vjp_concat(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    rank = len(em.shape(node.output[0]))
    axis = axis_of(node, rank, 0)
    refuse_batch_axis(em, node, axis)
    out, start = [], 0
    for name in node.input:
        size = em.shape(name)[axis]
        out.append(em.slice(g[0], [start], [start + size], [axis]) if em.active(name) else None)
        start += size
    return out


def _jvp_concat(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    parts = [ti if ti else em.zeros_like(name) for ti, name in zip(t, node.input)]
    return [em.op("Concat", parts, axis=attrs(node).get("axis", 0))]


def _vjp_split(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    rank = len(em.shape(node.input[0]))
    axis = axis_of(node, rank, 0)
    refuse_batch_axis(em, node, axis)
    parts = [gi if gi else em.zeros_like(o) for gi, o in zip(g, node.output)]
    return [em.op("Concat", parts, axis=axis)] + [None] * (len(node.input) - 1)


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
        starts = list(const_value(em, node, node.input[1], "the start"))
        ends = list(const_value(em, node, node.input[2], "the end"))
        axes = list(const_value(em, node, input_name(node, 3), "the axes")) if input_name(node, 3) else list(range(len(starts)))
        steps = list(const_value(em, node, input_name(node, 4), "the steps")) if input_name(node, 4) else [1] * len(starts)
    return shape, rank, starts, ends, [int(a) + rank if int(a) < 0 else int(a) for a in axes], steps


def _vjp_slice(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    shape, rank, starts, ends, axes, steps = _slice_params(em, node)
    gx = g[0]
    pads = [0] * (2 * rank)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        refuse_batch_axis(em, node, ax)
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


def _vjp_gather(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    data, indices = node.input
    shape = em.shape(data)
    rank = len(shape)
    axis = axis_of(node, rank, 0)
    refuse_batch_axis(em, node, axis)
    idx = const_value(em, node, indices, "the indices").astype(np.int64)
    n = shape[axis]
    flat = np.where(idx < 0, idx + n, idx).reshape(-1)
    gy = g[0]
    # Bring the cotangent to data's rank: one axis of len(flat) where the indices' axes were.
    if idx.ndim != 1:
        target = [0] * axis + [flat.size] + list(shape[axis + 1:])
        gy = em.op("Reshape", [gy, em.const(np.array(target, np.int64))])
    return [_scatter_axis(em, gy, flat, axis, n, rank, em.dtype(data)), None]


def _vjp_pad(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x = node.input[0]
    shape = em.shape(x)
    rank = len(shape)
    a = attrs(node)
    mode = text(a.get("mode", "constant"))
    if em.opset < 11:
        pads = list(a["pads"])
    else:
        pads = [int(p) for p in const_value(em, node, node.input[1], "the pads")]
        if len(node.input) > 3 and node.input[3]:
            axes = [int(v) for v in const_value(em, node, node.input[3], "the axes")]
            full = [0] * (2 * rank)
            for i, ax in enumerate(axes):
                ax = ax + rank if ax < 0 else ax
                full[ax], full[rank + ax] = pads[i], pads[len(axes) + i]
            pads = full
    if mode == "constant":
        return [em.pad(g[0], [-p for p in pads])] + [None] * (len(node.input) - 1)
    if mode not in ("reflect", "edge"):
        refuse(node, f"pad mode '{mode}'")
    gx = g[0]
    # Separable: undo one axis at a time; the cotangent of each padded border folds back
    # onto the rows it copied (mirrored for reflect, the edge row for edge).
    for ax in range(rank):
        b, e, n = pads[ax], pads[rank + ax], shape[ax]
        if b == 0 and e == 0:
            continue
        refuse_batch_axis(em, node, ax)
        if b < 0 or e < 0:
            refuse(node, "negative pads in reflect/edge mode")
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


def _jvp_pad(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    if any(t[1:]):
        refuse(node, "pads that depend on the input")
    a = attrs(node)
    mode = text(a.get("mode", "constant"))
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

def resize_matrix(em: Emitter, node: onnx.NodeProto, axis: int, rank: int, n_in: int, n_out: int,
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
        refuse(node, "an output size the per-axis interpolation does not reproduce")
    return out.T  # (n_out, n_in): column i is the response to the i-th unit input


def _vjp_resize(em: Emitter, node: onnx.NodeProto, g: list) -> list:
    x, y = node.input[0], node.output[0]
    a = attrs(node)
    if text(a.get("coordinate_transformation_mode", "")) == "tf_crop_and_resize":
        refuse(node, "tf_crop_and_resize (a region of interest)")
    if any(em.active(n) for n in node.input[1:] if n):
        refuse(node, "scales or sizes that depend on the input")
    sin, sout = em.shape(x), em.shape(y)
    rank = len(sin)
    gx = g[0]
    for ax in range(rank):
        if sin[ax] == sout[ax]:
            continue
        refuse_batch_axis(em, node, ax)
        m = resize_matrix(em, node, ax, rank, sin[ax], sout[ax])
        perm = [i for i in range(rank) if i != ax] + [ax]
        inv = [perm.index(i) for i in range(rank)]
        moved = em.op("Transpose", [gx], perm=perm)
        gx = em.op("Transpose", [em.op("MatMul", [moved, em.const(m.astype(em.dtype(x)))])], perm=inv)
    return [gx] + [None] * (len(node.input) - 1)


def _jvp_resize(em: Emitter, node: onnx.NodeProto, t: list) -> list:
    if any(t[1:]):
        refuse(node, "scales or sizes that depend on the input")
    return [em.op(node.op_type, [t[0]] + list(node.input[1:]), **attrs(node))]

def _cos_point(c, n, i):
    shape = tuple(int(v) for v in np.asarray(i[0]).reshape(-1))
    val = n.attrs.get("value")
    if val is not None:
        from onnx import numpy_helper

        arr = numpy_helper.to_array(val).reshape(-1)
        return [np.full(shape, arr[0], dtype=arr.dtype)]
    return [np.zeros(shape, dtype=np.float32)]


def _reshape_p(c, n, i):
    x = np.asarray(i[0])
    shape = [int(s) for s in np.asarray(i[1]).reshape(-1)]
    if not int(n.attrs.get("allowzero", 0)):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return [x.reshape(shape)]


def _flatten_p(c, n, i):
    x = np.asarray(i[0])
    ax = int(n.attrs.get("axis", 1))
    ax = ax + x.ndim if ax < 0 else ax
    return [x.reshape(int(np.prod(x.shape[:ax])), -1)]


def _transpose_p(c, n, i):
    x = np.asarray(i[0])
    perm = n.attrs.get("perm")
    return [np.transpose(x, None if perm is None else [int(p) for p in perm])]


def _squeeze_p(c, n, i):
    x = np.asarray(i[0])
    axes = axes_arg(n, i, 1)
    return [np.squeeze(x, axis=None if axes is None else tuple(a % x.ndim for a in axes))]


def _unsqueeze_p(c, n, i):
    x = np.asarray(i[0])
    axes = sorted(a % (x.ndim + len(axes_arg(n, i, 1))) for a in axes_arg(n, i, 1))
    for a in axes:
        x = np.expand_dims(x, a)
    return [x]


def _slice_p(c, n, i):
    x = np.asarray(i[0])
    if "starts" in n.attrs:  # opset < 10
        starts, ends = n.attrs["starts"], n.attrs["ends"]
        axes = n.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = np.asarray(i[1]).reshape(-1), np.asarray(i[2]).reshape(-1)
        axes = np.asarray(input_at(i, 3, np.arange(len(starts)))).reshape(-1)
        steps = np.asarray(input_at(i, 4, np.ones(len(starts), np.int64))).reshape(-1)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % x.ndim
        dim = x.shape[a]
        s, e, st = int(s), int(e), int(st)
        s = max(min(s + dim if s < 0 else s, dim), 0) if st > 0 else max(min(s + dim if s < 0 else s, dim - 1), -1)
        if e < -dim:
            e = -1 if st < 0 else 0
        else:
            e = e + dim if e < 0 else e
            e = max(min(e, dim), 0) if st > 0 else max(min(e, dim - 1), -1)
        index[a] = slice(s, None if (st < 0 and e < 0) else e, st)
    return [x[tuple(index)]]


def _gather_p(c, n, i):
    x = np.asarray(i[0])
    idx = np.asarray(i[1]).astype(np.int64)
    ax = int(n.attrs.get("axis", 0)) % x.ndim
    idx = np.where(idx < 0, idx + x.shape[ax], idx)
    return [np.take(x, idx, axis=ax)]


def _pad_args(c, n, i):
    mode = text(n.attrs.get("mode", "constant"))
    if "pads" in n.attrs:  # opset < 11
        pads = [int(p) for p in n.attrs["pads"]]
        value = float(n.attrs.get("value", 0.0))
        axes = None
    else:
        pads = [int(p) for p in np.asarray(i[1]).reshape(-1)]
        v = input_at(i, 2)
        value = 0.0 if v is None or np.asarray(v).size == 0 else float(np.asarray(v).reshape(-1)[0])
        axes = input_at(i, 3)
    return mode, pads, value, axes


def _pad_p(c, n, i, fill=None):
    x = np.asarray(i[0])
    mode, pads, value, axes = _pad_args(c, n, i)
    nd = x.ndim
    axes = list(range(nd)) if axes is None else [int(a) % nd for a in np.asarray(axes).reshape(-1)]
    k = len(axes)
    widths = [(0, 0)] * nd
    for j, a in enumerate(axes):
        widths[a] = (pads[j], pads[k + j])
    if any(b < 0 or e < 0 for b, e in widths):
        crop = tuple(slice(max(0, -b), x.shape[a] - max(0, -e)) for a, (b, e) in enumerate(widths))
        x = x[crop]
        widths = [(max(b, 0), max(e, 0)) for b, e in widths]
    if mode == "constant":
        return [np.pad(x, widths, constant_values=value if fill is None else fill)]
    return [np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])]


def _expand_p(c, n, i):
    x = np.asarray(i[0])
    shape = [int(s) for s in np.asarray(i[1]).reshape(-1)]
    return [x * np.ones(shape, dtype=x.dtype)]


def _tile_p(c, n, i):
    return [np.tile(np.asarray(i[0]), [int(r) for r in np.asarray(i[1]).reshape(-1)])]


def _d2s_p(c, n, i):
    x = np.asarray(i[0])
    b, ch, h, w = x.shape
    bs = int(n.attrs["blocksize"])
    if text(n.attrs.get("mode", "DCR")) == "DCR":
        t = x.reshape(b, bs, bs, ch // bs ** 2, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(b, ch // bs ** 2, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [t.reshape(b, ch // bs ** 2, h * bs, w * bs)]


def _s2d_p(c, n, i):
    x = np.asarray(i[0])
    b, ch, h, w = x.shape
    bs = int(n.attrs["blocksize"])
    t = x.reshape(b, ch, h // bs, bs, w // bs, bs).transpose(0, 3, 5, 1, 2, 4)
    return [t.reshape(b, ch * bs * bs, h // bs, w // bs)]


def index_map(ctx: OpContext, node, ins) -> tuple[sparse.csr_matrix, np.ndarray]:
    """A data-movement op as y = P x + q (x: its one varying input, flattened): P 0/1 sparse, q from padding."""
    key = ("index", node.index)
    if key in ctx.cache:
        return ctx.cache[key]
    x = ins[0]
    n_in = int(np.prod(x.shape))
    consts = [None if isinstance(v, Box) else v for v in ins]
    idx = np.arange(1, n_in + 1, dtype=np.int64).reshape(x.shape)
    if node.op == "Pad":
        mapped = _pad_p(ctx, node, [idx] + consts[1:], fill=0)[0]
        q = _pad_p(ctx, node, [np.zeros(x.shape)] + consts[1:])[0].reshape(-1)
    else:
        mapped = TABLE[node.op].point(ctx, node, [idx] + consts[1:])[0]
        q = np.zeros(mapped.size)
    cols = mapped.reshape(-1)
    rows = np.flatnonzero(cols > 0)
    p = sparse.csr_matrix((np.ones(rows.size), (rows, cols[rows] - 1)), shape=(cols.size, n_in))
    ctx.cache[key] = (p, np.asarray(q, dtype=np.float64), mapped.shape)
    return ctx.cache[key]


def _move_ibp(ctx, node, ins):
    consts = ins[1:]
    point = TABLE[node.op].point
    lo = point(ctx, node, [ins[0].lo] + list(consts))[0]
    hi = point(ctx, node, [ins[0].hi] + list(consts))[0]
    return Box(np.asarray(lo, np.float64), np.asarray(hi, np.float64)), 0.0


def _move_linear(ctx, node, a, ins, out):
    p, q, _ = index_map(ctx, node, ins)
    a2 = a.reshape(a.shape[0], -1)
    a_in = np.asarray((p.T @ a2.T).T).reshape((a.shape[0],) + ins[0].shape)
    bias = a2 @ q if np.any(q) else np.zeros(a.shape[0])
    return [a_in] + [None] * (len(node.inputs) - 1), bias



def _concat_p(c, n, i):
    arrs = [np.asarray(v) for v in i]
    return [np.concatenate(arrs, axis=int(n.attrs.get("axis", 0)))]


def _concat_ibp(ctx, node, ins):
    ax = int(node.attrs.get("axis", 0))
    boxes = [as_box(v) for v in ins]
    return Box(np.concatenate([b.lo for b in boxes], axis=ax), np.concatenate([b.hi for b in boxes], axis=ax)), 0.0


def _concat_linear(ctx, node, a, ins, out):
    nd = len(out.shape)
    ax = int(node.attrs.get("axis", 0)) % nd
    res, bias = [], np.zeros(a.shape[0])
    start = 0
    for v in ins:
        size = as_box(v).shape[ax]
        part = a[(slice(None),) * (ax + 1) + (slice(start, start + size),)]
        start += size
        if isinstance(v, Box):
            res.append(part)
        else:
            res.append(None)
            bias = bias + sum_rows(part, v)
    return res, bias


# ------------------------------------------------------------------------------ global Lipschitz constants
def _lip_concat(p, node) -> None:
    total = math.sqrt(sum(p.lip(i) ** 2 for i in node.inputs if i))
    p.assign(node, total, "sqrt of the sum of squares", None)


def _lip_gather(p, node) -> None:
    g = p.g
    idx = g.consts.get(node.inputs[1])
    if idx is None or node.inputs[0] not in g.var_inputs(node):
        return p.unbounded(node, f"Gather '{node.name}' with input-dependent indices")
    mult = int(np.max(np.unique(np.ravel(idx), return_counts=True)[1])) if np.size(idx) else 1
    return p.scale(node, math.sqrt(mult), "selection (sqrt of the largest repetition)", node.inputs[0])


def _lip_expand(p, node) -> None:
    shape_in = p.g.shapes.get(node.inputs[0])
    shape_out = p.g.shapes.get(node.outputs[0])
    if shape_in is None or shape_out is None:
        return p.unbounded(node, f"shape of Expand '{node.name}' unknown")
    copies = int(np.prod(shape_out)) // max(1, int(np.prod(shape_in)))
    return p.scale(node, math.sqrt(copies), f"broadcast copies: sqrt({copies})", node.inputs[0])


# ------------------------------------------------------------------------------------------- constant folding
# The few shape chains export pipelines leave behind (``fimaudit.graph.parse``); ValueError, TypeError and
# IndexError mean a malformed constant, whose value then stays unknown.
def _fold_shape(node, ins, shapes):
    if node.inputs[0] in shapes:
        return [np.array(shapes[node.inputs[0]], dtype=np.int64)]
    return None


@known_inputs
def _fold_unsqueeze(node, ins):
    axes = node.attrs.get("axes") if "axes" in node.attrs else ins[1]
    out = ins[0]
    for ax in sorted(int(a) for a in np.atleast_1d(axes)):
        out = np.expand_dims(out, ax)
    return [out]


@known_inputs
def _fold_squeeze(node, ins):
    axes = node.attrs.get("axes") if "axes" in node.attrs else (ins[1] if len(ins) > 1 else None)
    return [np.squeeze(ins[0], axis=None if axes is None else tuple(int(a) for a in np.atleast_1d(axes)))]


@known_inputs
def _fold_concat(node, ins):
    return [np.concatenate([np.atleast_1d(v) for v in ins], axis=int(node.attrs.get("axis", 0)))]


@known_inputs
def _fold_gather(node, ins):
    return [np.take(ins[0], ins[1], axis=int(node.attrs.get("axis", 0)))]


@known_inputs
def _fold_reshape(node, ins):
    return [ins[0].reshape([int(s) if s != 0 else ins[0].shape[i] for i, s in enumerate(ins[1])])]


# ------------------------------------------------------------------ float64 lowering (autodiff.reference)
def _lower_resize(em: Emitter, node: onnx.NodeProto) -> None:
    x, y = node.input[0], node.output[0]
    a = attrs(node)
    mode = a.get("coordinate_transformation_mode", b"")
    if (mode.decode() if isinstance(mode, bytes) else mode) == "tf_crop_and_resize":
        raise Float64Unsupported("Resize with a region of interest")
    if any(n and n not in em.values for n in node.input[1:]):
        raise Float64Unsupported("Resize scales or sizes computed in the graph")
    sin, sout = em.shape(x), em.shape(y)
    rank = len(sin)
    t = x
    for ax in range(rank):
        if sin[ax] == sout[ax]:
            continue
        refuse_batch_axis(em, node, ax)
        mat = resize_matrix(em, node, ax, rank, sin[ax], sout[ax], double=True)  # (out, in), in float64
        perm = [i for i in range(rank) if i != ax] + [ax]
        inv = [perm.index(i) for i in range(rank)]
        moved = em.op("MatMul", [em.op("Transpose", [t], perm=perm), f64(em, mat.T)])
        t = em.op("Transpose", [moved], perm=inv)
    em.nodes.append(helper.make_node("Identity", [t], [y], name=y))


# ------------------------------------------------------------------------------------------------ the entries
_MOVE = {"ibp": _move_ibp, "linear": _move_linear, "jacobian": affine_jacobian}  # y = P x + q: exact rules
_SHAPES = "a shape or index computation: integer output"

register(
    "shape",
    Op("Reshape", vjp=_vjp_reshape, jvp=jvp_linear, lipschitz=lip_one, point=_reshape_p, **_MOVE, fold=_fold_reshape,
       logit_walk="moves"),
    Op("Flatten", vjp=_vjp_reshape, jvp=jvp_linear, lipschitz=lip_one, point=_flatten_p, **_MOVE, logit_walk="moves"),
    Op("Squeeze", vjp=_vjp_reshape, jvp=jvp_linear, lipschitz=lip_one, point=_squeeze_p, **_MOVE, fold=_fold_squeeze,
       logit_walk="moves"),
    Op("Unsqueeze", vjp=_vjp_reshape, jvp=jvp_linear, lipschitz=lip_one, point=_unsqueeze_p, **_MOVE,
       fold=_fold_unsqueeze, logit_walk="moves"),
    Op("Transpose", vjp=_vjp_transpose, jvp=jvp_linear, lipschitz=lip_one, point=_transpose_p, **_MOVE,
       layout="transpose"),
    Op("Expand", vjp=_vjp_expand, jvp=jvp_linear, lipschitz=_lip_expand, point=_expand_p, **_MOVE, needs_shape=True),
    Op("Slice", rowwise=True, vjp=_vjp_slice, jvp=jvp_linear, lipschitz=lip_one, point=_slice_p, **_MOVE),
    Op("Gather", vjp=_vjp_gather, jvp=jvp_linear, lipschitz=_lip_gather, checks_weights=True, point=_gather_p, **_MOVE,
       fold=_fold_gather, needs_shape=True),
    Op("Pad", rowwise=True, vjp=_vjp_pad, jvp=_jvp_pad, lipschitz=lip_one, point=_pad_p, **_MOVE, layout="keeps axes"),
    Op("Tile", point=_tile_p, **_MOVE),
    Op("DepthToSpace", point=_d2s_p, **_MOVE),
    Op("SpaceToDepth", point=_s2d_p, **_MOVE),
    Op("Concat", vjp=_vjp_concat, jvp=_jvp_concat, lipschitz=_lip_concat, point=_concat_p, ibp=_concat_ibp,
       linear=_concat_linear, jacobian=affine_jacobian, fold=_fold_concat),
    Op("Split", vjp=_vjp_split, jvp=_jvp_split, lipschitz=lip_one),
    Op("Resize", vjp=_vjp_resize, jvp=_jvp_resize, float64=_lower_resize),
    Op("Upsample", vjp=_vjp_resize, jvp=_jvp_resize, float64=_lower_resize),
    # shape computations: static (folded), never differentiated
    Op("Shape", nondiff=_SHAPES, vjp=Reason(_SHAPES), jvp=Reason(_SHAPES),
       point=lambda c, n, i: [np.array(np.asarray(i[0]).shape, dtype=np.int64)],
       ibp=static_only("Shape"), fold=_fold_shape, reads_shape_only=True),  # static: folded from the inferred shapes
    Op("Size", nondiff=_SHAPES, vjp=Reason(_SHAPES), jvp=Reason(_SHAPES), reads_shape_only=True),
    Op("ConstantOfShape", nondiff=_SHAPES, vjp=Reason(_SHAPES), jvp=Reason(_SHAPES), point=_cos_point,
       ibp=static_only("ConstantOfShape")),
    Op("Range", nondiff=_SHAPES, vjp=Reason(_SHAPES), jvp=Reason(_SHAPES),
       point=lambda c, n, i: [np.arange(np.asarray(i[0]).item(), np.asarray(i[1]).item(), np.asarray(i[2]).item())],
       ibp=static_only("Range")),
)
