"""Shared options: every malformed value is one ``fimaudit: error:`` line and exit 2, in every command."""

from __future__ import annotations

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fimaudit.cli import GROUPS, OPTIONS, app

from . import builders as B

runner = CliRunner()

# One malformed value per shared option, with a word the error line must contain.
BAD = {
    "input_name": None,  # any name is well-formed; a missing one is the loader's error (test_bad_input)
    "output_name": None,
    "input_shape": ("a,b", "--input-shape"),
    "output_kind": ("softmaxish", "--output-kind"),
    "device": ("gpu", "--device"),
    "max_batch": ("0", "--max-batch"),
    "threads": ("-1", "--threads"),
    "data": None,  # a path; a bad file is test_bad_input's business
    "samples": ("0", "--samples"),
    "scale": ("abc", "--scale"),
    "mean": ("0.1,x", "--mean"),
    "std": ("y", "--std"),
    "input_range": ("1,0", "--input-range"),
    "preset": ("caffe", "--preset"),
    "layout": ("chw", "--layout"),
    "resize": ("crop", "--resize"),
    "channels": ("rbg", "--channels"),
    "classes": None,  # a path; a missing or empty file is test_images' business (one line, exit 2)
    "seed": ("one", "--seed"),
    "budget": ("many", "--budget"),
    "workers": ("0", "--workers"),
    "scheduler": (" ", "--scheduler"),
    "json": None,
    "timeout": ("-3", "--timeout"),
    "quiet": None,
}
NOT_INTEGERS = {"samples": "abc", "max_batch": "1.5", "threads": "x", "workers": "two"}  # typer's own parse errors

COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _takes(cmd: str) -> list[str]:
    return [p.name for p in COMMANDS[cmd].params if p.name in OPTIONS]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opts")
    rng = np.random.default_rng(0)
    path = B.save(B.linear_model(rng.standard_normal((3, 8)), rng.standard_normal(3), sample_shape=(2, 2, 2)),
                  tmp / "lin.onnx")
    np.savez(tmp / "d.npz", x=rng.uniform(size=(4, 2, 2, 2)).astype(np.float32), y=np.array([0, 1, 2, 0]))
    return path, tmp / "d.npz"


def _base(cmd: str, model, data) -> list[str]:
    models = [str(model), str(model)] if cmd == "compare" else [str(model)]
    extra = ["--data", str(data)] if "data" in _takes(cmd) else []
    quiet = ["-q"] if "quiet" in _takes(cmd) else []
    required = ["--sigma", "0.5"] if cmd == "certify" else []
    return [cmd, *models, *extra, *quiet, *required]


def assert_one_line(res, needle: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fimaudit: error: "), lines
    assert needle.lower() in lines[0].lower(), (needle, lines[0])
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr


def test_every_shared_option_has_a_bad_value_case():
    assert set(BAD) == set(OPTIONS), "add a malformed value for the new shared option to BAD"
    for names in GROUPS.values():
        assert set(names) <= set(OPTIONS)


def test_data_commands_take_every_data_option():
    data_opts = set(GROUPS["data"]) | set(GROUPS["run"]) | set(GROUPS["graph"])
    for cmd in ("scan", "attack", "clever", "compare"):
        assert data_opts <= set(_takes(cmd)), cmd
    assert data_opts - {"input_range"} <= set(_takes("metrics"))


def test_configs_take_every_shared_option():
    """Each data-taking command builds its config from every shared option it accepts, by field name."""
    from dataclasses import fields

    from fimaudit.audit import AuditConfig
    from fimaudit.evidence import AttackConfig
    from fimaudit.metrics.suite import MetricsConfig
    from fimaudit.scan import ScanConfig

    for cmd, cls in (("scan", ScanConfig), ("attack", AttackConfig), ("clever", AttackConfig),
                     ("metrics", MetricsConfig), ("audit", AuditConfig)):
        wanted = {n for n in _takes(cmd) if OPTIONS[n].config}
        assert wanted <= {f.name for f in fields(cls)}, (cmd, wanted - {f.name for f in fields(cls)})


CASES = [(cmd, name) for cmd in COMMANDS for name in _takes(cmd) if BAD.get(name)]


@pytest.mark.parametrize(("cmd", "name"), CASES, ids=[f"{c}-{n}" for c, n in CASES])
def test_malformed_shared_option_is_one_line(model, cmd, name):
    value, needle = BAD[name]
    flag = OPTIONS[name].flags[0]
    res = runner.invoke(app, _base(cmd, *model) + [flag, value], catch_exceptions=False)
    assert_one_line(res, needle)


INT_CASES = [(cmd, name) for cmd in COMMANDS for name in _takes(cmd) if name in NOT_INTEGERS]


@pytest.mark.parametrize(("cmd", "name"), INT_CASES, ids=[f"{c}-{n}" for c, n in INT_CASES])
def test_non_integer_is_one_line(model, cmd, name):
    flag = OPTIONS[name].flags[0]
    res = runner.invoke(app, _base(cmd, *model) + [flag, NOT_INTEGERS[name]], catch_exceptions=False)
    assert_one_line(res, flag)


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_unknown_option_and_missing_argument(model, cmd):
    assert_one_line(runner.invoke(app, _base(cmd, *model) + ["--no-such-option"]), "--no-such-option")
    if cmd != "compare":  # compare takes models from --manifest too
        assert_one_line(runner.invoke(app, [cmd]), "missing")


@pytest.mark.parametrize("cmd", ["attack", "metrics", "clever"])
def test_data_is_required_where_labels_are_needed(model, cmd):
    assert_one_line(runner.invoke(app, [cmd, str(model[0]), "-q"]), "--data")


COMMAND_OWN = [
    ("scan", ["--method", "magic"], "--method"),
    ("scan", ["--budget", "3"], "--budget"),
    ("scan", ["--dither", "-1"], "--dither"),
    ("scan", ["--trace-probes", "x"], "--trace-probes"),
    ("attack", ["--norm", "l3"], "--norm"),
    ("attack", ["--eps", "-0.1"], "--eps"),
    ("attack", ["--tau", "a"], "--tau"),
    ("attack", ["--attack", "magic"], "magic"),
    ("attack", ["--steps", "x"], "--steps"),
    ("clever", ["--norm", "l3"], "--norm"),
    ("clever", ["--radius", "-1"], "--radius"),
    ("clever", ["--points", "many"], "--points"),
    ("compare", ["--eps-linf", "x"], "--eps-linf"),
    ("bounds", ["--ops", "x"], "x"),
    ("certify", ["--sigma", "0"], "--sigma"),
    ("certify", ["--n", "5"], "too small to certify"),
    ("certify", ["--alpha", "0.9"], "--alpha"),
    ("certify", ["--radii", "0,-1"], "--radii"),
    ("certify", ["--space", "pixels"], "--space"),
    ("certify", ["--workers", "2", "--scheduler", "tcp://h:1"], "not both"),
]


@pytest.mark.parametrize(("cmd", "args", "needle"), COMMAND_OWN, ids=[f"{c}{a[0]}" for c, a, _ in COMMAND_OWN])
def test_malformed_command_option_is_one_line(model, cmd, args, needle):
    res = runner.invoke(app, _base(cmd, *model) + args, catch_exceptions=False)
    assert_one_line(res, needle)


def test_unknown_command_and_bad_report(tmp_path):
    assert_one_line(runner.invoke(app, ["nonsense"]), "nonsense")
    assert_one_line(runner.invoke(app, ["report", str(tmp_path / "none.json")]), "not found")
    assert_one_line(runner.invoke(app, ["report", str(tmp_path)]), "cannot read")
