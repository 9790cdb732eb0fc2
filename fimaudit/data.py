"""Sample data: .npy/.npz loading, shape and dtype checks, preprocessing, synthetic inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .choices import eval_fraction, parse_floats, parse_range  # noqa: F401 - re-exported
from .errors import ConfigError, DataError
from .guards import require_memory
from .safeio import read_npy, read_npz


@dataclass(frozen=True)
class Preprocess:
    """Affine map from stored data x to model input u = (x * scale - mean) / std.

    ``mean`` and ``std`` are scalars or one value per channel; channels lie on ``channel_axis``
    of a sample (0 for NCHW, 2 for NHWC: see ``fimaudit.model.layout``).
    """

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_axis: int = 0

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and all(m == 0.0 for m in self.mean) and all(s == 1.0 for s in self.std)

    def broadcast(self, values: tuple[float, ...], sample_shape: tuple[int, ...]) -> np.ndarray:
        """Per-channel ``values`` (this map's mean or std) shaped to broadcast against one sample (a scalar for one)."""
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 1:
            return arr.reshape(())
        axis = self.channel_axis
        if not 0 <= axis < len(sample_shape) or sample_shape[axis] != arr.size:
            raise ConfigError(
                f"--mean/--std have {arr.size} values but the model's sample shape {list(sample_shape)} does not have "
                f"{arr.size} channels on its channel axis ({axis}; --layout sets it for image inputs)"
            )
        shape = [1] * len(sample_shape)
        shape[axis] = arr.size
        return arr.reshape(shape)

    def check(self, sample_shape: tuple[int, ...]) -> None:
        if not np.isfinite(self.scale) or self.scale == 0:
            raise ConfigError("--scale must be a nonzero finite number")
        if any((not np.isfinite(s)) or s == 0 for s in self.std):
            raise ConfigError("--std values must be nonzero and finite")
        self.broadcast(self.mean, sample_shape)
        self.broadcast(self.std, sample_shape)

    def apply(self, x: np.ndarray, sample_shape: tuple[int, ...]) -> np.ndarray:
        """Rows ``(n, *sample_shape)`` of stored data -> model input, float64."""
        mean = self.broadcast(self.mean, sample_shape)
        std = self.broadcast(self.std, sample_shape)
        return (np.asarray(x, dtype=np.float64) * self.scale - mean) / std

    def jacobian_diag(self, sample_shape: tuple[int, ...]) -> np.ndarray:
        """du/dx = scale / std, broadcast to ``sample_shape`` (MATH §1: D)."""
        std = self.broadcast(self.std, sample_shape)
        return np.broadcast_to(self.scale / std, sample_shape).astype(np.float64)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std), "channel_axis": self.channel_axis}


@dataclass(frozen=True)
class Dataset:
    """Samples in stored-data units, ``x`` of shape ``(n, *sample_shape)``; labels optional."""

    x: np.ndarray
    y: np.ndarray | None
    source: str  # file path or "synthetic"
    synthetic: bool = False


_OK_KINDS = "uif"  # unsigned, signed integer, float


def _fit_shape(x: np.ndarray, sample_shape: tuple[int, ...], name: str) -> np.ndarray:
    if x.ndim == 0:
        raise DataError(f"{name} holds a scalar, not a batch of samples")
    if tuple(x.shape[1:]) == sample_shape:
        return x
    # Singleton axes may be added or dropped: that never reorders the data (NHWC vs NCHW would).
    squeeze = tuple(d for d in x.shape[1:] if d != 1)
    want = tuple(d for d in sample_shape if d != 1)
    if squeeze == want:
        return x.reshape((x.shape[0],) + sample_shape)
    if tuple(x.shape) == sample_shape:
        raise DataError(
            f"{name} holds one sample of shape {list(x.shape)}; add a leading batch axis (shape {[1, *sample_shape]})"
        )
    raise DataError(
        f"{name} has samples of shape {list(x.shape[1:])} but the model takes {list(sample_shape)} per sample "
        "(data must be in the model's input layout, batch first)"
    )


