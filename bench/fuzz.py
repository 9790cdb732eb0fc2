"""Seeded fuzzing of fimaudit's commands with hostile models, data files and option values.

Every case is a deterministic function of (seed, case index): a mutation of a small valid model
(structure-aware ONNX edits or byte-level damage), of its data file, or of the options, run
through the CLI entry point in a forked worker process. Workers run many cases each under
RLIMIT_AS; the parent kills a worker whose case runs past the wall limit. Each outcome is
classified:

    ok / gate        exit 0 / exit 1
    refusal          exit 2, one stderr line starting "fimaudit: error:" (not an internal error)
    interrupted      exit 130/143 (never expected here)
    bad-refusal      exit 2 but not one clean line (e.g. several lines, no prefix)
    internal         "internal error" on stderr
    traceback        an exception escaped the CLI, or "Traceback" was printed
    memory           MemoryError / "out of memory" (a guard missed it), or peak RSS over the limit
    timeout          the case ran past the wall limit (killed)
    crash            the worker died (signal), e.g. a native crash
    leftover         temporary or half-written output files were left behind

Usage: python bench/fuzz.py --cases 10000 --seed 0 [--workers 2] [--start 0] [--out bench/results/fuzz.json]
       python bench/fuzz.py --combine chunk0.json chunk1.json ... --out bench/results/fuzz.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import re
import resource
import shutil
import signal
import struct
import zlib
import sys
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
OK_OUTCOMES = ("ok", "gate", "refusal")
FAILURES = ("bad-refusal", "internal", "traceback", "memory", "timeout", "crash", "leftover", "interrupted")
IR, OPSET = 8, 17


# ----------------------------------------------------------------------------- base corpus
def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes, inp, out, inits, in_shape, k, opset=OPSET) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["N", *in_shape])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", k])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = IR
    return m


def base_models(rng: np.random.Generator) -> dict[str, tuple[onnx.ModelProto, tuple[int, ...]]]:
    """Small valid classifiers of each family the parser recognises: name -> (model, sample shape)."""
    f32 = np.float32
    out: dict[str, tuple[onnx.ModelProto, tuple[int, ...]]] = {}
    # MLP with a softmax output
    d, h, k = 12, 10, 4
    nodes = [helper.make_node("Flatten", ["x"], ["xf"], axis=1),
             helper.make_node("Gemm", ["xf", "W1", "b1"], ["a"], transB=1),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["z"], transB=1),
             helper.make_node("Softmax", ["z"], ["p"], axis=1)]
    inits = [_init("W1", rng.standard_normal((h, d)).astype(f32) / 3), _init("b1", np.zeros(h, f32)),
             _init("W2", rng.standard_normal((k, h)).astype(f32) / 3), _init("b2", np.zeros(k, f32))]
    out["mlp"] = (_model(nodes, "x", "p", inits, (d,), k), (d,))
    # VGG-like: Conv-BN-Relu-MaxPool-Gemm on 1x6x6
    c = 3
    nodes = [helper.make_node("Conv", ["x", "K", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["mp"], ["fl"], axis=1),
             helper.make_node("Gemm", ["fl", "W", "b"], ["z"], transB=1)]
    inits = [_init("K", rng.standard_normal((c, 1, 3, 3)).astype(f32) / 3), _init("cb", np.zeros(c, f32)),
             _init("g", np.ones(c, f32)), _init("be", np.zeros(c, f32)), _init("mu", np.zeros(c, f32)),
             _init("var", np.ones(c, f32)), _init("W", rng.standard_normal((3, c * 9)).astype(f32) / 3),
             _init("b", np.zeros(3, f32))]
    out["vgg"] = (_model(nodes, "x", "z", inits, (1, 6, 6), 3), (1, 6, 6))
    # Residual MLP: z = W2 (x + tanh(W1 x))
    d, k = 8, 3
    nodes = [helper.make_node("MatMul", ["x", "A"], ["a"]), helper.make_node("Tanh", ["a"], ["t"]),
             helper.make_node("Add", ["x", "t"], ["s"]), helper.make_node("MatMul", ["s", "Bm"], ["z"])]
    inits = [_init("A", rng.standard_normal((d, d)).astype(f32) / 3),
             _init("Bm", rng.standard_normal((d, k)).astype(f32) / 3)]
    out["residual"] = (_model(nodes, "x", "z", inits, (d,), k), (d,))
    # Gated (x * sigmoid(x)) with a Constant node and a LayerNormalization
    nodes = [helper.make_node("Constant", [], ["two"], value=_init("two_v", np.array(2.0, f32))),
             helper.make_node("Mul", ["x", "two"], ["x2"]), helper.make_node("Sigmoid", ["x2"], ["sg"]),
             helper.make_node("Mul", ["x2", "sg"], ["sw"]),
             helper.make_node("LayerNormalization", ["sw", "lg", "lb"], ["ln"], axis=-1),
             helper.make_node("MatMul", ["ln", "Bm"], ["z"])]
    inits = [_init("lg", np.ones(d, f32)), _init("lb", np.zeros(d, f32)),
             _init("Bm", rng.standard_normal((d, k)).astype(f32) / 3)]
    out["gated"] = (_model(nodes, "x", "z", inits, (d,), k), (d,))
    return out


def base_data(rng: np.random.Generator, shape: tuple[int, ...], k: int, n: int = 12) -> dict[str, np.ndarray]:
    return {"x": rng.uniform(0, 1, (n, *shape)).astype(np.float32), "y": rng.integers(0, k, n).astype(np.int64)}


# ----------------------------------------------------------------------------- mutations
def _all_graphs(g: onnx.GraphProto):
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(a.g)
            for sg in a.graphs:
                yield from _all_graphs(sg)


def _pick(rng, seq):
    seq = list(seq)
    return seq[int(rng.integers(len(seq)))] if seq else None


HOSTILE_DIMS = [-1, 0, -7, 1, 2**31 - 1, 2**40, 10**6, 3]


def m_dims(m, rng, folder):
    vis = list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info)
    vi = _pick(rng, vis)
    dims = vi.type.tensor_type.shape.dim
    if len(dims) == 0:
        return "no-dims"
    d = dims[int(rng.integers(len(dims)))]
    d.Clear()
    d.dim_value = int(_pick(rng, HOSTILE_DIMS))
    if rng.random() < 0.3:
        dims.add().dim_value = int(_pick(rng, HOSTILE_DIMS))
    return vi.name


def m_dangling(m, rng, folder):
    n = _pick(rng, m.graph.node)
    if not n.input:
        n.input.append("nowhere")
    else:
        n.input[int(rng.integers(len(n.input)))] = "nowhere_" + str(int(rng.integers(100)))
    return n.op_type


def m_duplicate(m, rng, folder):
    if rng.random() < 0.5 and len(m.graph.node) > 1:
        a, b = rng.choice(len(m.graph.node), 2, replace=False)
        m.graph.node[int(b)].output[0] = m.graph.node[int(a)].output[0]
        return "output"
    if m.graph.initializer:
        t = onnx.TensorProto()
        t.CopyFrom(_pick(rng, m.graph.initializer))
        if rng.random() < 0.5:
            t.raw_data = t.raw_data[: len(t.raw_data) // 2]
        m.graph.initializer.append(t)
        return "initializer"
    new = onnx.NodeProto()
    new.CopyFrom(_pick(rng, m.graph.node))
    m.graph.node.append(new)
    return "node"


def m_cycle(m, rng, folder):
    if len(m.graph.node) < 2:
        return "short"
    i = int(rng.integers(len(m.graph.node) - 1))
    j = int(rng.integers(i + 1, len(m.graph.node)))
    m.graph.node[i].input[0] = m.graph.node[j].output[0]
    return f"{i}<-{j}"


def m_missing_init(m, rng, folder):
    if not m.graph.initializer:
        return "none"
    del m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]
    return "removed"


def m_huge_shape(m, rng, folder):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return "none"
    if rng.random() < 0.5:
        t.ClearField("raw_data")
        del t.float_data[:]
    t.dims[int(rng.integers(len(t.dims))) if t.dims else 0:] = [int(_pick(rng, [10**6, 2**31, 10**12, 7]))]
    return t.name


def m_wrong_dtype(m, rng, folder):
    types = [TensorProto.INT64, TensorProto.DOUBLE, TensorProto.STRING, TensorProto.BOOL, TensorProto.FLOAT16,
             TensorProto.UINT8, TensorProto.COMPLEX64, 0, 99, TensorProto.BFLOAT16]
    if rng.random() < 0.5 and m.graph.initializer:
        t = _pick(rng, m.graph.initializer)
        t.data_type = int(_pick(rng, types))
        return f"init:{t.data_type}"
    vi = _pick(rng, list(m.graph.input) + list(m.graph.output))
    vi.type.tensor_type.elem_type = int(_pick(rng, types))
    return f"io:{vi.type.tensor_type.elem_type}"


def m_short_init(m, rng, folder):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return "none"
    cut = int(rng.integers(0, max(1, len(t.raw_data))))
    t.raw_data = t.raw_data[:cut]
    return t.name


def m_subgraph(m, rng, folder):
    """Wrap a node in If branches (possibly nested) that read outer-scope tensors."""
    g = m.graph
    idx = int(rng.integers(len(g.node)))
    node = g.node[idx]
    inner = onnx.NodeProto()
    inner.CopyFrom(node)
    out_name = node.output[0]
    inner.output[0] = out_name + "_in"
    body = helper.make_graph([inner], "then", [], [helper.make_tensor_value_info(out_name + "_in", TensorProto.FLOAT, None)])
    for _ in range(int(rng.integers(0, 3))):  # nest
        wrap = helper.make_node("If", ["cond"], [out_name + "_in"], then_branch=body, else_branch=body)
        body = helper.make_graph([wrap], "nest", [], [helper.make_tensor_value_info(out_name + "_in", TensorProto.FLOAT, None)])
    cond_src = g.input[0].name if rng.random() < 0.2 else "cond"  # sometimes a float 'condition'
    if_node = helper.make_node("If", [cond_src], [out_name], then_branch=body, else_branch=body)
    del g.node[idx]
    g.node.insert(idx, if_node)
    g.node.insert(0, helper.make_node("Constant", [], ["cond"], value=_init("cv", np.array(bool(rng.random() < 0.5)))))
    if rng.random() < 0.3:
        kind = _pick(rng, ["Loop", "Scan"])
        g.node.insert(1, helper.make_node(kind, ["cond"], ["loop_out"], body=body))
    return node.op_type


def _external(t: TensorProto, location: str, offset: str | None = "0", length: str | None = None) -> None:
    t.ClearField("raw_data")
    del t.float_data[:]
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for key, val in (("location", location), ("offset", offset), ("length", length)):
        if val is not None:
            e = t.external_data.add()
            e.key, e.value = key, val


def m_external(m, rng, folder: Path):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return "none"
    raw = numpy_helper.to_array(t).tobytes()
    choice = _pick(rng, ["outside", "absolute", "dev-zero", "fifo", "symlink-out", "missing", "ok", "huge-length",
                         "bad-offset", "dir", "symlink-dev"])
    loc, length = "w.bin", str(len(raw))
    # A case can get this mutation twice: clear what the first left at w.bin (writing into a FIFO
    # left there would block the harness itself).
    w = folder / "w.bin"
    if w.is_symlink() or w.is_file() or w.is_fifo():
        w.unlink()
    elif w.is_dir():
        shutil.rmtree(w)
    if choice == "outside":
        (folder.parent / "secret.bin").write_bytes(raw)
        loc = "../secret.bin"
    elif choice == "absolute":
        loc = "/dev/zero" if rng.random() < 0.5 else str(folder / "w.bin")
        (folder / "w.bin").write_bytes(raw)
    elif choice == "dev-zero":
        loc = "../../../../../../../../dev/zero"
    elif choice == "fifo":
        os.mkfifo(folder / "w.bin")
    elif choice == "symlink-out":
        (folder.parent / "secret.bin").write_bytes(raw)
        os.symlink(folder.parent / "secret.bin", folder / "w.bin")
    elif choice == "symlink-dev":
        os.symlink("/dev/zero", folder / "w.bin")
    elif choice == "missing":
        pass
    elif choice == "dir":
        (folder / "w.bin").mkdir()
    else:
        (folder / "w.bin").write_bytes(raw)
        if choice == "huge-length":
            length = str(int(_pick(rng, [2**40, -5, 10**20])))
        elif choice == "bad-offset":
            _external(t, loc, offset=_pick(rng, ["-1", "abc", str(2**63), "1e3"]), length=length)
            return choice
    _external(t, loc, length=length if rng.random() < 0.8 else None)
    return choice


def m_opset(m, rng, folder):
    choice = _pick(rng, ["future-opset", "future-ir", "custom-domain", "zero-opset", "no-opset", "ml-domain"])
    if choice == "future-opset":
        m.opset_import[0].version = int(_pick(rng, [26, 99, 10**6]))
    elif choice == "future-ir":
        m.ir_version = int(_pick(rng, [11, 14, 99]))
    elif choice == "custom-domain":
        n = _pick(rng, m.graph.node)
        n.domain = _pick(rng, ["evil.custom", "com.microsoft", "ai.onnx.ml"])
        m.opset_import.append(helper.make_opsetid(n.domain, 1))
    elif choice == "zero-opset":
        m.opset_import[0].version = 0
    elif choice == "no-opset":
        del m.opset_import[:]
    else:
        m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 99))
    return choice


def m_empty(m, rng, folder):
    choice = _pick(rng, ["nodes", "outputs", "inputs", "initializers", "all", "graph"])
    if choice in ("nodes", "all"):
        del m.graph.node[:]
    if choice in ("outputs", "all"):
        del m.graph.output[:]
    if choice in ("inputs", "all"):
        del m.graph.input[:]
    if choice == "initializers":
        del m.graph.initializer[:]
    if choice == "graph":
        m.ClearField("graph")
    return choice


def m_attr(m, rng, folder):
    n = _pick(rng, [n for n in m.graph.node if n.attribute] or m.graph.node)
    vals = [0, -1, -3, 2**31, 99, 1]
    if n.attribute and rng.random() < 0.7:
        a = _pick(rng, n.attribute)
        if a.type == onnx.AttributeProto.INTS:
            a.ints[:] = [int(_pick(rng, vals)) for _ in range(int(rng.integers(0, 6)))]
        elif a.type == onnx.AttributeProto.INT:
            a.i = int(_pick(rng, vals))
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = float(_pick(rng, [np.nan, np.inf, -1.0, 0.0, 1e30]))
        else:
            a.type = onnx.AttributeProto.STRING
            a.s = b"garbage"
        return f"{n.op_type}.{a.name}"
    name = _pick(rng, ["axis", "group", "strides", "pads", "kernel_shape", "dilations", "transB", "epsilon", "alpha"])
    n.attribute.append(helper.make_attribute(name, int(_pick(rng, vals)) if rng.random() < 0.5 else [int(_pick(rng, vals))] * 2))
    return f"{n.op_type}+{name}"


OPS = ["Conv", "MatMul", "Gemm", "Relu", "Softmax", "LogSoftmax", "Add", "Mul", "Div", "Concat", "Reshape", "If",
       "Loop", "Einsum", "TopK", "NonZero", "Where", "Sin", "Resize", "NotAnOp", "LSTM", "MaxPool", "GlobalAveragePool",
       "Expand", "Gather", "ReduceMean", "Sigmoid", "LayerNormalization", "BatchNormalization", "Erf", "Pad"]


def m_op_swap(m, rng, folder):
    n = _pick(rng, m.graph.node)
    old = n.op_type
    n.op_type = _pick(rng, OPS)
    return f"{old}->{n.op_type}"


def m_nan_weights(m, rng, folder):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return "none"
    arr = numpy_helper.to_array(t).copy()
    if arr.dtype.kind != "f" or arr.size == 0:
        return "int"
    flat = arr.reshape(-1)
    for _ in range(int(rng.integers(1, 4))):
        flat[int(rng.integers(flat.size))] = _pick(rng, [np.nan, np.inf, -np.inf, 1e38, -1e38])
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return t.name


STRUCT_MUTATIONS = {
    "dims": m_dims, "dangling": m_dangling, "duplicate": m_duplicate, "cycle": m_cycle,
    "missing-init": m_missing_init, "huge-shape": m_huge_shape, "wrong-dtype": m_wrong_dtype,
    "short-init": m_short_init, "subgraph": m_subgraph, "external": m_external, "opset": m_opset,
    "empty-graph": m_empty, "attr": m_attr, "op-swap": m_op_swap, "nan-weights": m_nan_weights,
}


def bytes_flip(raw: bytes, rng) -> bytes:
    b = bytearray(raw)
    for _ in range(int(rng.integers(1, 16))):
        i = int(rng.integers(len(b)))
        b[i] = int(rng.integers(256)) if rng.random() < 0.5 else b[i] ^ (1 << int(rng.integers(8)))
    return bytes(b)


def bytes_truncate(raw: bytes, rng) -> bytes:
    return raw[: int(rng.integers(0, len(raw)))]


def bytes_splice(raw: bytes, rng, other: bytes) -> bytes:
    i, j = int(rng.integers(len(raw))), int(rng.integers(len(other)))
    return raw[:i] + other[j : j + int(rng.integers(1, 200))] + raw[i + int(rng.integers(0, 50)) :]


# ----------------------------------------------------------------------------- data mutations
def _npy_bytes(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _npy_header(shape, descr="<f4", fortran=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], compress: int = zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _zip_bomb(path: Path, x_header_shape, stored_bytes: int, y: bytes | None) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as fh:
            fh.write(_npy_header(x_header_shape))
            zeros = bytes(1 << 22)
            left = stored_bytes
            while left > 0:
                fh.write(zeros[: min(left, len(zeros))])
                left -= len(zeros)
        if y is not None:
            zf.writestr("y.npy", y)


DATA_KINDS = ["object-npy", "pickle-npz", "wrong-shape", "nan-inf", "zip-bomb", "huge-declared", "bad-labels",
              "empty", "no-x", "fortran", "big-endian", "bool", "scalar", "corrupt-zip", "byte-flip", "truncated",
              "complex", "structured", "stored-mode", "wrong-suffix", "huge-header"]


def _png(width: int, height: int, idat: bytes, color: int = 0, depth: int = 8) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


IMAGE_KINDS = ["image-ok", "image-bomb", "image-truncated", "image-garbage", "image-labels-csv", "image-symlink-loop",
               "image-fifo", "image-huge-ok", "image-empty", "image-classes"]


def image_folder(kind: str, rng, data: dict[str, np.ndarray], folder: Path) -> Path:
    """A folder of images (PNG/JPEG/BMP written by Pillow from the data, then damaged per ``kind``)."""
    from PIL import Image

    root = folder / "images"
    root.mkdir()
    x = data["x"]
    for i in range(min(4, len(x))):
        arr = (np.clip(np.asarray(x[i], np.float64), 0, 1) * 255).astype(np.uint8).reshape(-1)
        side = int(math.isqrt(arr.size)) or 1
        img = Image.fromarray(arr[: side * side].reshape(side, side), "L")
        img.save(root / f"im{i}.{_pick(rng, ['png', 'jpg', 'bmp'])}")
    files = sorted(root.iterdir())
    if kind == "image-bomb":
        w = int(_pick(rng, [100_000, 20_000, 13_000]))
        (root / "bomb.png").write_bytes(_png(w, w, zlib.compress(b"\0" * 64)))
    elif kind == "image-truncated":
        f = _pick(rng, files)
        f.write_bytes(bytes_truncate(f.read_bytes(), rng))
    elif kind == "image-garbage":
        f = _pick(rng, files)
        f.write_bytes(bytes_flip(f.read_bytes(), rng) if rng.random() < 0.5 else b"not an image at all")
    elif kind == "image-labels-csv":
        rows = [_pick(rng, ["file,label", "im0.png,0", "im1.png,-1", "../../etc/passwd,1", "im2.png,abc",
                            "im3.png,99999999999999999999", "nofile.png,1", "im0.png", ",,,,", "\x00"])
                for _ in range(int(rng.integers(1, 6)))]
        (root / "labels.csv").write_text("\n".join(rows))
    elif kind == "image-symlink-loop":
        (root / "cls").mkdir()
        os.symlink(root, root / "cls" / "loop")
        os.symlink("/dev/zero", root / "cls" / "zero.png")
    elif kind == "image-fifo":
        os.mkfifo(root / "pipe.png")
    elif kind == "image-huge-ok":  # a real image just under Pillow's limit would be slow: a large but fine one
        Image.new("L", (2000, 2000)).save(root / "big.png")
    elif kind == "image-empty":
        for f in files:
            f.unlink()
    elif kind == "image-classes":
        for i, f in enumerate(files):
            d = root / f"class{i % 2}"
            d.mkdir(exist_ok=True)
            f.rename(d / f.name)
    return root


def mutate_data(kind: str, rng, data: dict[str, np.ndarray], folder: Path) -> Path:
    x, y = data["x"], data["y"]
    p = folder / "data.npz"
    if kind.startswith("image-"):
        return image_folder(kind, rng, data, folder)
    if kind == "object-npy":
        p = folder / "data.npy"
        p.write_bytes(_npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True))
    elif kind == "pickle-npz":
        _zip(p, {"x.npy": _npy_bytes(np.array([[1.0], "s"], dtype=object), allow_pickle=True), "y.npy": _npy_bytes(y)})
    elif kind == "wrong-shape":
        shape = (x.shape[0],) + tuple(int(v) for v in rng.integers(1, 9, int(rng.integers(0, 4))))
        _zip(p, {"x.npy": _npy_bytes(np.zeros(shape, np.float32)), "y.npy": _npy_bytes(y)})
    elif kind == "nan-inf":
        x2 = x.copy().reshape(-1)
        x2[int(rng.integers(x2.size))] = _pick(rng, [np.nan, np.inf, -np.inf, 1e38])
        _zip(p, {"x.npy": _npy_bytes(x2.reshape(x.shape)), "y.npy": _npy_bytes(y)})
    elif kind == "zip-bomb":
        rows = int(_pick(rng, [2**20, 2**24]))
        _zip_bomb(p, (rows,) + x.shape[1:], rows * int(np.prod(x.shape[1:])) * 4 if rows <= 2**20 else 64 << 20,
                  _npy_bytes(rng.integers(0, 3, rows).astype(np.int64)) if rows <= 2**20 else None)
    elif kind == "huge-declared":
        rows = int(_pick(rng, [10**9, 2**40, 31 * 10**9 // 32]))
        _zip(p, {"x.npy": _npy_header((rows,) + x.shape[1:]) + x.tobytes(), "y.npy": _npy_bytes(y)})
    elif kind == "bad-labels":
        ys = [y.astype(np.float32), -y - 1, y[:-1], np.full_like(y, 10**9), y.reshape(-1, 1), np.array([], np.int64),
              np.full_like(y, 2**62)]
        _zip(p, {"x.npy": _npy_bytes(x), "y.npy": _npy_bytes(ys[int(rng.integers(len(ys)))])})
    elif kind == "empty":
        _zip(p, {"x.npy": _npy_bytes(x[:0]), "y.npy": _npy_bytes(y[:0])} if rng.random() < 0.7 else {})
    elif kind == "no-x":
        _zip(p, {"X.npy": _npy_bytes(x), "y.npy": _npy_bytes(y)})
    elif kind == "fortran":
        _zip(p, {"x.npy": _npy_bytes(np.asfortranarray(x)), "y.npy": _npy_bytes(y)})
    elif kind == "big-endian":
        _zip(p, {"x.npy": _npy_bytes(x.astype(">f8")), "y.npy": _npy_bytes(y.astype(">i4"))})
    elif kind == "bool":
        _zip(p, {"x.npy": _npy_bytes(x > 0.5), "y.npy": _npy_bytes(y.astype(bool))})
    elif kind == "scalar":
        p = folder / "data.npy"
        p.write_bytes(_npy_bytes(np.float32(3.0)))
    elif kind == "corrupt-zip":
        _zip(p, {"x.npy": _npy_bytes(x), "y.npy": _npy_bytes(y)})
        raw = bytearray(p.read_bytes())
        for _ in range(8):
            raw[int(rng.integers(len(raw)))] ^= 0xFF
        p.write_bytes(bytes(raw))
    elif kind == "byte-flip":
        p = folder / "data.npy"
        p.write_bytes(bytes_flip(_npy_bytes(x), rng))
    elif kind == "truncated":
        _zip(p, {"x.npy": _npy_bytes(x), "y.npy": _npy_bytes(y)})
        p.write_bytes(bytes_truncate(p.read_bytes(), rng))
    elif kind == "complex":
        _zip(p, {"x.npy": _npy_bytes(x.astype(np.complex64)), "y.npy": _npy_bytes(y)})
    elif kind == "structured":
        s = np.zeros(x.shape[0], dtype=[("a", "<f4"), ("b", "<i4")])
        _zip(p, {"x.npy": _npy_bytes(s), "y.npy": _npy_bytes(y)})
    elif kind == "stored-mode":
        _zip(p, {"x.npy": _npy_bytes(x), "y.npy": _npy_bytes(y)}, compress=zipfile.ZIP_STORED)
    elif kind == "wrong-suffix":
        p = folder / "data.csv"
        p.write_text("1,2,3\n")
    elif kind == "huge-header":
        body = b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"9" * 20000 + b",), }"
        _zip(p, {"x.npy": b"\x93NUMPY\x02\x00" + struct.pack("<I", len(body)) + body})
    return p


# ----------------------------------------------------------------------------- options
BASE_ARGS = {
    "scan": ["--samples", "2", "--budget", "40"],
    "bounds": [],
    "attack": ["--samples", "2", "--budget", "20", "--steps", "2", "--attack", "fgsm"],
    "metrics": ["--samples", "6", "--no-corruptions"],
    "clever": ["--samples", "1", "--points", "20", "--seeds", "1"],  # --points: at least 2 batches of 10
    "certify": ["--samples", "2", "--sigma", "0.25", "--n0", "10", "--n", "60"],
    "audit": ["--samples", "2"],
}
DATA_COMMANDS = {"attack", "metrics", "clever", "certify"}  # --data required
HOSTILE_VALUES = ["-1", "0", "1", "nan", "inf", "-inf", "1e308", "abc", "", "1/0", "0/0", "99999999999999999999", "3",
                  "0.5", "-0.0", "1,2,3", "2147483648", "1e-320", ",", "1/255", " ", "\x00"]
OPTIONS = {
    "scan": ["--samples", "--budget", "--method", "--probes", "--subspace", "--subspace-dim", "--seed", "--fd-step",
             "--device", "--input", "--output", "--input-shape", "--output-kind", "--scale", "--mean", "--std",
             "--space", "--input-range", "--max-batch", "--threads", "--fail-above", "--trace-budget", "--trace-rse",
             "--trace-probes", "--dither"],
    "bounds": ["--input", "--output", "--input-shape"],
    "attack": ["--attack", "--norm", "--eps", "--budget", "--samples", "--input-range", "--scale", "--mean", "--std",
               "--tau", "--steps", "--grad", "--seed", "--device"],
    "metrics": ["--samples", "--scale", "--mean", "--std", "--seed"],
    "clever": ["--norm", "--radius", "--points", "--seeds", "--samples", "--input-range", "--scale", "--mean", "--std",
               "--seed"],
    "certify": ["--samples", "--seed", "--sigma", "--n0", "--n", "--alpha", "--radii", "--space", "--scale",
                "--mean", "--std", "--max-batch"],
    "audit": ["--samples", "--seed"],
}
ENUM_VALUES = {"--method": ["exact", "sketch", "power", "power-fresh", "deflated", "magic"],
               "--attack": ["fgsm", "bim", "pgd", "square", "none"], "--norm": ["linf", "l2", "l1"],
               "--grad": ["auto", "fd", "zo", "x"], "--space": ["input", "data", "x"],
               "--output-kind": ["auto", "logits", "probabilities", "log-probabilities", "x"],
               "--device": ["auto", "cpu", "cuda", "tpu"], "--probes": ["orthogonal", "gaussian", "x"],
               "--subspace": ["dct", "learnt", "x"], "--trace-probes": ["rademacher", "gaussian", "x"]}
# Options whose large values legitimately ask for a long run: capped so a case stays a smoke test.
WORK_OPTIONS = {"--samples", "--budget", "--points", "--seeds", "--steps", "--subspace-dim", "--trace-budget", "--n0",
                "--n"}


def random_options(cmd: str, rng) -> list[str]:
    out: list[str] = []
    for _ in range(int(rng.integers(1, 4))):
        flag = _pick(rng, OPTIONS.get(cmd, []))
        if flag is None:
            break
        if flag in ENUM_VALUES and rng.random() < 0.7:
            val = _pick(rng, ENUM_VALUES[flag])
        else:
            val = _pick(rng, HOSTILE_VALUES)
        if flag in WORK_OPTIONS and re.fullmatch(r"\d+", val or "") and int(val) > 200:
            val = str(int(rng.integers(201, 5000)))
        out += [flag, val]
    return out


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    index: int
    kind: str  # mutation family
    detail: str
    command: str
    argv: list[str]
    folder: str
    inputs: set[str] = field(default_factory=set)


MODEL_KINDS = list(STRUCT_MUTATIONS) + ["byte-flip", "truncate", "splice"]
KINDS = [f"model:{k}" for k in MODEL_KINDS] + [f"data:{k}" for k in DATA_KINDS + IMAGE_KINDS] + ["options"]


def make_case(index: int, seed: int, commands: list[str], work: Path, corpus) -> Case:
    rng = np.random.default_rng([seed, index])
    kind = KINDS[int(rng.integers(len(KINDS)))]
    command = commands[int(rng.integers(len(commands)))]
    name = _pick(rng, sorted(corpus))
    if kind.startswith("data:image") and rng.random() < 0.8:
        name = "vgg"  # the image-shaped model
    model, shape, data = corpus[name]
    folder = work / f"case{index}" / "m"
    folder.mkdir(parents=True)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    detail = name
    model_path = folder / "model.onnx"
    data_path = folder / "data.npz"
    family, _, sub = kind.partition(":")
    if family == "model" and sub in STRUCT_MUTATIONS:
        for _ in range(int(rng.integers(1, 3))):  # one or two stacked mutations
            try:
                detail += "/" + str(STRUCT_MUTATIONS[sub](m, rng, folder))
            except Exception as exc:  # noqa: BLE001 - a mutation that does not apply to this model
                detail += f"/skip:{type(exc).__name__}"
        raw = m.SerializeToString()
    else:
        raw = m.SerializeToString()
        if sub == "byte-flip":
            raw = bytes_flip(raw, rng)
        elif sub == "truncate":
            raw = bytes_truncate(raw, rng)
        elif sub == "splice":
            other = corpus[_pick(rng, sorted(corpus))][0].SerializeToString()
            raw = bytes_splice(raw, rng, other)
    if not model_path.exists():
        model_path.write_bytes(raw)
    if family == "data":
        data_path = mutate_data(sub, rng, data, folder)
    else:
        np.savez(data_path, **data)
    argv = [command, str(model_path)]
    if command in DATA_COMMANDS or (command in ("scan", "certify", "audit") and (family == "data" or rng.random() < 0.5)):
        argv += ["--data", str(data_path)]
    argv += BASE_ARGS.get(command, [])
    if family == "options" or rng.random() < 0.15:
        argv += random_options(command, rng)
    if rng.random() < 0.5:
        argv += ["--json", str(folder / "out.json")]
    if command == "scan" and rng.random() < 0.2:
        argv += ["--save-direction", str(folder / "dir.npy")]
    argv += ["-q"]
    inputs = {p.name for p in folder.iterdir()}
    return Case(index, kind, detail, command, argv, str(folder), inputs)


# ----------------------------------------------------------------------------- workers
def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_in_process(argv: list[str], extra: list[str]) -> tuple[int, str, str]:
    """Run the CLI in this process with fd-level capture of stdout/stderr; returns (exit code, stderr, error)."""
    from fimaudit.cli import app

    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out_f.fileno(), 1)
    os.dup2(err_f.fileno(), 2)
    escaped = ""
    code = 0
    try:
        app(argv + extra, prog_name="fimaudit")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException as exc:  # noqa: BLE001 - anything escaping the CLI is a finding
        escaped = f"{type(exc).__name__}: {exc}"
        code = -1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    err_f.seek(0)
    out_f.seek(0)
    err = err_f.read().decode("utf-8", "replace")
    out = out_f.read().decode("utf-8", "replace")
    err_f.close()
    out_f.close()
    if "Traceback" in out:
        escaped = escaped or "Traceback on stdout"
    return code, err, escaped


def classify(code: int, err: str, escaped: str, peak: int, leftovers: list[str], mem_limit: int) -> str:
    if escaped or "Traceback (most recent call last)" in err:
        return "traceback"
    if "internal error" in err:
        return "internal"
    if "MemoryError" in err or "out of memory" in err or peak > mem_limit:
        return "memory"
    if leftovers:
        return "leftover"
    if code == 0:
        return "ok"
    if code == 1:
        return "gate"
    if code in (130, 143):
        return "interrupted"
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if code == 2 and len(lines) == 1 and lines[0].startswith("fimaudit: error: "):
        return "refusal"
    return "bad-refusal"


def _leftovers(case: Case, code: int) -> list[str]:
    left = []
    for p in Path(case.folder).iterdir():
        if p.name in case.inputs:
            continue
        if p.name.startswith(".") or p.name.endswith(".part") or code not in (0, 1):
            left.append(p.name)
    for p in Path(case.folder).parent.iterdir():  # nothing may appear outside the model folder
        if p.name not in ("m", "secret.bin"):
            left.append("../" + p.name)
    return left


def worker(conn, mem_limit: int, extra: list[str]) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    # Write through the real file descriptors (a test runner may have replaced sys.stdout/stderr),
    # so that the fd-level capture around each case sees everything the CLI prints.
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import fimaudit.cli  # noqa: F401 - import once, outside the per-case timing

    while True:
        msg = conn.recv()
        if msg is None:
            return
        case: Case = msg
        _reset_peak_rss()
        t0 = time.perf_counter()
        code, err, escaped = run_in_process(case.argv, extra)
        seconds = time.perf_counter() - t0
        peak = _peak_rss()
        left = _leftovers(case, code)
        outcome = classify(code, err, escaped, peak, left, mem_limit)
        conn.send({"index": case.index, "kind": case.kind, "command": case.command, "detail": case.detail,
                   "argv": case.argv, "exit": code, "outcome": outcome, "seconds": seconds, "peak_rss": peak,
                   "stderr": err.strip()[-600:], "escaped": escaped[:600], "leftovers": left})


def run_fuzz(cases: int, seed: int = 0, start: int = 0, workers: int = 2, commands: list[str] | None = None,
             wall_limit: float = 60.0, mem_limit: int = 2 << 30, timeout_option: float | None = 30.0,
             verbose: bool = True) -> dict:
    """Run cases [start, start + cases); returns {"results": [...], "commands": [...], ...}."""
    from fimaudit.cli import app as _app  # the command list only; onnxruntime is not imported by the CLI module
    import typer.main

    available = sorted(typer.main.get_command(_app).commands)
    commands = [c for c in (commands or list(BASE_ARGS)) if c in available]
    extra: list[str] = []
    timeout_cmds = {name for name, cmd in typer.main.get_command(_app).commands.items()
                    if any("--timeout" in getattr(p, "opts", []) for p in cmd.params)}
    rng = np.random.default_rng([seed, 10**6])
    corpus = {}
    for name, (model, shape) in base_models(rng).items():
        k = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        corpus[name] = (model, shape, base_data(rng, shape, k))
    work = Path(tempfile.mkdtemp(prefix="fimaudit-fuzz-"))
    ctx = mp.get_context("fork")
    results: list[dict] = []
    pending = list(range(start, start + cases))
    slots: dict = {}  # conn -> (process, case, started)

    def spawn():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(child, mem_limit, extra), daemon=True)
        proc.start()
        child.close()
        return parent, proc

    idle = [spawn() for _ in range(workers)]
    t_start = time.perf_counter()
    try:
        while pending or slots:
            while idle and pending:
                conn, proc = idle.pop()
                i = pending.pop(0)
                case = make_case(i, seed, commands, work, corpus)
                if timeout_option and case.command in timeout_cmds:
                    case.argv = case.argv[:-1] + ["--timeout", f"{timeout_option:g}", "-q"]
                conn.send(case)
                slots[conn] = (proc, case, time.perf_counter())
            ready = mp_wait(list(slots), timeout=1.0)
            now = time.perf_counter()
            for conn in ready:
                proc, case, started = slots.pop(conn)
                try:
                    res = conn.recv()
                    idle.append((conn, proc))
                except (EOFError, OSError):
                    proc.join(1)
                    res = {"index": case.index, "kind": case.kind, "command": case.command, "detail": case.detail,
                           "argv": case.argv, "exit": proc.exitcode, "outcome": "crash", "seconds": now - started,
                           "peak_rss": 0, "stderr": f"worker died (exit {proc.exitcode})", "escaped": "",
                           "leftovers": []}
                    idle.append(spawn())
                results.append(res)
                shutil.rmtree(Path(case.folder).parent, ignore_errors=True)
            for conn, (proc, case, started) in list(slots.items()):
                if now - started > wall_limit:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.join(5)
                    slots.pop(conn)
                    results.append({"index": case.index, "kind": case.kind, "command": case.command,
                                    "detail": case.detail, "argv": case.argv, "exit": None, "outcome": "timeout",
                                    "seconds": now - started, "peak_rss": 0, "stderr": "", "escaped": "",
                                    "leftovers": []})
                    shutil.rmtree(Path(case.folder).parent, ignore_errors=True)
                    idle.append(spawn())
            if verbose and ready and len(results) // 500 > (len(results) - len(ready)) // 500:
                bad = sum(r["outcome"] in FAILURES for r in results)
                print(f"  {len(results)}/{cases} cases, {bad} failures, {time.perf_counter() - t_start:.0f} s",
                      file=sys.stderr, flush=True)
    finally:
        for conn, proc in idle:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for conn, (proc, _c, _s) in slots.items():
            os.kill(proc.pid, signal.SIGKILL)
        for conn, proc in idle:
            proc.join(5)
        shutil.rmtree(work, ignore_errors=True)
    results.sort(key=lambda r: r["index"])
    return {"seed": seed, "start": start, "cases": cases, "commands": commands, "wall_limit_s": wall_limit,
            "rlimit_as_bytes": mem_limit, "timeout_option_s": timeout_option if timeout_cmds else None,
            "seconds": time.perf_counter() - t_start, "results": results}


def table(results: list[dict]) -> tuple[list[str], dict[str, Counter]]:
    outcomes = list(OK_OUTCOMES) + list(FAILURES)
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        counts[r["kind"]][r["outcome"]] += 1
    return outcomes, counts


def print_table(results: list[dict], file=sys.stdout) -> None:
    outcomes, counts = table(results)
    used = [o for o in outcomes if any(c[o] for c in counts.values()) or o in OK_OUTCOMES]
    width = max(len(k) for k in counts) if counts else 10
    print(f"{'mutation kind':<{width}} " + " ".join(f"{o:>11}" for o in used) + f" {'total':>7}", file=file)
    total = Counter()
    for kind in sorted(counts):
        c = counts[kind]
        total.update(c)
        print(f"{kind:<{width}} " + " ".join(f"{c[o]:>11}" for o in used) + f" {sum(c.values()):>7}", file=file)
    print(f"{'all':<{width}} " + " ".join(f"{total[o]:>11}" for o in used) + f" {sum(total.values()):>7}", file=file)
    by_cmd: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        by_cmd[r["command"]][r["outcome"]] += 1
    print("", file=file)
    for cmd in sorted(by_cmd):
        c = by_cmd[cmd]
        print(f"{cmd:<{width}} " + " ".join(f"{c[o]:>11}" for o in used) + f" {sum(c.values()):>7}", file=file)
    secs = sorted(r["seconds"] for r in results)
    rss = max((r["peak_rss"] for r in results), default=0)
    if secs:
        print(f"\nper case: median {secs[len(secs) // 2]:.3f} s, max {secs[-1]:.1f} s; largest peak RSS "
              f"{rss / 2**20:.0f} MiB", file=file)


def write_report(rep: dict, out: Path) -> int:
    """Print the tables and failures, write ``out`` (failing cases in full, the rest one line each)."""
    print_table(rep["results"])
    failures = [r for r in rep["results"] if r["outcome"] in FAILURES]
    for r in failures[:40]:
        print(f"FAIL {r['outcome']} case {r['index']} {r['kind']} {r['command']} {r['detail']}: "
              f"{(r['escaped'] or r['stderr'])[:300]}")
    _, counts = table(rep["results"])
    summary = {"cases": len(rep["results"]), "failures": len(failures),
               "by_kind": {k: dict(v) for k, v in sorted(counts.items())},
               "max_seconds": max((r["seconds"] for r in rep["results"]), default=0.0),
               "max_peak_rss_bytes": max((r["peak_rss"] for r in rep["results"]), default=0)}
    slim = [r if r["outcome"] in FAILURES else {k: r[k] for k in ("index", "kind", "command", "outcome", "exit")}
            | {"seconds": round(r["seconds"], 3), "peak_rss": r["peak_rss"]} for r in rep["results"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep | {"summary": summary, "results": slim}, indent=1) + "\n")
    print(f"\n{len(rep['results'])} cases, {len(failures)} failures, {rep['seconds']:.0f} s; wrote {out}")
    return 1 if failures else 0


def combine(paths: list[str], out: Path) -> int:
    """Merge chunk reports (runs with --start) of one seed into one report."""
    reps = [json.loads(Path(p).read_text()) for p in paths]
    results = sorted({r["index"]: r for rep in reps for r in rep["results"]}.values(), key=lambda r: r["index"])
    first = reps[0]
    merged = {k: first[k] for k in ("seed", "commands", "wall_limit_s", "rlimit_as_bytes", "timeout_option_s")}
    merged |= {"start": 0, "cases": len(results), "chunks": [[r["start"], r["cases"]] for r in reps],
               "seconds": sum(r["seconds"] for r in reps), "results": results}
    return write_report(merged, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--combine", nargs="+", help="merge these chunk reports into --out instead of running")
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index (to run a long campaign in chunks)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--commands", default=",".join(BASE_ARGS))
    ap.add_argument("--wall-limit", type=float, default=60.0)
    ap.add_argument("--mem-limit-gb", type=float, default=2.0)
    ap.add_argument("--timeout-option", type=float, default=30.0, help="--timeout passed to commands that have it")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fuzz.json"))
    args = ap.parse_args()
    if args.combine:
        return combine(args.combine, Path(args.out))
    rep = run_fuzz(args.cases, args.seed, args.start, args.workers, args.commands.split(","), args.wall_limit,
                   int(args.mem_limit_gb * 2**30), args.timeout_option)
    return write_report(rep, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
