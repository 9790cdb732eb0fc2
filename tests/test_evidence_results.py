"""attack, metrics, clever, compare: frozen results that save to JSON and re-render through ``fimaudit report``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fimaudit.cli import app
from fimaudit.results import EVIDENCE_KINDS, SCHEMA_VERSION, AttackResult

from . import builders as B

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evidence")
    rng = np.random.default_rng(2)
    params = B.random_mlp(rng, d=16, hidden=8, k=3, gain=2.0)
    a = B.save(B.mlp_model(*params, sample_shape=(1, 4, 4)), tmp / "a.onnx")
    b = B.save(B.mlp_model(*B.random_mlp(rng, d=16, hidden=8, k=3), sample_shape=(1, 4, 4)), tmp / "b.onnx")
    np.savez(tmp / "d.npz", x=rng.uniform(size=(6, 1, 4, 4)).astype(np.float32), y=rng.integers(0, 3, 6))
    return tmp, a, b, tmp / "d.npz"


COMMANDS = {
    "attack": lambda a, b, d: ["attack", a, "--data", d, "--eps", "0.05,0.1", "--budget", "60", "--samples", "4"],
    "metrics": lambda a, b, d: ["metrics", a, "--data", d, "--samples", "6", "--no-corruptions"],
    "clever": lambda a, b, d: ["clever", a, "--data", d, "--samples", "2", "--points", "20", "--seeds", "1"],
    "compare": lambda a, b, d: ["compare", a, b, "--data", d, "--samples", "3", "--budget", "40", "--no-metrics",
                                "--clever-samples", "1", "--clever-points", "10"],
}


TEXT_NEEDLE = {"attack": "clean accuracy", "clever": "median score", "compare": "Models", "metrics": "precision_macro"}


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_saved_result_rerenders_in_every_format(setup, kind):
    tmp, a, b, d = setup
    saved = tmp / f"{kind}.json"
    res = runner.invoke(app, [*map(str, COMMANDS[kind](a, b, d)), "--json", str(saved), "-q"])
    assert res.exit_code == 0, res.stderr
    raw = json.loads(saved.read_text())
    assert raw["kind"] == kind and raw["schema_version"] == SCHEMA_VERSION
    result = EVIDENCE_KINDS[kind].from_dict(raw)
    assert result.to_dict() == raw
    again = runner.invoke(app, ["report", str(saved), "--format", "json"])
    assert again.exit_code == 0 and json.loads(again.stdout) == raw
    # each format must show this kind's own content (the text needle is one only the kind's renderer writes)
    for fmt, needle in (("text", TEXT_NEEDLE[kind]), ("markdown", "| "), ("html", "<table>")):
        out = runner.invoke(app, ["report", str(saved), "--format", fmt])
        assert out.exit_code == 0 and needle in out.stdout and len(out.stdout) > 50, (fmt, out.stderr)


def test_results_are_frozen_and_refuse_other_kinds(setup):
    tmp, a, b, d = setup
    res = runner.invoke(app, [*map(str, COMMANDS["attack"](a, b, d)), "--json", str(tmp / "frozen.json"), "-q"])
    assert res.exit_code == 0, res.stderr
    raw = json.loads((tmp / "frozen.json").read_text())
    r = AttackResult.from_dict(raw)
    with pytest.raises(TypeError):
        r.body["results"] = []  # read-only view
    with pytest.raises(ValueError):
        EVIDENCE_KINDS["clever"].from_dict(raw)
    with pytest.raises(ValueError):
        AttackResult.from_dict({**raw, "schema_version": "3.0"})
    bad = runner.invoke(app, ["report", str(tmp / "frozen.json"), "--format", "junit"])
    assert bad.exit_code == 2 and "junit" in bad.stderr
