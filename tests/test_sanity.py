"""Wrong preprocessing is said in every command and the API; float noise at --input-range is clipped, not refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fimaudit

from .test_bad_input import assert_one_line_error, run_cli

ZOO = Path(__file__).resolve().parent.parent / "sample_models"
MODEL, DATA = ZOO / "vgg_small.onnx", ZOO / "fmnist_test_1000_28.npz"
RIGHT = ("--scale", "1/255", "--mean", "0.286", "--std", "0.353")
WRONG = ("--scale", "1/255")  # the README's usage line without --mean/--std: the model sees unnormalised pixels
SAY = "preprocessing looks wrong"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


COMMANDS = {
    "scan": ["--samples", "12", "--no-bounds"],
    "attack": ["--samples", "12", "--attack", "square", "--budget", "40"],
    "metrics": ["--samples", "12", "--no-corruptions"],
    "clever": ["--samples", "5", "--points", "20", "--seeds", "1"],
    "certify": ["--samples", "6", "--sigma", "0.25", "--n0", "10", "--n", "50"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_says_when_preprocessing_is_wrong(command, tmp_path):
    wrong = run_cli(command, str(MODEL), "--data", str(DATA), *WRONG, *COMMANDS[command], "-q",
                    "--json", str(tmp_path / "w.json"))
    assert wrong.exit_code == 0, wrong.stderr
    warnings = [line for line in wrong.stderr.splitlines() if SAY in line]
    assert len(warnings) == 1 and warnings[0].startswith("fimaudit: warning: ") and "--mean/--std" in warnings[0]
    assert any(SAY in n for n in _json(tmp_path / "w.json")["notes"])
    right = run_cli(command, str(MODEL), "--data", str(DATA), *RIGHT, *COMMANDS[command], "-q",
                    "--json", str(tmp_path / "r.json"))
    assert right.exit_code == 0 and SAY not in right.stderr
    assert not any(SAY in n for n in _json(tmp_path / "r.json")["notes"])


def test_the_python_api_says_so_too(capsys):
    res = fimaudit.scan(MODEL, DATA, scale=1 / 255, samples=12, bounds=False)
    assert any(SAY in n for n in res.notes)
    assert SAY in capsys.readouterr().err


def test_compare_names_the_model_with_wrong_preprocessing(tmp_path):
    res = run_cli("compare", str(MODEL), str(ZOO / "vgg_deep.onnx"), "--data", str(DATA), *WRONG, "--samples", "10",
                  "--no-metrics", "--budget", "60", "--clever-samples", "1", "--clever-points", "20", "-q",
                  "--json", str(tmp_path / "c.json"))
    assert res.exit_code == 0, res.stderr
    rows = {r["model"]: r for r in _json(tmp_path / "c.json")["rows"]}
    # unnormalised pixels: vgg_small predicts one class (0% accuracy), vgg_deep still gets 40% (above 1.5x chance)
    assert rows["vgg_small"]["preprocessing_sane"] is False and SAY in rows["vgg_small"]["notes"][0]
    assert rows["vgg_deep"]["preprocessing_sane"] is True and rows["vgg_deep"]["notes"] == []
    assert res.stderr.count(SAY) == 1 and "vgg_small: " + SAY in res.stderr


def test_float_noise_outside_the_input_range_is_clipped_with_a_note(tmp_path):
    with np.load(DATA) as d:
        x, y = d["x"][:8].astype(np.float32) / 255, d["y"][:8]
    x[0, 0, 0, 0] = -1.9e-9  # what a stored float dataset carries
    np.savez(tmp_path / "noisy.npz", x=x, y=y)
    args = ["attack", str(MODEL), "--data", str(tmp_path / "noisy.npz"), "--mean", "0.286", "--std", "0.353",
            "--attack", "square", "--budget", "20", "-q", "--json", str(tmp_path / "a.json")]
    res = run_cli(*args)
    assert res.exit_code == 0, res.stderr
    assert any("clipped" in n and "1 input values" in n for n in _json(tmp_path / "a.json")["notes"])
    x[0, 0, 0, 0] = -1e-3  # a real excursion: refused, with the data's range
    np.savez(tmp_path / "far.npz", x=x, y=y)
    args[3] = str(tmp_path / "far.npz")
    assert_one_line_error(run_cli(*args[:-3]), "[-0.001, ", "--input-range")


def test_the_python_api_takes_numbers_and_fractions_like_the_cli():
    base = fimaudit.scan(MODEL, DATA, scale=1 / 255, mean=(0.286,), std=(0.353,), samples=3, bounds=False)
    plain = fimaudit.scan(MODEL, DATA, scale="1/255", mean=0.286, std=0.353, samples=3, bounds=False)
    assert [s.lambda_max for s in plain.samples] == [s.lambda_max for s in base.samples]
    with pytest.raises(fimaudit.FimauditError, match="scale"):
        fimaudit.scan(MODEL, DATA, scale="one/255", samples=1)
