"""Weight-based measures: BatchNorm folding, per-layer matrix norms, path norm and sharpness.

All weight edits are made on a copy of the ONNX graph and evaluated through onnxruntime.
Layers are Conv, Gemm and MatMul nodes with constant weights (after folding a directly
following BatchNormalization); conv kernels are reshaped to (out, in*kh*kw); biases are not
part of the matrix norms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import ops
from ..errors import ModelOutputError
from ..graph.fold import fold_batchnorm
from ..model.probe import probe_session
from ..model.session import translate_ort_error
from ..model.spec import logit_output, onnx_producers


def _init_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


@dataclass(frozen=True)
class Layer:
    node: str
    op: str
    weight: str
    bias: str | None
    matrix: np.ndarray  # (out, in*kh*kw)


def layers(model: onnx.ModelProto) -> list[Layer]:
    """Layers with constant weights, as (out, in) matrices: the operators whose entry in the operator table
    (``fimaudit.ops``) has a ``weights`` rule (Conv, Gemm, MatMul)."""
    inits = _init_map(model)
    out = []
    for n in model.graph.node:
        entry = ops.entry(n.op_type)
        rule = entry.rule("weights") if entry is not None else None
        if rule is not None:
            out.extend(Layer(n.name, n.op_type, weight, bias, matrix) for weight, bias, matrix in rule(n, inits))
    return out


def norm_measures(model: onnx.ModelProto, margin: float) -> dict[str, float]:
    """Products and log-sums of spectral / Frobenius / nuclear norms; over-margin variants (/ gamma^2)."""
    ls = layers(fold_batchnorm(model))
    spec = np.array([np.linalg.norm(layer.matrix, 2) for layer in ls])
    fro = np.array([np.linalg.norm(layer.matrix) for layer in ls])
    nuc = np.array([np.linalg.norm(layer.matrix, "nuc") for layer in ls])
    g2 = margin**2 if margin > 0 else float("nan")
    return {
        "layers": float(len(ls)),
        "spectral_product": float(np.prod(spec)),
        "log_spectral_sum": float(np.sum(np.log(spec))),
        "spectral_over_margin": float(np.prod(spec**2) / g2),
        "frobenius_product": float(np.prod(fro)),
        "log_frobenius_sum": float(np.sum(np.log(fro))),
        "frobenius_over_margin": float(np.prod(fro**2) / g2),
        "fro_spec_ratio_sum": float(np.sum(fro**2 / spec**2)),
        "nuclear_product": float(np.prod(nuc)),
    }


def _logit_output(model: onnx.ModelProto, output_name: str) -> str:
    return logit_output(onnx_producers(model), output_name).logits


def _run(model: onnx.ModelProto, feeds: dict, output: str) -> np.ndarray:
    sess = probe_session(model, [output])
    return np.asarray(_session_run(sess, [output], feeds)[0])


def _session_run(sess, outputs: list[str], feeds: dict) -> list:
    """Run a session on a modified copy of the model; an onnxruntime failure is one readable line."""
    try:
        return sess.run(outputs, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types from C++
        raise ModelOutputError(
            f"the weight measures run a copy of the model with changed weights, and onnxruntime refused it: "
            f"{translate_ort_error(exc)}"
        ) from exc


def path_norm(model: onnx.ModelProto, input_name: str, output_name: str, sample_shape: tuple[int, ...]) -> float:
    """Square every layer parameter (weights and biases, BatchNorm folded), feed ones, sum the logits."""
    m = fold_batchnorm(model)
    inits = _init_map(m)
    names = set()
    for layer in layers(m):
        names.add(layer.weight)
        if layer.bias:
            names.add(layer.bias)
    for name in names:
        arr = numpy_helper.to_array(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array((arr.astype(np.float64) ** 2).astype(arr.dtype), name))
    # A fixed batch axis (dim_value > 0) takes exactly that many rows (the loader checked they fit in memory).
    dims = next((vi.type.tensor_type.shape.dim for vi in m.graph.input if vi.name == input_name), [])
    rows = int(dims[0].dim_value) if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else 1
    out = _run(m, {input_name: np.ones((rows,) + tuple(sample_shape), dtype=np.float32)}, _logit_output(m, output_name))
    return float(np.sum(out[:1]))


class NoisyWeights:
    """One onnxruntime session whose layer weights can be replaced at run time (declared as inputs)."""

    def __init__(self, model: onnx.ModelProto, input_name: str, output_name: str, fixed_batch: int | None = None) -> None:
        m = fold_batchnorm(model)
        self.fixed_batch = fixed_batch  # the model's fixed batch size (None: any)
        self.layers = layers(m)
        inits = _init_map(m)
        self.weights = {layer.weight: numpy_helper.to_array(inits[layer.weight]) for layer in self.layers}
        existing = {i.name for i in m.graph.input}
        for name, arr in self.weights.items():
            if name not in existing:
                m.graph.input.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
        self.output = _logit_output(m, output_name)
        self.session = probe_session(m, [self.output], copy=False)  # m is this object's own copy
        self.input_name = input_name

    def predict(self, x: np.ndarray, weights: dict[str, np.ndarray] | None = None, batch: int = 256) -> np.ndarray:
        feeds_w = {k: v.astype(self.weights[k].dtype) for k, v in (weights or self.weights).items()}
        preds = []
        batch = self.fixed_batch or batch
        for s in range(0, len(x), batch):
            chunk = x[s : s + batch].astype(np.float32)
            real = chunk.shape[0]
            if self.fixed_batch is not None and real < self.fixed_batch:  # pad a fixed batch with copies
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], self.fixed_batch - real, axis=0)])
            out = _session_run(self.session, [self.output], {self.input_name: chunk, **feeds_w})[0][:real]
            preds.append(np.argmax(out.reshape(out.shape[0], -1), axis=1))
        return np.concatenate(preds)


def sharpness_sigma(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    target: float = 0.1,
    tol: float = 0.01,
    draws: int = 3,
    magnitude_aware: bool = False,
    eps: float = 1e-3,
    max_steps: int = 20,
    fixed_batch: int | None = None,
) -> dict[str, float]:
    """PAC-Bayes sharpness: bisection on sigma so Gaussian weight noise lowers accuracy by ``target``.

    Noise std is sigma (or sigma * sqrt(w^2 + eps) when ``magnitude_aware``); each step averages
    ``draws`` Monte-Carlo draws. Bisection is on log sigma in [1e-6, 10]; it stops when the drop
    is within ``tol`` of ``target``. Returns sigma, the flatness 1/sigma^2 and the achieved drop.
    """
    nw = NoisyWeights(model, input_name, output_name, fixed_batch)
    clean = float(np.mean(nw.predict(x) == y))

    def drop(sigma: float) -> float:
        accs = []
        for _ in range(draws):
            noisy = {}
            for k, w in nw.weights.items():
                w64 = w.astype(np.float64)
                std = sigma * (np.sqrt(w64**2 + eps) if magnitude_aware else 1.0)
                noisy[k] = w64 + std * rng.standard_normal(w.shape)
            accs.append(np.mean(nw.predict(x, noisy) == y))
        return clean - float(np.mean(accs))

    lo, hi = math.log(1e-6), math.log(10.0)
    sigma, achieved = math.exp(hi), float("nan")
    for _ in range(max_steps):
        mid = 0.5 * (lo + hi)
        sigma = math.exp(mid)
        achieved = drop(sigma)
        if abs(achieved - target) <= tol:
            break
        if achieved > target:
            hi = mid
        else:
            lo = mid
    return {"sigma": sigma, "flatness": 1.0 / sigma**2, "accuracy_drop": achieved, "clean_accuracy": clean}
