"""ONNX graph -> typed operation graph: constants, static tensors, shapes, producers and consumers.

Constants come from initializers and Constant nodes; tensors computed only from constants
or from Shape are *static* (independent of the input's values). Shapes come from onnx shape
inference with the batch fixed to 1 and, where inference cannot tell, from one onnxruntime
run with the missing tensors exposed as outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import ops
from ..errors import FimauditError, UnsupportedModelError
from ..model.probe import probe_session
from ..model.session import ort_errors


@dataclass(frozen=True)
class Node:
    index: int
    name: str
    op: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict = field(hash=False, compare=False)


@dataclass
class OpGraph:
    nodes: list[Node]
    input_name: str
    output_name: str
    sample_shape: tuple[int, ...]
    consts: dict[str, np.ndarray]
    static: set[str]
    shapes: dict[str, tuple[int, ...]]
    producer: dict[str, Node]
    consumers: dict[str, list[Node]]

    def is_var(self, name: str) -> bool:
        return bool(name) and name not in self.static

    def var_inputs(self, node: Node) -> list[str]:
        return [i for i in node.inputs if self.is_var(i)]

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    def ancestors(self, name: str) -> set[str]:
        """Variable tensors on which ``name`` depends (itself included)."""
        seen: set[str] = set()
        stack = [name]
        while stack:
            t = stack.pop()
            if t in seen or not self.is_var(t):
                continue
            seen.add(t)
            node = self.producer.get(t)
            if node is not None:
                stack.extend(node.inputs)
        return seen


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        out[a.name] = helper.get_attribute_value(a)
        if isinstance(out[a.name], bytes):
            out[a.name] = out[a.name].decode("utf-8", "replace")
    return out


def _outer_refs(graph: onnx.GraphProto) -> list[str]:
    """Names a subgraph reads from the enclosing scope (used but not defined inside it)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: list[str] = []
    for n in graph.node:
        for name in list(n.input) + [r for a in n.attribute for g in _subgraphs(a) for r in _outer_refs(g)]:
            if name and name not in defined and name not in used:
                used.append(name)
        defined.update(n.output)
    return used


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def _node_inputs(n: onnx.NodeProto) -> tuple[str, ...]:
    """A node's inputs plus the outer tensors its subgraphs (If/Loop/Scan bodies) read implicitly,
    so that dependence on the model input is not lost inside control flow."""
    extra = [r for a in n.attribute for g in _subgraphs(a) for r in _outer_refs(g) if r not in n.input]
    return tuple(n.input) + tuple(dict.fromkeys(extra))


