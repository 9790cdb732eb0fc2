"""Node emission for derivative graphs: fresh names, constants, and opset-aware helper ops.

Derivative nodes join the primal graph at the model's own opset (changing the opset would
change the meaning of the primal nodes), so every helper here picks the form of an operator
that this opset defines (axes as attribute before opset 13, pads as attribute before 11, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GradientUnsupported(Exception):
    """A node has no derivative rule here; ``op`` names it for the fallback note."""

    def __init__(self, op: str | None, node: str | None, why: str) -> None:
        super().__init__(f"no gradient rule for operator '{op}' (node '{node}'): {why}" if op else why)
        self.op = op
        self.node = node
        self.why = why


class Emitter:
    """Collects derivative nodes and constants; knows the probe's shapes, dtypes and values.

    ``shapes``/``values`` come from one probe run of the primal graph (batch ``probe_batch``);
    ``batch_dynamic`` tells whether the graph keeps a symbolic batch axis, in which case
    rules must never bake axis 0's size into a constant.
    """

    def __init__(
        self,
        opset: int,
        shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, np.dtype],
        values: dict[str, np.ndarray],
        prefix: str,
        batch_dynamic: bool,
    ) -> None:
        self.opset = opset
        self.shapes = shapes
        self.dtypes = dtypes
        self.values = values
        self.prefix = prefix
        self.batch_dynamic = batch_dynamic
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}
        self.active_names: set[str] = set()
        self.alias: dict[str, str] = {}  # a primal tensor repeated per cotangent -> the primal tensor

    def active(self, name: str) -> bool:
        """True when ``name`` depends differentiably on the model input."""
        return bool(name) and self.alias.get(name, name) in self.active_names

    # -- names and constants -------------------------------------------------------------
    def fresh(self, hint: str = "t") -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, array, dtype=None) -> str:
        arr = np.asarray(array, dtype=dtype) if dtype is not None else np.asarray(array)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in self._consts and arr.size <= 64:
            return self._consts[key]
        name = self.fresh("c")
        self.initializers.append(numpy_helper.from_array(arr, name))
        if arr.size <= 64:
            self._consts[key] = name
        return name

    def scalar(self, value: float, like: str) -> str:
        """A scalar constant with the dtype of tensor ``like``."""
        return self.const(np.array(value, dtype=self.dtype(like)))

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, n_out: int = 1, **attrs):
        outs = [self.fresh(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[self.alias.get(name, name)]

    def dtype(self, name: str) -> np.dtype:
        return self.dtypes[self.alias.get(name, name)]

    def value(self, name: str) -> np.ndarray | None:
        return self.values.get(self.alias.get(name, name))

    def note_shape(self, name: str, shape: tuple[int, ...], dtype) -> str:
        self.shapes[name] = tuple(shape)
        self.dtypes[name] = np.dtype(dtype)
        return name

    # -- opset-aware helpers -------------------------------------------------------------
    def reduce_sum(self, t: str, axes: Sequence[int], keepdims: bool = True) -> str:
        axes = [int(a) for a in axes]
        if not axes:
            return t
        if self.opset >= 13:
            return self.op("ReduceSum", [t, self.const(np.array(axes, np.int64))], keepdims=int(keepdims))
        return self.op("ReduceSum", [t], axes=axes, keepdims=int(keepdims))

    def unsqueeze(self, t: str, axes: Sequence[int]) -> str:
        axes = [int(a) for a in axes]
        if self.opset >= 13:
            return self.op("Unsqueeze", [t, self.const(np.array(axes, np.int64))])
        return self.op("Unsqueeze", [t], axes=axes)

    def slice(self, t: str, starts, ends, axes, steps=None) -> str:
        starts, ends, axes = list(map(int, starts)), list(map(int, ends)), list(map(int, axes))
        if self.opset >= 10:
            ins = [t, self.const(np.array(starts, np.int64)), self.const(np.array(ends, np.int64)),
                   self.const(np.array(axes, np.int64))]
            if steps is not None:
                ins.append(self.const(np.array(list(map(int, steps)), np.int64)))
            return self.op("Slice", ins)
        if steps is not None and any(int(s) != 1 for s in steps):
            raise GradientUnsupported("Slice", t, "stepped slices need opset >= 10")
        return self.op("Slice", [t], starts=starts, ends=ends, axes=axes)

    def pad(self, t: str, pads: Sequence[int]) -> str:
        """Zero-pad (negative entries crop), ``pads`` = begins then ends over every axis."""
        pads = [int(p) for p in pads]
        if not any(pads):
            return t
        rank = len(pads) // 2
        if any(p < 0 for p in pads):
            # Crops as a Slice first: negative Pad entries are not accepted everywhere.
            axes, starts, ends = [], [], []
            for a in range(rank):
                b, e = pads[a], pads[rank + a]
                if b < 0 or e < 0:
                    axes.append(a)
                    starts.append(-b if b < 0 else 0)
                    ends.append(e if e < 0 else np.iinfo(np.int64).max)
            t = self.slice(t, starts, ends, axes)
            pads = [max(p, 0) for p in pads]
            if not any(pads):
                return t
        if self.opset >= 11:
            return self.op("Pad", [t, self.const(np.array(pads, np.int64))], mode="constant")
        return self.op("Pad", [t], pads=pads, mode="constant", value=0.0)

    def reshape_like(self, t: str, like: str) -> str:
        return self.op("Reshape", [t, self.op("Shape", [like])])

    def expand_like(self, t: str, like: str) -> str:
        return self.op("Expand", [t, self.op("Shape", [like])])

    def zeros_like(self, like: str) -> str:
        value = numpy_helper.from_array(np.zeros(1, dtype=self.dtype(like)), "zero")
        return self.op("ConstantOfShape", [self.op("Shape", [like])], value=value)

    def cast_like(self, t: str, like: str) -> str:
        to = helper.np_dtype_to_tensor_dtype(self.dtype(like))
        return self.op("Cast", [t], to=int(to))

    def mask(self, cond: str, like: str) -> str:
        """Boolean ``cond`` as 0/1 in the dtype of ``like``."""
        return self.cast_like(cond, like)

    def greater_equal(self, a: str, b: str) -> str:
        if self.opset >= 12:
            return self.op("GreaterOrEqual", [a, b])
        return self.op("Not", [self.op("Less", [a, b])])

    def less_equal(self, a: str, b: str) -> str:
        if self.opset >= 12:
            return self.op("LessOrEqual", [a, b])
        return self.op("Not", [self.op("Greater", [a, b])])

    def add_all(self, terms: Sequence[str]) -> str:
        out = terms[0]
        for t in terms[1:]:
            out = self.op("Add", [out, t])
        return out

    def unbroadcast(self, g: str, out_shape: Sequence[int], to_shape: Sequence[int], to_name: str) -> str:
        """Sum ``g`` (shaped like the broadcast result) back to an operand's shape."""
        out_shape, to_shape = tuple(out_shape), tuple(to_shape)
        if out_shape == to_shape:
            return g
        lead = len(out_shape) - len(to_shape)
        axes = list(range(lead))
        for i, n in enumerate(to_shape):
            if n == 1 and out_shape[lead + i] != 1:
                axes.append(lead + i)
        if axes:
            g = self.reduce_sum(g, axes, keepdims=True)
        if lead:
            g = self.reshape_like(g, to_name)
        return g

    def transpose_last2(self, t: str, rank: int) -> str:
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        return self.op("Transpose", [t], perm=perm)
