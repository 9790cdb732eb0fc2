"""Per-sample work in this process or spread over a Dask cluster (the optional ``distributed`` extra).

A piece of per-sample work is a picklable callable ``work(model, indices, points, labels)``
returning one result per sample; every sample draws from its own seeded Generator, so where
it runs does not change what it returns. On a cluster, samples go out in chunks; the model
bytes are scattered to every worker once and each worker process opens one onnxruntime
session per model (cached by sha256) for all the chunks it runs. A worker that dies has its
chunks rescheduled by Dask; results are merged by sample index, each exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import ConfigError, FimauditError
from .model.engine import Model
from .model.loader import ModelInfo

EXTRA_HINT = "pip install 'fimaudit[distributed]'"
CONNECT_TIMEOUT_S = 20


class SampleWork(Protocol):
    def __call__(self, model: Model, indices: Sequence[int], points: np.ndarray, labels: Sequence[Any]) -> list: ...


@dataclass(frozen=True)
class Execution:
    """Where the work runs: ``workers`` local processes, or the cluster behind ``scheduler``."""

    workers: int | None = None
    scheduler: str | None = None
    chunk: int = 0  # samples per task; 0 chooses about four tasks per worker

    @property
    def distributed(self) -> bool:
        return self.workers is not None or self.scheduler is not None

    def validate(self) -> None:
        if self.workers is not None and self.scheduler is not None:
            raise ConfigError("give either --workers (start a local cluster) or --scheduler (join one), not both")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("--workers must be >= 1")
        if self.scheduler is not None and not self.scheduler.strip():
            raise ConfigError("--scheduler needs an address such as tcp://HOST:8786")
        if self.chunk < 0:
            raise ConfigError("the chunk size must be >= 0")
        if self.distributed:
            require_dask()


def require_dask():
    """The ``distributed`` module, or one clear error naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"--workers/--scheduler need Dask, which is not installed: {EXTRA_HINT}") from None
    return distributed


