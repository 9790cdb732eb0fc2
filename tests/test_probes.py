"""Probe streams: the separable orthogonal transform is an orthonormal basis, streamed and recombined exactly."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from fimaudit.estimators.probes import MAX_FACTOR_BASIS, ProbeStream, _factors


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 6, 5), (3, 4, 1), (24,), (1, 1, 7)])
def test_orthogonal_probes_are_an_orthonormal_basis_at_k_equals_d(shape):
    d = int(np.prod(shape))
    units, scales = ProbeStream(d, d, "orthogonal", np.random.default_rng(0), shape).block(0, d)
    np.testing.assert_allclose(units.astype(np.float64) @ units.T.astype(np.float64), np.eye(d), atol=1e-6)
    np.testing.assert_allclose(scales, np.sqrt(d))
    # Incoherent with the coordinates: no entry above sqrt(2^axes / d).
    axes = len([n for n in shape if n > 1])
    assert np.max(np.abs(units)) <= np.sqrt(2.0**axes / d) + 1e-6


def test_separable_rows_are_the_inverse_nd_dct_of_one_hot_rows():
    shape = (3, 5, 4)
    d = 60
    stream = ProbeStream(d, 10, "orthogonal", np.random.default_rng(1), shape)
    units, _ = stream.block(0, 10)
    signs = stream._signs[0].astype(np.float64)
    for i, f in enumerate(stream._freqs[:10]):
        onehot = np.zeros(d)
        onehot[f] = 1.0
        ref = signs * scipy.fft.idctn(onehot.reshape(shape), type=2, norm="ortho").reshape(-1)
        np.testing.assert_allclose(units[i], ref, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 8, 8), (50,), None])
def test_combine_is_the_sum_of_streamed_rows(shape):
    d = 50 if shape in ((50,), None) else 192
    k = d + 17  # a second group of d with new signs
    stream = ProbeStream(d, k, "orthogonal", np.random.default_rng(2), shape)
    a = np.random.default_rng(3).standard_normal(k)
    rows = np.concatenate([stream.block(s, s + 13)[0] for s in range(0, k, 13)]).astype(np.float64)
    np.testing.assert_allclose(stream.combine(a), a @ rows, atol=1e-5)


def test_long_axes_split_or_fall_back_to_inverse_ffts():
    n = MAX_FACTOR_BASIS + 52  # 2100 = 42 * 50: split into two held bases
    assert _factors(n, (n,)) == (42, 50)
    prime = 2111  # no divisor: rows come from inverse DCTs of one-hot rows
    assert _factors(prime, (prime,)) == (prime,)
    stream = ProbeStream(prime, 40, "orthogonal", np.random.default_rng(4), (prime,))
    units, _ = stream.block(0, 40)
    np.testing.assert_allclose(units.astype(np.float64) @ units.T, np.eye(40), atol=1e-5)
    a = np.random.default_rng(5).standard_normal(40)
    np.testing.assert_allclose(stream.combine(a), a @ units.astype(np.float64), atol=1e-5)
    assert _factors(12, (5, 7)) == (12,)  # a shape that does not match d is ignored
