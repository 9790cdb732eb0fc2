"""Hostile input (issue 14): the seven known crashes, resource guards, atomic writes and the run guard."""

from __future__ import annotations

import io
import signal
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fimaudit import guards, safeio
from fimaudit.errors import DataError, ModelLoadError, ResourceError
from fimaudit.graph import compute_bounds
from fimaudit.runtime_guard import Interrupted, RunTimeout, guarded_run, write_atomic

from . import builders as B
from .test_bad_input import assert_one_line_error, run_cli


def _conv(tmp_path: Path, name: str, dim_index: int | None = None, dim_value: int = 0, kernel=None) -> Path:
    rng = np.random.default_rng(0)
    k = rng.standard_normal((4, 1, 3, 3)) if kernel is None else kernel
    m = B.conv_model(k, np.zeros(4), rng.standard_normal((3, 4 * 6 * 6)), np.zeros(3), (1, 6, 6))
    if dim_index is not None:
        m.graph.input[0].type.tensor_type.shape.dim[dim_index].dim_value = dim_value
    return B.save(m, tmp_path / name)


# ---------------------------------------------------------------- the table
@pytest.mark.parametrize("index,value", [(2, -6), (1, 0), (1, -1)])
def test_non_positive_input_dims_are_refused(tmp_path, index, value):
    p = _conv(tmp_path, "m.onnx", index, value)
    assert_one_line_error(run_cli("scan", str(p), "-q", "--samples", "2"), "non-positive", "--input-shape")
    assert_one_line_error(run_cli("bounds", str(p), "-q"), "non-positive")


@pytest.mark.parametrize("where", ["dim_param", "input name"])
def test_names_that_are_not_utf8_are_a_corrupt_model(tmp_path, where):
    """Found by the fuzz run (seed 1, case 1543): a flipped byte in a dimension name made protobuf hand
    back bytes, and writing the JSON report was an internal error."""
    m = _conv(tmp_path, "m.onnx")
    m = onnx.load(str(m))
    if where == "dim_param":
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "QQ"
        marker = b"QQ"
    else:
        old = m.graph.input[0].name
        for node in m.graph.node:
            node.input[:] = ["ZZin" if i == old else i for i in node.input]
        m.graph.input[0].name = "ZZin"
        marker = b"ZZin"
    raw = m.SerializeToString()
    assert raw.count(marker) >= 1
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(raw.replace(marker, b"\xe4\xff" + marker[2:]))
    for cmd in (["scan", str(bad), "-q", "--samples", "2", "--json", str(tmp_path / "r.json")], ["bounds", str(bad), "-q"]):
        assert_one_line_error(run_cli(*cmd), "corrupt", "UTF-8")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("batch", [-1, 0, "N"])
def test_dynamic_batch_written_as_minus_one_or_zero(tmp_path, batch):
    rng = np.random.default_rng(1)
    m = B.linear_model(rng.standard_normal((3, 8)), np.zeros(3), batch=batch)
    if batch == 0:  # onnxruntime itself takes a literal 0 as a fixed size: one line, exit 2
        res = run_cli("scan", str(B.save(m, tmp_path / "m.onnx")), "-q", "--samples", "2", "--budget", "100")
        assert res.exit_code in (0, 2) and "internal error" not in res.stderr
        return
    res = run_cli("scan", str(B.save(m, tmp_path / "m.onnx")), "-q", "--samples", "2", "--budget", "100")
    assert res.exit_code == 0, res.stderr


def test_nan_inf_weights_give_a_null_bound_with_reason(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 8))
    w[0, 0], w[1, 1] = np.nan, np.inf
    res = compute_bounds(str(B.save(B.linear_model(w, np.zeros(3)), tmp_path / "lin.onnx")))
    assert res.lipschitz is None and "NaN or Inf" in res.reason
    k = rng.standard_normal((4, 1, 3, 3))
    k[0, 0, 0, 0] = np.inf
    res = compute_bounds(str(_conv(tmp_path, "conv.onnx", kernel=k)))
    assert res.lipschitz is None and "NaN or Inf" in res.reason
    # The same models with finite weights still get a finite bound.
    assert compute_bounds(str(_conv(tmp_path, "ok.onnx"))).lipschitz is not None


