"""Natural corruptions of images in [0, 1] (numpy/scipy), at severities 1-5; severity 0 is the identity.

Shapes ``(n, C, H, W)`` (or any ``(n, ...)`` for the pointwise ones); output keeps shape, dtype
(float64) and the [0, 1] range. Parameters follow the spirit of the common-corruption
benchmarks, scaled for small grayscale images.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SEVERITIES = (1, 2, 3, 4, 5)


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0)


def gaussian_noise(x, s, rng):
    return _clip(x + rng.normal(0, [0.04, 0.06, 0.08, 0.09, 0.10][s - 1], x.shape))


def shot_noise(x, s, rng):
    lam = [60, 25, 12, 5, 3][s - 1]
    # Clip first: float32 exports store 0 as -1e-17 now and then, and Poisson refuses rates < 0.
    return _clip(rng.poisson(_clip(x) * lam) / lam)


def impulse_noise(x, s, rng):
    amount = [0.01, 0.02, 0.03, 0.05, 0.07][s - 1]
    out = x.copy()
    u = rng.uniform(size=x.shape)
    out[u < amount / 2] = 0.0
    out[(u >= amount / 2) & (u < amount)] = 1.0
    return out


def _spatial(x, fn):
    flat = x.reshape((-1,) + x.shape[-2:])
    return np.stack([fn(img) for img in flat]).reshape(x.shape)


def gaussian_blur(x, s, rng):
    sigma = [0.4, 0.6, 0.8, 1.0, 1.5][s - 1]
    return _clip(_spatial(x, lambda img: ndimage.gaussian_filter(img, sigma, mode="nearest")))


def defocus_blur(x, s, rng):
    radius = [1, 1.5, 2, 2.5, 3][s - 1]
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy**2 + xx**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    return _clip(_spatial(x, lambda img: ndimage.convolve(img, disk, mode="nearest")))


def brightness(x, s, rng):
    return _clip(x + [0.1, 0.2, 0.3, 0.4, 0.5][s - 1])


def contrast(x, s, rng):
    c = [0.4, 0.3, 0.2, 0.1, 0.05][s - 1]
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    return _clip((x - mean) * c + mean)


def pixelate(x, s, rng):
    factor = [0.9, 0.8, 0.7, 0.6, 0.5][s - 1]

    def one(img):
        h, w = img.shape
        small = ndimage.zoom(img, factor, order=0)
        return ndimage.zoom(small, (h / small.shape[0], w / small.shape[1]), order=0)[:h, :w]

    return _clip(_spatial(x, one))


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "brightness": brightness,
    "contrast": contrast,
    "pixelate": pixelate,
}


SPATIAL = ("gaussian_blur", "defocus_blur", "pixelate")  # act on the last two axes as an image


def applicable(sample_shape: tuple[int, ...]) -> tuple[str, ...]:
    """The corruptions that make sense for samples of this shape.

    Spatial ones need the last two axes to be an image (both >= 4): a ``[784, 1]`` vector or a
    channels-last ``[H, W, 3]`` sample would be blurred across the wrong axes.
    """
    image = len(sample_shape) >= 2 and min(sample_shape[-2:]) >= 4
    return tuple(name for name in CORRUPTIONS if image or name not in SPATIAL)


def corrupt(x: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (0: identity) to images in [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    if severity == 0:
        return x.copy()
    if name not in CORRUPTIONS or severity not in SEVERITIES:
        raise ValueError(f"unknown corruption {name!r} or severity {severity}")
    out = CORRUPTIONS[name](x, severity, rng)
    return out.astype(np.float64).reshape(x.shape)
