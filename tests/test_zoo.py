"""The shipped sample models through fimaudit: its loader hashes them, its preprocessing and engine reproduce\nthe recorded accuracies, its scan detects the recorded output kinds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fimaudit
from fimaudit.data import Preprocess, load_data
from fimaudit.model import load_model

ZOO = Path(__file__).resolve().parent.parent / "sample_models"
MANIFEST = json.loads((ZOO / "manifest.json").read_text())["models"]


# (The manifest's coverage and the shipped data's balance are properties of the fixtures, not of fimaudit: the
# tests that checked only them are gone; every test here runs fimaudit's own loader, preprocessing or scan.)


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_fimaudit_loads_hashes_and_reproduces_the_recorded_accuracy(entry):
    """fimaudit's loader (hash, shape, batch axis), data reader, preprocessing and engine give the recorded accuracy."""
    model = load_model(ZOO / entry["file"])
    assert model.info.sha256 == entry["sha256"]
    assert list(model.sample_shape) == entry["input_shape"]
    assert model.info.fixed_batch is None  # the shipped models have a symbolic batch axis
    pp = entry["preprocess"]
    data = load_data(ZOO / entry["data"], model.sample_shape)
    u = Preprocess(pp["scale"], (pp["mean"],), (pp["std"],)).apply(data.x, model.sample_shape)
    acc = float(np.mean(model.run(u).argmax(1) == data.y))
    assert abs(acc - entry["accuracy"]) <= 0.005


def test_output_kinds_are_detected_as_recorded():
    for entry in MANIFEST:
        pp = entry["preprocess"]
        res = fimaudit.scan(
            ZOO / entry["file"], ZOO / entry["data"], samples=2, budget=10, method="sketch",
            scale=pp["scale"], mean=(pp["mean"],), std=(pp["std"],),
        )
        assert res.model["output"]["kind"] == entry["output_kind"], entry["name"]