def _if_model(tmp_path: Path) -> Path:
    """x -> If(c){ If(c){Relu(x)} else {Neg(x)} } else {Neg(x)} -> Gemm: branches read x from the outer scope."""
    def branch(op, out):
        return helper.make_graph([helper.make_node(op, ["x"], [out])], op, [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])

    inner = helper.make_node("If", ["c"], ["ri"], then_branch=branch("Relu", "r"), else_branch=branch("Neg", "n1"))
    outer_then = helper.make_graph([inner], "ot", [], [helper.make_tensor_value_info("ri", TensorProto.FLOAT, None)])
    w = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True))),
             helper.make_node("If", ["c"], ["y"], then_branch=outer_then, else_branch=branch("Neg", "n2")),
             helper.make_node("Gemm", ["y", "W"], ["z"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(w, "W")])
    return B.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "if.onnx")


def test_nested_if_reading_the_outer_input_is_not_constant(tmp_path):
    res = compute_bounds(str(_if_model(tmp_path)))
    # The If depends on x through its branches: no bound (not L = 0 from a 'static' tensor).
    assert res.lipschitz is None and "'If'" in res.reason
    assert run_cli("bounds", str(tmp_path / "if.onnx"), "-q").exit_code == 0


def _bomb(path: Path, rows: int, row_shape=(8,), stored_rows: int | None = None, extra: bytes = b"") -> Path:
    """An .npz whose x.npy declares ``rows`` float32 rows of zeros (compressed: a zip bomb)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (rows, *row_shape)})
    stored = rows if stored_rows is None else stored_rows
    row_bytes = 4 * int(np.prod(row_shape))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            zeros = bytes(1 << 22)
            left = stored * row_bytes
            while left > 0:
                fh.write(zeros[: min(left, len(zeros))])
                left -= len(zeros)
        if extra:
            zf.writestr("junk.npy", extra)
    return path


def test_npz_zip_bomb_reads_only_the_rows_needed(tmp_path):
    p = _bomb(tmp_path / "bomb.npz", rows=(256 << 20) // 32)  # 256 MiB declared, ~0.3 MB on disk
    assert p.stat().st_size < 2 << 20
    tracemalloc.start()
    arrays, _ = safeio.read_npz(p, ("x", "y"), max_rows=4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    x, total = arrays["x"]
    assert x.shape == (4, 8) and total == (256 << 20) // 32
    assert peak < 8 << 20, peak  # np.load would inflate all 256 MiB


def test_npz_declaring_more_than_memory_is_a_clear_refusal(tmp_path, monkeypatch):
    # A header declaring 31 GB in an entry holding a few rows: refused before decompressing, as forged.
    forged = _bomb(tmp_path / "huge.npz", rows=31 * 10**9 // 32, stored_rows=16)
    with pytest.raises(DataError, match="zip entry holds"):
        safeio.read_npz(forged, ("x",), max_rows=3)
    rng = np.random.default_rng(0)
    model = B.save(B.linear_model(rng.standard_normal((3, 8)), np.zeros(3)), tmp_path / "lin.onnx")
    line = assert_one_line_error(run_cli("attack", str(model), "--data", str(forged), "-q"), "31 GB", "huge.npz")
    assert "memory" not in line and "max-batch" not in line
    # A consistent entry (256 MiB of zeros, a real bomb) larger than the memory available: refused
    # naming --samples when every row is asked for; the first rows are still readable.
    bomb = _bomb(tmp_path / "bomb.npz", rows=(256 << 20) // 32)
    monkeypatch.setenv("FIMAUDIT_MEMORY_LIMIT", "64M")
    with pytest.raises(ResourceError, match="--samples"):
        safeio.read_npz(bomb, ("x",), max_rows=None)
    assert safeio.read_npz(bomb, ("x",), max_rows=3)[0]["x"][0].shape == (3, 8)
    line = assert_one_line_error(run_cli("attack", str(model), "--data", str(bomb), "-q"), "--samples", "memory")
    assert "max-batch" not in line


def test_npy_header_lies_and_pickles(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="Python objects"):
        safeio.read_npy(p, None)
    q = tmp_path / "neg.npy"
    for shape in (b"(-4, 8)", b"(4, 8"):  # a negative size; a header that does not parse
        body = b"{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + b", }"
        body += b" " * (63 - len(body) - 10) + b"\n"
        q.write_bytes(b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + bytes(8))
        with pytest.raises(DataError):
            safeio.read_npy(q, None)
    f = tmp_path / "f.npy"
    a = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(6, 4))
    np.save(f, a)
    got, total = safeio.read_npy(f, 2)
    assert total == 6 and np.array_equal(got, a[:2])


def test_model_guards(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    m = B.linear_model(rng.standard_normal((3, 8)), np.zeros(3))
    p = B.save(m, tmp_path / "lin.onnx")
    monkeypatch.setenv("FIMAUDIT_MEMORY_LIMIT", "64")
    assert_one_line_error(run_cli("scan", str(p), "-q"), "memory", "lin.onnx")
    monkeypatch.delenv("FIMAUDIT_MEMORY_LIMIT")
    # A weight declaring a huge shape but holding 96 bytes; and one declaring 10^12 elements externally.
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    bad.graph.initializer[0].dims[0] = 10**9
    assert_one_line_error(run_cli("scan", str(B.save(bad, tmp_path / "short.onnx")), "-q"), "declares shape", "holds")
    with pytest.raises(ModelLoadError, match="negative"):
        t = numpy_helper.from_array(np.zeros(3, np.float32), "t")
        t.dims[0] = -3
        guards.check_declared_tensors([t], p)
    t = numpy_helper.from_array(np.zeros(3, np.float32), "t")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.dims[0] = 10**12
    e = t.external_data.add()
    e.key, e.value = "location", "w.bin"
    with pytest.raises(ResourceError, match="declared"):
        guards.check_declared_tensors([t], p)


def test_fifo_as_model_or_external_data(tmp_path):
    import os

    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    assert_one_line_error(run_cli("scan", str(fifo), "-q"), "not a regular file")


# ---------------------------------------------------------------- atomic writes and the run guard
def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"

    def boom(fh):
        fh.write("partial")
        raise Interrupted(signal.SIGTERM)

    with pytest.raises(Interrupted):
        write_atomic(target, boom)
    assert list(tmp_path.iterdir()) == []
    write_atomic(target, lambda fh: fh.write("{}"))
    assert target.read_text() == "{}" and [f.name for f in tmp_path.iterdir()] == ["out.json"]


def test_guarded_run_maps_signals_and_timeout():
    with pytest.raises(Interrupted) as info:
        with guarded_run():
            signal.raise_signal(signal.SIGTERM)
            time.sleep(5)
    assert info.value.exit_code == 143
    with pytest.raises(Interrupted) as info:
        with guarded_run():
            signal.raise_signal(signal.SIGINT)
            time.sleep(5)
    assert info.value.exit_code == 130
    t0 = time.monotonic()
    with pytest.raises(RunTimeout):
        with guarded_run(timeout=0.2):
            while time.monotonic() - t0 < 10:
                pass
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


# ---------------------------------------------------------------- determinism
def _mlp(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(5)
    w1, b1, w2, b2 = B.random_mlp(rng, 24, 16, 5, gain=2.0)
    model = B.save(B.mlp_model(w1, b1, w2, b2), tmp_path / "mlp.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.uniform(0, 1, (6, 24)).astype(np.float32), y=rng.integers(0, 5, 6))
    return model, data


def _without_timing(text: str) -> str:
    rep = __import__("json").loads(text)
    assert isinstance(rep.pop("timing"), dict)
    assert "seconds" not in rep.get("summary", {})
    return __import__("json").dumps(rep, indent=2)


@pytest.mark.parametrize("cmd", [
    ["scan", "--method", "sketch", "--budget", "40", "--dither", "0.01"],
    ["attack", "--attack", "pgd", "--budget", "30", "--steps", "3", "--eps", "0.05"],
    ["certify", "--sigma", "0.25", "--n0", "10", "--n", "200"],
    ["metrics", "--no-corruptions"],
])
def test_same_seed_same_json_apart_from_timing(tmp_path, cmd):
    model, data = _mlp(tmp_path)
    texts = []
    for k in range(2):
        out = tmp_path / f"r{k}.json"
        res = run_cli(cmd[0], str(model), "--data", str(data), *cmd[1:], "--seed", "7", "--json", str(out), "-q")
        assert res.exit_code == 0, res.stderr
        texts.append(out.read_text())
    assert texts[0] != texts[1]  # the timing differs ...
    assert _without_timing(texts[0]) == _without_timing(texts[1])  # ... and nothing else does
    other = tmp_path / "other.json"
    run_cli(cmd[0], str(model), "--data", str(data), *cmd[1:], "--seed", "8", "--json", str(other), "-q")
    assert _without_timing(other.read_text()) != _without_timing(texts[0])  # the seed matters


@pytest.mark.parametrize("method", ["exact", "sketch"])
def test_results_do_not_depend_on_max_batch(tmp_path, method):
    import json

    model, data = _mlp(tmp_path)
    reps = []
    for mb in ("1", "7", "256"):
        out = tmp_path / f"mb{mb}.json"
        res = run_cli("scan", str(model), "--data", str(data), "--method", method, "--budget", "60",
                      "--max-batch", mb, "--json", str(out), "-q", "--gradients", "fd")
        assert res.exit_code == 0, res.stderr
        reps.append(json.loads(out.read_text()))
    for rep in reps[1:]:
        assert rep["config"]["max_batch"] != reps[0]["config"]["max_batch"]
        for a, b in zip(reps[0]["samples"], rep["samples"]):
            for key in ("lambda_max", "trace", "lower_estimate"):
                assert abs(b[key] - a[key]) <= 1e-6 * abs(a[key]), (key, a[key], b[key])


# ---------------------------------------------------------------- interruption and --timeout
# Runs the CLI in a child process; a marker line on stdout says the first sample's estimate has
# started, so the signal lands mid-run without any sleeping.
_CHILD = """
import sys
import fimaudit.scan
s = sys.modules["fimaudit.scan"]  # the package re-exports a function named scan
real = s._estimate
def marked(*a, **k):
    if not getattr(marked, "done", False):
        marked.done = True
        print("MARK", flush=True)
    return real(*a, **k)
