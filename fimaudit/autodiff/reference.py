"""A float64 second opinion: log p of the model evaluated by onnx's numpy reference evaluator in double precision.

Central differences of a float32 model cannot resolve a ReLU or max-pool kink closer than
about 1e-4 of the input's scale (the step must stay above float32 cancellation), so at
dithered points the self-check can disagree with a correct graph. The same graph computed
in float64 can use steps of 1e-7 and settles it. It is slow (numpy), so it only re-judges
the rows the float32 comparison refused.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from scipy.special import erf


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
        for a in n.attribute:
            if a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return m


def _erf_op():
    from onnx.reference.op_run import OpRun

    class Erf(OpRun):  # matched by class name; the evaluator's own Erf rounds through float32
        op_domain = ""

        def _run(self, x):
            return (erf(x).astype(x.dtype),)

    return Erf


class Float64Logp:
    """x rows (float64) -> log p rows, through a float64 copy of a graph whose only output is log p."""

    def __init__(self, logp_model: onnx.ModelProto, input_name: str) -> None:
        from onnx.reference import ReferenceEvaluator

        self._ev = ReferenceEvaluator(float64_copy(logp_model), new_ops=[_erf_op()])
        self._name = input_name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self._ev.run(None, {self._name: np.asarray(x, dtype=np.float64)})[0]
        return np.asarray(out, dtype=np.float64).reshape(x.shape[0], -1)
