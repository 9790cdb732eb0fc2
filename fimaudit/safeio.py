"""Reading untrusted .npy/.npz files: headers checked before any data is read, only the rows needed.

``np.load`` would decompress a whole ``.npz`` member (a zip bomb of gigabytes from a small file)
before anything could be checked. Here each member's zip entry and ``.npy`` header are read
first, the bytes the requested rows need are checked against the memory guard, and exactly those
bytes are streamed out of the decompressor; nothing is ever unpickled.
"""

from __future__ import annotations

import lzma
import math
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import DataError, FimauditError
from .guards import fmt_bytes, require_memory

CHUNK = 1 << 22
# Later conversions hold up to two float64 copies of what was read (model-input units, dithering).
FLOAT64_COPIES = 2
_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError,
                NotImplementedError, RuntimeError, OverflowError)


def _header(fh: BinaryIO, label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        major, _minor = np.lib.format.read_magic(fh)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif major in (2, 3):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unknown .npy format version {major}")
    except Exception as exc:  # noqa: BLE001 - the header parser raises TokenError, SyntaxError, ...; all mean "corrupt"
        if isinstance(exc, MemoryError):
            raise
        raise DataError(f"cannot read {label}: not a valid .npy array ({' '.join(str(exc).split())[:120]})") from None
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise DataError(f"{label} declares an invalid shape {list(shape)}")
    if dtype.hasobject:
        raise DataError(f"{label} holds Python objects; only plain numeric arrays are read (never unpickled)")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _read_exact(fh: BinaryIO, nbytes: int, label: str) -> bytearray:
    buf = bytearray()
    while len(buf) < nbytes:
        chunk = fh.read(min(CHUNK, nbytes - len(buf)))
        if not chunk:
            raise DataError(f"cannot read {label}: the file ends after {len(buf)} of {nbytes} bytes (truncated?)")
        buf += chunk
    return buf


def read_array(fh: BinaryIO, label: str, max_rows: int | None, stored: int | None = None) -> tuple[np.ndarray, int]:
    """First ``max_rows`` rows (all when None) of the .npy stream ``fh``; returns (rows, declared row count).

    ``stored``: the bytes the container says it holds (a zip entry's declared size), checked against
    the header before anything is decompressed.
    """
    shape, fortran, dtype = _header(fh, label)
    if stored is not None and math.prod(shape) * dtype.itemsize > stored:
        raise DataError(
            f"cannot read {label}: its header declares {list(shape)} {dtype} ({fmt_bytes(math.prod(shape) * dtype.itemsize)}) "
            f"but the zip entry holds {fmt_bytes(stored)} (truncated or forged file)"
        )
    if not shape:
        count = 1
        rows = total_rows = 1
    else:
        total_rows = shape[0]
        rows = total_rows if max_rows is None else min(total_rows, max_rows)
        row = math.prod(shape[1:])
        # Fortran order stores the first axis fastest: leading rows are not a prefix of the bytes.
        count = math.prod(shape) if fortran else rows * row
    nbytes = count * dtype.itemsize
    require_memory(
        nbytes + FLOAT64_COPIES * 8 * count,
        f"{label} ({rows} of {total_rows} rows of {list(shape[1:])} {dtype})",
        "; use --samples to read fewer rows",
    )
    try:
        buf = _read_exact(fh, nbytes, label)
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read {label}: corrupt or truncated data ({type(exc).__name__})") from None
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    if not shape:
        return arr.reshape(()), total_rows
    if fortran:
        return arr.reshape(shape, order="F")[:rows].copy(), total_rows
    return arr.reshape((rows,) + shape[1:]), total_rows


def read_npy(path: Path, max_rows: int | None) -> tuple[np.ndarray, int]:
    try:
        with open(path, "rb") as fh:
            return read_array(fh, path.name, max_rows)
    except OSError as exc:
        raise DataError(f"cannot read {path.name}: {exc.strerror or type(exc).__name__}") from None


def npz_members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Array name -> zip entry (``x.npy`` is array ``x``, as numpy names them)."""
    out: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        out.setdefault(name, info)
    return out


def read_npz(path: Path, names: tuple[str, ...], max_rows: int | None) -> tuple[dict[str, tuple[np.ndarray, int]], list[str]]:
    """Arrays ``names`` present in the .npz (first ``max_rows`` rows each) and the list of its array names."""
    out: dict[str, tuple[np.ndarray, int]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = npz_members(zf)
            for name in names:
                info = members.get(name)
                if info is None:
                    continue
                label = f"{path.name}:{name}"
                if info.flag_bits & 0x1:
                    raise DataError(f"{label} is encrypted; fimaudit reads plain .npz files")
                with zf.open(info) as fh:
                    # zipfile stops at the entry's declared size and checks the CRC only at its end; the
                    # .npy header bounds what is read, so a bomb is never inflated past the rows needed.
                    out[name] = read_array(fh, label, max_rows, info.file_size)
    except FimauditError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types on garbage; all mean "corrupt"
        if isinstance(exc, MemoryError):
            raise
        raise DataError(f"cannot read {path.name}: corrupt or truncated file ({type(exc).__name__})") from None
    return out, sorted(members)


