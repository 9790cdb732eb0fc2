"""Loading and validating an untrusted ONNX file into a ready-to-query ``Model``.

Every failure becomes a ``FimauditError`` subclass with a one-line message; nothing here
prints. The checks run in this order: file exists and is a protobuf ONNX model, external
data stays inside the model's folder, the IR version is one onnxruntime accepts (patched
down when the model needs nothing newer), every operator is known, the chosen input is a
float tensor of known per-sample shape and the chosen output is a float tensor.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from ..choices import parse_input_shape  # noqa: F401 - re-exported (fimaudit.model)
from ..errors import ModelLoadError, UnsupportedModelError
from ..guards import check_declared_tensors, check_model_file, require_memory
from .engine import Model
from .session import create_session
from .spec import ModelInfo, TensorSpec, logit_output, onnx_producers

# Data types introduced after IR 8, with the IR version that introduced them.
_TYPE_MIN_IR = {
    TensorProto.FLOAT8E4M3FN: 9,
    TensorProto.FLOAT8E4M3FNUZ: 9,
    TensorProto.FLOAT8E5M2: 9,
    TensorProto.FLOAT8E5M2FNUZ: 9,
    TensorProto.UINT4: 10,
    TensorProto.INT4: 10,
}
for _name, _ir in (("FLOAT4E2M1", 11), ("FLOAT8E8M0", 12), ("UINT2", 13), ("INT2", 13)):
    if hasattr(TensorProto, _name):
        _TYPE_MIN_IR[getattr(TensorProto, _name)] = _ir

_FLOAT_TYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
}
_STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
# Domains whose operators onnxruntime implements itself (contrib ops); checked by the session.
_RUNTIME_DOMAINS = {"com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc", "ai.onnx.preview.training"}
_MAX_PROTO_BYTES = 2**31 - 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _text(value, what: str) -> str:
    """A string field of the model; protobuf hands back bytes when the file's bytes are not UTF-8 (ONNX requires it)."""
    if isinstance(value, bytes):
        raise ModelLoadError(f"the model is corrupt: {what} is not valid UTF-8 text ({value[:20]!r})")
    return value


def _dims(type_proto: onnx.TypeProto) -> tuple[int | str | None, ...]:
    shape = type_proto.tensor_type.shape
    out: list[int | str | None] = []
    for dim in shape.dim:
        if dim.HasField("dim_value"):
            out.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            out.append(_text(dim.dim_param, "a dimension name"))
        else:
            out.append(None)
    return tuple(out)


def _dtype_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type{elem_type}"


