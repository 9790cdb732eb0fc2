"""What loading a model learns about it: the chosen tensors, the per-sample shape, where the logits are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from .. import ops


@dataclass(frozen=True)
class TensorSpec:
    """Name, declared shape (ints, symbolic names or None) and dtype of a graph input or output."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ModelInfo:
    """What was learnt about a model file while loading it."""

    path: str
    sha256: str
    input: TensorSpec
    output: TensorSpec
    sample_shape: tuple[int, ...]  # per-sample input shape, batch axis removed
    fixed_batch: int | None  # None: symbolic batch axis
    ir_version: int
    opsets: dict[str, int]
    notes: tuple[str, ...] = field(default_factory=tuple)
    final_op: str | None = None  # op type producing the chosen output (Softmax, LogSoftmax, ...)
    piecewise: object | None = None  # fimaudit.piecewise.PiecewiseInfo: quantized/binarized paths input -> output

    @property
    def d(self) -> int:
        return int(np.prod(self.sample_shape))


def _walk(op_type: str) -> str:
    """The operator table's ``logit_walk`` role of ``op_type`` ('' for an operator it does not know)."""
    entry = ops.entry(op_type)
    return entry.logit_walk if entry is not None else ""


@dataclass(frozen=True)
class LogitOutput:
    """The op that really made an output and the tensor holding the logits."""

    final_op: str | None  # None: the output is a graph input or constant
    logits: str  # the input of a final (Log)Softmax, else the output itself


def logit_output(producers: Mapping[str, tuple[str, Sequence[str]]], output_name: str) -> LogitOutput:
    """Walk back from ``output_name`` through ops that only move values; stop at a (Log)Softmax and take its input
    (the operator table's ``logit_walk`` roles "copy"/"moves" and "softmax").

    ``producers`` maps a tensor to (op type, input names) of the node making it; every caller
    (loader, bounds, weight measures) builds it from its own graph type.
    """
    made = producers.get(output_name)
    while made is not None and _walk(made[0]) in ("copy", "moves") and made[1]:
        made = producers.get(made[1][0])
    if made is None:
        return LogitOutput(None, output_name)
    if _walk(made[0]) == "softmax" and made[1]:
        return LogitOutput(made[0], made[1][0])
    return LogitOutput(made[0], output_name)


def onnx_producers(model: onnx.ModelProto) -> dict[str, tuple[str, Sequence[str]]]:
    """``producers`` for ``logit_output`` from an ONNX graph."""
    return {o: (n.op_type, list(n.input)) for n in model.graph.node for o in n.output}