def _fold_constant(node: Node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> list:
    """Evaluate the few constant ops that export pipelines leave behind (their entry's ``fold`` in the operator
    table); None where a value stays unknown."""
    ins = [consts.get(i) for i in node.inputs]
    entry = ops.entry(node.op)
    rule = entry.rule("fold") if entry is not None else None
    if rule is None:
        return [None] * len(node.outputs)
    try:
        out = rule(node, ins, shapes)
    except (ValueError, TypeError, IndexError):
        # a malformed constant (an axis out of range, shapes that do not broadcast or reshape, a non-numeric value):
        # its value stays unknown, as for an op not folded here; anything else is a bug and propagates
        return [None] * len(node.outputs)
    return [None] * len(node.outputs) if out is None else out


_FLOAT_DATA = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for shape inference: large float initializers become typed graph inputs, their data not copied.

    Shape inference reads their shapes only (data propagation folds integer shape tensors,
    which stay); at ResNet-50 size the full copy and its serialisations cost about 1 GB.
    """
    m = onnx.ModelProto()
    for fd, value in model.ListFields():
        if fd.name != "graph":
            getattr(m, fd.name).extend(value) if hasattr(value, "extend") else (
                getattr(m, fd.name).CopyFrom(value) if hasattr(value, "CopyFrom") else setattr(m, fd.name, value))
    for fd, value in model.graph.ListFields():
        if fd.name != "initializer":
            getattr(m.graph, fd.name).extend(value) if hasattr(value, "extend") else (
                getattr(m.graph, fd.name).CopyFrom(value) if hasattr(value, "CopyFrom") else setattr(m.graph, fd.name, value))
    inputs = {i.name for i in m.graph.input}
    for t in model.graph.initializer:
        if t.data_type in _FLOAT_DATA and int(np.prod(t.dims)) > 64:
            if t.name not in inputs:
                m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            m.graph.initializer.append(t)
    return m


def _infer_shapes(model: onnx.ModelProto, input_name: str, sample_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    m = _shape_skeleton(model)
    declared = {i.name for i in model.graph.input}
    stand_ins = {i.name for i in m.graph.input if i.name not in declared}  # initializers, not reported as inputs
    for inp in m.graph.input:
        if inp.name == input_name:
            dims = inp.type.tensor_type.shape.dim
            full = (1,) + tuple(sample_shape)
            if len(dims) != len(full):
                raise UnsupportedModelError(f"input '{input_name}' rank does not match sample shape {sample_shape}")
            for dim, val in zip(dims, full):
                dim.Clear()
                dim.dim_value = val
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        # onnx cannot infer this graph's shapes (an op or type it does not know): the declared shapes only
        inferred = m
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims) and vi.name not in stand_ins:
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _runtime_shapes(model: onnx.ModelProto, input_name: str, sample_shape, names: list[str]) -> dict:
    """Shapes of ``names`` from one onnxruntime run on zeros (batch 1)."""
    try:
        sess = probe_session(model, names)
        outs = sess.run(names, {input_name: np.zeros((1,) + tuple(sample_shape), dtype=np.float32)})
    except (FimauditError, *ort_errors()):
        # onnxruntime cannot load or run the probe (an unsupported op, a float64 input, a batch of 1 it refuses):
        # runtime shapes are a refinement, so none; other errors (memory, interrupts, bugs) propagate
        return {}
    return {n: tuple(np.asarray(o).shape) for n, o in zip(names, outs)}


def parse(
    model: onnx.ModelProto, input_name: str, output_name: str, sample_shape: tuple[int, ...]
) -> OpGraph:
    consts: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        consts[init.name] = numpy_helper.to_array(init)
    nodes = [
        Node(i, n.name or f"{n.op_type}_{i}", n.op_type, n.domain or "", _node_inputs(n), tuple(n.output), _attrs(n))
        for i, n in enumerate(model.graph.node)
    ]
    shapes = _infer_shapes(model, input_name, sample_shape)
    static: set[str] = set(consts)
    shape_readers = ops.with_flag("reads_shape_only")  # Shape, Size: static whatever their input
    for node in nodes:
        if node.op == "Constant":
            a = node.attrs
            if "value" in a:
                consts[node.outputs[0]] = numpy_helper.to_array(a["value"])
            elif "value_float" in a:
                consts[node.outputs[0]] = np.array(a["value_float"], dtype=np.float32)
            elif "value_floats" in a:
                consts[node.outputs[0]] = np.array(a["value_floats"], dtype=np.float32)
            elif "value_int" in a:
                consts[node.outputs[0]] = np.array(a["value_int"], dtype=np.int64)
            elif "value_ints" in a:
                consts[node.outputs[0]] = np.array(a["value_ints"], dtype=np.int64)
            static.update(node.outputs)
            continue
        data_inputs = [i for i in node.inputs if i]
        if node.op in shape_readers or (data_inputs and all(i in static for i in data_inputs)):
            static.update(node.outputs)
            for name, val in zip(node.outputs, _fold_constant(node, consts, shapes)):
                if val is not None:
                    consts[name] = np.asarray(val)
    producer = {o: n for n in nodes for o in n.outputs}
    consumers: dict[str, list[Node]] = {}
    for n in nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    shape_ops = ops.with_flag("needs_shape")  # their Lipschitz rules read their input's shape
    missing = sorted({n.inputs[0] for n in nodes if n.op in shape_ops and n.inputs[0] not in shapes
                      and n.inputs[0] not in static})
    if missing:
        shapes.update(_runtime_shapes(model, input_name, sample_shape, missing))
    return OpGraph(nodes, input_name, output_name, tuple(sample_shape), consts, static, shapes, producer, consumers)
