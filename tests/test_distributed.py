"""Dask scale-out: the merged report equals the single-process one; a killed worker loses nothing."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

from fimaudit.certify import CertifyConfig, certify
from fimaudit.distributed import Execution, run_per_sample
from fimaudit.errors import ConfigError
from fimaudit.model import load_model

from . import builders as B

distributed = pytest.importorskip("distributed")

def strip_volatile(d: dict) -> dict:
    """The report without its ``timing`` object (wall-clock fields and how the run was spread)."""
    assert "seconds" not in d["summary"] and "execution" not in d
    return {k: v for k, v in d.items() if k != "timing"}


@pytest.fixture(scope="module")
def cluster():
    """Two single-thread worker processes, shared by the tests here (starting one costs seconds)."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
    ) as c, distributed.Client(c) as client:
        yield c, client


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(1)
    params = B.random_mlp(rng, d=12, hidden=8, k=3, gain=2.0)
    model = B.save(B.mlp_model(*params, sample_shape=(12,)), tmp / "mlp.onnx")
    x = rng.uniform(0, 255, size=(7, 12)).astype(np.float32)
    np.savez(tmp / "d.npz", x=x, y=rng.integers(0, 3, size=7))
    return model, tmp / "d.npz"


def test_cluster_report_equals_single_process_report(setup, cluster):
    model, data = setup
    cfg = CertifyConfig(model=str(model), data=str(data), sigma=0.5, n0=20, n=500, scale=1 / 255, space="data")
    local = certify(cfg)
    seen = []
    remote = certify(cfg, progress=lambda done, total, q: seen.append((done, total, q)),
                     execution=Execution(scheduler=cluster[0].scheduler_address, chunk=2))
    assert strip_volatile(remote.to_dict()) == strip_volatile(local.to_dict())
    ex = remote.execution
    assert ex["mode"] == "dask" and ex["chunks"] == 4 and ex["samples_per_chunk"] == 2
    assert sum(w["samples"] for w in ex["per_worker"]) == 7
    assert all(w["provider"] == "CPUExecutionProvider" for w in ex["per_worker"])
    # progress comes from completed chunks and ends with every sample and query
    assert seen[0][0] == 0 and seen[-1][:2] == (7, 7)
    assert seen[-1][2] == remote.summary.queries_total - 7  # all but the client's set-up queries (one per sample)
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)


def test_each_worker_opens_the_session_once(setup, cluster):
    model, data = setup
    m = load_model(str(model))
    from fimaudit.certify import SmoothingJob

    before = cluster[1].run(lambda: __import__("fimaudit.distributed").distributed.SESSIONS_OPENED[0])
    points = np.random.default_rng(0).uniform(size=(6, 12))
    run_per_sample(SmoothingJob(0.3, 5, 40, 0.01, 0), m, points, [None] * 6,
                   execution=Execution(scheduler=cluster[0].scheduler_address, chunk=1))
    after = cluster[1].run(lambda: __import__("fimaudit.distributed").distributed.SESSIONS_OPENED[0])
    # six chunks, at most one new session per worker (none when an earlier test opened it)
    assert all(after[w] - before.get(w, 0) <= 1 for w in after)


def test_killed_worker_chunks_are_retried_without_loss_or_duplication(setup, cluster):
    model, _ = setup
    c, client = cluster
    m = load_model(str(model))
    from fimaudit.certify import SmoothingJob

    n = 8
    points = np.random.default_rng(2).uniform(size=(n, 12))
    job = SmoothingJob(0.3, 10, 30_000, 0.01, 4)  # a few hundred ms per sample, so chunks are in flight
    expected, _ = run_per_sample(job, m, points, list(range(n)))
    killed = []

    def kill_a_busy_worker(done: int, total: int, queries: int) -> None:
        if killed or done == 0:
            return
        busy = [w for w, keys in client.processing().items() if keys]
        if busy:
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    got, info = run_per_sample(job, m, points, list(range(n)), progress=kill_a_busy_worker,
                               execution=Execution(scheduler=c.scheduler_address, chunk=1))
    assert killed, "no worker was busy when the first chunk finished"
    assert [s.index for s in got] == list(range(n))
    assert got == expected
    assert sum(w["samples"] for w in info["execution"]["per_worker"]) == n
    client.wait_for_workers(2, timeout=30)  # the nanny restarts it for the next test


