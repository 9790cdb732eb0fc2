"""Progress on stderr (fimaudit.progress): rate-limited lines in a log, estimates, nesting, stdout untouched.

Every timing here comes from a fake clock or a forced interval: nothing asserts on wall time or speed.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from fimaudit import progress
from fimaudit.cli import app
from fimaudit.progress import LineReporter, duration

from . import builders as B

runner = CliRunner()


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def reporter(interval: float = 10.0) -> tuple[LineReporter, FakeClock, io.StringIO]:
    clock, out = FakeClock(), io.StringIO()
    return LineReporter("scan", out, clock, interval), clock, out


def test_lines_come_at_most_once_per_interval_and_none_before_it():
    rep, clock, out = reporter(10.0)
    with progress.installed(rep), progress.task("scan", total=100, unit="samples") as bar:
        for k in range(1, 60):  # one step per simulated second
            clock.t += 1.0
            bar.update(k)
    lines = out.getvalue().splitlines()
    # 59 simulated seconds, one line per 10 s at most, the first once 10 s have passed: at 10, 20, ..., 50 s
    assert len(lines) == 5
    assert all("elapsed" in line and "remaining" in line for line in lines)
    assert lines[0].startswith("fimaudit: scan > 10/100 samples | elapsed 10s")


def test_a_slow_step_still_gets_its_line_once_the_interval_has_passed():
    rep, clock, out = reporter(10.0)
    with progress.installed(rep), progress.task("attack", total=4, unit="eps") as bar:
        clock.t += 3.0
        bar.update(1)
        assert out.getvalue() == ""
        clock.t += 40.0
        bar.update(2)
    assert out.getvalue().count("\n") == 1


def test_remaining_time_is_extrapolated_from_the_share_done():
    rep, clock, out = reporter(0.0)
    with progress.installed(rep), progress.task("", total=4, unit="models") as outer:
        clock.t += 10.0
        outer.update(1)
        with progress.task("m1", total=10, unit="sections") as inner:
            clock.t += 20.0
            inner.update(5)  # 1 model + half of the next: 1.5 / 4 done after 30 s
            assert rep.fraction() == pytest.approx(1.5 / 4)
            assert rep.remaining() == pytest.approx(30.0 * 2.5 / 1.5)
    assert "fimaudit: scan > 1/4 models > m1 5/10 sections | elapsed 30s, remaining ~50s (estimate)" \
        in out.getvalue().splitlines()


def test_a_level_without_a_total_says_it_is_estimating():
    rep, clock, out = reporter(0.0)
    with progress.installed(rep), progress.task("scan", unit="samples") as bar:
        clock.t += 5
        bar.update(detail="building the gradient graph")
    assert rep.remaining() is None
    assert "remaining: estimating" in out.getvalue()


def test_the_estimated_total_is_printed_once_after_the_first_unit():
    rep, clock, out = reporter(1e9)  # no progress lines: only the note
    with progress.installed(rep), progress.task("certify", total=100, unit="samples", estimate=True) as bar:
        bar.update(0)
        clock.t += 15.0
        bar.update(1)
        clock.t += 15.0
        bar.update(2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert "estimated total ~25m00s for 100 samples" in lines[0] and "first of 100 samples took 15s" in lines[0]


def test_without_a_reporter_tasks_are_no_ops():
    assert not progress.active()
    with progress.task("scan", total=3) as bar:
        bar.update(1)
        bar.advance()
        assert bar.callback(None) is None


def test_durations_read_well():
    assert [duration(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


# --------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("progress")
    rng = np.random.default_rng(5)
    a = B.save(B.mlp_model(*B.random_mlp(rng, d=16, hidden=8, k=3, gain=2.0), sample_shape=(1, 4, 4)), tmp / "a.onnx")
    b = B.save(B.mlp_model(*B.random_mlp(rng, d=16, hidden=8, k=3), sample_shape=(1, 4, 4)), tmp / "b.onnx")
    np.savez(tmp / "d.npz", x=rng.uniform(size=(6, 1, 4, 4)).astype(np.float32), y=rng.integers(0, 3, 6))
    return tmp, a, b, tmp / "d.npz"


def _drop_timing(d):
    if isinstance(d, dict):
        return {k: _drop_timing(v) for k, v in d.items() if k not in ("timing", "seconds")}
    if isinstance(d, list):
        return [_drop_timing(v) for v in d]
    return d


COMMANDS = {
    "scan": lambda a, b, d: ["scan", a, "--data", d, "--samples", "4"],
    "certify": lambda a, b, d: ["certify", a, "--data", d, "--samples", "3", "--sigma", "0.1", "--n0", "20",
                                "--n", "100"],
    "attack": lambda a, b, d: ["attack", a, "--data", d, "--samples", "4", "--eps", "0.05,0.1", "--budget", "60"],
    "compare": lambda a, b, d: ["compare", a, b, "--data", d, "--samples", "3", "--budget", "40", "--clever-samples",
                                "1", "--clever-points", "10", "--no-metrics"],
}


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_a_log_gets_progress_lines_on_stderr_and_stdout_is_unchanged(zoo, cmd, monkeypatch):
    tmp, a, b, d = zoo
    args = [str(v) for v in COMMANDS[cmd](a, b, d)]
    monkeypatch.setenv(progress.ENV_INTERVAL, "0")  # every step may print: the interval, not the clock, is forced
    loud = runner.invoke(app, args + ["--json", "-"])
    quiet = runner.invoke(app, args + ["--json", "-", "-q"])
    assert loud.exit_code == 0 and quiet.exit_code == 0, (loud.stderr, quiet.stderr)
    lines = [ln for ln in loud.stderr.splitlines() if ln.startswith(f"fimaudit: {cmd} > ")]
    assert lines, loud.stderr
    assert all("elapsed" in ln and ("remaining" in ln) for ln in lines)
    assert not any(ln.startswith("fimaudit: ") for ln in quiet.stderr.splitlines() if "error" not in ln)  # -q: none
    # progress never reaches stdout: the JSON there parses and is the quiet run's, apart from timing
    assert _drop_timing(json.loads(loud.stdout)) == _drop_timing(json.loads(quiet.stdout))


def test_certify_and_compare_print_an_estimated_total_after_the_first_unit(zoo, monkeypatch):
    tmp, a, b, d = zoo
    monkeypatch.setenv(progress.ENV_INTERVAL, "1e9")  # no periodic lines: only the estimate
    for cmd, unit in (("certify", "samples"), ("compare", "models")):
        res = runner.invoke(app, [str(v) for v in COMMANDS[cmd](a, b, d)])
        assert res.exit_code == 0, res.stderr
        notes = [ln for ln in res.stderr.splitlines() if "estimated total" in ln]
        assert len(notes) == 1 and f"for {3 if cmd == 'certify' else 2} {unit}" in notes[0], res.stderr
        assert "estimated total" not in res.stdout


def test_nested_jobs_report_inside_their_parent(zoo, monkeypatch):
    tmp, a, b, d = zoo
    monkeypatch.setenv(progress.ENV_INTERVAL, "0")
    res = runner.invoke(app, [str(v) for v in COMMANDS["compare"](a, b, d)])
    assert res.exit_code == 0, res.stderr
    # a model's sections, the attack's eps and the attack's own query count appear under "compare"
    nested = "fimaudit: compare > 0/2 models > a 1/5 sections (pgd linf) > pgd linf 0/1 eps (eps 0.03) > pgd eps 0.03 "
    assert nested in res.stderr
    assert re.search(re.escape(nested) + r"[1-9]\d*/120 queries \|", res.stderr), res.stderr  # 3 samples x 40 queries


def test_a_terminal_gets_a_bar_with_the_path_and_the_notes_on_stderr_only():
    from rich.console import Console

    from fimaudit.progress import TerminalReporter

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80, color_system=None)
    clock = FakeClock()
    rep = TerminalReporter("audit", console=console, clock=clock)
    with progress.installed(rep):
        with progress.task("section", total=9) as sec:
            sec.update(4, detail="attacks")
            with progress.task("pgd linf", total=2, unit="eps", estimate=True) as eps:
                clock.t += 20
                eps.update(1, detail="eps 0.03")
                # too long for one 80-column line beside the bar: the outer levels give way, the innermost stays
                assert rep.short_path().startswith("... > ") and rep.short_path().endswith("(eps 0.03)")
                assert len(rep.short_path()) <= 80 - 42
            with progress.task("minimal distance"):  # no total: the bar shows 0/?, not the parent's count
                assert rep.bar.tasks[0].total is None
    rep.close()
    out = buf.getvalue()
    assert "pgd linf: the first of 2 eps took 20s; estimated total ~40s" in out


def test_a_task_cut_short_by_an_exception_goes_when_its_parent_moves_on():
    rep, clock, out = reporter(0.0)
    with progress.installed(rep), progress.task("section", total=3) as sec:
        sec.update(0, detail="attacks")
        progress.begin("attacks", total=2)  # its .end() never comes: the section failed
        sec.update(1, detail="clever")
        assert [t.label for t in rep.stack] == ["section"]
        assert rep.path() == "scan > section 1/3 (clever)"
