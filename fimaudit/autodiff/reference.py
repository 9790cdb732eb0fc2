"""A float64 second opinion: log p of the model evaluated in double precision.

Central differences of a float32 model cannot resolve a ReLU or max-pool kink closer than
about 1e-4 of the input's scale (the step must stay above float32 cancellation), so at
dithered points the self-check can disagree with a correct graph. The same graph computed
in float64 can use steps of 1e-7 and settles it.

Two evaluators compute the float64 copy. onnxruntime runs it when every operator has a
double kernel on its CPU provider or is rewritten here into operators that do
(``float64_model``): Conv becomes im2col (Pad, strided Slices stacked, or Gathers before
opset 10) and one MatMul, a depthwise Conv a sum of slice-times-tap products, AveragePool
and GlobalAveragePool reductions, Resize/Upsample MatMuls with the per-axis interpolation
matrices, HardSigmoid/HardSwish/Clip-6 Clip (or Min and Max), Elu/Selu/Softplus/Softsign
their closed forms. Everything else (e.g. Erf, which onnxruntime has only in float32)
falls back to onnx's numpy reference evaluator, which computes every operator in double
but is slow (im2col convolutions in Python): the caller times it and may skip it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from scipy.special import erf

from ..model.runner import BatchRunner
from .emit import Emitter
from ..model.session import with_placeholders
from .graph import POOL_SIZE
from ..ops.common import attrs, refuse_batch_axis, window
from ..ops.pool import pool_divisor
from ..ops.shape import resize_matrix

PREFIX = "fimaudit_f64_"
ROW_BYTES = 16 * 1024 * 1024  # the float64 session's largest tensor per run stays below this (rows per run follow)


def float64_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computing in float64 (initializers, Constant tensors, Cast targets, graph types)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    del g.value_info[:]
    for n in g.node:
        _node_to_float64(n)
    return m


def _node_to_float64(n: onnx.NodeProto) -> None:
    for a in n.attribute:
        if a.name == "to" and a.i == TensorProto.FLOAT:
            a.i = TensorProto.DOUBLE
        if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
            a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))


class Float64Unsupported(Exception):
    """The float64 copy cannot run in onnxruntime (an operator without a double kernel or rewrite here)."""


class _Lowering(Emitter):
    """An emitter that tracks the widest tensor (elements per row) the rewrites make, and keeps its large
    constants as arrays (``external``) rather than in the model."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.widest = 1
        self.external: dict[str, np.ndarray] = {}

    def const(self, array, dtype=None) -> str:
        arr = np.asarray(array, dtype=dtype) if dtype is not None else np.asarray(array)
        if arr.size < POOL_SIZE:
            return super().const(arr)
        name = self.fresh("w")
        self.external[name] = np.ascontiguousarray(arr)
        return name


# ----------------------------------------------------------------------------------------------
# Rewrites of operators onnxruntime's CPU provider has no double kernel for (checked against
# onnxruntime 1.17-1.22: Conv, ConvTranspose, AveragePool, GlobalAveragePool, HardSigmoid,
# HardSwish, Clip-6, Elu, Selu, Softplus, Softsign, Erf, Resize, Upsample, LRN, ...). Each
# writes nodes computing the node's outputs, under the same names, from double-capable ops.

def _f64(em: _Lowering, value) -> str:
    return em.const(np.asarray(value, dtype=np.float64))


def _windows(em: _Lowering, x: str, kernel, strides, dil, begins, ends, out_sp) -> str:
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


