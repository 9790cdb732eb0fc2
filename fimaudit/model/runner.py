"""The one batched onnxruntime runner: the model's queries (``model.engine.Model``) and the derivative graphs' passes
(``autodiff.source.GraphEngine``) both go through ``BatchRunner.run``.

Sessions come from ``model.session`` (``create_session``: providers, quiet logs, no spinning threads;
``open_session``: the same for a graph whose large initializers stay numpy arrays). A runner splits row-aligned
feeds into batches of at most ``batch`` rows, pads a fixed batch axis with copies of the first row, feeds contiguous
arrays of the session's input dtype, returns float64 outputs of the real rows only, and counts real rows, passes and
seconds inside onnxruntime (``RunCounts``, shareable by the runners of one engine). An onnxruntime failure is one
``ModelOutputError`` line naming ``what`` ran (``what=None``: the exception as raised, for callers that judge it).
Users: the model's queries, the gradient graphs (``autodiff.source``) and the float64 check copy
(``autodiff.reference.Float64Logp``, whose ``execute`` may be onnx's reference evaluator).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ModelOutputError
from .session import translate_ort_error


@dataclass
class RunCounts:
    """Rows evaluated (a row = one query, or one point through one derivative pass; padding not counted), session
    runs and wall seconds inside onnxruntime's run."""

    rows: int = 0
    passes: int = 0
    seconds: float = 0.0


# ``retry(feed, real)``: after a failed or batch-less pass, whether to run the same rows again (it may lower
# ``batch``); ``check(outputs, fed)``: raises when a counted pass's outputs are unusable.
Retry = Callable[[dict, int], bool]
Check = Callable[[list, int], None]


class BatchRunner:
    """One onnxruntime session run over any number of rows in batches. Not thread-safe.

    ``execute(outputs, feed) -> list`` replaces ``session.run`` (e.g. I/O binding on CUDA, ``model.gpu``).
    """

    def __init__(self, session, dtype, *, batch: int, fixed_batch: int | None = None, what: str | None = "the model",
                 counts: RunCounts | None = None) -> None:
        self.session = session
        self.dtype = np.dtype(dtype)
        self.fixed_batch = None if fixed_batch is None else int(fixed_batch)
        self.batch = int(fixed_batch) if fixed_batch is not None else max(1, int(batch))
        self.what = what
        self.counts = counts if counts is not None else RunCounts()
        self.execute: Callable[[list[str], dict], list] = session.run if session is not None else None

    def feed(self, feeds: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of every feed, padded to the fixed batch, contiguous in the session's dtype."""
        out = {k: v[start:stop] for k, v in feeds.items()}
        real = stop - start
        if self.fixed_batch is not None and real < self.fixed_batch:
            out = {k: np.concatenate([v, np.repeat(v[:1], self.fixed_batch - real, axis=0)]) for k, v in out.items()}
        return {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in out.items()}

    def failure(self, exc: BaseException) -> BaseException:
        if self.what is None:
            return exc
        return ModelOutputError(f"onnxruntime failed while running {self.what}: {translate_ort_error(exc)}")

    def once(self, outputs: list[str], feed: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
        """One counted pass of a ready ``feed`` (no batching), float64 outputs; ``rows``: the rows it counts."""
        t0 = time.perf_counter()
        try:
            outs = self.execute(outputs, feed)
        except Exception as exc:
            if self.what is None:
                raise
            raise self.failure(exc) from None
        self._count(rows, t0)
        return [np.asarray(o, dtype=np.float64) for o in outs]

    def _count(self, rows: int, t0: float) -> None:
        self.counts.seconds += time.perf_counter() - t0
        self.counts.rows += rows
        self.counts.passes += 1

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray], *, retry: Retry | None = None,
            check: Check | None = None, flat: bool = False) -> list[np.ndarray]:
        """``outputs`` on the rows of ``feeds`` (row-aligned arrays), batch by batch: float64, real rows only
        (``flat``: each row flattened, ``(rows, -1)``)."""
        n = next(iter(feeds.values())).shape[0]
        chunks: list[list[np.ndarray]] = [[] for _ in outputs]
        start = 0
        while start < n:
            stop = min(n, start + self.batch)
            real = stop - start
            feed = self.feed(feeds, start, stop)
            fed = next(iter(feed.values())).shape[0]
            t0 = time.perf_counter()
            try:
                outs = self.execute(outputs, feed)
            except Exception as exc:
                if retry is not None and retry(feed, real):
                    continue  # the same rows again (in smaller batches)
                if self.what is None:
                    raise
                raise self.failure(exc) from None
            outs = [np.asarray(o) for o in outs]
            if retry is not None and any(o.ndim == 0 or o.shape[0] != fed for o in outs) and retry(feed, real):
                continue
            self._count(real, t0)
            if check is not None:
                check(outs, fed)
            for i, o in enumerate(outs):
                o = o[:real]
                chunks[i].append((o.reshape(real, -1) if flat else o).astype(np.float64))
            start = stop
        return [np.concatenate(c, axis=0) if c else np.zeros((0,)) for c in chunks]
