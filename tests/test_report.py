"""Every command's saved JSON re-renders with ``fimaudit report`` to exactly the text the command printed.

One small MLP (gradient graph, labels) runs each command through the CLI with ``--json FILE``; ``fimaudit report
FILE`` must print the same characters, and ``--format json`` the same JSON. Each kind also shows a line only its own
renderer writes, so an empty or shared renderer cannot pass. Saved files of schema 1.x (scan and bounds without
``kind``) are still read.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fimaudit.cli import app
from fimaudit.report import RENDERERS, render
from fimaudit.results import KINDS, SCHEMA_VERSION, BoundResult, ScanResult, dumps, kind_of, load

from . import builders as B

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(5)
    a = B.save(B.mlp_model(*B.random_mlp(rng, d=16, hidden=8, k=3, gain=2.0), sample_shape=(1, 4, 4)), tmp / "a.onnx")
    b = B.save(B.mlp_model(*B.random_mlp(rng, d=16, hidden=8, k=3), sample_shape=(1, 4, 4)), tmp / "b.onnx")
    np.savez(tmp / "d.npz", x=rng.uniform(size=(6, 1, 4, 4)).astype(np.float32), y=rng.integers(0, 3, 6))
    return tmp, str(a), str(b), str(tmp / "d.npz")


# (command line, a line that only this kind's text shows: the renderer, not the CLI, must write it)
COMMANDS = {
    "scan": (lambda a, b, d: ["scan", a, "--data", d, "--samples", "3", "--budget", "40"], "Input-space Fisher"),
    "bounds": (lambda a, b, d: ["bounds", a, "--ops", "--domain", "0,1"], "bound over the input box"),
    # white-box: Square runs beside it (the sanity line) and --min-distance adds the smallest distances found
    "attack": (lambda a, b, d: ["attack", a, "--data", d, "--attack", "apgd", "--eps", "0.05", "--steps", "5",
                                "--samples", "3", "--min-distance"], "smallest adversarial"),
    "clever": (lambda a, b, d: ["clever", a, "--data", d, "--samples", "2", "--points", "20", "--seeds", "1"],
               "median score"),
    "metrics": (lambda a, b, d: ["metrics", a, "--data", d, "--samples", "6", "--no-corruptions"], "precision_macro"),
    "compare": (lambda a, b, d: ["compare", a, b, "--data", d, "--samples", "3", "--budget", "40", "--no-metrics",
                                 "--clever-samples", "1", "--clever-points", "10"], "Models"),
    "certify": (lambda a, b, d: ["certify", a, "--data", d, "--samples", "3", "--sigma", "0.25", "--n", "200",
                                 "--n0", "20"], "Certified L2 robustness"),
    "verify": (lambda a, b, d: ["verify", a, "--data", d, "--samples", "3", "--eps", "0.01", "--no-bisect"],
               "Verified robustness"),
    "audit": (lambda a, b, d: ["audit", a, "--data", d, "--samples", "3", "--budget", "40"], "fimaudit audit of"),
}


def test_every_kind_is_run_here_and_renders_text_and_json():
    assert sorted(COMMANDS) == sorted(KINDS)
    for kind in KINDS:
        assert {(kind, "text"), (kind, "json")} <= set(RENDERERS), kind


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_report_prints_exactly_what_the_command_printed(setup, kind):
    tmp, a, b, d = setup
    argv, needle = COMMANDS[kind]
    saved = tmp / f"{kind}.json"
    res = runner.invoke(app, [*argv(a, b, d), "--json", str(saved)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    assert needle in res.stdout, res.stdout
    raw = json.loads(saved.read_text())
    assert raw["kind"] == kind and raw["schema_version"] == SCHEMA_VERSION
    again = runner.invoke(app, ["report", str(saved)], catch_exceptions=False)
    assert again.exit_code == 0, again.stderr
    assert again.stdout == res.stdout
    as_json = runner.invoke(app, ["report", str(saved), "--format", "json"], catch_exceptions=False)
    assert as_json.exit_code == 0 and as_json.stdout == saved.read_text()


def test_attack_text_keeps_the_square_sanity_line(setup):
    """The white-box attack's Square run and the smallest distances are in the JSON and in the text it renders."""
    tmp, a, b, d = setup
    saved = tmp / "attack.json"
    if not saved.exists():
        argv, _ = COMMANDS["attack"]
        assert runner.invoke(app, [*argv(a, b, d), "--json", str(saved), "-q"]).exit_code == 0
    result = load(json.loads(saved.read_text()))
    text = render(result, "text")
    assert "black-box Square robust accuracy" in text and "smallest adversarial" in text
    assert result["results"][0]["sanity"] and result["minimal_distance"]


def test_quiet_prints_nothing_and_json_to_stdout_sends_the_text_to_stderr(setup):
    tmp, a, b, d = setup
    argv, needle = COMMANDS["bounds"]
    quiet = runner.invoke(app, [*argv(a, b, d), "-q"])
    assert quiet.exit_code == 0 and quiet.stdout == ""
    piped = runner.invoke(app, [*argv(a, b, d), "--json", "-"])
    assert piped.exit_code == 0 and json.loads(piped.stdout)["kind"] == "bounds" and needle in piped.stderr


def test_schema_1_files_without_kind_are_still_read(setup):
    """Scan and bounds wrote no ``kind`` before schema 2.0: their kind is told by their fields and they re-render."""
    tmp, a, b, d = setup
    for kind, cls in (("scan", ScanResult), ("bounds", BoundResult)):
        saved = tmp / f"{kind}.json"
        if not saved.exists():
            argv, _ = COMMANDS[kind]
            assert runner.invoke(app, [*argv(a, b, d), "--json", str(saved), "-q"]).exit_code == 0
        new = json.loads(saved.read_text())
        old = {k: v for k, v in new.items() if k != "kind"} | {"schema_version": "1.2" if kind == "scan" else "1.0"}
        assert kind_of(old) == kind and isinstance(load(old), cls)
        assert render(load(old), "text") == render(load(new), "text")
        assert json.loads(dumps(load(old))) == new  # read in the current form: written again as 2.0 with its kind
        old_file = tmp / f"old_{kind}.json"
        old_file.write_text(json.dumps(old))
        out = runner.invoke(app, ["report", str(old_file)])
        assert out.exit_code == 0 and out.stdout == render(load(new), "text")


@pytest.mark.parametrize("bad", [{"schema_version": "9.0"}, {"kind": "nonsense", "schema_version": "2.0"}])
def test_an_unreadable_file_is_one_line_and_exit_2(tmp_path, bad):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(bad))
    out = runner.invoke(app, ["report", str(f)])
    assert out.exit_code == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("fimaudit: error:")


def test_dumps_writes_nan_as_null_and_ends_with_a_newline():
    from fimaudit.results import Stats

    text = dumps(Stats.of([1.0, float("nan"), 3.0]).to_dict() | {"x": None})
    assert text.endswith("}\n") and "NaN" not in text and json.loads(text)["count"] == 2