def _lower_conv(em: _Lowering, node: onnx.NodeProto) -> None:
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
    cols = x if pointwise else _windows(em, x, kernel, strides, dil, begins, ends, out_sp)
    em.widest = max(em.widest, cg * group * kk * p)
    cols = em.op("Reshape", [cols, em.const(np.array([0, group, cg * kk, p], np.int64))])
    shape_w = np.array([group, m // group, cg * kk], np.int64)
    wm = _f64(em, weight.reshape(shape_w)) if weight is not None else em.op("Reshape", [w, em.const(shape_w)])
    y = em.op("MatMul", [wm, cols])  # (G, M/G, Cg·kk) @ (N, G, Cg·kk, P) -> (N, G, M/G, P)
    shape_y = np.array([0, m] + list(out_sp), np.int64)
    if b is None:
        em.nodes.append(helper.make_node("Reshape", [y, em.const(shape_y)], [node.output[0]], name=node.output[0]))
        return
    y = em.op("Reshape", [y, em.const(shape_y)])
    shape_b = np.array([m] + [1] * len(kernel), np.int64)
    bias = em.value(b)
    bb = _f64(em, bias.reshape(shape_b)) if bias is not None else em.op("Reshape", [b, em.const(shape_b)])
    em.nodes.append(helper.make_node("Add", [y, bb], [node.output[0]], name=node.output[0]))


def _depthwise(em: _Lowering, node: onnx.NodeProto, weight: np.ndarray, kernel, strides, dil, begins, ends, out_sp) -> None:
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
        terms.append(em.op("Mul", [em.slice(t, starts, stops, range(2, 2 + n), strides), _f64(em, tap)]))
    b = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if b is not None:
        bias = em.value(b)
        shape_b = np.array([weight.shape[0]] + [1] * n, np.int64)
        terms.append(_f64(em, bias.reshape(shape_b)) if bias is not None else em.op("Reshape", [b, em.const(shape_b)]))
    em.nodes.append(helper.make_node("Sum", terms, [node.output[0]], name=node.output[0]))  # one pass over all terms


def _lower_avgpool(em: _Lowering, node: onnx.NodeProto) -> None:
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
    win = _windows(em, x, kernel, strides, [1] * len(kernel), begins, ends, out_sp)
    em.widest = max(em.widest, em.shape(x)[1] * int(np.prod(kernel)) * int(np.prod(out_sp)))
    total = em.reduce_sum(win, list(range(2, 2 + len(kernel))), keepdims=False)
    em.nodes.append(helper.make_node("Div", [total, _f64(em, div)], [node.output[0]], name=node.output[0]))


def _lower_gap(em: _Lowering, node: onnx.NodeProto) -> None:
    axes = list(range(2, len(em.shape(node.input[0]))))
    if em.opset >= 18:
        em.nodes.append(helper.make_node("ReduceMean", [node.input[0], em.const(np.array(axes, np.int64))],
                                         [node.output[0]], name=node.output[0], keepdims=1))
    else:
        em.nodes.append(helper.make_node("ReduceMean", [node.input[0]], [node.output[0]], name=node.output[0], axes=axes,
                                         keepdims=1))


def _clamp(em: _Lowering, t: str, lo: float | None, hi: float | None, out: str) -> None:
    if em.opset >= 12:  # Clip with double kernels: one pass
        bounds = [_f64(em, v) if v is not None else "" for v in (lo, hi)]
        em.nodes.append(helper.make_node("Clip", [t] + bounds, [out], name=out))
        return
    if em.opset < 8:
        raise Float64Unsupported("Max/Min without broadcasting (opset < 8)")
    if hi is not None:
        t = em.op("Min", [t, _f64(em, hi)])
    if lo is not None:
        t = em.op("Max", [t, _f64(em, lo)])
    em.nodes.append(helper.make_node("Identity", [t], [out], name=out))


def _hard_sigmoid(em: _Lowering, x: str, alpha: float, beta: float, out: str) -> None:
    _clamp(em, em.op("Add", [em.op("Mul", [x, _f64(em, alpha)]), _f64(em, beta)]), 0.0, 1.0, out)


def _lower_hardsigmoid(em: _Lowering, node: onnx.NodeProto) -> None:
    a = attrs(node)
    _hard_sigmoid(em, node.input[0], a.get("alpha", 0.2), a.get("beta", 0.5), node.output[0])


def _lower_hardswish(em: _Lowering, node: onnx.NodeProto) -> None:
    gate = em.fresh("hswish_gate")
    # alpha as ONNX's function body for HardSwish writes it: a float attribute, 1/6 rounded to float32.
    _hard_sigmoid(em, node.input[0], float(np.float32(1.0 / 6.0)), 0.5, gate)
    em.nodes.append(helper.make_node("Mul", [node.input[0], gate], [node.output[0]], name=node.output[0]))


def _lower_clip(em: _Lowering, node: onnx.NodeProto) -> None:
    if em.opset >= 11:  # Clip-11+ has double kernels; this is only for the attribute form
        em.nodes.append(node)
        return
    a = attrs(node)
    _clamp(em, node.input[0], a.get("min"), a.get("max"), node.output[0])


def _negative_part_exp(em: _Lowering, x: str, alpha: float) -> str:
    """alpha·(exp(min(x, 0)) - 1): the negative branch of Elu and Selu."""
    if em.opset < 8:
        raise Float64Unsupported("Min without broadcasting (opset < 8)")
    e = em.op("Exp", [em.op("Min", [x, _f64(em, 0.0)])])
    return em.op("Mul", [em.op("Sub", [e, _f64(em, 1.0)]), _f64(em, alpha)])


def _lower_elu(em: _Lowering, node: onnx.NodeProto) -> None:
    x = node.input[0]
    neg = _negative_part_exp(em, x, attrs(node).get("alpha", 1.0))
    em.nodes.append(helper.make_node("Add", [em.op("Relu", [x]), neg], [node.output[0]], name=node.output[0]))


def _lower_selu(em: _Lowering, node: onnx.NodeProto) -> None:
    x, a = node.input[0], attrs(node)
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    inner = em.op("Add", [em.op("Relu", [x]), _negative_part_exp(em, x, alpha)])
    em.nodes.append(helper.make_node("Mul", [inner, _f64(em, gamma)], [node.output[0]], name=node.output[0]))


def _lower_softplus(em: _Lowering, node: onnx.NodeProto) -> None:
    x = node.input[0]  # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), without overflow
    tail = em.op("Log", [em.op("Add", [_f64(em, 1.0), em.op("Exp", [em.op("Neg", [em.op("Abs", [x])])])])])
    em.nodes.append(helper.make_node("Add", [em.op("Relu", [x]), tail], [node.output[0]], name=node.output[0]))


def _lower_softsign(em: _Lowering, node: onnx.NodeProto) -> None:
    x = node.input[0]
    den = em.op("Add", [_f64(em, 1.0), em.op("Abs", [x])])
    em.nodes.append(helper.make_node("Div", [x, den], [node.output[0]], name=node.output[0]))


def _lower_resize(em: _Lowering, node: onnx.NodeProto) -> None:
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
        moved = em.op("MatMul", [em.op("Transpose", [t], perm=perm), _f64(em, mat.T)])
        t = em.op("Transpose", [moved], perm=inv)
    em.nodes.append(helper.make_node("Identity", [t], [y], name=y))


_LOWER = {
    "Conv": _lower_conv,
    "AveragePool": _lower_avgpool,
    "GlobalAveragePool": _lower_gap,
    "HardSigmoid": _lower_hardsigmoid,
    "HardSwish": _lower_hardswish,
    "Clip": _lower_clip,
    "Elu": _lower_elu,
    "Selu": _lower_selu,
    "Softplus": _lower_softplus,
    "Softsign": _lower_softsign,
    "Resize": _lower_resize,
    "Upsample": _lower_resize,
}
# Differentiable operators (those with gradient rules) with no double kernel and no rewrite here.
NO_FLOAT64 = frozenset(("Erf", "ConvTranspose", "LpPool", "LRN", "InstanceNormalization", "MeanVarianceNormalization",
                        "Celu", "ThresholdedRelu", "Mish", "Gelu", "GlobalMaxPool", "Shrink"))


def onnxruntime_can_run(model: onnx.ModelProto, shapes: dict | None) -> str | None:
    """Why the float64 copy of ``model`` cannot run in onnxruntime, from its operators alone (None: it can)."""
    if not shapes:
        return "no tensor shapes"
    if model.graph.sparse_initializer:
        return "sparse initializers"
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            return f"operator {node.domain}:{node.op_type}"
        if node.op_type in NO_FLOAT64:
            return f"{node.op_type} has no double kernel in onnxruntime"
    return None


def float64_model(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], weights: dict[str, np.ndarray] | None = None
                  ) -> tuple[onnx.ModelProto, dict[str, np.ndarray], int]:
    """The float64 copy of ``model`` with the operators onnxruntime lacks double kernels for rewritten.

    ``shapes``: static shapes of the model's tensors (the probe's, batch on axis 0);
    ``weights``: initializers held outside ``model`` (``DerivativeGraphs.weights``). Returns the
    model, which declares its large initializers as external data, those initializers (float64
    where they were float32), and the widest tensor it makes per row (elements), to size the
    rows per run. Raises ``Float64Unsupported`` for an operator it cannot express.
    """
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    why = onnxruntime_can_run(model, shapes)
    if why is not None:  # before any weight is converted
        raise Float64Unsupported(why)
    values: dict[str, np.ndarray] = {}
    for name, arr in (weights or {}).items():
        values[name] = arr.astype(np.float64) if arr.dtype == np.float32 else arr
    inline = {t.name: t for t in model.graph.initializer}
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        values[t.name] = arr.astype(np.float64) if t.data_type == TensorProto.FLOAT else arr
    em = _Lowering(opset, dict(shapes), {}, values, PREFIX, True)
    em.widest = max((int(np.prod(s[1:])) for s in shapes.values() if len(s) > 1), default=1)
    for node in model.graph.node:
        n = onnx.NodeProto()
        n.CopyFrom(node)
        _node_to_float64(n)
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
        rewrite = _LOWER.get(n.op_type)
        if rewrite is None:
            em.nodes.append(n)
            continue
        for i in n.input[:1]:
            if i and i not in em.shapes:
                raise Float64Unsupported(f"no static shape for the input of {n.op_type} '{n.name}'")
        if n.output[0] not in em.shapes:
            raise Float64Unsupported(f"no static shape for the output of {n.op_type} '{n.name}'")
        rewrite(em, n)
    used = {i for n in em.nodes for i in n.input}
    inits: list[TensorProto] = []
    external = dict(em.external)
    for name in values:
        if name not in used or name in em.external:
            continue
        if name in inline:
            t = inline[name]
            inits.append(numpy_helper.from_array(values[name], name) if t.data_type == TensorProto.FLOAT else t)
        elif name in (weights or {}):
            external[name] = values[name]
    g = helper.make_graph(em.nodes, model.graph.name or "float64", [], [], inits + em.initializers)
    for vi in list(model.graph.input):
        if vi.name in values:
            continue
        g.input.append(vi)
    g.output.extend(model.graph.output)
    for vi in list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    out = helper.make_model(g, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return with_placeholders(out, external), external, int(em.widest)


def _erf_op():
    from onnx.reference.op_run import OpRun

    class Erf(OpRun):  # matched by class name; the evaluator's own Erf rounds through float32
        op_domain = ""

        def _run(self, x):
            return (erf(x).astype(x.dtype),)

    return Erf


class Float64Logp:
    """x rows (float64) -> log p rows, through a float64 copy of a graph whose only output is log p.

    ``evaluator`` says which ran it: "onnxruntime" (the rewritten copy, see ``float64_model``;
    needs ``shapes``) or "reference evaluator" (onnx's numpy evaluator), with ``fallback``
    saying why onnxruntime could not. ``prefer="reference"`` asks for the numpy evaluator.
    """

    def __init__(self, logp_model: onnx.ModelProto, input_name: str, shapes: dict | None = None, *,
                 weights: dict[str, np.ndarray] | None = None, threads: int = 0, prefer: str = "onnxruntime") -> None:
        self._name = input_name
        self._session = None
        self.fallback: str | None = None
        dim = next(i for i in logp_model.graph.input if i.name == input_name).type.tensor_type.shape.dim
        # The graph's fixed batch (every run has that many rows, the last padded); None when symbolic.
        self.batch: int | None = int(dim[0].dim_value) if len(dim) and dim[0].HasField("dim_value") else None
        self.rows_per_run = self.batch or 0  # 0: all rows at once (the reference evaluator)
        if prefer == "onnxruntime":
            try:
                self._session, widest = _float64_session(logp_model, shapes, weights, threads)
                self.rows_per_run = self.batch or max(1, ROW_BYTES // (8 * max(widest, 1)))
            except Exception as exc:  # no double kernel, or a rewrite onnxruntime refuses: numpy instead
                self.fallback = " ".join(str(exc).split())[:200] or type(exc).__name__
        if self._session is None:
            from onnx.reference import ReferenceEvaluator

            full = logp_model
            if weights:
                full = onnx.ModelProto()
                full.CopyFrom(logp_model)
                used = {i for n in full.graph.node for i in n.input}
                full.graph.initializer.extend(numpy_helper.from_array(a, k) for k, a in weights.items() if k in used)
            self._ev = ReferenceEvaluator(float64_copy(full), new_ops=[_erf_op()])
        self.evaluator = "onnxruntime" if self._session is not None else "reference evaluator"
        self._runner: BatchRunner | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """log p rows ``(n, K)`` for rows ``x``, in batches of ``rows_per_run`` (``model.runner.BatchRunner``)."""
        x = np.asarray(x, dtype=np.float64)
        if self._runner is None:
            run = (lambda outputs, feed: self._ev.run(None, feed)[:1]) if self._session is None else \
                (lambda outputs, feed: self._session.run(None, feed)[:1])
            self._runner = BatchRunner(self._session, np.float64, batch=1, fixed_batch=self.batch, what=None)
            self._runner.execute = run
        self._runner.batch = self.batch or self.rows_per_run or max(1, x.shape[0])
        if x.shape[0] == 0:
            return np.zeros((0, 0))
        return self._runner.run([None], {self._name: x}, flat=True)[0]


def _float64_session(logp_model: onnx.ModelProto, shapes: dict, weights: dict | None, threads: int):
    """An onnxruntime CPU session of the rewritten float64 copy: no memory arena (it runs a few times and
    goes), basic graph optimisations (the fusions of the higher levels target float32 kernels). The
    float64 weights go to onnxruntime as arrays (it copies them); none is serialised."""
    from ..model.session import create_session

    model, external, widest = float64_model(logp_model, shapes, weights)
    data = model.SerializeToString()
    del model
    session, _ = create_session(data, device="cpu", threads=threads, arena=False, optimization="basic",
                                initializers=external)
    return session, widest


__all__ = ["Float64Logp", "Float64Unsupported", "float64_copy", "float64_model", "onnxruntime_can_run", "NO_FLOAT64"]