def load_data(path: str | Path, sample_shape: tuple[int, ...], samples: int | None = None) -> Dataset:
    """Read ``.npy`` (inputs) or ``.npz`` (``x``, optional ``y``); never unpickles objects."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    if samples is not None and samples < 1:
        raise ConfigError("--samples must be >= 1")
    y = None
    x_rows = y_rows = 0
    # Headers are checked and only the first `samples` rows are read (fimaudit.safeio: no zip bombs).
    if p.suffix.lower() == ".npz":
        arrays, names = read_npz(p, ("x", "y"), samples)
        if "x" not in arrays:
            raise DataError(f"{p.name} has no array 'x' (it has: {', '.join(names) or 'nothing'})")
        x, x_rows = arrays["x"]
        if "y" in arrays:
            y, y_rows = arrays["y"]
    elif p.suffix.lower() == ".npy":
        x, x_rows = read_npy(p, samples)
    else:
        raise DataError(f"{p.name}: data must be a .npy or .npz file")
    if x.dtype.kind not in _OK_KINDS:
        raise DataError(f"{p.name}: x has dtype {x.dtype}; expected numbers (uint8 pixels or floats)")
    x = _fit_shape(x, sample_shape, f"{p.name}")
    if x.shape[0] == 0:
        raise DataError(f"{p.name} holds no samples")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{p.name}: x contains NaN or Inf")
    if y is not None:
        if y.dtype.kind not in "ui" or y.ndim != 1 or y_rows != x_rows:
            raise DataError(
                f"{p.name}: y must be integer class labels, one per sample (got dtype {y.dtype}, {y_rows} labels for "
                f"{x_rows} samples)"
            )
        if np.any(y < 0):
            raise DataError(f"{p.name}: y has negative labels")
    return Dataset(x=x, y=None if y is None else y.astype(np.int64), source=str(p))


def load_radii(path: str | Path, key: str, n: int, scale: float = 1.0) -> tuple[np.ndarray, str | None]:
    """One attack radius per sample from array ``key`` of the ``.npz`` (``--eps-from``), for the first ``n`` samples.

    The stored values are in --eps units (attack units: data x --scale); a single value serves every sample
    (a note says so). Returns (radii, note). ``scale`` only words the error messages.
    """
    p = Path(path)
    if p.suffix.lower() != ".npz" or not p.is_file():
        raise ConfigError(f"--eps-from {key} needs --data to be a .npz file holding the array '{key}'")
    arrays, names = read_npz(p, (key,), n)
    if key not in arrays:
        raise DataError(f"--eps-from: {p.name} has no array '{key}' (it has: {', '.join(names) or 'nothing'})")
    radii, _ = arrays[key]
    radii = np.asarray(radii)
    if radii.dtype.kind not in "uif":
        raise DataError(f"--eps-from: {p.name}:{key} has dtype {radii.dtype}; expected numbers")
    radii = radii.astype(np.float64).reshape(-1) if radii.ndim <= 1 else radii.astype(np.float64)
    if radii.ndim != 1:
        raise DataError(f"--eps-from: {p.name}:{key} must hold one radius per sample (shape (N,)), not {list(radii.shape)}")
    if not np.all(np.isfinite(radii)) or np.any(radii < 0):
        raise DataError(f"--eps-from: {p.name}:{key} holds negative, NaN or Inf radii")
    note = None
    if radii.size == 1 and n > 1:
        radii = np.full(n, float(radii[0]))
        note = f"--eps-from {key}: {p.name} holds one radius ({radii[0]:g}), used for every sample"
    elif radii.size < n:
        raise DataError(f"--eps-from: {p.name}:{key} holds {radii.size} radii for {n} samples")
    return radii[:n], note


def check_labels(y: np.ndarray, n_classes: int, source: str) -> None:
    """Labels must name one of the model's classes."""
    if y.size and int(y.max()) >= n_classes:
        raise ConfigError(f"labels in {source} go up to {int(y.max())} but the model has {n_classes} classes")


def synthetic_data(
    sample_shape: tuple[int, ...], n: int, input_range: tuple[float, float], rng: np.random.Generator
) -> Dataset:
    """Uniform inputs in ``input_range`` (model-input units). Not representative of real data."""
    lo, hi = input_range
    require_memory(3 * 8 * n * math.prod(sample_shape), f"{n} synthetic samples of shape {list(sample_shape)}",
                   "; lower --samples")
    x = rng.uniform(lo, hi, size=(n,) + tuple(sample_shape))
    return Dataset(x=x, y=None, source="synthetic", synthetic=True)
