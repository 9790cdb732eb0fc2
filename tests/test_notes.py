"""Notes say what was computed, on which path, and show errors against their tolerance."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

import fimaudit
from fimaudit.report.terminal import _gradients_text
from fimaudit.scan import lower_estimate_gap_note

ZOO = Path(__file__).resolve().parent.parent / "sample_models"


def test_self_check_line_shows_errors_against_the_tolerance():
    check = {"rows": 6, "verified": 6, "jvp_error": 1.27, "vjp_error": 0.69, "tolerance": 0.23, "fd_discrepancy": 0.026,
             "second_opinion": "float64 reference evaluator: 5 of 5 refused rows agree"}
    text = _gradients_text({"source": "graph", "check": check})
    assert "tolerance 0.23" in text and "JVP error 1.27" in text
    assert "float64 reference evaluator: 5 of 5 refused rows agree" in text and "above the float32 tolerance" in text
    within = _gradients_text({"source": "graph", "check": check | {"jvp_error": 0.01, "vjp_error": 0.02,
                                                                    "second_opinion": None}})
    assert "tolerance 0.23" in within and "float64" not in within and "above" not in within


def _sample(lower, lam, quad, probes=40):
    return SimpleNamespace(lower_estimate=lower, lambda_max=lam, lower_check={"quadratic_form": quad}, probes=probes)


def test_a_large_lower_estimate_gap_is_explained_and_a_small_one_is_not():
    far = lower_estimate_gap_note([_sample(0.1, 1.0, 0.2), _sample(0.2, 1.0, 0.25), _sample(0.3, 2.0, 0.4)], 784)
    assert "median 15% of lambda_max" in far and "median 20% of lambda_max" in far  # ratio, then v^T F v share
    assert "40 probes of d = 784" in far and "not a certified bound" in far
    assert lower_estimate_gap_note([_sample(0.9, 1.0, 0.95), _sample(0.8, 1.0, 0.9)], 784) is None
    assert lower_estimate_gap_note([_sample(None, 1.0, None)], 784) is None


def test_graph_scans_do_not_blame_finite_differences_for_their_values():
    common = dict(samples=4, scale=1 / 255, mean=(0.286,), std=(0.353,), bounds=False)
    graph = fimaudit.scan(ZOO / "vgg_small.onnx", ZOO / "fmnist_test_1000_28.npz", **common)
    assert graph.run.gradients_used["source"] == "graph"
    assert not any("estimates carry" in n or "lower estimate (finite-difference path)" in n for n in graph.notes)
    fd = fimaudit.scan(ZOO / "vgg_small.onnx", ZOO / "fmnist_test_1000_28.npz", gradients="fd", budget=300, **common)
    ratio = np.median([s.lower_estimate / s.lambda_max for s in fd.samples])
    assert any("lower estimate (finite-difference path)" in n for n in fd.notes) == (ratio < 0.5)