@contextlib.contextmanager
def open_client(execution: Execution, threads: int = 0) -> Iterator[Any]:
    """A ``distributed.Client``: a fresh LocalCluster (processes, 1 thread each) or the given scheduler."""
    distributed = require_dask()
    if execution.scheduler is not None:
        try:
            client = distributed.Client(execution.scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {execution.scheduler}: {exc}") from None
        with client:
            yield client
        return
    env = {"OMP_NUM_THREADS": str(max(threads, 1))}
    with distributed.LocalCluster(
        n_workers=execution.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
        env=env,
    ) as cluster, distributed.Client(cluster) as client:
        yield client


# --------------------------------------------------------------------------- worker side
@dataclass(frozen=True)
class SessionSpec:
    """What a worker needs to open a validated model besides its bytes (picklable)."""

    sha256: str
    info: ModelInfo
    input_dtype: str
    max_batch: int
    device: str
    threads: int

    @classmethod
    def of(cls, model: Model, device: str, threads: int) -> "SessionSpec":
        # The requested batch, not this machine's choice: each worker sizes batches for its own device.
        return cls(model.info.sha256, model.info, np.dtype(model.input_dtype).name, model.requested_batch, device,
                   threads)

    @property
    def key(self) -> tuple:
        return (self.sha256, self.device, self.threads, self.max_batch)


_WORKER_MODELS: dict[tuple, Model] = {}
SESSIONS_OPENED = [0]  # per process; the tests check that chunks reuse the worker's session


def worker_model(blob: bytes, spec: SessionSpec) -> Model:
    """This process's ``Model`` for ``spec``: the session is created once per worker and model."""
    model = _WORKER_MODELS.get(spec.key)
    if model is None:
        import onnx

        from .model.loader import open_session

        proto = onnx.load_from_string(blob)
        session, provider, _ = open_session(proto, Path(spec.info.path), spec.device, spec.threads)
        model = Model(session, spec.info, provider=provider, input_dtype=spec.input_dtype, max_batch=spec.max_batch,
                      proto=proto)
        _WORKER_MODELS[spec.key] = model
        SESSIONS_OPENED[0] += 1
    return model


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def run_chunk(
    work: SampleWork, blob: bytes, spec: SessionSpec, indices: list[int], points: np.ndarray, labels: list
) -> tuple[list, dict]:
    """One task: the work on a chunk of samples, with what it cost on this worker."""
    model = worker_model(blob, spec)
    q0, r0, t0 = model.queries, model.run_seconds, time.perf_counter()
    results = work(model, indices, points, labels)
    return results, {
        "worker": _worker_name(),
        "pid": os.getpid(),
        "provider": model.provider,
        "batch": model.max_batch,
        "io_binding": model.device_plan.binding,
        "samples": len(indices),
        "queries": model.queries - q0,
        "run_seconds": model.run_seconds - r0,
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------- client side
ProgressFn = Callable[[int, int, int], None]


def run_per_sample(
    work: SampleWork,
    model: Model,
    points: np.ndarray,
    labels: Sequence[Any],
    *,
    execution: Execution | None = None,
    progress: ProgressFn | None = None,
    device: str = "auto",
    threads: int = 0,
    blob: bytes | None = None,
) -> tuple[list, dict]:
    """Run ``work`` on every sample; returns the results in sample order and ``run_info``.

    ``blob``: the model's validated bytes when the caller holds them (``Subject.model_bytes``), sent to the workers
    as they are; otherwise serialised from ``model.proto``.

    ``run_info`` holds ``provider``, ``run_seconds`` (inside onnxruntime, summed over workers),
    ``busy_seconds`` (worker time on the chunks; absent in one process) and ``execution`` (mode, workers, chunks, per-worker provider/samples/queries/seconds).
    """
    n = points.shape[0]
    if execution is None or not execution.distributed:
        return _run_local(work, model, points, labels, progress)
    execution.validate()
    local_threads = threads
    if execution.workers is not None and threads == 0:
        # Dask gives each worker one thread; onnxruntime's pool would otherwise take every core per worker.
        local_threads = max(1, (os.cpu_count() or 1) // execution.workers)
    spec = SessionSpec.of(model, device, local_threads)
    blob = model.proto.SerializeToString() if blob is None else blob
    with open_client(execution, local_threads) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        chunk = execution.chunk or max(1, math.ceil(n / (4 * n_workers)))
        results, tasks = _run_on_client(client, work, blob, spec, points, labels, chunk, progress)
    per_worker: dict[str, dict] = {}
    for t in tasks:
        w = per_worker.setdefault(t["worker"], {"worker": t["worker"], "provider": t["provider"], "batch": t["batch"],
                                                "io_binding": t["io_binding"], "samples": 0, "queries": 0,
                                                "seconds": 0.0, "tasks": 0})
        w["samples"] += t["samples"]
        w["queries"] += t["queries"]
        w["seconds"] += t["seconds"]
        w["tasks"] += 1
    providers = sorted({t["provider"] for t in tasks})
    info = {
        "provider": providers[0] if len(providers) == 1 else "mixed: " + ", ".join(providers),
        "run_seconds": float(sum(t["run_seconds"] for t in tasks)),
        "busy_seconds": float(sum(t["seconds"] for t in tasks)),  # worker time spent on the chunks
        "execution": {
            "mode": "dask",
            "scheduler": execution.scheduler or "local cluster",
            "workers": n_workers,
            "samples_per_chunk": chunk,
            "chunks": math.ceil(n / chunk),
            "onnxruntime_threads": local_threads,
            "per_worker": sorted(per_worker.values(), key=lambda w: w["worker"]),
        },
    }
    return results, info


def _run_local(work: SampleWork, model: Model, points: np.ndarray, labels: Sequence[Any], progress) -> tuple[list, dict]:
    n = points.shape[0]
    r0 = model.run_seconds
    results: list = []
    if progress:
        progress(0, n, model.queries)
    for i in range(n):
        results.extend(work(model, [i], points[i : i + 1], [labels[i]]))
        if progress:
            progress(i + 1, n, model.queries)
    info = {
        "provider": model.provider,
        "run_seconds": model.run_seconds - r0,
        "execution": {"mode": "local", "workers": 1, "per_worker": [{"worker": "local", "provider": model.provider,
                                                                      "batch": model.max_batch,
                                                                      "io_binding": model.device_plan.binding,
                                                                      "samples": n}]},
    }
    return results, info


def _run_on_client(client, work, blob, spec, points, labels, chunk, progress) -> tuple[list, list[dict]]:
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    n = points.shape[0]
    # Sent once to every worker; tasks refer to it, so the bytes do not travel with each chunk.
    blob_future = client.scatter(blob, broadcast=True, hash=False)
    futures = {}
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        fut = client.submit(run_chunk, work, blob_future, spec, idx, points[start : start + len(idx)],
                            [labels[i] for i in idx], pure=False)
        futures[fut] = idx
    by_index: dict[int, Any] = {}
    tasks: list[dict] = []
    queries = 0
    if progress:
        progress(0, n, 0)
    try:
        for fut in as_completed(list(futures)):
            results, task = fut.result()
            for i, r in zip(futures[fut], results):
                if i in by_index:  # a chunk must be merged exactly once
                    raise AssertionError(f"sample {i} came back twice")
                by_index[i] = r
            tasks.append(task)
            queries += task["queries"]
            if progress:
                progress(len(by_index), n, queries)
    except KilledWorker as exc:
        raise FimauditError(
            "Dask workers died every time they ran one chunk of samples, so it was given up (out of memory? "
            "see the worker logs)"
        ) from exc
    finally:
        for fut in futures:
            fut.cancel()
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        raise AssertionError(f"samples {missing[:5]} never came back from the cluster")
    return [by_index[i] for i in range(n)], tasks


# --------------------------------------------------------------------------- one task per model
def _model_task(fn: Callable[..., dict], spec: Any, model_blob: bytes, subject_spec: Any, data_blob: bytes | None,
                kwargs: dict) -> dict:
    """Run ``fn(spec, subject=..., **kwargs)`` on a worker: the subject rebuilt from its validated bytes (a session,
    no file, no second validation), a data file materialised locally."""
    import dataclasses
    import tempfile

    from .subject import Subject

    t0 = time.perf_counter()
    subject = Subject.from_bytes(model_blob, subject_spec)
    with tempfile.TemporaryDirectory(prefix="fimaudit-worker-") as tmp:
        data = spec.data
        if data_blob is not None:
            data = str(Path(tmp) / ("data" + Path(spec.data).suffix))
            Path(data).write_bytes(data_blob)
        local = dataclasses.replace(spec, data=data, name=spec.name or spec.path)
        row = fn(local, subject=subject, **kwargs)
    row["timing"] = {**row.get("timing", {}), "worker": _worker_name(), "worker_seconds": time.perf_counter() - t0}
    return row


def run_per_model(
    fn: Callable[..., dict], specs: Sequence[Any], kwargs: dict, execution: Execution,
    progress: Callable[[str], None] | None = None,
    collected: dict[int, dict] | None = None,
    *, open_subject: Callable[[Any], Any],
) -> list[dict]:
    """``[fn(spec, subject=open_subject(spec), **kwargs) for spec in specs]`` with one Dask task per model, in the
    order of ``specs``.

    ``collected`` (spec index -> row) fills as models finish, so a caller stopped by ``--timeout``
    keeps the rows that were done.

    Each model is validated once, here (``open_subject``), and travels once, as its subject's validated bytes
    (external data inlined); the worker rebuilds the subject from them. A data file travels with it; an image
    folder is read by path, so the workers must see it.
    """
    execution.validate()
    blobs = []
    for spec in specs:
        subject = open_subject(spec)
        data_blob = Path(spec.data).read_bytes() if spec.data and Path(spec.data).is_file() else None
        blobs.append((subject.model_bytes, subject.spec, data_blob))
    with open_client(execution) as client:
        from distributed import as_completed

        futures = {}
        for i, (spec, (model_blob, subject_spec, data_blob)) in enumerate(zip(specs, blobs)):
            model_f = client.scatter(model_blob, hash=False)
            data_f = None if data_blob is None else client.scatter(data_blob, hash=False)
            futures[client.submit(_model_task, fn, spec, model_f, subject_spec, data_f, kwargs, pure=False)] = i
        rows: dict[int, dict] = {} if collected is None else collected
        for fut in as_completed(list(futures)):
            rows[futures[fut]] = fut.result()
            if progress:
                progress(rows[futures[fut]]["model"])
    return [rows[i] for i in range(len(specs))]
