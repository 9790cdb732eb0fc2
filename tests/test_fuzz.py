"""A short seeded run of bench/fuzz.py: hostile models, data and options end in a result or one clean line."""

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


def test_cases_are_a_function_of_the_seed(fuzz, tmp_path):
    import numpy as np

    rng = np.random.default_rng([0, 10**6])
    corpus = {}
    for name, (model, shape) in fuzz.base_models(rng).items():
        k = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        corpus[name] = (model, shape, fuzz.base_data(rng, shape, k))
    a = fuzz.make_case(17, 0, ["scan", "bounds"], tmp_path / "a", corpus)
    b = fuzz.make_case(17, 0, ["scan", "bounds"], tmp_path / "b", corpus)
    assert (a.kind, a.detail, a.command) == (b.kind, b.detail, b.command)
    assert [s.replace(str(tmp_path / "a"), "") for s in a.argv] == [s.replace(str(tmp_path / "b"), "") for s in b.argv]
    assert (Path(a.folder) / "model.onnx").read_bytes() == (Path(b.folder) / "model.onnx").read_bytes()


def test_classification(fuzz):
    c = fuzz.classify
    limit = 2 << 30
    assert c(0, "", "", 0, [], limit) == "ok"
    assert c(2, "fimaudit: error: bad\n", "", 0, [], limit) == "refusal"
    assert c(2, "warning\nfimaudit: error: bad\n", "", 0, [], limit) == "bad-refusal"
    assert c(2, "fimaudit: error: internal error: X\n", "", 0, [], limit) == "internal"
    assert c(-1, "", "ValueError: x", 0, [], limit) == "traceback"
    assert c(2, "fimaudit: error: out of memory; lower --max-batch\n", "", 0, [], limit) == "memory"
    assert c(0, "", "", limit + 1, [], limit) == "memory"
    assert c(2, "fimaudit: error: bad\n", "", 0, [".r.json.abc.part"], limit) == "leftover"


def test_fuzz_smoke(fuzz):
    # ~200 cases over every command (about 30 s on 2 cores); the full campaign is bench/fuzz.py.
    rep = fuzz.run_fuzz(200, seed=11, workers=2, wall_limit=60.0, verbose=False)
    results = rep["results"]
    assert len(results) == 200
    assert {r["command"] for r in results} >= {"scan", "bounds", "attack", "metrics"}
    failures = [(r["index"], r["outcome"], r["kind"], r["command"], r["detail"], r["stderr"] or r["escaped"])
                for r in results if r["outcome"] in fuzz.FAILURES]
    assert not failures, failures
    outcomes = {r["outcome"] for r in results}
    assert {"ok", "refusal"} <= outcomes  # hostile inputs are refused, valid ones still run
