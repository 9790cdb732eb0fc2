"""Every bad input gets one clear line on stderr, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from fimaudit.cli import app

from . import builders as B

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def assert_one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fimaudit: error: ")
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


@pytest.fixture()
def linear(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 8))
    b = rng.standard_normal(3)
    path = B.save(B.linear_model(w, b, sample_shape=(2, 2, 2)), tmp_path / "lin.onnx")
    return path


def _simple_graph(nodes, inputs, outputs, inits=(), opsets=(("", 17),), ir=8):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = ir
    return m


def test_missing_file(tmp_path):
    assert_one_line_error(run_cli("scan", str(tmp_path / "nope.onnx"), "-q"), "not found")


def test_not_onnx(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"this is not a protobuf \x00\xff\xfe garbage" * 10)
    assert_one_line_error(run_cli("scan", str(p), "-q"), "not a readable onnx model")


def test_empty_file(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"")
    assert_one_line_error(run_cli("scan", str(p), "-q"), "empty")


def test_truncated(linear, tmp_path):
    raw = linear.read_bytes()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(raw[: len(raw) // 2])
    assert_one_line_error(run_cli("scan", str(p), "-q"))


def test_ir_version_too_new_is_patched(linear, tmp_path):
    m = onnx.load(str(linear))
    m.ir_version = 99
    p = tmp_path / "new_ir.onnx"
    onnx.save(m, str(p))
    res = run_cli("scan", str(p), "-q", "--samples", "2", "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.stderr
    import json

    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert any("IR version patched from 99" in n for n in notes)


def test_ir_version_needed_by_opset_is_explained(tmp_path):
    # Opset 99 does not exist anywhere: onnxruntime refuses IR 99 and patching cannot help.
    m = _simple_graph(
        [helper.make_node("Relu", ["x"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
        opsets=(("", 99),),
        ir=99,
    )
    p = tmp_path / "future.onnx"
    onnx.save(m, str(p))
    assert_one_line_error(run_cli("scan", str(p), "-q"))


def _external_weight_model(tmp_path, location: str) -> Path:
    """A MatMul model whose weight points at external data ``location``; a secret file lies beside its folder."""
    (tmp_path / "secret.bin").write_bytes(np.ones(24, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    w = numpy_helper.from_array(np.ones((3, 8), np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "96")):
        e = w.external_data.add()
        e.key, e.value = k, v
    m = _simple_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8])],
        [w],
    )
    p = folder / "m.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def test_external_data_outside_folder_refused(tmp_path):
    p = _external_weight_model(tmp_path, "../secret.bin")
    assert_one_line_error(run_cli("scan", str(p), "-q"), "outside the model's folder")
    p = _external_weight_model(tmp_path, str(tmp_path / "secret.bin"))
    assert_one_line_error(run_cli("scan", str(p), "-q"), "absolute path")


def test_external_data_symlink_escape_refused(tmp_path):
    (tmp_path / "model").mkdir()
    os.symlink(tmp_path / "secret.bin", tmp_path / "model" / "w.bin")
    p = _external_weight_model(tmp_path, "w.bin")
    assert_one_line_error(run_cli("scan", str(p), "-q"), "outside the model's folder")


def test_external_data_inside_folder_works(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 8)).astype(np.float32)
    m = B.linear_model(w, np.zeros(3), sample_shape=(8,))
    m.ir_version = 8
    folder = tmp_path / "ok"
    folder.mkdir()
    onnx.save(m, str(folder / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    res = run_cli("scan", str(folder / "m.onnx"), "-q", "--samples", "2")
    assert res.exit_code == 0, res.stderr


def test_custom_op(tmp_path):
    m = _simple_graph(
        [helper.make_node("FancyOp", ["x"], ["z"], domain="vendor.ops")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
        opsets=(("", 17), ("vendor.ops", 1)),
    )
    p = tmp_path / "c.onnx"
    onnx.save(m, str(p))
    assert_one_line_error(run_cli("scan", str(p), "-q"), "vendor.ops:FancyOp")


def test_unknown_standard_op(tmp_path):
    m = _simple_graph(
        [helper.make_node("NotARealOp", ["x"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
    )
    p = tmp_path / "u.onnx"
    onnx.save(m, str(p))
    assert_one_line_error(run_cli("scan", str(p), "-q"), "NotARealOp")


def test_integer_input(tmp_path):
    emb = numpy_helper.from_array(np.ones((10, 4), np.float32), "E")
    m = _simple_graph(
        [helper.make_node("Gather", ["E", "ids"], ["z"])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
        [emb],
    )
    p = tmp_path / "tok.onnx"
    onnx.save(m, str(p))
    assert_one_line_error(run_cli("scan", str(p), "-q"), "continuous", "int64")


def _two_input_model(tmp_path):
    m = _simple_graph(
        [helper.make_node("Add", ["a", "b"], ["z"])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
    )
    p = tmp_path / "two.onnx"
    onnx.save(m, str(p))
    return p


def test_several_inputs_listed(tmp_path):
    p = _two_input_model(tmp_path)
    assert_one_line_error(run_cli("scan", str(p), "-q"), "--input", "a, b")
    assert_one_line_error(run_cli("scan", str(p), "-q", "--input", "zz"), "no input named 'zz'")
    # choosing one is not enough when the other is still required
    assert_one_line_error(run_cli("scan", str(p), "-q", "--input", "a"), "more inputs")


def test_sequence_output_rejected(tmp_path):
    m = _simple_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["s"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, ["N", 3])],
    )
    p = tmp_path / "seq.onnx"
    onnx.save(m, str(p))
    assert_one_line_error(run_cli("scan", str(p), "-q"), "not a tensor")
    assert_one_line_error(run_cli("scan", str(p), "-q", "--output", "s"), "not a tensor")


def test_several_outputs(tmp_path):
    m = _simple_graph(
        [helper.make_node("Relu", ["x"], ["z1"]), helper.make_node("Sigmoid", ["x"], ["z2"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("z1", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("z2", TensorProto.FLOAT, ["N", 3])],
    )
    p = tmp_path / "two_out.onnx"
    onnx.save(m, str(p))
    assert_one_line_error(run_cli("scan", str(p), "-q"), "--output", "z1, z2")
    res = run_cli("scan", str(p), "-q", "--output", "z2", "--samples", "2")
    assert res.exit_code == 0, res.stderr


def test_nan_outputs(tmp_path):
    m = _simple_graph(
        [helper.make_node("Log", ["x"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
    )
    p = tmp_path / "nan.onnx"
    onnx.save(m, str(p))
    assert_one_line_error(run_cli("scan", str(p), "-q", "--input-range", "-2,-1"), "NaN")


def test_dynamic_spatial_shape_needs_input_shape(tmp_path):
    k = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32) * 0.1, "K")
    m = _simple_graph(
        [helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["g"]),
         helper.make_node("Flatten", ["g"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2])],
        [k],
    )
    p = tmp_path / "dyn.onnx"
    onnx.save(m, str(p))
    assert_one_line_error(run_cli("scan", str(p), "-q"), "--input-shape")
    assert_one_line_error(run_cli("scan", str(p), "-q", "--input-shape", "1,abc"), "--input-shape")
    assert_one_line_error(run_cli("scan", str(p), "-q", "--input-shape", "3,8,8"), "contradicts")
    res = run_cli("scan", str(p), "-q", "--input-shape", "1,6,6", "--samples", "2")
    assert res.exit_code == 0, res.stderr


def test_fixed_batch_of_one_is_split(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 6))
    b = rng.standard_normal(3)
    p = B.save(B.linear_model(w, b, batch=1), tmp_path / "b1.onnx")
    x = rng.uniform(size=(3, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    import fimaudit

    res = fimaudit.scan(p, tmp_path / "d.npz", method="exact")
    for s, xi in zip(res.samples, x):
        assert s.lambda_max == pytest.approx(B.lam_max(B.linear_reference(w, b, xi)), rel=1e-4)


# ------------------------------------------------------------------------------ data
def test_data_wrong_shape(linear, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 3), np.float32))
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--data", str(tmp_path / "bad.npy")), "shape")


def test_data_wrong_dtype(linear, tmp_path):
    np.save(tmp_path / "bad.npy", np.array([["a"] * 8] * 2))
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--data", str(tmp_path / "bad.npy")), "dtype")


def test_data_object_array_not_unpickled(linear, tmp_path):
    arr = np.empty(2, dtype=object)
    arr[:] = [1, 2]
    np.save(tmp_path / "obj.npy", arr, allow_pickle=True)
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--data", str(tmp_path / "obj.npy")), "objects")


def test_data_npz_without_x(linear, tmp_path):
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 2, 2, 2)))
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--data", str(tmp_path / "nox.npz")), "no array 'x'")


def test_data_missing_and_wrong_suffix(linear, tmp_path):
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--data", str(tmp_path / "none.npz")), "not found")
    (tmp_path / "d.csv").write_text("1,2,3")
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--data", str(tmp_path / "d.csv")), ".npy or .npz")


def test_data_nan_and_bad_labels(linear, tmp_path):
    x = np.zeros((2, 2, 2, 2), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--data", str(tmp_path / "nan.npz")), "NaN")
    np.savez(tmp_path / "lab.npz", x=np.zeros((2, 2, 2, 2), np.float32), y=np.array([0.5, 1.0]))
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--data", str(tmp_path / "lab.npz")), "labels")
    np.savez(tmp_path / "lab2.npz", x=np.zeros((2, 2, 2, 2), np.float32), y=np.array([0, 7]))
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--data", str(tmp_path / "lab2.npz")), "classes")


def test_corrupt_npz(linear, tmp_path):
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04garbage")
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--data", str(tmp_path / "c.npz")), "c.npz")


def test_bad_options(linear, tmp_path):
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--method", "magic"), "--method")
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--scale", "abc"), "--scale")
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--mean", "0.1,0.2,0.3"), "channels")
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--input-range", "1,0"), "--input-range")
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--budget", "3"), "--budget")
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--method", "exact", "--budget", "10", "--gradients", "fd"),
                          "2d+1")  # the graph's exact needs no 2d+1 (tests/test_exact_source.py)
    assert_one_line_error(run_cli("scan", str(linear), "-q", "--output-kind", "probabilities"), "probabilities")


def test_error_leaves_no_half_written_report(linear, tmp_path, monkeypatch):
    """The disk fills up in the middle of writing the report: the old report stays, no partial file appears."""
    import errno

    import fimaudit.runtime_guard as rg

    out = tmp_path / "report.json"
    out.write_text("previous report\n")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, text):
            self.fh.write(text[: len(text) // 2])  # half of it reaches the file, then the disk is full
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
            return False

    monkeypatch.setattr(rg.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    written = []
    real_replace = rg.os.replace
    monkeypatch.setattr(rg.os, "replace", lambda src, dst: (written.append(dst), real_replace(src, dst)))
    line = assert_one_line_error(run_cli("scan", str(linear), "-q", "--samples", "2", "--json", str(out)),
                                 "No space left")
    assert "report.json" in line
    assert out.read_text() == "previous report\n"  # untouched, not truncated or half-replaced
    assert sorted(f.name for f in tmp_path.iterdir()) == ["lin.onnx", "report.json"]  # no temporary left over
    assert written == []
