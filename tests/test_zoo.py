"""The shipped sample models: manifest entries load, hashes match, accuracies reproduce."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fimaudit
from fimaudit.model import load_model

ZOO = Path(__file__).resolve().parent.parent / "sample_models"
MANIFEST = json.loads((ZOO / "manifest.json").read_text())["models"]
FAMILIES = {"vgg", "resnet", "densenet", "transformer", "mlp"}


def test_manifest_covers_the_families_and_sizes():
    assert len(MANIFEST) >= 12
    assert {e["family"] for e in MANIFEST} == FAMILIES
    assert sum(1 for e in MANIFEST if e["input_shape"] == [1, 96, 96]) >= 3
    assert any(e["output_kind"] == "probabilities" for e in MANIFEST)
    assert any(e["training"]["adversarial_eps"] > 0 for e in MANIFEST)
    assert any(e["training"]["augmentation"] == "gaussian" for e in MANIFEST)
    total = sum(f.stat().st_size for f in ZOO.iterdir() if f.is_file())
    assert total <= 30 * 1024 * 1024


def test_shipped_data_is_balanced_uint8():
    for name in {e["data"] for e in MANIFEST}:
        with np.load(ZOO / name) as z:
            x, y = z["x"], z["y"]
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] == 1
        counts = np.bincount(y, minlength=10)
        assert counts.min() == counts.max()


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_model_loads_hash_and_accuracy(entry):
    path = ZOO / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    proto = onnx.load(str(path), load_external_data=False)
    assert proto.ir_version <= 10
    assert all(o.version <= 17 for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")  # symbolic batch
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with np.load(ZOO / entry["data"]) as z:
        x, y = z["x"], z["y"]
    pp = entry["preprocess"]
    u = (x.astype(np.float32) * np.float32(pp["scale"]) - np.float32(pp["mean"])) / np.float32(pp["std"])
    out = sess.run(None, {sess.get_inputs()[0].name: u})[0]
    acc = float(np.mean(out.argmax(1) == y))
    assert abs(acc - entry["accuracy"]) <= 0.005
    model = load_model(path)
    assert list(model.sample_shape) == entry["input_shape"]


def test_output_kinds_are_detected_as_recorded():
    for entry in MANIFEST:
        pp = entry["preprocess"]
        res = fimaudit.scan(
            ZOO / entry["file"], ZOO / entry["data"], samples=2, budget=10, method="sketch",
            scale=pp["scale"], mean=(pp["mean"],), std=(pp["std"],),
        )
        assert res.model["output"]["kind"] == entry["output_kind"], entry["name"]
