"""One subject per command: every command validates its model file once, however many jobs run on it.

``fimaudit.model.loader.read_model`` is the first step of every validation (``load_model``); the tests count its
calls per model path while a command runs. Before the subject, an audit read its model 8-9 times and a compare row
6 times.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fimaudit.cli import app
from fimaudit.model import loader
from fimaudit.subject import OpenOptions, Subject, open_subject

from . import builders as B

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subject")
    rng = np.random.default_rng(0)
    models = []
    for name in ("a", "b"):
        params = B.random_mlp(rng, d=16, hidden=8, k=3, gain=2.0)
        models.append(B.save(B.mlp_model(*params, sample_shape=(1, 4, 4)), tmp / f"{name}.onnx"))
    x = rng.integers(0, 256, size=(6, 1, 4, 4)).astype(np.uint8)
    np.savez(tmp / "d.npz", x=x, y=rng.integers(0, 3, size=6))
    return tmp, models, tmp / "d.npz"


@pytest.fixture
def reads(monkeypatch):
    """Model path -> how many times it was read for validation (calls of loader.read_model)."""
    counts: collections.Counter = collections.Counter()
    real = loader.read_model

    def counted(path):
        counts[str(path)] += 1
        return real(path)

    monkeypatch.setattr(loader, "read_model", counted)
    return counts


DATA = ["--scale", "1/255", "--samples", "3", "-q"]
COMMANDS = {
    "scan": ["scan", "{m}", "--data", "{d}", "--budget", "40", *DATA],
    "attack": ["attack", "{m}", "--data", "{d}", "--eps", "0.02,0.05", "--budget", "20", *DATA],
    "clever": ["clever", "{m}", "--data", "{d}", "--points", "20", "--seeds", "1", *DATA],
    "metrics": ["metrics", "{m}", "--data", "{d}", "--no-corruptions", *DATA],
    "certify": ["certify", "{m}", "--data", "{d}", "--sigma", "0.25", "--n", "50", *DATA],
    "verify": ["verify", "{m}", "--data", "{d}", "--eps", "0.01", *DATA],
    "bounds": ["bounds", "{m}", "--domain", "0,1", "-q"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_validates_its_model_once(setup, reads, command):
    _, (model, _), data = setup
    args = [a.format(m=model, d=data) for a in COMMANDS[command]]
    res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert dict(reads) == {str(model): 1}


def test_compare_validates_each_model_once(setup, reads, tmp_path):
    _, models, data = setup
    out = tmp_path / "c.json"
    res = runner.invoke(app, ["compare", *map(str, models), "--data", str(data), "--scale", "1/255", "--samples", "3",
                              "--budget", "20", "--clever-samples", "1", "--metric-samples", "3", "-q",
                              "--json", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert dict(reads) == {str(m): 1 for m in models}
    assert [r["model"] for r in json.loads(out.read_text())["rows"]] == ["a", "b"]


def test_an_audit_with_every_section_validates_its_model_once(setup, reads):
    from fimaudit.audit import AuditConfig, run_audit

    _, (model, _), data = setup
    cfg = AuditConfig(model=str(model), data=str(data), samples=3, scale=1 / 255, budget=40, eps=(0.02,),
                      clever_samples=1, metrics_samples=3, certify_sigma=0.25, certify_n=50, verify=True)
    result = run_audit(cfg)
    ran = {s.name: s.status for s in result.sections}
    assert ran == dict.fromkeys(ran, "ok"), {s.name: s.reason for s in result.sections if s.status != "ok"}
    assert dict(reads) == {str(model): 1}
    # the worst directions reach the worst-samples section as arrays (no temporary file named in the report)
    scan = result.section("scan").data
    assert scan["config"]["save_direction"] is None


def test_jobs_on_one_subject_count_their_own_queries(setup):
    """A job's view of the subject starts its query count at 0, as when it opened the file itself."""
    from fimaudit.scan import ScanConfig, scan, scan_job

    _, (model, _), data = setup
    cfg = ScanConfig(model=str(model), data=str(data), samples=2, budget=40, scale=1 / 255)
    subject = open_subject(cfg)
    first, second = scan_job(subject, cfg), scan_job(subject, cfg)
    alone = scan(cfg)
    assert first.summary.queries_total == second.summary.queries_total == alone.summary.queries_total
    assert [s.lambda_max for s in first.samples] == [s.lambda_max for s in alone.samples]


def test_a_config_that_opens_the_model_differently_is_refused(setup):
    from fimaudit.scan import ScanConfig, scan_job

    _, (model, other), data = setup
    subject = open_subject(OpenOptions(str(model)))
    with pytest.raises(ValueError, match="threads"):
        scan_job(subject, ScanConfig(model=str(model), threads=1))
    with pytest.raises(ValueError, match="model"):
        scan_job(subject, ScanConfig(model=str(other)))


def test_a_subject_rebuilt_from_its_bytes_answers_as_the_original(setup, reads):
    _, (model, _), _ = setup
    subject = open_subject(OpenOptions(str(model)))
    again = Subject.from_bytes(subject.model_bytes, subject.spec)
    rows = np.random.default_rng(1).uniform(size=(4, 1, 4, 4))
    np.testing.assert_array_equal(again.model().run(rows), subject.model().run(rows))
    assert again.info.sha256 == subject.info.sha256 and reads[str(model)] == 1  # no second validation


def test_subject_rng_is_the_registry_stream(setup):
    from fimaudit import streams

    _, (model, _), _ = setup
    subject = open_subject(OpenOptions(str(model), seed=7))
    assert subject.rng("scan.probes", 3).integers(1 << 30) == streams.rng(7, "scan.probes", 3).integers(1 << 30)


def test_a_worker_task_rebuilds_the_subject_from_bytes_without_reading_the_model(setup, reads):
    """run_per_model's task (what a Dask worker runs per model) gets the validated bytes, never a path to reload."""
    from fimaudit.distributed import _model_task
    from fimaudit.evidence import ModelSpec

    _, (model, _), data = setup
    subject = open_subject(OpenOptions(str(model)))
    seen = {}

    def row(spec, *, subject, tag):
        seen.update(spec=spec, subject=subject, tag=tag)
        return {"model": spec.name}

    out = _model_task(row, ModelSpec(str(model), str(data)), subject.model_bytes, subject.spec,
                      data.read_bytes(), {"tag": 1})
    assert reads[str(model)] == 1  # the open above; the task read no model file
    assert out["model"] == str(model) and seen["tag"] == 1
    assert seen["subject"].info.sha256 == subject.info.sha256 and seen["spec"].path == str(model)
