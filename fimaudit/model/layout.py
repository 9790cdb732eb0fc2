"""Image layout of a model's input (NCHW or NHWC): read from the graph's first Conv, else from the shape."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import onnx

from .. import ops
from ..choices import LAYOUTS
from ..errors import ConfigError

# Each operator's role on the way from the input to the first convolution is its entry's ``layout`` in the
# operator table (fimaudit.ops): "keeps axes" (Identity, Cast, Pad, Dropout: a pixel tensor passes unchanged in
# its axes), "normalise" (Sub/Div/Mul/Add, counted only with a constant operand; with two data operands (gating)
# the trace stops there), "transpose" (axes permuted) and "conv" (the convolution read).
_IMAGE_CHANNELS = (1, 3, 4)  # grey, RGB/BGR, RGBA: counts an image's channel axis plausibly has


@dataclass(frozen=True)
class Layout:
    """Where a sample's channels and spatial axes are (batch axis removed).

    ``name`` is ``nchw`` or ``nhwc`` for rank-4 inputs, ``flat`` for inputs without image axes.
    ``channel_axis`` indexes the per-sample shape; ``None`` for ``flat``. ``evidence`` says why.
    """

    name: str
    channel_axis: int | None
    channels: int | None
    height: int | None
    width: int | None
    source: str  # graph | shape | option | none
    evidence: str

    @property
    def is_image(self) -> bool:
        return self.channel_axis is not None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "channel_axis": self.channel_axis,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "source": self.source,
            "evidence": self.evidence,
        }


def image_layout(name: str, sample_shape: tuple[int, ...], source: str, evidence: str) -> Layout:
    """``Layout`` for a rank-3 sample (C,H,W) or (H,W,C)."""
    if name == "nchw":
        c, h, w = sample_shape
        return Layout("nchw", 0, c, h, w, source, evidence)
    h, w, c = sample_shape
    return Layout("nhwc", 2, c, h, w, source, evidence)


def _constants(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _perm(node: onnx.NodeProto, rank: int) -> tuple[int, ...]:
    for attr in node.attribute:
        if attr.name == "perm":
            return tuple(int(p) for p in attr.ints)
    return tuple(reversed(range(rank)))  # ONNX default: reverse the axes


def _initializer_shape(graph: onnx.GraphProto, name: str) -> tuple[int, ...] | None:
    for t in graph.initializer:
        if t.name == name:
            return tuple(int(d) for d in t.dims)
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for attr in n.attribute:
                if attr.name == "value":
                    return tuple(int(d) for d in attr.t.dims)
    return None


def first_convs(graph: onnx.GraphProto, input_name: str) -> list[tuple[onnx.NodeProto, tuple[int, ...], list[str]]]:
    """Every Conv fed by the input through axis-preserving ops and Transposes.

    Returns ``(conv, axes, path)``: ``axes[i]`` is the graph input's axis that sits at axis ``i`` of
    the tensor the Conv reads (so ``axes[1]`` is the input axis the Conv takes as channels);
    ``path`` names the ops crossed on the way.
    """
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                consumers[name].append(node)
    constants = _constants(graph)
    found: list[tuple[onnx.NodeProto, tuple[int, ...], list[str]]] = []
    stack: list[tuple[str, tuple[int, ...], list[str]]] = [(input_name, (0, 1, 2, 3), [])]
    seen: set[tuple[str, tuple[int, ...]]] = set()
    while stack:
        name, axes, path = stack.pop()
        if (name, axes) in seen:
            continue
        seen.add((name, axes))
        for node in consumers.get(name, []):
            op = node.op_type
            entry = ops.entry(op)
            role = entry.layout if entry is not None else ""
            if role == "conv" and node.input[0] == name:
                found.append((node, axes, path))
            elif role == "transpose":
                perm = _perm(node, len(axes))
                if sorted(perm) == list(range(len(axes))):
                    stack.append((node.output[0], tuple(axes[p] for p in perm), path + [f"Transpose perm {list(perm)}"]))
            elif role == "keeps axes" and node.input[0] == name:
                stack.append((node.output[0], axes, path + [op]))
            elif role == "normalise" and len(node.input) == 2:
                other = node.input[1] if node.input[0] == name else node.input[0]
                if other in constants:
                    shape = _initializer_shape(graph, other)
                    # A constant of higher rank would broadcast the input to new axes: not a normalisation.
                    if shape is None or len(shape) <= len(axes):
                        stack.append((node.output[0], axes, path + [op]))
    return found


def _from_graph(proto: onnx.ModelProto, input_name: str, sample_shape: tuple[int, ...]) -> tuple[str | None, str]:
    """(layout or None, evidence) from the convolutions that read the input."""
    graph = proto.graph
    convs = first_convs(graph, input_name)
    if not convs:
        return None, "no Conv reads the input"
    verdicts: dict[str, str] = {}
    for conv, axes, path in convs:
        if axes[0] != 0:
            continue  # the batch axis moved: not an image convolution we can read
        channel_axis = axes[1]
        name = {1: "nchw", 3: "nhwc"}.get(channel_axis)
        if name is None:
            continue
        route = " after " + ", ".join(path) if path else " directly"
        channels = sample_shape[channel_axis - 1]
        wshape = _initializer_shape(graph, conv.input[1]) if len(conv.input) > 1 else None
        group = next((int(a.i) for a in conv.attribute if a.name == "group"), 1)
        if wshape is not None and len(wshape) >= 2 and wshape[1] * group != channels:
            continue  # the weights disagree with that axis: do not trust this reading
        verdicts.setdefault(
            name,
            f"Conv '{conv.name or conv.output[0]}' reads input axis {channel_axis} ({channels} channels) as its "
            f"channels{route}",
        )
    if len(verdicts) == 1:
        name, why = next(iter(verdicts.items()))
        return name, why
    if len(verdicts) > 1:
        return None, "convolutions reading the input disagree on its channel axis"
    return None, "the convolutions reading the input do not take channels from axis 1 or 3"


def _from_shape(sample_shape: tuple[int, ...]) -> tuple[str, str]:
    a, b, c = sample_shape
    shape = f"[{a}, {b}, {c}]"
    if a in _IMAGE_CHANNELS and b > a and c > a:
        return "nchw", f"per-sample shape {shape}: {a} channel(s) first, larger spatial dims after"
    if c in _IMAGE_CHANNELS and a > c and b > c:
        return "nhwc", f"per-sample shape {shape}: {c} channel(s) last, larger spatial dims before"
    return "nchw", f"per-sample shape {shape} gives no clue; assumed NCHW (the ONNX convention)"


def detect_layout(
    proto: onnx.ModelProto, input_name: str, sample_shape: tuple[int, ...], requested: str = "auto"
) -> tuple[Layout, list[str]]:
    """The input's layout and notes for the report; ``requested`` (``--layout``) overrides the graph."""
    if requested not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, not '{requested}'")
    notes: list[str] = []
    if len(sample_shape) != 3:
        if requested != "auto":
            raise ConfigError(
                f"--layout {requested} applies to image inputs with 4 axes (N,C,H,W or N,H,W,C); this model takes "
                f"samples of shape {list(sample_shape)}"
            )
        return _flat_layout(sample_shape), notes
    name, why = _from_graph(proto, input_name, sample_shape)
    source = "graph"
    if name is None:
        name, shape_why = _from_shape(sample_shape)
        why, source = f"{why}; {shape_why}", "shape"
    if requested != "auto":
        if requested != name and source == "graph":
            notes.append(f"--layout {requested} overrides the graph, which suggests {name.upper()} ({why})")
        why, source, name = f"--layout {requested}", "option", requested
    elif source == "shape" and "no clue" in why:
        notes.append(f"input layout not evident from the model: {why}; set --layout if the model is channels-last")
    return image_layout(name, sample_shape, source, why), notes


def _flat_layout(sample_shape: tuple[int, ...]) -> Layout:
    """Inputs without image axes; a flattened square grey image if the element count allows it."""
    d = math.prod(sample_shape)
    side = math.isqrt(d)
    if side * side == d and side > 1 and sum(1 for s in sample_shape if s != 1) == 1:
        return Layout(
            "flat", None, 1, side, side, "shape",
            f"per-sample shape {list(sample_shape)} has no image axes; {d} = {side}x{side}, read as a flattened grey "
            "image, row by row",
        )
    return Layout("flat", None, None, None, None, "none", f"per-sample shape {list(sample_shape)} has no image axes")
