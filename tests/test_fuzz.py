"""A short seeded run of bench/fuzz.py against fimaudit: hostile models, data and options end in a result or one\nclean line (a traceback, an internal error or a leaked file fails)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_FUZZ = Path(__file__).resolve().parents[1] / "bench" / "fuzz.py"


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("fimaudit_bench_fuzz", _FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling to the workers look the module up by name
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def fuzz():
    return _fuzz_module()


def test_the_smoke_run_can_fail(fuzz):
    """The smoke run below fails only through ``classify``: it must call a traceback, an internal error, a leaked
    file or a multi-line refusal a failure (the harness's own case generation is bench/fuzz.py's business)."""
    c, limit = fuzz.classify, 2 << 30
    failing = [c(-1, "", "ValueError: x", 0, [], limit), c(2, "fimaudit: error: internal error: X\n", "", 0, [], limit),
               c(2, "warning\nfimaudit: error: bad\n", "", 0, [], limit), c(2, "fimaudit: error: bad\n", "", 0, ["x.part"], limit)]
    assert set(failing) <= set(fuzz.FAILURES)
    assert c(2, "fimaudit: error: bad\n", "", 0, [], limit) not in fuzz.FAILURES


def test_fuzz_smoke(fuzz, tmp_path, monkeypatch):
    # ~200 cases over every command (about 30 s on 2 cores); the full campaign is bench/fuzz.py. In a scratch folder:
    # an `audit` case without --out writes its dossier to ./fimaudit-audit-MODEL, which must not land in the checkout.
    monkeypatch.chdir(tmp_path)
    rep = fuzz.run_fuzz(200, seed=11, workers=2, wall_limit=60.0, verbose=False)
    results = rep["results"]
    assert len(results) == 200
    assert {r["command"] for r in results} >= {"scan", "bounds", "attack", "metrics"}
    failures = [(r["index"], r["outcome"], r["kind"], r["command"], r["detail"], r["stderr"] or r["escaped"])
                for r in results if r["outcome"] in fuzz.FAILURES]
    assert not failures, failures
    outcomes = {r["outcome"] for r in results}
    assert {"ok", "refusal"} <= outcomes  # hostile inputs are refused, valid ones still run
