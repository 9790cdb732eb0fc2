"""The GPU path: batch size from free device memory, and I/O binding so rows cross to the device once.

With onnxruntime's CUDA provider a plain ``session.run`` allocates device buffers for the
input and the output on every call and copies both ways. ``BoundRunner`` keeps one input
buffer of a full batch on the device (refilled in place) and lets the output stay on the
device until the K scores per row are copied back: each query row crosses once, each
score row once, nothing else.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
DEFAULT_BATCH = 256  # rows per call on the CPU, or on a GPU whose free memory is unknown
GPU_MAX_BATCH = 16384
MEMORY_SHARE = 0.5  # of the free device memory, for activations of one batch
_CUDART = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


def free_device_memory(device_id: int = 0) -> int | None:
    """Free bytes on CUDA device ``device_id`` (cudaMemGetInfo), or None when CUDA cannot say."""
    for name in _CUDART:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        try:
            if lib.cudaSetDevice(int(device_id)) != 0 or lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
                return None
        except AttributeError:
            continue
        return int(free.value)
    return None


def row_bytes(proto, sample_shape: tuple[int, ...], itemsize: int = 4) -> int:
    """Bytes one input row needs on the device: its own values plus every intermediate tensor's.

    From ONNX shape inference, counting each tensor's per-row size (leading batch axis
    dropped). Conservative: onnxruntime reuses buffers, so the real peak is lower.
    """
    total = int(np.prod(sample_shape)) * itemsize
    if proto is None:
        return 16 * total
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # shape inference is a hint here; fall back to a multiple of the input
        return 16 * total
    values = list(inferred.graph.value_info) + list(inferred.graph.output)
    known = 0
    for v in values:
        if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            continue
        dims = v.type.tensor_type.shape.dim[1:]
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            known += int(np.prod([d.dim_value for d in dims])) * itemsize
    return total + known if known else 16 * total


def choose_batch(free_bytes: int | None, per_row: int, limit: int = GPU_MAX_BATCH) -> int:
    """Rows per call on the GPU: the power of two whose activations fit in a share of free memory."""
    if free_bytes is None:
        return min(DEFAULT_BATCH, limit)
    rows = int(MEMORY_SHARE * free_bytes // max(per_row, 1))
    if rows < 1:
        return 1
    return int(min(limit, 1 << (rows.bit_length() - 1)))


@dataclass(frozen=True)
class DevicePlan:
    """What the engine does for a provider: rows per call and whether to bind I/O on the device."""

    batch: int
    binding: str | None  # device type for I/O binding ("cuda"), or None for plain session.run
    free_bytes: int | None = None
    row_bytes: int | None = None


def device_plan(provider: str, max_batch: int, proto=None, sample_shape: tuple[int, ...] = ()) -> DevicePlan:
    """``max_batch`` 0 means automatic: 256 rows on the CPU, as many as free memory allows on CUDA
    (a nonzero ``max_batch`` is then the upper limit)."""
    if provider != CUDA:
        return DevicePlan(max_batch or DEFAULT_BATCH, None)
    free = free_device_memory()
    per_row = row_bytes(proto, sample_shape)
    batch = choose_batch(free, per_row, limit=max_batch or GPU_MAX_BATCH)
    return DevicePlan(batch, "cuda", free, per_row)


class BoundRunner:
    """Run a session through I/O binding on ``device`` ("cuda", or "cpu" to exercise it without a GPU)."""

    def __init__(self, session, input_name: str, output_name: str, dtype: np.dtype, sample_shape: tuple[int, ...],
                 batch: int, device: str = "cuda", device_id: int = 0) -> None:
        from .session import _ort

        self._ort = _ort()
        self._session = session
        self._input, self._output = input_name, output_name
        self._device, self._device_id = device, device_id
        self._dtype = np.dtype(dtype)
        self._shape = tuple(sample_shape)
        # The one full-batch buffer that lives on the device; refilled in place for each call.
        self._full = self._ort.OrtValue.ortvalue_from_shape_and_type((batch,) + self._shape, self._dtype.type, device,
                                                                     device_id)
        self._batch = batch

    def run(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=self._dtype)
        if rows.shape[0] == self._batch:
            value = self._full
            value.update_inplace(rows)
        else:  # a short last batch gets its own buffer rather than padding
            value = self._ort.OrtValue.ortvalue_from_numpy(rows, self._device, self._device_id)
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input, value)
        binding.bind_output(self._output, self._device, self._device_id)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]
