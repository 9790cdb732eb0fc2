"""A float64 second opinion: log p of the model evaluated in double precision.

Central differences of a float32 model cannot resolve a ReLU or max-pool kink closer than
about 1e-4 of the input's scale (the step must stay above float32 cancellation), so at
dithered points the self-check can disagree with a correct graph. The same graph computed
in float64 can use steps of 1e-7 and settles it.

Two evaluators compute the float64 copy. onnxruntime runs it when every operator has a
double kernel on its CPU provider or is rewritten here into operators that do
(``float64_model``, by the operator table's ``float64`` rules): Conv becomes im2col (Pad, strided Slices stacked, or Gathers before
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
from .. import ops
from ..ops.common import Float64Unsupported
from ..ops.registry import Reason

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


# The rewrites of operators onnxruntime's CPU provider has no double kernel for (checked against onnxruntime
# 1.17-1.22) are the operator table's ``float64`` rules (``fimaudit.ops``, beside each entry); those it cannot
# rewrite hold a Reason there.


def onnxruntime_can_run(model: onnx.ModelProto, shapes: dict | None) -> str | None:
    """Why the float64 copy of ``model`` cannot run in onnxruntime, from its operators alone (None: it can)."""
    if not shapes:
        return "no tensor shapes"
    if model.graph.sparse_initializer:
        return "sparse initializers"
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            return f"operator {node.domain}:{node.op_type}"
        op = ops.entry(node.op_type)
        if op is not None and isinstance(op.float64, Reason):
            return f"{node.op_type} has {op.float64}"
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
        op = ops.entry(n.op_type)
        rewrite = op.float64 if op is not None and callable(op.float64) else None
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


__all__ = ["Float64Logp", "Float64Unsupported", "float64_copy", "float64_model", "onnxruntime_can_run"]