def test_without_dask_the_flags_give_one_clear_line(monkeypatch, setup):
    model, data = setup
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'fimaudit\[distributed\]'"):
        certify(CertifyConfig(model=str(model), data=str(data), n=100), execution=Execution(workers=2))


@pytest.mark.parametrize(
    "execution, match",
    [
        (Execution(workers=2, scheduler="tcp://x:1"), "not both"),
        (Execution(workers=0), "--workers must be >= 1"),
        (Execution(scheduler=" "), "--scheduler needs an address"),
    ],
)
def test_bad_execution_options(execution, match):
    with pytest.raises(ConfigError, match=match):
        execution.validate()


def test_unreachable_scheduler_is_one_line(setup, monkeypatch):
    model, data = setup
    monkeypatch.setattr("fimaudit.distributed.CONNECT_TIMEOUT_S", 1)
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
        certify(CertifyConfig(model=str(model), data=str(data), n=100),
                execution=Execution(scheduler="tcp://127.0.0.1:9"))


def test_compare_distributes_models_with_the_same_rows(tmp_path, cluster):
    from fimaudit.evidence import ModelSpec, compare_models

    rng = np.random.default_rng(3)
    specs = []
    x = rng.uniform(0, 1, size=(6, 10)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=rng.integers(0, 3, size=6))
    for i, gain in enumerate((0.5, 1.5, 3.0)):
        path = B.save(B.mlp_model(*B.random_mlp(rng, d=10, hidden=6, k=3, gain=gain)), tmp_path / f"m{i}.onnx")
        specs.append(ModelSpec(str(path), str(tmp_path / "d.npz"), name=f"m{i}"))
    kw = dict(samples=3, budget=60, clever_points=10, clever_samples=2, with_metrics=False, boot=50)
    local = compare_models(specs, **kw)
    done = []
    remote = compare_models(specs, **kw, execution=Execution(scheduler=cluster[0].scheduler_address),
                            progress=done.append)
    drop = lambda rep: [{k: v for k, v in r.items() if k != "timing"} for r in rep["rows"]]  # noqa: E731
    assert drop(remote) == drop(local)
    assert remote["correlations"] == local["correlations"]
    assert sorted(done) == ["m0", "m1", "m2"]
    assert all("worker" in r["timing"] for r in remote["rows"])


@pytest.mark.parametrize("gradients", ["fd", "auto"])  # auto: the gradient graph, rebuilt on each worker
def test_scan_on_the_cluster_equals_the_single_process_scan(setup, cluster, tmp_path, gradients):
    from fimaudit.scan import ScanConfig, scan

    model, data = setup
    # auto with --method auto: the graph's exact values (an explicit black-box --method keeps finite differences).
    cfg = ScanConfig(model=str(model), data=str(data), method="sketch" if gradients == "fd" else "auto", budget=40,
                     scale=1 / 255, space="data", save_direction=str(tmp_path / "local.npy"), gradients=gradients)
    local = scan(cfg)
    from dataclasses import replace

    remote = scan(replace(cfg, save_direction=str(tmp_path / "remote.npy")),
                  execution=Execution(scheduler=cluster[0].scheduler_address, chunk=3))
    def strip(d: dict) -> dict:
        d = {k: v for k, v in d.items() if k != "timing"}
        return d | {"config": {k: v for k, v in d["config"].items() if k != "save_direction"}}

    assert strip(remote.to_dict()) == strip(local.to_dict())
    assert remote.summary.queries_total == local.summary.queries_total
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), np.load(tmp_path / "local.npy"))
    assert local.run.gradients_used["source"] == ("graph" if gradients == "auto" else "fd")


