"""Windowed linear maps in numpy: N-d convolution, its adjoint (ConvTranspose), window sums and pooling.

One loop over the kernel offsets, each a batched matrix product over the groups: no im2col buffer,
memory of one shifted view of the input at a time. The adjoint scatters the same products back, so a
backward pass through a Conv costs what the forward costs.
"""

from __future__ import annotations

import numpy as np


def out_size(n: int, k: int, s: int, d: int, b: int, e: int) -> int:
    return (n + b + e - (k - 1) * d - 1) // s + 1


def _pad(x: np.ndarray, begins, ends, fill: float = 0.0) -> np.ndarray:
    if not any(begins) and not any(ends):
        return x
    widths = [(0, 0)] * (x.ndim - len(begins)) + list(zip(begins, ends))
    return np.pad(x, widths, constant_values=fill)


def _window_slice(off, dil, strides, out_sp):
    return tuple(slice(o * d, o * d + (n - 1) * s + 1, s) for o, d, s, n in zip(off, dil, strides, out_sp))


def conv(x: np.ndarray, w: np.ndarray, strides, dil, begins, ends, group: int = 1) -> np.ndarray:
    """ONNX Conv without bias: x (N, C, *S), w (M, C/group, *K) -> (N, M, *O), float64."""
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    kernel = w.shape[2:]
    sp = x.shape[2:]
    out_sp = tuple(out_size(sp[i], kernel[i], strides[i], dil[i], begins[i], ends[i]) for i in range(len(kernel)))
    xp = _pad(x, begins, ends)
    p = int(np.prod(out_sp))
    y = np.zeros((n, group, m // group, p), dtype=np.float64)
    wg = w.reshape((group, m // group, cg) + tuple(kernel))
    for off in np.ndindex(*kernel):
        xs = xp[(slice(None), slice(None)) + _window_slice(off, dil, strides, out_sp)]
        xs = np.ascontiguousarray(xs).reshape(n, group, cg, p)
        y += np.matmul(wg[(Ellipsis,) + off][None], xs)
    return y.reshape((n, m) + out_sp)


def conv_adjoint(a: np.ndarray, w: np.ndarray, strides, dil, begins, ends, group: int, in_sp) -> np.ndarray:
    """The transpose of ``conv``: a (N, M, *O) -> (N, C, *in_sp). One matrix product for every kernel offset
    (W^T a: (G, Cg * K, M/G) @ (N, G, M/G, P)), then one strided add per offset (col2im)."""
    n, m = a.shape[:2]
    cg = w.shape[1]
    kernel = tuple(w.shape[2:])
    kk = int(np.prod(kernel))
    out_sp = a.shape[2:]
    p = int(np.prod(out_sp))
    padded = tuple(s + b + e for s, b, e in zip(in_sp, begins, ends))
    need = tuple(max(pd, (o - 1) * s + (k - 1) * d + 1) for pd, o, s, k, d in zip(padded, out_sp, strides, kernel, dil))
    gx = np.zeros((n, group, cg) + need, dtype=np.float64)
    wt = np.ascontiguousarray(np.moveaxis(w.reshape((group, m // group, cg * kk)), 1, 2))  # (G, Cg*K, M/G)
    if group == 1:  # one GEMM over all rows: (Cg*K, M) @ (M, N*P)
        at = np.ascontiguousarray(np.swapaxes(a.reshape(n, m, p), 0, 1)).reshape(m, n * p)
        cols = np.swapaxes((wt[0] @ at).reshape(cg * kk, n, p), 0, 1).reshape((n, 1, cg, kk) + tuple(out_sp))
    else:
        cols = np.matmul(wt[None], a.reshape(n, group, m // group, p)).reshape((n, group, cg, kk) + tuple(out_sp))
    for j, off in enumerate(np.ndindex(*kernel)):
        gx[(slice(None), slice(None), slice(None)) + _window_slice(off, dil, strides, out_sp)] += cols[:, :, :, j]
    gx = gx.reshape((n, group * cg) + need)
    crop = tuple(slice(b, b + s) for b, s in zip(begins, in_sp))
    return gx[(slice(None), slice(None)) + crop]


def window_reduce(x: np.ndarray, kernel, strides, dil, begins, ends, fn, fill: float) -> np.ndarray:
    """Reduce (max or sum) over each window of x (N, C, *S); padding takes ``fill``."""
    sp = x.shape[2:]
    out_sp = tuple(out_size(sp[i], kernel[i], strides[i], dil[i], begins[i], ends[i]) for i in range(len(kernel)))
    need = tuple((o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out_sp, strides, kernel, dil))
    extra = [max(0, nd - (s + b + e)) for nd, s, b, e in zip(need, sp, begins, ends)]
    xp = _pad(x, begins, [e + xx for e, xx in zip(ends, extra)], fill)
    out = None
    for off in np.ndindex(*kernel):
        xs = xp[(slice(None), slice(None)) + _window_slice(off, dil, strides, out_sp)]
        out = xs.copy() if out is None else fn(out, xs)
    return out


def window_argmax_offsets(x: np.ndarray, kernel, strides, dil, begins, ends):
    """For each window of x: the per-offset views (list of arrays (N, C, *O)), with -inf padding."""
    sp = x.shape[2:]
    out_sp = tuple(out_size(sp[i], kernel[i], strides[i], dil[i], begins[i], ends[i]) for i in range(len(kernel)))
    need = tuple((o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out_sp, strides, kernel, dil))
    extra = [max(0, nd - (s + b + e)) for nd, s, b, e in zip(need, sp, begins, ends)]
    xp = _pad(x, begins, [e + xx for e, xx in zip(ends, extra)], -np.inf)
    return [xp[(slice(None), slice(None)) + _window_slice(off, dil, strides, out_sp)] for off in np.ndindex(*kernel)], out_sp