s._estimate = marked
from fimaudit.cli import main
sys.argv = ["fimaudit"] + sys.argv[1:]
main()
"""


def _long_scan(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    w1, b1, w2, b2 = B.random_mlp(rng, 64, 32, 5)
    model = B.save(B.mlp_model(w1, b1, w2, b2), tmp_path / "m.onnx")
    data = tmp_path / "d.npz"
    # 20 000 samples x 129 queries: minutes of work; the run is signalled after its first sample.
    np.savez(data, x=rng.uniform(0, 1, (20000, 64)).astype(np.float32))
    return model, data


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_scan_exits_cleanly(tmp_path, sig, code):
    import os
    import subprocess
    import sys

    model, data = _long_scan(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    args = [sys.executable, "-c", _CHILD, "scan", str(model), "--data", str(data), "--samples", "20000",
            "--method", "exact", "--budget", "200", "--json", str(out / "r.json"), "--report", str(out / "r.html"),
            "--save-direction", str(out / "dir.npy"), "-q", "--gradients", "fd"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "MARK"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"fimaudit: interrupted by {sig.name}; no report was written", lines
    assert list(out.iterdir()) == []  # no report, no direction file, no temporary file


def test_timeout_stops_the_run(tmp_path):
    model, data = _long_scan(tmp_path)
    out = tmp_path / "r.json"
    res = run_cli("scan", str(model), "--data", str(data), "--samples", "20000", "--method", "exact",
                  "--budget", "200", "--timeout", "1", "--json", str(out), "-q")
    line = assert_one_line_error(res, "--timeout 1 s")
    assert "no report" in line and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx"]
    res = run_cli("bounds", str(model), "--timeout", "600", "-q")  # a run that fits is unaffected
    assert res.exit_code == 0, res.stderr
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


# ---------------------------------------------------------------- crashes found by bench/fuzz.py
def test_labels_beyond_the_classes_refused_by_every_command(tmp_path):
    rng = np.random.default_rng(0)
    model = B.save(B.linear_model(rng.standard_normal((3, 8)), np.zeros(3)), tmp_path / "lin.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.uniform(size=(4, 8)).astype(np.float32), y=np.array([0, 1, 10**9, 2]))
    for cmd in (["metrics", "--no-corruptions"], ["attack", "--attack", "fgsm", "--budget", "20"],
                ["attack", "--output-kind", "logits", "--budget", "20"], ["scan", "--budget", "40"]):
        assert_one_line_error(run_cli(cmd[0], str(model), "--data", str(data), *cmd[1:], "-q"), "3 classes")


@pytest.mark.parametrize("value", ["1/0", "0/0", "inf"])
def test_fraction_with_zero_denominator(tmp_path, value):
    rng = np.random.default_rng(0)
    model = B.save(B.linear_model(rng.standard_normal((3, 8)), np.zeros(3)), tmp_path / "lin.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.uniform(size=(4, 8)).astype(np.float32), y=np.array([0, 1, 2, 2]))
    assert_one_line_error(run_cli("clever", str(model), "--data", str(data), "--scale", value, "-q"), "--scale")
    assert_one_line_error(run_cli("attack", str(model), "--data", str(data), "--std", value, "-q"), "--std")


def test_batchnorm_with_negative_or_nan_variance(tmp_path):
    rng = np.random.default_rng(0)
    m = B.conv_model(rng.standard_normal((2, 1, 3, 3)), np.zeros(2), rng.standard_normal((3, 2 * 16)), np.zeros(3),
                     (1, 4, 4))
    g = m.graph
    g.node[1].input[0] = "bn"
    g.node.insert(1, helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["bn"]))
    for name, val in (("g", [1.0, 1.0]), ("be", [0.0, 0.0]), ("mu", [0.0, 0.0]), ("var", [-4.0, np.nan])):
        g.initializer.append(numpy_helper.from_array(np.array(val, np.float32), name))
    res = compute_bounds(str(B.save(m, tmp_path / "bn.onnx")))
    assert res.lipschitz is None and res.reason


def test_huge_fixed_batch_refused_before_any_query(tmp_path):
    rng = np.random.default_rng(0)
    model = B.save(B.linear_model(rng.standard_normal((3, 8)), np.zeros(3), batch=2**31 - 1), tmp_path / "m.onnx")
    assert_one_line_error(run_cli("scan", str(model), "-q"), "fixed batch of 2147483647", "memory")


def test_overflowing_data_is_one_line_without_numpy_warnings(tmp_path):
    rng = np.random.default_rng(0)
    model = B.save(B.linear_model(rng.standard_normal((3, 8)), np.zeros(3)), tmp_path / "m.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.full((4, 8), 1e300), y=np.array([0, 1, 2, 0]))  # float64 -> float32 overflows to inf
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # what a plain python process would print to stderr
        assert_one_line_error(run_cli("attack", str(model), "--data", str(data), "-q"))
    assert not [w for w in seen if issubclass(w.category, RuntimeWarning)]


def test_image_bomb_in_a_folder_is_one_line_and_the_pixel_limit_stays_on(tmp_path):
    import struct
    import zlib

    from PIL import Image

    import fimaudit.images  # noqa: F401 - importing fimaudit must not lift Pillow's limit

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 2 * 89_478_485

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    folder = tmp_path / "imgs"
    folder.mkdir()
    # 100 000 x 100 000 pixels declared in a 70-byte file.
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10**5, 10**5, 8, 0, 0, 0, 0))
                                   + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    model = _conv(tmp_path, "m.onnx")
    tracemalloc.start()
    res = run_cli("scan", str(model), "--data", str(folder), "-q")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert_one_line_error(res, "a.png", "decompression-bomb")
    assert peak < 64 << 20


def test_negative_seed_is_a_clean_refusal(tmp_path):
    model, data = _mlp(tmp_path)
    for cmd in (["metrics", "--no-corruptions"], ["scan", "--budget", "60"], ["certify", "--sigma", "0.2", "--n", "50"]):
        assert_one_line_error(run_cli(cmd[0], str(model), "--data", str(data), *cmd[1:], "--seed", "-1", "-q"),
                              "--seed")