def test_audit_scan_and_certify_sections_on_the_cluster(setup, cluster):
    from fimaudit.audit import AuditConfig, run_audit

    model, data = setup
    cfg = AuditConfig(model=str(model), data=str(data), samples=4, budget=40, scale=1 / 255,
                      sections=("scan", "certify", "attacks"), certify_sigma=0.5, certify_n=300)
    local = run_audit(cfg)
    remote = run_audit(cfg, execution=Execution(scheduler=cluster[0].scheduler_address))
    for name in ("scan", "certify"):
        a, b = local.section(name), remote.section(name)
        assert a.status == b.status == "ok", (a.reason, b.reason)
        same = lambda d: {k: v for k, v in d.items() if k != "timing"} | {  # noqa: E731
            "config": {k: v for k, v in d["config"].items() if k != "save_direction"}}  # a temporary file per audit
        assert same(b.data) == same(a.data)
    assert remote.section("certify").data["timing"]["execution"]["mode"] == "dask"
    # attacks: black-box runs on the workers, white-box APGD in the client; the runs equal the local ones
    runs = [(x, y) for x, y in zip(local.section("attacks").data["runs"], remote.section("attacks").data["runs"])]
    assert len(runs) >= 2
    def steady(run: dict) -> dict:  # APGD's gradient record has its graph build time, a wall-clock field
        grads = run.get("gradients") and {k: v for k, v in run["gradients"].items() if k != "build_seconds"}
        return {k: v for k, v in run.items() if k != "timing"} | {"gradients": grads}

    for x, y in runs:
        assert steady(x) == steady(y)
    assert {r["config"]["attack"]: r["timing"].get("execution", {}).get("mode")
            for r in remote.section("attacks").data["runs"]}.get("pgd") == "dask"


@pytest.mark.parametrize("attack,norm", [("pgd", "linf"), ("square", "l2")])
def test_attack_on_the_cluster_equals_the_single_process_attack(setup, cluster, attack, norm):
    from fimaudit.evidence import AttackConfig, run_attack

    model, data = setup
    cfg = AttackConfig(model=str(model), data=str(data), attack=attack, norm=norm, eps=(0.05, 0.3), budget=60,
                       scale=1 / 255, seed=3)
    local = run_attack(cfg)
    remote = run_attack(cfg, execution=Execution(scheduler=cluster[0].scheduler_address, chunk=3))
    local, remote = local.to_dict(), remote.to_dict()
    assert {k: v for k, v in remote.items() if k != "timing"} == {k: v for k, v in local.items() if k != "timing"}
    ex = remote["timing"]["execution"]
    assert ex["mode"] == "dask" and ex["chunks"] == 3 and sum(w["samples"] for w in ex["per_worker"]) == 7
    # the attack did something: some queries beyond the final evaluation
    assert all(s["queries"] > 1 for s in local["results"][0]["samples"] if s["correct"])


def test_whitebox_attack_refuses_workers_in_one_line(setup, cluster):
    from fimaudit.evidence import AttackConfig, run_attack

    model, data = setup
    cfg = AttackConfig(model=str(model), data=str(data), attack="apgd", scale=1 / 255)
    with pytest.raises(ConfigError, match="cannot run on --workers"):
        run_attack(cfg, execution=Execution(scheduler=cluster[0].scheduler_address))


def test_attack_cli_takes_the_cluster_flags(setup, cluster, tmp_path):
    import json

    from typer.testing import CliRunner

    from fimaudit.cli import app

    model, data = setup
    args = ["attack", str(model), "--data", str(data), "--scale", "1/255", "--attack", "square", "--eps", "0.1",
            "--budget", "30", "-q", "--json"]
    runner = CliRunner()
    one = runner.invoke(app, args + [str(tmp_path / "one.json")], catch_exceptions=False)
    two = runner.invoke(app, args + [str(tmp_path / "two.json"), "--scheduler", cluster[0].scheduler_address],
                        catch_exceptions=False)
    assert one.exit_code == 0 and two.exit_code == 0, two.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert b["timing"]["execution"]["mode"] == "dask"
    assert {k: v for k, v in a.items() if k != "timing"} == {k: v for k, v in b.items() if k != "timing"}
    bad = runner.invoke(app, args[:-1] + ["--attack", "apgd", "--workers", "2"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "cannot run on --workers" in bad.stderr
