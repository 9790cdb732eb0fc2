"""Every ``--help`` is the first documentation: real defaults, meaningful metavars, an honest summary.

The help is rendered through typer's CliRunner at 200 columns; structural checks read the click
parameters (metavar, show_default) so that they do not depend on how a typer version draws the table.
"""

from __future__ import annotations

import importlib
import re

import pytest
import typer.main
from typer.testing import CliRunner

from fimaudit.cli import app

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
NAMES = sorted(COMMANDS)
# Options whose None default means "not done" (no file written, no gate, no cluster): no default to show.
OFF_WHEN_NONE = {"json", "report_path", "save_direction", "fail_above", "scheduler", "manifest", "policy_path", "out"}


def _help(*args: str) -> str:
    res = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, (args, res.stdout, res.stderr)
    return res.stdout


def _row(text: str, flag: str) -> str:
    """The help row of ``flag`` with its wrapped continuation lines, box characters stripped."""
    lines = [ln.strip().strip("│").strip() for ln in text.splitlines()]
    starts = [i for i, ln in enumerate(lines) if re.match(rf"^\*?\s*{re.escape(flag)}(\s|,|$)", ln)]
    assert starts, f"{flag} not in the help"
    rows = [lines[starts[0]]]
    for ln in lines[starts[0] + 1:]:
        if not ln or ln.startswith(("-", "*", "╰", "╭")):
            break
        rows.append(ln)
    return " ".join(rows)


def _options(name: str):
    """The options a user sees (hidden ones are deprecated spellings kept for one release)."""
    return [p for p in COMMANDS[name].params if p.param_type_name == "option" and not getattr(p, "hidden", False)]


@pytest.mark.parametrize("args", [[]] + [[n] for n in NAMES], ids=lambda a: " ".join(a) or "fimaudit")
def test_no_type_placeholders_in_help(args):
    """Flags show no value (typer draws <bool>); values show N, FILE, [a|b] rather than <int>, <str>, <float>."""
    text = _help(*args)
    for placeholder in ("<bool>", "<str>", "<int>", "<float>"):
        assert placeholder not in text, (args, placeholder)


@pytest.mark.parametrize("name", NAMES)
def test_every_option_has_a_metavar_and_flags_have_none(name):
    for p in _options(name):
        if p.is_flag:
            assert p.metavar == "", (name, p.name, p.metavar)
        else:
            assert p.metavar, (name, p.name, "give the option a metavar")


@pytest.mark.parametrize("name", NAMES)
def test_every_default_is_shown_or_explained(name):
    """A set default is shown; a None default says what it does ("all", "auto") unless it means "off"."""
    for p in _options(name):
        if p.is_flag or p.required:
            continue
        if p.default is None:
            assert isinstance(p.show_default, str) or p.name in OFF_WHEN_NONE, (name, p.name, "say what None does")
        else:
            assert p.show_default, (name, p.name, p.default, "show the default")


def test_dither_default_is_automatic_not_zero():
    row = _row(_help("scan"), "--dither")
    assert "default: 0.0" not in row
    assert re.search(r"default: \(?auto", row), row


@pytest.mark.parametrize("name, shown", [
    ("scan", "100 with --data, else 16"), ("certify", "100 with --data, else 16"), ("attack", "all"),
    ("audit", "20"), ("compare", "10"), ("metrics", "500"), ("clever", "5"),
])
def test_samples_states_the_real_default(name, shown):
    row = _row(_help(name), "--samples")
    assert re.search(rf"default: \(?{re.escape(shown)}\)?\]", row), row


def test_scan_samples_text_agrees_with_the_scan():
    from fimaudit import certify, cli

    scan_mod = importlib.import_module("fimaudit.scan")  # fimaudit.scan is the function
    assert (cli.SCAN_SAMPLES_DATA, cli.SCAN_SAMPLES_SYNTHETIC) == (
        scan_mod.DEFAULT_SAMPLES_DATA, scan_mod.DEFAULT_SAMPLES_SYNTHETIC)
    assert cli.SCAN_SAMPLES_SYNTHETIC == certify.DEFAULT_SAMPLES_SYNTHETIC


def test_compare_defaults_in_the_help_agree_with_the_compare_config():
    from fimaudit import cli
    from fimaudit.evidence import CompareConfig

    c = CompareConfig()
    assert (cli.COMPARE_SAMPLES, cli.COMPARE_BUDGET, cli.COMPARE_CLEVER_SAMPLES, cli.COMPARE_CLEVER_POINTS,
            cli.COMPARE_METRIC_SAMPLES) == (c.samples, c.budget, c.clever_samples, c.clever_points, c.metric_samples)


@pytest.mark.parametrize("name, flag, shown", [
    ("attack", "--steps", "10 for BIM/PGD, 100 white-box"), ("scan", "--subspace-dim", "budget/4"),
    ("scan", "--fd-step", "chosen and checked"), ("report", "--format", "from --out, else text"),
    ("scan", "--data", "seeded synthetic inputs"),
])
def test_automatic_defaults_say_so(name, flag, shown):
    assert shown in _row(_help(name), flag)


def test_choices_are_shown():
    text = _help("scan")
    assert "[auto|graph|fd]" in _row(text, "--gradients")
    assert "[auto|cpu|cuda]" in _row(text, "--device")
    assert all(m in _row(text, "--method") for m in ("exact", "sketch", "deflated"))


def test_top_level_help_describes_the_gradient_graph():
    text = " ".join(_help().split())
    assert "gradient graph" in text
    assert "finite-difference" in text and "from black-box queries." not in text
