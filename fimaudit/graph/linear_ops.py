"""Operator norms of the linear operations found in classifiers, computed from exported weights.

Convolutions are measured as applied (stride, padding, dilation, groups, input size): the
exact L2 operator norm comes from Lanczos (scipy eigsh) on A^T A with A the convolution as a
sparse matrix, and a check comes from the FFT: on a grid large enough to hold the full
linear correlation, the circular convolution's norm max_f sigma_max(K_hat(f)) (Sedghi et al.
2019) is an upper bound of the zero-padded, strided convolution.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from .. import streams

# Lanczos converges to ~1e-10 here; the returned norm is raised by this factor so that
# residual convergence error can never make it fall below the true norm.
NORM_SAFETY = 1.0 + 1e-6
# Gram iterations of the FFT bound: the bound exceeds sigma_max by at most rank^(1/2^(t+1))
# (1.07 for rank 64 at t = 5; about 1.005 on random 512x512 blocks, whose spectrum is not flat).
GRAM_ITERS = 5
# Frequency blocks are processed this many complex entries at a time (64 MiB per chunk).
FFT_CHUNK_ENTRIES = 4_000_000


def conv_output_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    return (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


def conv_sparse_matrix(
    weight: np.ndarray,
    in_shape: tuple[int, int, int],
    strides=(1, 1),
    pads=(0, 0, 0, 0),
    dilations=(1, 1),
    groups: int = 1,
) -> sparse.csr_matrix:
    """The 2-D cross-correlation (ONNX Conv semantics, pads = top, left, bottom, right) as a sparse matrix."""
    o, cg, kh, kw = weight.shape
    c, h, w = in_shape
    if c != cg * groups:
        raise ValueError(f"conv weight expects {cg * groups} input channels, got {c}")
    sh, sw = strides
    dh, dw = dilations
    oh = conv_output_size(h, kh, sh, pads[0], pads[2], dh)
    ow = conv_output_size(w, kw, sw, pads[1], pads[3], dw)
    og = o // groups
    oo, yy, xx, cc, aa, bb = np.meshgrid(
        np.arange(o), np.arange(oh), np.arange(ow), np.arange(cg), np.arange(kh), np.arange(kw), indexing="ij"
    )
    iy = yy * sh - pads[0] + aa * dh
    ix = xx * sw - pads[1] + bb * dw
    valid = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    cin = (oo // og) * cg + cc
    rows = ((oo * oh + yy) * ow + xx)[valid]
    cols = ((cin * h + iy) * w + ix)[valid]
    vals = weight[oo, cc, aa, bb][valid].astype(np.float64)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(o * oh * ow, c * h * w))


def sparse_operator_norm(a, rng: np.random.Generator | None = None) -> float:
    """Largest singular value of a sparse or dense matrix via Lanczos on A^T A (dense SVD when small)."""
    m, n = a.shape
    if min(m, n) <= 64:
        dense = a.toarray() if sparse.issparse(a) else np.asarray(a, dtype=np.float64)
        return float(np.linalg.norm(dense, 2)) if dense.size else 0.0
    rng = rng or streams.fixed("fallback.operator_norm")
    at = a.T.tocsr() if sparse.issparse(a) else a.T
    op = LinearOperator((n, n), matvec=lambda v: at @ (a @ v), dtype=np.float64)
    try:
        lam = eigsh(op, k=1, which="LA", v0=rng.standard_normal(n), tol=1e-10, return_eigenvectors=False)[0]
    except ArpackNoConvergence as exc:  # pragma: no cover - ARPACK converges on these sizes
        lam = float(np.max(exc.eigenvalues)) if len(exc.eigenvalues) else float("nan")
    return float(np.sqrt(max(lam, 0.0)))


def gram_spectral_bound(mats: np.ndarray, iters: int = GRAM_ITERS) -> np.ndarray:
    """Certified upper bound on sigma_max of every matrix in a batch (..., m, n) by Gram iteration.

    G_0 = M^H M (or M M^H, the smaller), G_{k+1} = G_k G_k, so lambda_1(G_k) = sigma_1^(2^(k+1)) <=
    |G_k|_F and sigma_1 <= |G_k|_F^(1 / 2^(k+1)) (Delattre et al. 2023). Each G_k is rescaled to
    unit Frobenius norm and the scale is carried in logs, so nothing overflows. An upper bound at
    every k, not an estimate; the excess over sigma_1 is at most rank^(1 / 2^(k+1)).
    """
    mats = np.asarray(mats)
    m, n = mats.shape[-2:]
    if m == 0 or n == 0:
        return np.zeros(mats.shape[:-2])
    h = np.conj(np.swapaxes(mats, -1, -2))
    g = h @ mats if n <= m else mats @ h
    log_scale = np.zeros(mats.shape[:-2])
    for _ in range(iters):
        f = np.sqrt(np.sum(np.abs(g) ** 2, axis=(-2, -1)))
        zero = f == 0
        f = np.where(zero, 1.0, f)
        g = g / f[..., None, None]
        log_scale = 2.0 * (log_scale + np.log(f))
        g = g @ g
    f = np.sqrt(np.sum(np.abs(g) ** 2, axis=(-2, -1)))
    with np.errstate(divide="ignore"):
        out = np.exp((log_scale + np.log(f)) / 2.0 ** (iters + 1))
    return np.where(f == 0, 0.0, out) * NORM_SAFETY


def circulant_grid(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    """Smallest circular grid on which the zero-padded, strided correlation is a row selection
    of the circular one: every read index -pad_lo..last wraps onto a zero (N >= size + pad_lo),
    none wraps onto the input (N > last read), and distinct outputs stay distinct."""
    out = conv_output_size(size, k, stride, pad_lo, pad_hi, dilation)
    last_read = (out - 1) * stride - pad_lo + (k - 1) * dilation
    return max(size + pad_lo, last_read + 1, (out - 1) * stride + 1, 1)


def conv_norm_fft(
    weight: np.ndarray, in_hw: tuple[int, int], strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups: int = 1
) -> float:
    """Certified upper bound on a zero-padded (any stride) convolution's norm via its circulant.

    On the grid of ``circulant_grid`` the convolution as applied is the circular correlation
    restricted to the input and sub-sampled at the outputs, so its norm is at most
    max_f sigma_max(K_hat(f)) (Sedghi et al. 2019); each block's sigma_max is bounded from above
    by Gram iteration, vectorised over frequencies in chunks that bound memory. Real weights
    make K_hat(-f) = conj(K_hat(f)), so half the frequencies suffice.
    """
    o, cg, kh, kw = weight.shape
    n1 = circulant_grid(in_hw[0], kh, strides[0], pads[0], pads[2], dilations[0])
    n2 = circulant_grid(in_hw[1], kw, strides[1], pads[1], pads[3], dilations[1])
    f1, f2 = np.meshgrid(np.arange(n1), np.arange(n2 // 2 + 1), indexing="ij")
    f1, f2 = f1.ravel(), f2.ravel()
    a, b = np.meshgrid(np.arange(kh) * dilations[0], np.arange(kw) * dilations[1], indexing="ij")
    taps = weight.reshape(o, cg, kh * kw).astype(np.float64)
    og = o // groups
    chunk = max(1, FFT_CHUNK_ENTRIES // max(1, og * cg))
    best = 0.0
    for start in range(0, f1.size, chunk):
        phase = np.exp(-2j * np.pi * (np.outer(a.ravel(), f1[start:start + chunk]) / n1
                                      + np.outer(b.ravel(), f2[start:start + chunk]) / n2))  # (taps, F)
        spec = np.moveaxis(taps @ phase, -1, 0)  # (F, O, Cg)
        for g in range(groups):
            best = max(best, float(np.max(gram_spectral_bound(spec[:, g * og:(g + 1) * og]))))
    return best


# Above these sizes the exact sparse matrix (int64 index arrays of this many entries) would take
# too much memory, or the FFT bound's Gram iterations (complex multiply-adds) too much time;
# cheaper, looser bounds are used and the per-op report says which.
MAX_SPARSE_ENTRIES = 5_000_000
MAX_FFT_FLOPS = 1_500_000_000


def conv_reshaped_bound(weight: np.ndarray, strides=(1, 1), dilations=(1, 1), groups: int = 1) -> float:
    """sqrt(windows per input pixel) * max_g |W_g reshaped (out, in*kh*kw)|_2: a cheap upper bound.

    |A x|^2 = sum over output positions |W_g p|^2 <= |W_g|^2 sum |p|^2, and every input pixel
    appears in at most ceil(kh/sh) * ceil(kw/sw) patches (dilation does not add overlaps).
    """
    o, cg, kh, kw = weight.shape
    og = o // groups
    overlap = int(np.ceil(kh / strides[0]) * np.ceil(kw / strides[1]))
    # Gram iteration, not an SVD: certified from above and ten times faster on 512 x 4608 blocks.
    norm = max(float(gram_spectral_bound(weight[g * og : (g + 1) * og].reshape(og, -1))) for g in range(groups))
    del dilations
    return float(np.sqrt(overlap) * norm)


def conv_operator_norm(
    weight: np.ndarray,
    in_shape: tuple[int, int, int],
    strides=(1, 1),
    pads=(0, 0, 0, 0),
    dilations=(1, 1),
    groups: int = 1,
) -> tuple[float, float]:
    """(a bound on the operator norm as applied, a second, independent upper bound as a check).

    Small enough convolutions get the exact norm (Lanczos on the sparse matrix, raised by
    ``NORM_SAFETY``) checked by the FFT bound; larger ones the FFT bound checked by the
    reshaped-kernel bound; the largest the reshaped bound alone (check = same value).
    """
    path = _conv_path(weight, in_shape, strides, pads, dilations, groups)
    cheap = conv_reshaped_bound(weight, strides, dilations, groups)
    fft = conv_norm_fft(weight, in_shape[1:], strides, pads, dilations, groups) if path != "reshaped" else None
    if path == "exact":
        a = conv_sparse_matrix(weight, in_shape, strides, pads, dilations, groups)
        return sparse_operator_norm(a) * NORM_SAFETY, fft if fft is not None else cheap
    if fft is not None:
        return min(fft, cheap), cheap
    return cheap, cheap


def _conv_path(weight: np.ndarray, in_shape, strides, pads, dilations, groups: int = 1) -> str:
    """'exact', 'fft' or 'reshaped': the tightest bound whose memory and time stay within the limits.

    1x1 kernels take the reshaped bound, |W_g|_2: every FFT block equals W_g, so the FFT bound
    cannot be smaller (and for stride 1 it is exact).
    """
    o, cg, kh, kw = weight.shape
    _, h, w = in_shape
    oh = conv_output_size(h, kh, strides[0], pads[0], pads[2], dilations[0])
    ow = conv_output_size(w, kw, strides[1], pads[1], pads[3], dilations[1])
    if o * oh * ow * cg * kh * kw <= MAX_SPARSE_ENTRIES:
        return "exact"
    if kh * kw == 1:
        return "reshaped"
    n1 = circulant_grid(h, kh, strides[0], pads[0], pads[2], dilations[0])
    n2 = circulant_grid(w, kw, strides[1], pads[1], pads[3], dilations[1])
    og = o // max(groups, 1)
    flops = n1 * (n2 // 2 + 1) * o * cg * min(og, cg) * (GRAM_ITERS + 1)
    return "fft" if flops <= MAX_FFT_FLOPS else "reshaped"


_PATH_TEXT = {
    "exact": "exact operator norm as applied (Lanczos)",
    "fft": "FFT circulant upper bound, Gram iteration per frequency (too large for the exact sparse norm)",
    "reshaped": "reshaped-kernel bound sqrt(overlap) |W|_2 (1x1 kernel, or too large for the FFT bound)",
}


def conv_norm_method(weight: np.ndarray, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                     groups: int = 1) -> str:
    """Which bound ``conv_operator_norm`` uses for this convolution (for reports)."""
    return _PATH_TEXT[_conv_path(weight, in_shape, strides, pads, dilations, groups)]


def pool_overlap_factor(in_hw, kernel, strides, pads, dilations=(1, 1)) -> int:
    """The largest number of pooling windows that contain one input pixel."""
    h, w = in_hw
    counts = np.zeros((h, w), dtype=np.int64)
    oh = conv_output_size(h, kernel[0], strides[0], pads[0], pads[2], dilations[0])
    ow = conv_output_size(w, kernel[1], strides[1], pads[1], pads[3], dilations[1])
    for y in range(oh):
        ys = [y * strides[0] - pads[0] + a * dilations[0] for a in range(kernel[0])]
        ys = [v for v in ys if 0 <= v < h]
        for x in range(ow):
            xs = [x * strides[1] - pads[1] + b * dilations[1] for b in range(kernel[1])]
            xs = [v for v in xs if 0 <= v < w]
            for v in ys:
                counts[v, xs] += 1
    return int(counts.max()) if counts.size else 0


def avgpool_operator_norm(channels: int, in_hw, kernel, strides, pads, count_include_pad: bool) -> float:
    """Average pooling as a depthwise convolution; without count_include_pad, border windows
    divide by fewer elements, so the exact matrix is built row by row scale."""
    h, w = in_hw
    kh, kw = kernel
    ones = np.ones((1, 1, kh, kw))
    a = conv_sparse_matrix(ones, (1, h, w), strides, pads).tocsr()
    counts = np.asarray(a.sum(axis=1)).ravel()
    divisor = np.full_like(counts, kh * kw) if count_include_pad else np.maximum(counts, 1)
    a = sparse.diags(1.0 / divisor) @ a
    del channels  # channels are independent copies: same norm
    return sparse_operator_norm(a) * NORM_SAFETY
