"""Building the derivative graphs of log p: reverse mode (x, U -> log p, Uᵀ S) and forward mode (x, V -> S V).

The primal graph is copied with the chosen input's per-sample shape made static and a
log-probability head appended (MATH §1: log-softmax of logits, log of probabilities). One
probe run with every intermediate tensor exposed gives static shapes, dtypes and the values
of inactive tensors (pads, axes, indices); the rules of the operator table (``fimaudit.ops``) then emit derivative
nodes at the model's own opset. The batch axis stays symbolic when the graph allows it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import helper, numpy_helper

from .. import streams
from ..model.probe import open_probe, with_outputs  # noqa: F401  (with_outputs re-exported for autodiff.check)
from ..model.session import reads
from .emit import Emitter, GradientUnsupported
from .. import ops

PREFIX = "fimaudit_ad_"
LOGP = PREFIX + "logp"
COTANGENT = PREFIX + "cotangent"
GRAD = PREFIX + "grad"
TANGENT = PREFIX + "tangent"
JVP_OUT = PREFIX + "jvp"
OUTPUT_KINDS = ("logits", "probabilities", "log-probabilities")
_FLOATS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}


@dataclass
class DerivativeGraphs:
    """The primal (with head), reverse and forward models of one classifier, with what was learnt."""

    primal: onnx.ModelProto  # x -> log p, every intermediate exposed (FD bisection, probing)
    reverse: onnx.ModelProto  # x, U -> log p, Uᵀ S
    forward: onnx.ModelProto  # x, V -> log p, S V
    fisher: onnx.ModelProto  # x, V -> log p, S V, F V = Sᵀ diag(p) S V (one fused pass)
    logp_model: onnx.ModelProto  # x -> log p
    input_name: str
    sample_shape: tuple[int, ...]
    input_dtype: np.dtype
    n_classes: int
    batch: int | None  # None: symbolic batch axis; else the fixed batch every run must have
    order: list[tuple[str, str, list[str], list[str]]]  # (node name, op, active inputs, active outputs)
    tangents: dict[str, str] = field(default_factory=dict)  # primal value -> its tangent in ``forward``
    contributions: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # node -> (input, cotangent)
    cotangents: dict[str, str] = field(default_factory=dict)  # primal value -> its summed cotangent in ``reverse``
    build_seconds: float = 0.0
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the probe's static shapes (batch on axis 0)
    multi: bool = False  # the reverse graph takes several cotangent rows per point (model run once per point)
    # The models above hold no large initializer: the primal's weights and the rules' large
    # constants are kept once here (numpy), and handed to each session as it opens.
    weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def activation_bytes(self) -> int:
        """Bytes of the primal's tensors per row (those whose first axis is the probe batch), at least 1."""
        probe = 2 if self.batch is None else self.batch
        size = np.dtype(self.input_dtype).itemsize
        return max(1, sum(int(np.prod(s[1:])) * size for k, s in self.shapes.items()
                          if len(s) and s[0] == probe and k not in self.weights))

    def complete(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """``model`` (one of these graphs, or a variant of one) as a self-contained ModelProto."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.graph.initializer.extend(numpy_helper.from_array(self.weights[n], n) for n in reads(model, self.weights))
        return out


# Initializers of at least this many elements, of these types, live in ``DerivativeGraphs.weights``.
POOL_SIZE = 256
_POOL_TYPES = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_)}


def pooled(t: onnx.TensorProto) -> bool:
    """An initializer kept out of the graph protos: large, plain numeric, its data in the proto."""
    size = int(np.prod(t.dims)) if len(t.dims) else 1
    if size < POOL_SIZE or t.data_location == onnx.TensorProto.EXTERNAL:
        return False
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)) in _POOL_TYPES
    except Exception:
        return False


def _copy_without_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose graph has no initializers (they are not copied at all)."""

    def copy_fields(src, dst, skip: str = "") -> None:
        for fd, value in src.ListFields():
            if fd.name == skip:
                continue
            if hasattr(value, "extend"):  # a repeated field
                getattr(dst, fd.name).extend(value)
            elif isinstance(value, Message):
                getattr(dst, fd.name).CopyFrom(value)
            else:
                setattr(dst, fd.name, value)

    m = onnx.ModelProto()
    copy_fields(proto, m, skip="graph")
    copy_fields(proto.graph, m.graph, skip="initializer")
    return m


def _static_copy(proto: onnx.ModelProto, input_name: str, output_name: str, sample_shape, batch) -> onnx.ModelProto:
    m = _copy_without_initializers(proto)  # the large ones are shared (``DerivativeGraphs.weights``)
    g = m.graph
    g.initializer.extend(t for t in proto.graph.initializer if not pooled(t))
    del g.value_info[:]
    for vi in g.input:
        if vi.name == input_name:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            d0 = dims.add()
            if batch is None:
                d0.dim_param = "batch"
            else:
                d0.dim_value = int(batch)
            for n in sample_shape:
                dims.add().dim_value = int(n)
    keep = [o for o in g.output if o.name == output_name]
    del g.output[:]
    g.output.extend(keep)
    if m.ir_version > 10:
        m.ir_version = 10
    return m


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _add_head(m: onnx.ModelProto, output_name: str, kind: str, opset: int, dtype) -> None:
    """Append nodes computing log p (batch, K) from the chosen output."""
    g = m.graph
    flat = PREFIX + "scores"
    nodes = [helper.make_node("Flatten", [output_name], [flat], axis=1, name=flat)]
    if kind in ("logits", "log-probabilities"):
        nodes.append(helper.make_node("LogSoftmax", [flat], [LOGP], axis=1, name=LOGP))
    else:
        tiny = PREFIX + "tiny"
        g.initializer.append(numpy_helper.from_array(np.array(np.finfo(dtype).tiny, dtype=dtype), tiny))
        nodes += [
            helper.make_node("Max", [flat, tiny], [PREFIX + "pclip"], name=PREFIX + "pclip"),
            helper.make_node("Log", [PREFIX + "pclip"], [PREFIX + "logpc"], name=PREFIX + "logpc"),
        ]
        if opset >= 13:
            axes = PREFIX + "axis1"
            g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
            nodes.append(helper.make_node("ReduceSum", [PREFIX + "pclip", axes], [PREFIX + "psum"], name=PREFIX + "psum"))
        else:
            nodes.append(helper.make_node("ReduceSum", [PREFIX + "pclip"], [PREFIX + "psum"], axes=[1], name=PREFIX + "psum"))
        nodes += [
            helper.make_node("Log", [PREFIX + "psum"], [PREFIX + "logpsum"], name=PREFIX + "logpsum"),
            helper.make_node("Sub", [PREFIX + "logpc", PREFIX + "logpsum"], [LOGP], name=LOGP),
        ]
    g.node.extend(nodes)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(LOGP, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None))