def read_model(path: Path) -> onnx.ModelProto:
    """The file's ModelProto (external data not yet read), refusing what is not a readable ONNX model.

    The first step of every validation: ``tests/test_subject.py`` counts its calls (one per command).
    """
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not an ONNX file")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path} is empty")
    check_model_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types on garbage
        raise ModelLoadError(f"{path.name} is not a readable ONNX model (corrupt or truncated file: {type(exc).__name__})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0 or len(model.graph.output) == 0:
        raise ModelLoadError(f"{path.name} is not a readable ONNX model (no graph inside; corrupt or truncated file?)")
    return model


def _all_tensors(model: onnx.ModelProto):
    """Every TensorProto in the model, including those inside Constant nodes and subgraphs."""

    def graph_tensors(graph: onnx.GraphProto):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors
                elif attr.type == onnx.AttributeProto.GRAPH:
                    yield from graph_tensors(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        yield from graph_tensors(g)

    yield from graph_tensors(model.graph)
    for fn in model.functions:
        for node in fn.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t


def _load_external_data(model: onnx.ModelProto, path: Path) -> list[str]:
    """Load external tensors, refusing any location outside the model's folder."""
    base = path.resolve().parent
    external = [t for t in _all_tensors(model) if t.data_location == TensorProto.EXTERNAL]
    files: set[str] = set()
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise ModelLoadError(f"tensor '{tensor.name}' declares external data without a location")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
            raise ModelLoadError(
                f"refusing external data at absolute path '{location}' (tensor '{tensor.name}'): "
                "external data must lie inside the model's folder"
            )
        target = (base / location).resolve()
        if target != base and base not in target.parents:
            raise ModelLoadError(
                f"refusing external data '{location}' (tensor '{tensor.name}'): it points outside the model's folder"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"external data file '{location}' for tensor '{tensor.name}' is missing next to the model or not a "
                "regular file"
            )
        try:
            offset = int(info.get("offset", "0") or 0)
            length = None if info.get("length") is None else int(info["length"])
        except ValueError:
            raise ModelLoadError(f"tensor '{tensor.name}' has a non-numeric external data offset or length") from None
        fsize = target.stat().st_size
        if offset < 0 or offset > fsize or (length is not None and (length < 0 or offset + length > fsize)):
            raise ModelLoadError(f"external data '{location}' is shorter than tensor '{tensor.name}' needs (truncated file?)")
        files.add(location)
    if external:
        try:
            onnx.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise ModelLoadError(f"cannot read external data for {path.name}: {type(exc).__name__}: {exc}") from None
    return sorted(files)


def _required_ir(model: onnx.ModelProto) -> int:
    """The lowest IR version that can express this model's opsets and data types."""
    need = 3
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            for _rel, ir, onnx_opset, _ml, *_rest in onnx.helper.VERSION_TABLE:
                if onnx_opset >= opset.version:
                    need = max(need, ir)
                    break
            else:
                need = max(need, onnx.IR_VERSION)
    for tensor in _all_tensors(model):
        need = max(need, _TYPE_MIN_IR.get(tensor.data_type, 3))
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.type.HasField("tensor_type"):
            need = max(need, _TYPE_MIN_IR.get(vi.type.tensor_type.elem_type, 3))
    if len(model.functions):
        need = max(need, 8)
    return need


def _check_operators(model: onnx.ModelProto) -> None:
    local_functions = {(f.domain, f.name) for f in model.functions}
    opsets = {o.domain: o.version for o in model.opset_import}

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            domain = node.domain or ""
            if (domain, node.op_type) in local_functions:
                continue
            if domain in _STANDARD_DOMAINS:
                version = opsets.get(domain, opsets.get("ai.onnx" if domain == "" else "", 1))
                try:
                    onnx.defs.get_schema(node.op_type, max_inclusive_version=version, domain=domain)
                except Exception:
                    raise UnsupportedModelError(
                        f"unsupported operator '{node.op_type}' (node '{node.name or '?'}'): not a standard ONNX op "
                        f"at opset {version}"
                    ) from None
            elif domain not in _RUNTIME_DOMAINS:
                raise UnsupportedModelError(
                    f"custom operator '{domain}:{node.op_type}' (node '{node.name or '?'}') is not supported: "
                    "fimaudit runs models with standard ONNX operators only"
                )
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)

    visit(model.graph)


def _pick(kind: str, values: list, requested: str | None, flag: str) -> onnx.ValueInfoProto:
    names = [v.name for v in values]
    if requested is not None:
        for v in values:
            if v.name == requested:
                return v
        raise UnsupportedModelError(f"the model has no {kind} named '{requested}'; its {kind}s are: {', '.join(names)}")
    if len(values) == 1:
        return values[0]
    raise UnsupportedModelError(f"the model has {len(values)} {kind}s ({', '.join(names)}); choose one with {flag} NAME")


def _resolve_sample_shape(
    spec: TensorSpec, override: tuple[int, ...] | None
) -> tuple[tuple[int, ...], int | None, list[str]]:
    notes: list[str] = []
    shape = spec.shape
    if len(shape) == 0:
        raise UnsupportedModelError(f"input '{spec.name}' is a scalar; fimaudit needs a batch of samples")
    batch_dim, rest = shape[0], shape[1:]
    # Exporters write a dynamic batch as a name, nothing, or dim_value -1 or 0 (Paddle, some
    # TensorFlow converters): only a positive value is a fixed batch.
    fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
    if isinstance(batch_dim, int) and batch_dim <= 0:
        notes.append(f"the batch axis is declared as {batch_dim}; treated as dynamic")
    rest = tuple(d if not isinstance(d, int) or d > 0 else None for d in rest)  # -1/0 elsewhere: unknown
    if fixed_batch is not None and fixed_batch > 1:
        notes.append(f"the model has a fixed batch of {fixed_batch}; queries are padded to it")
    if override is not None:
        if len(override) != len(rest):
            raise UnsupportedModelError(
                f"--input-shape has {len(override)} dimensions but input '{spec.name}' has {len(rest)} per-sample "
                f"dimensions (declared shape {_fmt_shape(shape)})"
            )
        for got, declared in zip(override, rest):
            if isinstance(declared, int) and declared != got:
                raise UnsupportedModelError(
                    f"--input-shape {','.join(map(str, override))} contradicts the declared input shape {_fmt_shape(shape)}"
                )
        return tuple(override), fixed_batch, notes
    unknown = [i for i, d in enumerate(rest) if not isinstance(d, int)]
    if unknown:
        raise UnsupportedModelError(
            f"input '{spec.name}' has unknown or non-positive dimensions {_fmt_shape(shape)}; give the per-sample shape with "
            "--input-shape, e.g. --input-shape " + ",".join(str(d) if isinstance(d, int) else "N" for d in rest)
        )
    return tuple(int(d) for d in rest), fixed_batch, notes


def _free_batch_axis(*values: onnx.ValueInfoProto) -> None:
    """Declare a batch axis stored as dim_value <= 0 as symbolic, in memory (onnxruntime would insist on 0)."""
    for vi in values:
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value <= 0:
            dims[0].dim_param = "batch"  # a oneof: clears dim_value


def _fmt_shape(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def load_model(
    path: str | os.PathLike,
    *,
    input_name: str | None = None,
    output_name: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    device: str = "auto",
    max_batch: int = 256,
    threads: int = 0,
):
    """Load, validate and open ``path``; returns a ready ``Model`` (see ``fimaudit.model.engine``)."""

    p = Path(path)
    model = read_model(p)
    digest = sha256_file(p)
    notes: list[str] = []
    check_declared_tensors(_all_tensors(model), p)  # before external data or weights are read
    ext_files = _load_external_data(model, p)
    if ext_files:
        notes.append(f"external data read from {', '.join(ext_files)}")

    graph_inputs = {i.name for i in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in graph_inputs]
    if not real_inputs:
        raise UnsupportedModelError(f"{p.name} has no runtime inputs")
    chosen_in = _pick("input", real_inputs, input_name, "--input")
    if not chosen_in.type.HasField("tensor_type"):
        raise UnsupportedModelError(f"input '{chosen_in.name}' is not a tensor; fimaudit needs a float tensor input")
    in_type = chosen_in.type.tensor_type.elem_type
    if in_type not in _FLOAT_TYPES:
        raise UnsupportedModelError(
            f"input '{chosen_in.name}' has type {_dtype_name(in_type)}: a gradient-based audit needs a continuous "
            "(float) input, not integer ids or tokens"
        )
    other_inputs = [i.name for i in real_inputs if i.name != chosen_in.name]
    if other_inputs:
        raise UnsupportedModelError(
            f"the model needs more inputs than '{chosen_in.name}' ({', '.join(other_inputs)}); fimaudit audits "
            "single-input classifiers"
        )

    outputs = list(model.graph.output)
    non_tensor = [o for o in outputs if not o.type.HasField("tensor_type")]
    float_outputs = [o for o in outputs if o.type.HasField("tensor_type") and o.type.tensor_type.elem_type in _FLOAT_TYPES]
    if output_name is not None:
        chosen_out = _pick("output", outputs, output_name, "--output")
        if not chosen_out.type.HasField("tensor_type"):
            raise UnsupportedModelError(
                f"output '{chosen_out.name}' is not a tensor (a map or sequence such as ZipMap); fimaudit needs a "
                "float tensor of class scores"
            )
        if chosen_out.type.tensor_type.elem_type not in _FLOAT_TYPES:
            raise UnsupportedModelError(
                f"output '{chosen_out.name}' has type {_dtype_name(chosen_out.type.tensor_type.elem_type)}; fimaudit "
                "needs float class scores (logits or probabilities)"
            )
    elif len(float_outputs) == 1:
        chosen_out = float_outputs[0]
        if len(outputs) > 1:
            notes.append(f"using output '{chosen_out.name}' (the only float tensor output)")
    elif not float_outputs:
        if non_tensor:
            raise UnsupportedModelError(
                f"output '{non_tensor[0].name}' is not a tensor (a map or sequence such as ZipMap) and no output is a "
                "float tensor; export class probabilities as a tensor (e.g. zipmap=False)"
            )
        raise UnsupportedModelError("no output is a float tensor of class scores")
    else:
        names = ", ".join(o.name for o in float_outputs)
        raise UnsupportedModelError(f"the model has {len(float_outputs)} float outputs ({names}); choose one with --output NAME")

    _check_operators(model)
    from ..piecewise import check_scales, detect_piecewise

    check_scales(model)  # a zero or NaN quantization scale: one line, before onnxruntime runs it

    in_spec = TensorSpec(_text(chosen_in.name, "the input's name"), _dims(chosen_in.type), _dtype_name(in_type))
    out_spec = TensorSpec(_text(chosen_out.name, "the output's name"), _dims(chosen_out.type),
                          _dtype_name(chosen_out.type.tensor_type.elem_type))
    sample_shape, fixed_batch, shape_notes = _resolve_sample_shape(in_spec, input_shape)
    notes.extend(shape_notes)
    if fixed_batch is not None:  # every query is padded to the fixed batch: float64 rows in and a float32 copy
        require_memory(12 * fixed_batch * math.prod(sample_shape), f"the model's fixed batch of {fixed_batch} inputs")

    final_op = logit_output(onnx_producers(model), chosen_out.name).final_op
    piecewise = detect_piecewise(model, chosen_in.name, chosen_out.name)
    if piecewise is not None:
        notes.insert(0, piecewise.note())
    _free_batch_axis(chosen_in, chosen_out)
    session, provider, ir_note = open_session(model, p, device, threads)
    if ir_note:
        notes.append(ir_note)
    info = ModelInfo(
        path=str(p),
        sha256=digest,
        input=in_spec,
        output=out_spec,
        sample_shape=sample_shape,
        fixed_batch=fixed_batch,
        ir_version=int(model.ir_version),
        opsets={o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
        notes=tuple(notes),
        final_op=final_op,
        piecewise=piecewise,
    )
    return Model(session, info, provider=provider, input_dtype=_FLOAT_TYPES[in_type], max_batch=max_batch, proto=model)


_IR_MAX_RE = re.compile(r"max supported IR version:\s*(\d+)")


def open_session(model: onnx.ModelProto, path: Path, device: str, threads: int):
    """Create the onnxruntime session of a validated model: (session, provider, note).

    An IR version onnxruntime refuses is patched in memory when that is safe (the note says so). Also used by
    ``Subject.from_bytes`` and Dask workers, which rebuild sessions from the validated bytes without validating again.
    """
    if model.ByteSize() > _MAX_PROTO_BYTES:
        raise ModelLoadError(f"{path.name} is larger than 2 GB once loaded; fimaudit cannot open models that large")
    note = None
    try:
        session, provider = create_session(model.SerializeToString(), device=device, threads=threads)
        return session, provider, note
    except ModelLoadError as exc:
        match = _IR_MAX_RE.search(str(exc))
        if not match:
            raise
        max_ir = int(match.group(1))
    need = _required_ir(model)
    if need > max_ir:
        raise ModelLoadError(
            f"{path.name} has IR version {model.ir_version} and uses features of IR {need}, but the installed "
            f"onnxruntime accepts IR <= {max_ir}; upgrade onnxruntime"
        )
    patched = onnx.ModelProto()
    patched.CopyFrom(model)
    old = patched.ir_version
    patched.ir_version = max_ir
    note = (
        f"IR version patched from {old} to {max_ir} in memory (the model uses nothing newer than IR {need}); "
        "the file was not changed"
    )
    session, provider = create_session(patched.SerializeToString(), device=device, threads=threads)
    return session, provider, note
