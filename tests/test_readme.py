"""README.md's examples are produced by docs/readme_examples.py, and its Python examples run.

The output examples are compared with a fresh run beyond timings, table widths and float32 rounding
(numbers within 2%; for ``fimaudit audit`` the text between the numbers): never one machine's rounding.
The scan example costs a few seconds and always runs; the audit example (about two minutes on 2 cores)
runs with FIMAUDIT_README_AUDIT=1.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _examples():
    spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "docs" / "readme_examples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EX = _examples()


def test_comparison_ignores_timings_widths_and_rounding_but_not_changes():
    old = "┏━━━━┓\n│ lambda │ 0.5377 │\nseconds 0.58 (28% inside onnxruntime)\naccuracy 95.0%"
    assert EX.differences(old, "┏━━━━━━┓\n│ lambda │  0.538 │\nseconds 3.1 (9% inside onnxruntime)\naccuracy 95.0%") == []
    assert EX.differences(old, old.replace("0.5377", "0.5900"))  # 10%: a real change
    assert EX.differences(old, old.replace("lambda", "trace"))
    assert EX.differences(old, old + "\nnote: new")
    audit = "  PASS  clean.accuracy >= 0.7  (value 0.95)"
    assert EX.differences(audit, audit.replace("0.95", "0.9"), numbers=False) == []
    assert EX.differences(audit, audit.replace("PASS", "FAIL"), numbers=False)


def test_every_output_example_has_a_marker_and_a_block():
    cmds = [cmd for cmd, _, _ in EX.blocks(README)]
    assert any(c.startswith("fimaudit scan ") for c in cmds) and any(c.startswith("fimaudit audit ") for c in cmds)
    assert len(cmds) == len(re.findall(r"^<!-- output", README, re.M))


@pytest.mark.parametrize("which", ["scan", "audit"])
def test_readme_output_examples_match_a_fresh_run(which):
    if which == "audit" and not os.environ.get("FIMAUDIT_README_AUDIT"):
        pytest.skip("the audit example takes about two minutes on 2 cores: set FIMAUDIT_README_AUDIT=1")
    for cmd, head, body in EX.blocks(README):
        if cmd.startswith(f"fimaudit {which} "):
            diff = EX.differences(body, EX.fresh(cmd, head), numbers=EX.compares_numbers(cmd))
            assert diff == [], "README.md is stale (python docs/readme_examples.py):\n" + "\n".join(diff)


def test_readme_python_examples_run(monkeypatch, capsys):
    """Every ```python block of the README, run from the repository root with the shipped sample models."""
    code = re.findall(r"^```python\n(.*?)^```", README, re.M | re.S)
    assert code, "the README has no Python example"
    monkeypatch.chdir(ROOT)
    for block in code:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    assert "samples must be >= 1" in out  # the example shows the ValueError a bad option raises
