"""Random-weight vendor-size classifiers built at run time for the benches (never committed).

``mobilenet224``: 3x224x224, MobileNetV3-style (stride-2 stem, HardSwish, depthwise and
pointwise convolutions, a squeeze-and-excitation gate), 4 classes. ``vgg320``: 3x320x320,
VGG-style (3x3 convolutions, ReLU, max-pooling, five stages), 4 classes. ``resnet50_224``:
3x224x224, ResNet-50 layout (7x7 stride-2 stem + max-pool, [3, 4, 6, 3] bottleneck blocks
1x1-3x3-1x1 with BatchNorm and projection shortcuts, widths 64..2048, global average pool,
Gemm), 4 classes. ``resnet50_224_nhwc``: the same network as a TensorFlow export has it: a
224x224x3 channels-last input and a Transpose to channels-first in front. Weights are He-scaled
so the logits are of order one. ``build(name, folder)`` writes NAME.onnx and NAME.npz
(x in [0, 1], 4 samples, labels) and returns both paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR, OPSET = 8, 17
LARGE = ("mobilenet224", "vgg320", "resnet50_224", "resnet50_224_nhwc")


class _Graph:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.inits, self.n = rng, [], [], 0

    def _name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def weight(self, shape, fan_in: int, gain: float = 2.0) -> str:
        name = self._name("w")
        arr = (self.rng.standard_normal(shape) * np.sqrt(gain / fan_in)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> str:
        w = self.weight((c_out, c_in // groups, k, k), fan_in=(c_in // groups) * k * k)
        b = self.weight((c_out,), fan_in=1, gain=0.01)
        pad = k // 2
        return self.op("Conv", [x, w, b], pads=[pad] * 4, strides=[stride, stride], group=groups)

    def model(self, out: str, sample_shape, classes: int, name: str, nhwc: bool = False) -> onnx.ModelProto:
        if nhwc:  # channels-last input, transposed to channels-first in front (as tf2onnx exports)
            for node in self.nodes:
                node.input[:] = ["x_nchw" if i == "x" else i for i in node.input]
            self.nodes.insert(0, helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
            sample_shape = (*sample_shape[1:], sample_shape[0])
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *sample_shape])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", classes])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = IR
        return m


def mobilenet224(rng: np.random.Generator, classes: int = 4) -> onnx.ModelProto:
    g = _Graph(rng)
    h = g.op("HardSwish", [g.conv("x", 3, 16, 3, 2)])  # 112x112
    for c_in, c_out, stride in ((16, 24, 2), (24, 40, 2), (40, 80, 2)):  # 56, 28, 14
        e = g.op("HardSwish", [g.conv(h, c_in, c_in * 3, 1)])
        dw = g.op("HardSwish", [g.conv(e, c_in * 3, c_in * 3, 3, stride, groups=c_in * 3)])
        sq = g.op("GlobalAveragePool", [dw])  # squeeze-and-excitation gate
        gate = g.op("HardSigmoid", [g.conv(g.op("Relu", [g.conv(sq, c_in * 3, 8, 1)]), 8, c_in * 3, 1)], alpha=1 / 6, beta=0.5)
        h = g.conv(g.op("Mul", [dw, gate]), c_in * 3, c_out, 1)
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [g.op("HardSwish", [g.conv(h, 80, 160, 1)])])])
    z = g.op("Gemm", [pooled, g.weight((classes, 160), 160, gain=1.0)], transB=1)
    return g.model(z, (3, 224, 224), classes, "mobilenet224")


def vgg320(rng: np.random.Generator, classes: int = 4) -> onnx.ModelProto:
    g = _Graph(rng)
    h, c = "x", 3
    for c_out in (16, 32, 64, 64, 64):  # 320 -> 160 -> 80 -> 40 -> 20 -> 10
        h = g.op("Relu", [g.conv(h, c, c_out)])
        if c_out >= 64:  # the second convolution only where the map is small (keeps the bench minutes, not hours)
            h = g.op("Relu", [g.conv(h, c_out, c_out)])
        h = g.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
        c = c_out
    flat = g.op("Flatten", [g.op("GlobalAveragePool", [h])])
    z = g.op("Gemm", [flat, g.weight((classes, c), c, gain=1.0)], transB=1)
    return g.model(z, (3, 320, 320), classes, "vgg320")


def _conv_bn(g: _Graph, x: str, c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True,
             gamma: tuple[float, float] = (0.5, 1.5)) -> str:
    """Conv without bias, BatchNorm with random but plausible statistics, optional ReLU."""
    w = g.weight((c_out, c_in, k, k), fan_in=c_in * k * k)
    h = g.op("Conv", [x, w], pads=[k // 2] * 4, strides=[stride, stride])
    stats = []
    for lo, hi in (gamma, (-0.1, 0.1), (-0.1, 0.1), (0.5, 1.5)):  # gamma, beta, mean, var
        name = g._name("bn")
        g.inits.append(numpy_helper.from_array(g.rng.uniform(lo, hi, c_out).astype(np.float32), name))
        stats.append(name)
    h = g.op("BatchNormalization", [h, *stats], epsilon=1e-5)
    return g.op("Relu", [h]) if relu else h


def resnet50_224(rng: np.random.Generator, classes: int = 4, nhwc: bool = False) -> onnx.ModelProto:
    g = _Graph(rng)
    h = _conv_bn(g, "x", 3, 64, 7, 2)  # 112x112
    h = g.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 56x56
    c = 64
    for stage, (mid, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        out = 4 * mid
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            y = _conv_bn(g, h, c, mid, 1)
            y = _conv_bn(g, y, mid, mid, 3, stride)
            # Small last-BN gains (as trained ResNets have) keep the residual sum, and the logits, of order one.
            y = _conv_bn(g, y, mid, out, 1, relu=False, gamma=(0.05, 0.15))
            short = _conv_bn(g, h, c, out, 1, stride, relu=False, gamma=(0.2, 0.4)) if b == 0 else h
            h, c = g.op("Relu", [g.op("Add", [y, short])]), out
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [h])])
    z = g.op("Gemm", [pooled, g.weight((classes, c), c, gain=1.0)], transB=1)
    return g.model(z, (3, 224, 224), classes, "resnet50_224_nhwc" if nhwc else "resnet50_224", nhwc=nhwc)


def resnet50_224_nhwc(rng: np.random.Generator, classes: int = 4) -> onnx.ModelProto:
    """``resnet50_224`` with a channels-last 224x224x3 input (same weights for the same rng)."""
    return resnet50_224(rng, classes, nhwc=True)


BUILDERS = {"mobilenet224": mobilenet224, "vgg320": vgg320, "resnet50_224": resnet50_224,
            "resnet50_224_nhwc": resnet50_224_nhwc}


def build(name: str, folder: Path, samples: int = 4) -> tuple[Path, Path]:
    """Write NAME.onnx and NAME.npz (random smooth images in [0, 1]) into ``folder``."""
    rng = np.random.default_rng(2024)
    model = BUILDERS[name](rng)
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    path = Path(folder) / f"{name}.onnx"
    onnx.save(model, str(path))
    # Smooth images (low-resolution noise upsampled), so that inputs look more like photos than static.
    nhwc = shape[-1] in (1, 3) and shape[0] not in (1, 3)
    chw = (shape[2], shape[0], shape[1]) if nhwc else shape
    low = rng.uniform(0, 1, size=(samples, chw[0], chw[1] // 16, chw[2] // 16))
    x = np.repeat(np.repeat(low, 16, axis=2), 16, axis=3)
    x = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    if nhwc:  # the same images as the channels-first variant, channels last
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    data = Path(folder) / f"{name}.npz"
    np.savez(data, x=x, y=rng.integers(0, 4, size=samples))
    return path, data
