"""Quantization: QuantizeLinear and DequantizeLinear (interval rules; piecewise constant, so no derivative)."""

from __future__ import annotations

import numpy as np

from ..verify.intervals import Box, round_margin
from .common import input_at
from .registry import Op, Reason, register

# --------------------------------------------------------------------------------- quantization
def _q_params(ins):
    scale = np.asarray(ins[1], np.float64)
    zp = input_at(ins, 2)
    return scale, zp


def _bshape(v, x_shape, axis):
    v = np.asarray(v)
    if v.size == 1:
        return v.reshape(())
    shape = [1] * len(x_shape)
    shape[axis % len(x_shape)] = v.size
    return v.reshape(shape)


def _quantize_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    scale, zp = _q_params(i)
    ax = int(n.attrs.get("axis", 1))
    dtype = np.asarray(zp).dtype if zp is not None else np.dtype(np.uint8)
    info = np.iinfo(dtype)
    z = 0 if zp is None else _bshape(np.asarray(zp, np.float64), x.shape, ax)
    q = np.clip(np.round(x / _bshape(scale, x.shape, ax)) + z, info.min, info.max)
    return [q.astype(dtype)]


def _quantize_ibp(ctx, node, ins):
    x = ins[0]
    lo = _quantize_p(ctx, node, [x.lo] + list(ins[1:]))[0].astype(np.float64)
    hi = _quantize_p(ctx, node, [x.hi] + list(ins[1:]))[0].astype(np.float64)
    # x / scale is rounded to float32 before rounding to an integer: a value within one float32 ulp of a
    # half-integer may round either way; widen by one step where that can happen
    return Box(lo - 1.0, hi + 1.0), 0.0


def _dequantize_p(c, n, i):
    x = np.asarray(i[0], np.float64)
    scale, zp = _q_params(i)
    ax = int(n.attrs.get("axis", 1))
    z = 0.0 if zp is None else _bshape(np.asarray(zp, np.float64), x.shape, ax)
    return [(x - z) * _bshape(scale, x.shape, ax)]


def _dequantize_ibp(ctx, node, ins):
    x = ins[0]
    scale, _ = _q_params(ins)
    lo = _dequantize_p(ctx, node, [x.lo] + list(ins[1:]))[0]
    hi = _dequantize_p(ctx, node, [x.hi] + list(ins[1:]))[0]
    out = Box(np.minimum(lo, hi), np.maximum(lo, hi))
    return out, round_margin(out.mag, 2)


_QUANT = "piecewise constant (rounding to integers): no derivative, no global Lipschitz constant"

register(
    "quant",
    Op("QuantizeLinear", nonlinear=True, piecewise="quantize", scale_inputs=(1,),
       vjp=Reason(_QUANT), jvp=Reason(_QUANT), lipschitz=Reason(_QUANT), point=_quantize_p,
       ibp=_quantize_ibp),
    Op("DequantizeLinear", scale_inputs=(1,), point=_dequantize_p, ibp=_dequantize_ibp),
)