def _name_nodes(m: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(m.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _extra_outputs(m: onnx.ModelProto) -> None:
    """Ask each node for the optional outputs its derivative rules read (its entry's ``outputs``: MaxPool's
    indices, LayerNormalization's mean and inverse std)."""
    opset = _opset(m)
    for node in m.graph.node:
        entry = ops.entry(node.op_type)
        if entry is not None and entry.outputs is not None:
            entry.outputs(node, opset, PREFIX + node.name)


class _Prober:
    """One session of the primal with every intermediate tensor exposed, run at the probe batches.

    Outputs stay onnxruntime values: their shapes and types are read without copying them
    (``build_graphs`` copies out only the inactive tensors the rules may read).
    """

    def __init__(self, m: onnx.ModelProto, input_name: str, dtype, threads: int, weights: dict[str, np.ndarray]):
        # no large initializers in m: they are in ``weights``; the probe returns log p (typed) and every other tensor
        self.names = [LOGP] + [o for n in m.graph.node for o in n.output if o and o != LOGP]
        self.model, self.session = open_probe(m, self.names, only=True, types={LOGP: dtype}, threads=threads,
                                              weights=weights)
        self.input_name, self.dtype = input_name, dtype

    def run(self, sample_shape, batch: int) -> tuple[np.ndarray, dict]:
        """(the probe input, name -> onnxruntime value) at ``batch`` rows."""
        import onnxruntime as ort

        rng = streams.fixed("fallback.graph_probe")
        x = rng.uniform(0.0, 1.0, size=(batch,) + tuple(sample_shape)).astype(self.dtype)
        outs = self.session.run_with_ort_values(self.names, {self.input_name: ort.OrtValue.ortvalue_from_numpy(x)})
        return x, dict(zip(self.names, outs))


def _shape_dtype(value) -> tuple[tuple[int, ...], np.dtype | None]:
    if not value.is_tensor():
        return (), None
    return tuple(value.shape()), np.dtype(helper.tensor_dtype_to_np_dtype(value.element_type()))


def _activity(m: onnx.ModelProto, x: str, dtypes: dict[str, np.dtype]) -> set[str]:
    active = {x}
    for node in m.graph.node:
        entry = ops.entry(node.op_type)
        if (entry is not None and entry.nondiff) or not any(i in active for i in node.input if i):
            continue
        for o in node.output:
            if o and dtypes.get(o) in _FLOATS:
                active.add(o)
    return active


def build_graphs(
    proto: onnx.ModelProto,
    *,
    input_name: str,
    output_name: str,
    sample_shape: tuple[int, ...],
    fixed_batch: int | None,
    kind: str,
    threads: int = 0,
) -> DerivativeGraphs:
    """Derivative graphs of log p for ``proto``; raises ``GradientUnsupported`` naming the first op without a rule."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"output kind must be one of {OUTPUT_KINDS}")
    t0 = time.perf_counter()
    opset = _opset(proto)
    in_vi = next(i for i in proto.graph.input if i.name == input_name)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(in_vi.type.tensor_type.elem_type))

    def prepared(batch, extra: bool = True):
        m = _static_copy(proto, input_name, output_name, sample_shape, batch)
        _name_nodes(m)
        if extra:
            _extra_outputs(m)
        _add_head(m, output_name, kind, opset, dtype)
        return m

    # A symbolic batch when the graph accepts two rows and returns two rows; the model's own
    # fixed batch (or 1) otherwise (e.g. a Reshape with the batch size written in).
    if fixed_batch is None:
        dims = in_vi.type.tensor_type.shape.dim
        fixed_batch = int(dims[0].dim_value) if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    batch: int | None = None
    batched: set[str] = set()
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if pooled(t)}

    def harvest(m, x, outs):
        """Shapes and dtypes of every tensor, numpy values of the inactive ones; the probe's values then go."""
        info = {k: _shape_dtype(v) for k, v in outs.items()}
        info[input_name] = (x.shape, x.dtype)
        values: dict[str, np.ndarray] = dict(weights)
        for init in m.graph.initializer:
            values.setdefault(init.name, numpy_helper.to_array(init))
        shapes = {k: sh for k, (sh, dt) in info.items() if dt is not None}
        dtypes = {k: dt for k, (sh, dt) in info.items() if dt is not None}
        for k, v in values.items():
            shapes.setdefault(k, tuple(v.shape))
            dtypes.setdefault(k, v.dtype)
        active = _activity(m, input_name, dtypes)
        # The rules read values of inactive tensors only (pads, axes, indices, weights): the
        # activations of the probe are never copied out of onnxruntime.
        for k, v in outs.items():
            if k not in active and k not in values and info[k][1] is not None:
                values[k] = v.numpy()
        return shapes, dtypes, values, active

    try:
        m = prepared(None)
        prober = _Prober(m, input_name, dtype, threads, weights)
        x, outs = prober.run(sample_shape, 2)
        shapes, dtypes, values, active = harvest(m, x, outs)
        del outs
        # A second batch size: a graph with its batch written in (Reshape, Resize sizes) fails or
        # returns the wrong number of rows at one of them.
        x3, outs3 = prober.run(sample_shape, 3)
        check = {k: _shape_dtype(v)[0] for k, v in outs3.items()}
        check[input_name] = x3.shape
        del outs3
        if shapes[LOGP][:1] != (2,) or check[LOGP][:1] != (3,):
            raise ValueError("batch not preserved")
        # Tensors with a batch axis: their first dimension follows the batch (2, then 3).
        batched = {k for k, sh in shapes.items() if len(sh) and sh[0] == 2 and k in check
                   and len(check[k]) and check[k][0] == 3}
        moved = [k for k, sh in shapes.items() if k in check and (len(sh) != len(check[k]) or any(
            a != b for i, (a, b) in enumerate(zip(sh, check[k])) if i > 0))]
        if moved:
            batched = set()  # a batch axis elsewhere than first: repeat points instead of cotangent rows
    except Exception:
        batch = int(fixed_batch or 1)
        m = prepared(batch)
        try:
            prober = _Prober(m, input_name, dtype, threads, weights)
            x, outs = prober.run(sample_shape, batch)
        except Exception as exc:
            raise GradientUnsupported(None, None, f"the primal graph does not run at batch {batch}: {exc}") from None
        shapes, dtypes, values, active = harvest(m, x, outs)
        del outs
    probe = prober.model
    del prober  # the probe session and its arena
    n_classes = int(shapes[LOGP][1])
    order = [
        (n.name, n.op_type, [i for i in n.input if i in active], [o for o in n.output if o in active])
        for n in m.graph.node
        if any(i in active for i in n.input if i)
    ]

    rem, cotangents, contributions = _reverse(m, input_name, opset, shapes, dtypes, values, active, batch, batched)
    fem, tangents = _forward(m, input_name, opset, shapes, dtypes, values, active, batch)
    t = helper.np_dtype_to_tensor_dtype(dtype)
    bd = _batch_dim(batch)
    rows = "rows" if batch is None else bd  # cotangent rows: several per point in the reverse graph
    cot_vi = helper.make_tensor_value_info(COTANGENT, t, [rows, n_classes])
    tan_vi = helper.make_tensor_value_info(TANGENT, t, [bd] + list(sample_shape))
    logp_vi = helper.make_tensor_value_info(LOGP, t, [bd, n_classes])
    grad_vi = helper.make_tensor_value_info(GRAD, t, [rows] + list(sample_shape))
    jvp_vi = helper.make_tensor_value_info(JVP_OUT, t, [bd, n_classes])
    reverse = _finish(m, [rem], [cot_vi], [logp_vi, grad_vi], weights)
    forward = _finish(m, [fem], [tan_vi], [logp_vi, jvp_vi], weights)
    # F v in one pass: the tangent's S v weighted by p becomes the cotangent of the reverse part.
    weight = Emitter(opset, {}, {}, {}, PREFIX + "w_", batch is None)
    weight.nodes.append(helper.make_node("Mul", [weight.op("Exp", [LOGP]), JVP_OUT], [COTANGENT], name=COTANGENT))
    fisher = _finish(m, [fem, weight, rem], [tan_vi], [logp_vi, jvp_vi, grad_vi], weights)
    # log p alone without the extra outputs the rules asked for (MaxPool is slower with indices).
    logp_model = _finish(prepared(batch, extra=False), [], [], [logp_vi], weights)
    return DerivativeGraphs(
        primal=probe,
        reverse=reverse,
        forward=forward,
        fisher=fisher,
        logp_model=logp_model,
        input_name=input_name,
        sample_shape=tuple(sample_shape),
        input_dtype=dtype,
        n_classes=n_classes,
        batch=batch,
        order=order,
        tangents=tangents,
        contributions=contributions,
        cotangents=cotangents,
        build_seconds=time.perf_counter() - t0,
        shapes=shapes,
        multi=bool(batched),
        weights=weights,
    )


def _batch_dim(batch: int | None):
    return "batch" if batch is None else int(batch)


def _finish(m: onnx.ModelProto, emitters: list[Emitter], inputs: list, outputs: list,
            weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The primal ``m`` with the emitters' nodes, inputs and outputs; their large constants go to ``weights``."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    g = out.graph
    for em in emitters:
        g.node.extend(em.nodes)
        for t in em.initializers:
            if not pooled(t):
                g.initializer.append(t)
            elif t.name not in weights:
                weights[t.name] = numpy_helper.to_array(t)
    g.input.extend(inputs)
    del g.output[:]
    g.output.extend(outputs)
    return out


def _reverse(m, x, opset, shapes, dtypes, values, active, batch, batched):
    """Reverse-mode nodes. With a symbolic batch, U may hold M cotangent rows per point (B·M rows,
    point-major): the primal runs once per point and the tensors the rules read are repeated M times."""
    em = Emitter(opset, dict(shapes), dict(dtypes), values, PREFIX + "r_", batch is None)
    em.active_names = active
    grads: dict[str, list[str]] = {LOGP: [COTANGENT]}
    em.note_shape(COTANGENT, shapes[LOGP], dtypes[LOGP])
    summed: dict[str, str] = {}
    contributions: dict[str, list[tuple[str, str]]] = {}
    tiled: dict[str, str] = {}
    repeat = None
    if batched:
        n_rows = em.slice(em.op("Shape", [COTANGENT]), [0], [1], [0])
        n_points = em.slice(em.op("Shape", [x]), [0], [1], [0])
        repeat = (n_rows, em.op("Div", [n_rows, n_points]), n_points)
    header = len(em.nodes)

    def tile(name: str) -> str:
        """``name`` (B, ...) repeated per cotangent row: (B·M, ...), emitted where the header ends."""
        if repeat is None or name not in batched:
            return name
        if name not in tiled:
            rows, per, points = repeat
            start = len(em.nodes)
            rank = len(shapes[name])
            up = em.unsqueeze(name, [1])
            ones = em.const(np.ones(rank - 1, np.int64))
            wide = em.op("Expand", [up, em.op("Concat", [points, per, ones], axis=0)])
            rest = em.slice(em.op("Shape", [name]), [1], [np.iinfo(np.int64).max], [0])
            out = em.op("Reshape", [wide, em.op("Concat", [rows, rest], axis=0)])
            made = em.nodes[start:]
            del em.nodes[start:]
            em.nodes[header:header] = made  # before any rule's nodes: the graph stays sorted
            tiled[name] = out
            em.alias[out] = name
        return tiled[name]

    for node in reversed(list(m.graph.node)):
        outs = []
        for o in node.output:
            parts = grads.pop(o, None) if o else None
            if parts:
                s = em.add_all(parts)
                em.note_shape(s, shapes[o], dtypes[o])
                summed[o] = s
                outs.append(s)
            else:
                outs.append(None)
        if not any(outs) or not any(em.active(i) for i in node.input):
            continue
        entry = ops.entry(node.op_type)
        rule = entry.rule("vjp") if entry is not None else None
        if rule is None or (node.domain or "") not in ("", "ai.onnx"):
            raise GradientUnsupported(node.op_type, node.name, "no reverse-mode rule for this operator")
        view = onnx.NodeProto()
        view.CopyFrom(node)
        for i, name in enumerate(view.input):
            view.input[i] = tile(name) if name else name
        for i, name in enumerate(view.output):
            view.output[i] = tile(name) if name else name
        if outs[0] is None and node.op_type != "Split":
            # Rules other than Split read only the first output's cotangent; here it is zero.
            outs[0] = em.zeros_like(view.output[0])
            em.note_shape(outs[0], shapes[node.output[0]], dtypes[node.output[0]])
        ins = rule(em, view, outs)
        contributions[node.name] = []
        for name, c in zip(node.input, ins):
            if c is not None and em.active(name):
                grads.setdefault(name, []).append(c)
                contributions[node.name].append((name, c))
    parts = grads.get(x)
    gx = em.add_all(parts) if parts else em.zeros_like(tile(x))
    summed[x] = gx
    em.nodes.append(helper.make_node("Identity", [gx], [GRAD], name=GRAD))
    if repeat is not None:
        protect = set(summed.values()) | {c for cs in contributions.values() for _, c in cs}
        _untile(em, {out: name for name, out in tiled.items()}, repeat, batched, protect)
    return em, summed, contributions


def _rowwise(op_type: str) -> bool:
    """The operator acts on each row alone (its entry's ``rowwise``): a chain of them over primal tensors alone
    can run once per point and be repeated afterwards."""
    entry = ops.entry(op_type)
    return entry is not None and entry.rowwise


def _untile(em: Emitter, tiled: dict[str, str], repeat, batched: set[str], protect: set[str]) -> None:
    """Move per-point work out of the repeated (B·M-row) domain; repeat only what meets a cotangent.

    The rules read primal tensors repeated once per cotangent row, so e.g. ReLU's mask Sign(y)
    was computed M times per point. Here every node that depends on primal tensors alone and
    acts row by row (the operator table's ``rowwise``; Slice/Pad with constant sizes off axis 0) reads the primal
    tensors themselves (B rows); where such a per-point result meets the cotangent it is
    repeated once (Expand + Reshape). Repeats nobody reads any more are dropped.
    """
    rows, per, points = repeat
    inits = {t.name: numpy_helper.to_array(t) for t in em.initializers}
    tainted = {COTANGENT}
    per_point: set[str] = set()  # outputs computed on B rows
    header_outputs = {o for n in em.nodes for o in n.output if o in tiled}
    out_nodes: list[onnx.NodeProto] = []
    repeated: dict[str, str] = {}

    shape_cache: dict[str, tuple[int, ...] | None] = {}

    def shape_of(name: str) -> tuple[int, ...] | None:
        """Static shape (probe batch on axis 0) of a primal, constant or per-point tensor; None if unknown."""
        if name in shape_cache:
            return shape_cache[name]
        if name in inits:
            return tuple(inits[name].shape)
        base = tiled.get(name, name)
        if base in em.shapes and not base.startswith(PREFIX):
            return tuple(em.shapes[base])
        return None

    def infer(node: onnx.NodeProto) -> tuple[int, ...] | None:
        shapes = [shape_of(i) for i in node.input if i]
        if node.op_type == "Slice":
            shape = shapes[0]
            if shape is None or any(i not in inits for i in node.input[1:] if i):
                return None
            st, en = (np.atleast_1d(inits[node.input[k]]) for k in (1, 2))
            axes = np.atleast_1d(inits[node.input[3]]) if len(node.input) > 3 and node.input[3] else np.arange(len(st))
            steps = np.atleast_1d(inits[node.input[4]]) if len(node.input) > 4 and node.input[4] else np.ones(len(st), int)
            out = list(shape)
            for a, b, e, t in zip(axes, st, en, steps):
                a = int(a) % len(shape)
                out[a] = len(range(*slice(int(b), int(e), int(t)).indices(shape[a])))
            return tuple(out)
        if node.op_type == "Pad":
            shape = shapes[0]
            if shape is None:
                return None
            pads = np.atleast_1d(inits[node.input[1]])
            r = len(shape)
            return tuple(int(n + pads[i] + pads[i + r]) for i, n in enumerate(shape))
        if any(sh is None for sh in shapes):
            return None
        try:
            return tuple(np.broadcast_shapes(*shapes))
        except ValueError:
            return None

    def fixed_axes_ok(node: onnx.NodeProto) -> bool:
        if node.op_type == "Slice":
            if len(node.input) < 4 or node.input[3] not in inits or any(i not in inits for i in node.input[1:] if i):
                return False
            shape = shape_of(node.input[0])
            return bool(shape) and all(int(a) % len(shape) != 0 for a in np.atleast_1d(inits[node.input[3]]))
        if node.op_type == "Pad":
            if len(node.input) < 2 or node.input[1] not in inits:
                return False
            pads = np.atleast_1d(inits[node.input[1]])
            return len(pads) >= 2 and pads[0] == 0 and pads[len(pads) // 2] == 0 and (len(node.input) < 4 or not node.input[3])
        return True

    def broadcast_mul(node: onnx.NodeProto) -> bool:
        """Mul(cotangent rows (B·M, *t), per-point (B, *t)) as (B, M, *t) * (B, 1, *t): no repeat materialised."""
        if node.op_type != "Mul" or len(node.input) != 2:
            return False
        a, b = node.input
        if a in per_point:
            a, b = b, a
        if b not in per_point or a not in tainted or a not in em.shapes:
            return False
        sa, sb = tuple(em.shapes[a]), shape_of(b)
        if sb is None or len(sa) != len(sb) or sa[1:] != sb[1:] or len(sa) < 1 or 0 in sa[1:]:
            return False
        tail = [int(n) for n in sa[1:]]
        begin = len(em.nodes)
        wide = em.op("Reshape", [a, em.op("Concat", [points, em.const(np.array([-1] + tail, np.int64))], axis=0)])
        prod = em.op("Mul", [wide, em.unsqueeze(b, [1])])
        em.nodes.append(helper.make_node("Reshape", [prod, em.const(np.array([-1] + tail, np.int64))], list(node.output),
                                         name=node.name))
        out_nodes.extend(em.nodes[begin:])
        del em.nodes[begin:]
        return True

    def source_ok(name: str) -> bool:
        """Inputs a per-point node may read: repeated primals (read unrepeated), per-point results, constants."""
        return (not name or name in tiled or name in per_point or name in inits
                or (name in em.shapes and name not in batched and name not in tainted and not name.startswith(PREFIX)))

    def repeat_of(name: str) -> str:
        """``name`` (B, ...) repeated per cotangent row: (B·M, ...), emitted where it is first read."""
        if name not in repeated:
            start = len(em.nodes)
            up = em.unsqueeze(name, [1])
            tail = em.slice(em.op("Shape", [name]), [1], [np.iinfo(np.int64).max], [0])
            wide = em.op("Expand", [up, em.op("Concat", [points, per, tail], axis=0)])
            repeated[name] = em.op("Reshape", [wide, em.op("Concat", [rows, tail], axis=0)])
            out_nodes.extend(em.nodes[start:])
            del em.nodes[start:]
        return repeated[name]

    for node in list(em.nodes):
        if node.output and node.output[0] in header_outputs or any(o in tiled for o in node.output):
            out_nodes.append(node)  # the repeats themselves (kept for now, dropped below when unread)
            continue
        is_tainted = any(i in tainted for i in node.input if i)
        if (not is_tainted and _rowwise(node.op_type) and fixed_axes_ok(node)
                and any(i in tiled or i in per_point for i in node.input if i) and all(source_ok(i) for i in node.input)):
            shape = infer(node)
            for i, name in enumerate(node.input):
                if name in tiled:
                    node.input[i] = tiled[name]
            per_point.update(node.output)
            shape_cache.update({o: shape for o in node.output})
            out_nodes.append(node)
            continue
        if is_tainted and broadcast_mul(node):
            tainted.update(node.output)
            continue
        for i, name in enumerate(node.input):
            if name in per_point:
                node.input[i] = repeat_of(name)
        if is_tainted:
            tainted.update(node.output)
        out_nodes.append(node)
    # Drop repeat chains of the header nobody reads now.
    while True:
        used = {i for n in out_nodes for i in n.input} | {GRAD} | protect
        keep = [n for n in out_nodes if not n.output or any(o in used for o in n.output) or not any(o.startswith(PREFIX) for o in n.output)]
        if len(keep) == len(out_nodes):
            break
        out_nodes = keep
    em.nodes[:] = out_nodes


def _forward(m, x, opset, shapes, dtypes, values, active, batch):
    em = Emitter(opset, dict(shapes), dict(dtypes), values, PREFIX + "f_", batch is None)
    em.active_names = active
    tang: dict[str, str] = {x: TANGENT}
    em.note_shape(TANGENT, shapes[x], dtypes[x])
    for node in m.graph.node:
        tin = [tang.get(i) if i else None for i in node.input]
        if not any(tin) or not any(o in active for o in node.output):
            continue
        entry = ops.entry(node.op_type)
        rule = entry.rule("jvp") if entry is not None else None
        if rule is None or (node.domain or "") not in ("", "ai.onnx"):
            raise GradientUnsupported(node.op_type, node.name, "no forward-mode rule for this operator")
        outs = rule(em, node, tin)
        for o, to in zip(node.output, outs):
            if o in active and to is not None:
                tang[o] = to
                em.note_shape(to, shapes[o], dtypes[o])
    tl = tang.get(LOGP) or em.zeros_like(LOGP)
    em.nodes.append(helper.make_node("Identity", [tl], [JVP_OUT], name=JVP_OUT))
    return em, tang


