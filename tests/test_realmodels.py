"""Third-party classifiers from $FIMAUDIT_REALMODELS through the CLI: scan, bounds, attack, metrics.

The corpus is read from the folder the environment variable names (CI sets it); every
``*.onnx`` there is tested, with the data file its ``manifest.json`` entry names. Without the
variable the module skips with a reason; with it, a missing folder, manifest or listed file
fails. No test looks at a model's name: the corpus is a sample of what vendors ship.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fimaudit.cli import app

ENV = "FIMAUDIT_REALMODELS"
runner = CliRunner()


def _corpus() -> list[tuple[str, Path, Path, dict]]:
    """(id, model, data, manifest entry) per model; [] when the variable is unset."""
    root = os.environ.get(ENV)
    if not root:
        return []
    folder = Path(root)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return [("missing-manifest", manifest_path, manifest_path, {})]
    manifest = json.loads(manifest_path.read_text())
    by_file = {entry["file"]: entry for entry in manifest.values()}
    cases = []
    for entry in manifest.values():  # every listed file must exist
        cases.append((entry["file"], folder / entry["file"], folder / entry["data"], entry))
    for path in sorted(folder.glob("*.onnx")):  # and every model present must be listed
        if path.name not in by_file:
            cases.append((path.name, path, path.with_suffix(".npz"), {}))
    return sorted(cases, key=lambda c: c[0])


CASES = _corpus()
pytestmark = pytest.mark.skipif(not os.environ.get(ENV), reason=f"{ENV} is not set (third-party model corpus)")


def _case(case):
    name, model, data, entry = case
    missing = [str(p) for p in (model, data) if not p.is_file()]
    if missing or not entry:
        pytest.fail(f"{ENV}: {name}: missing or unlisted in manifest.json: {missing or [str(model)]}")
    return model, data, entry


def _json(args: list[str]) -> dict:
    res = runner.invoke(app, [*map(str, args), "-q", "--json", "-"])
    assert res.exit_code == 0, (args, res.stdout[-2000:], res.stderr[-2000:] if res.stderr_bytes else "")
    return json.loads(res.stdout)


def _unit_range(entry: dict) -> bool:
    lo, hi = entry["x_range"]
    return lo >= -1e-6 and hi <= 1 + 1e-6


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


@pytest.mark.parametrize("case", CASES or [None], ids=[c[0] for c in CASES] or ["none"])
def test_scan_and_bounds_bracket_the_exact_fisher(case):
    """Sketch and its lower bound against exact central differences; exact <= the closed-form bound."""
    model, data, entry = _case(case)
    common = [model, "--data", data, "--samples", "2", "--dither", "1e-3", "--seed", "0"]
    sketch = _json(["scan", *common, "--method", "sketch", "--budget", "400"])
    d = sketch["model"]["input"]["d"]
    exact = _json(["scan", *common, "--method", "exact", "--budget", str(2 * d + 8), "--no-bounds", "--gradients", "fd"])
    assert sketch["run"]["method_used"] == "sketch" and exact["run"]["method_used"] == "exact"
    assert sketch["model"]["output"]["classes"] == 10
    graph = _json(["scan", *common, "--gradients", "auto", "--no-bounds"])
    used_graph = graph["run"]["gradients_used"]["source"] == "graph"
    for s, e, g in zip(sketch["samples"], exact["samples"], graph["samples"]):
        assert s["predicted"] == s["label"] == e["predicted"]  # the corpus's models classify every sample right
        assert _finite(s["lambda_max"], s["trace"], s["lower_estimate"], e["lambda_max"], e["trace"])
        lam = e["lambda_max"]
        assert lam > 0
        # Finite differences give a lower *estimate* (margin measured along v), not a certified bound.
        assert s["lower_bound"] is None and e["lower_bound"] is None
        assert s["lower_estimate"] <= lam * 1.01, (s["lower_estimate"], lam)
        assert e["lower_estimate"] <= lam * 1.01, (e["lower_estimate"], lam)
        if used_graph:  # exact gradients: lambda_max agrees with coordinate central differences; bound certified
            # central differences with step h cross ReLU kinks within h of the point: a few percent apart
            assert g["lambda_max"] == pytest.approx(lam, rel=5e-2)
            assert g["lower_bound"] <= g["lambda_max"] and g["lower_bound"] >= 0.99 * g["lambda_max"]
        assert 0.2 * lam <= s["lambda_max"] <= 5 * lam  # a 400-query sketch of a 10-class Jacobian
        assert s["trace"] == pytest.approx(e["trace"], rel=0.5)
        assert e["kl_ratio"] == pytest.approx(1.0, abs=0.2)  # second-order KL agrees with the Fisher
    bound = sketch["bound"]
    bounds = _json(["bounds", model])
    if bound["fim_upper"] is not None:
        assert bound["fim_upper"] == pytest.approx(bounds["fim_upper"], rel=1e-9)
        assert max(e["lambda_max"] for e in exact["samples"]) <= bound["fim_upper"]
    else:
        assert bound["reason"]


@pytest.mark.parametrize("case", CASES or [None], ids=[c[0] for c in CASES] or ["none"])
def test_attack_and_metrics_run_with_sane_numbers(case):
    model, data, entry = _case(case)
    with np.load(data) as npz:
        eps = float(np.min(npz["eps"])) if "eps" in npz else 0.01
    lo, hi = entry["x_range"]
    rng_arg = f"{min(lo, 0.0)},{max(hi, 1.0)}"
    att = _json(["attack", model, "--data", data, "--samples", "3", "--attack", "square", "--budget", "60",
                 "--eps", f"0,{eps:g}", "--input-range", rng_arg])
    assert att["clean_accuracy"] == 1.0
    zero, at_eps = att["results"]
    assert zero["robust_accuracy"] == 1.0  # eps = 0 changes nothing
    assert 0.0 <= at_eps["robust_accuracy"] <= 1.0
    args = ["metrics", model, "--data", data, "--samples", "10"]
    if not _unit_range(entry):
        args.append("--no-corruptions")  # inputs normalised outside the graph are not images in [0, 1]
    met = _json(args)
    m = met["metrics"]
    assert m["accuracy"] == 1.0
    assert _finite(m["path_norm"], m["sharpness_sigma"], m["spectral_product"])
    assert m["path_norm"] > 0 and m["sharpness_sigma"] > 0
    for row in met["corruptions"].values():
        assert row["0"] == 1.0 and all(0.0 <= v <= 1.0 for v in row.values())


@pytest.mark.parametrize("case", CASES or [None], ids=[c[0] for c in CASES] or ["none"])
def test_a_bound_far_above_the_measurement_is_labelled_vacuous(case):
    model, data, entry = _case(case)
    rep = _json(["scan", model, "--data", data, "--samples", "2", "--method", "sketch", "--budget", "100"])
    b, med = rep["bound"], rep["summary"]["lambda_max"]["median"]
    if b["fim_upper"] is None:
        assert "vacuous" not in b
        return
    assert b["vacuous"] == (b["fim_upper"] > 1e6 * med)
    assert any("vacuous" in n for n in rep["notes"]) == b["vacuous"]


def _layout_twin(model: Path, data: Path, tmp_path: Path):
    """The same weights behind a Transpose that takes the other image layout, and the data transposed to it.

    None for inputs that are not images with four axes. The layout is what fimaudit's loader
    detects, never the model's name.
    """
    import onnx
    from onnx import helper

    from fimaudit.model import load_model
    from fimaudit.model.layout import detect_layout

    loaded = load_model(str(model), device="cpu")
    layout, _ = detect_layout(loaded.proto, loaded.info.input.name, loaded.sample_shape)
    if layout.name not in ("nchw", "nhwc"):
        return None
    proto = onnx.load(str(model))
    graph = proto.graph
    inp = next(i for i in graph.input if i.name == loaded.info.input.name)
    dims = list(inp.type.tensor_type.shape.dim)
    if layout.name == "nhwc":  # twin takes N,C,H,W
        order, perm, data_perm = [0, 3, 1, 2], [0, 2, 3, 1], (0, 3, 1, 2)
    else:  # twin takes N,H,W,C
        order, perm, data_perm = [0, 2, 3, 1], [0, 3, 1, 2], (0, 2, 3, 1)
    new = onnx.ValueInfoProto()
    new.CopyFrom(inp)
    new.name = "layout_twin_input"
    for k, src in enumerate(order):
        new.type.tensor_type.shape.dim[k].CopyFrom(dims[src])
    graph.node.insert(0, helper.make_node("Transpose", [new.name], [inp.name], perm=perm))
    graph.input.remove(inp)
    graph.input.insert(0, new)
    out = tmp_path / f"twin_{model.name}"
    onnx.save(proto, str(out))
    with np.load(data) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["x"] = np.transpose(arrays["x"], data_perm)
    twin_data = tmp_path / f"twin_{data.name}"
    np.savez(twin_data, **arrays)
    return out, twin_data, layout.name


@pytest.mark.parametrize("attack,norm,scale,samples,budget", [("square", "linf", 2.0, 6, 120),
                                                                ("rays", "linf", 2.0, 4, 150),
                                                                ("hsja", "l2", 20.0, 4, 150)])
@pytest.mark.parametrize("case", CASES or [None], ids=[c[0] for c in CASES] or ["none"])
def test_structured_attacks_give_the_same_attack_in_either_layout(case, attack, norm, scale, samples, budget,
                                                                   tmp_path):
    """Square draws its squares over the spatial axes, RayS cuts its blocks and HopSkipJump draws its points
    channels first: the same weights in NCHW and NHWC give the same per-sample outcome for the same seed."""
    model, data, entry = _case(case)
    twin = _layout_twin(model, data, tmp_path)
    if twin is None:
        pytest.skip("not an image input with four axes")
    twin_model, twin_data, layout = twin
    with np.load(data) as npz:
        eps = float(np.median(npz["eps"])) if "eps" in npz else 0.03
    lo, hi = entry["x_range"]
    common = ["--samples", str(samples), "--attack", attack, "--norm", norm, "--budget", str(budget),
              "--eps", f"{scale * eps:g}", "--seed", "3", "--input-range", f"{min(lo, 0.0)},{max(hi, 1.0)}"]
    a = _json(["attack", model, "--data", data, *common])
    b = _json(["attack", twin_model, "--data", twin_data, *common])
    assert b["model"]["sample_shape"] != a["model"]["sample_shape"]  # the twin really takes the other layout
    ra, rb = a["results"][0], b["results"][0]
    assert [s["success"] for s in ra["samples"]] == [s["success"] for s in rb["samples"]], layout
    assert [s["queries"] for s in ra["samples"]] == [s["queries"] for s in rb["samples"]], layout
    assert ra["robust_accuracy"] == rb["robust_accuracy"]
