"""Resource guards: refuse inputs whose declared sizes cannot fit in memory, before any work starts."""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Iterable
from pathlib import Path

import onnx
from onnx import TensorProto

from .errors import ModelLoadError, ResourceError

# Parsing a protobuf holds the file's bytes and the message; onnxruntime gets a serialised copy
# and builds its own: about four copies of the file at the peak.
MODEL_FILE_COPIES = 4
# Declared initializer bytes are held by the ModelProto, by graph analysis (numpy arrays) and by
# onnxruntime.
TENSOR_COPIES = 3
_ENV_LIMIT = "FIMAUDIT_MEMORY_LIMIT"  # bytes (or 512M, 2G): caps what the guards consider available


def _parse_bytes(text: str) -> int | None:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if mult > 1 else text) * mult)
    except ValueError:
        return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def _vm_size() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_memory() -> int:
    """Bytes this process can still allocate: free memory, the cgroup's room and RLIMIT_AS, whichever is least."""
    candidates = [c for c in (_meminfo_available(), _cgroup_room()) if c is not None]
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        candidates.append(soft - _vm_size())
    env = os.environ.get(_ENV_LIMIT)
    if env:
        parsed = _parse_bytes(env)
        if parsed is not None:
            candidates.append(parsed)
    return max(0, min(candidates)) if candidates else 1 << 62


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def require_memory(nbytes: int, what: str, hint: str = "") -> None:
    """Raise ``ResourceError`` when ``nbytes`` exceed the memory available now."""
    avail = available_memory()
    if nbytes > avail:
        raise ResourceError(
            f"{what} needs {fmt_bytes(nbytes)} of memory but only {fmt_bytes(avail)} is available{hint}"
        )


def check_model_file(path: Path) -> None:
    """Refuse a model file whose size alone (times the copies made while loading) exceeds memory."""
    size = path.stat().st_size
    require_memory(MODEL_FILE_COPIES * size, f"loading {path.name} ({fmt_bytes(size)} on disk)")


def _itemsize(data_type: int) -> float | None:
    """Bytes per element of an ONNX tensor type (fractions for packed 4-bit/2-bit types); None if unknown."""
    if data_type == TensorProto.STRING:
        return None
    try:
        np_type = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except Exception:
        return None
    name = TensorProto.DataType.Name(data_type)
    if name in ("INT4", "UINT4", "FLOAT4E2M1"):
        return 0.5
    if name in ("INT2", "UINT2"):
        return 0.25
    return float(np_type.itemsize)


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def check_declared_tensors(tensors: Iterable[TensorProto], path: Path) -> int:
    """Check every tensor's declared shape against what it stores and the sum against memory.

    Returns the total declared bytes. Raises ``ModelLoadError`` for negative dimensions, unknown
    types or internal data shorter than declared, ``ResourceError`` when the tensors cannot fit.
    """
    total = 0
    for t in tensors:
        label = t.name or "(unnamed)"
        if any(d < 0 for d in t.dims):
            raise ModelLoadError(f"{path.name}: tensor '{label}' declares a negative dimension {list(t.dims)}")
        count = math.prod(int(d) for d in t.dims)
        size = _itemsize(t.data_type)
        if t.data_type == TensorProto.STRING:
            total += sum(len(s) for s in t.string_data)
            continue
        if size is None:
            raise ModelLoadError(f"{path.name}: tensor '{label}' has an unknown data type ({t.data_type})")
        declared = math.ceil(count * size)
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            try:
                length = int(info.get("length") or declared)
            except ValueError:
                raise ModelLoadError(f"{path.name}: tensor '{label}' has an invalid external data length") from None
            if length < declared:
                raise ModelLoadError(
                    f"{path.name}: tensor '{label}' declares shape {list(t.dims)} ({fmt_bytes(declared)}) but its "
                    f"external data holds {fmt_bytes(length)}"
                )
        elif t.HasField("raw_data"):
            if len(t.raw_data) != declared:
                raise ModelLoadError(
                    f"{path.name}: tensor '{label}' declares shape {list(t.dims)} ({declared} bytes) but holds "
                    f"{len(t.raw_data)} bytes"
                )
        else:
            stored = sum(len(getattr(t, f)) for f in _TYPED_FIELDS)
            per = 2 if TensorProto.DataType.Name(t.data_type).startswith("COMPLEX") else 1
            if size >= 1 and stored != count * per:
                raise ModelLoadError(
                    f"{path.name}: tensor '{label}' declares shape {list(t.dims)} ({count} values) but holds {stored // per}"
                )
        total += declared
    require_memory(TENSOR_COPIES * total, f"{path.name}'s weights ({fmt_bytes(total)} declared)")
    return total
