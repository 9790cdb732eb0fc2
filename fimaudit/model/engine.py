"""The query engine: batched evaluation of an onnxruntime session with query counting.

A query is one row of input evaluated by the model (MATH §2). ``Model.run`` hands any number of
rows to the one batched runner (``model.runner.BatchRunner``: batches of ``max_batch`` rows for a
symbolic batch axis, the fixed size otherwise, padding the last batch), which counts the real rows.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelOutputError
from .gpu import BoundRunner, device_plan
from .runner import BatchRunner
from .spec import ModelInfo


CPU_BATCH_BYTES = 32 * 1024 * 1024


class Model:
    """A validated ONNX classifier ready to be queried. Not thread-safe."""

    def __init__(
        self, session, info: ModelInfo, *, provider: str, input_dtype, max_batch: int = 256, proto=None
    ) -> None:
        if max_batch < 0:
            raise ValueError("max_batch must be >= 1, or 0 for automatic")
        self._session = session
        self.info = info
        self.provider = provider
        self._dtype = np.dtype(input_dtype)
        self.input_dtype = self._dtype.type
        # On CUDA the batch follows free device memory and rows go through I/O binding (model/gpu.py).
        self.requested_batch = int(max_batch)
        self.device_plan = device_plan(provider, int(max_batch), proto, info.sample_shape)
        batch = self.device_plan.batch if info.fixed_batch is None else int(info.fixed_batch)
        if info.fixed_batch is None and self.device_plan.binding is None:
            # Large inputs on the CPU: at most CPU_BATCH_BYTES of input rows per run, since
            # onnxruntime's activations grow with the batch (3x224x224: 55 rows rather than 256).
            per_row = max(1, info.d * self._dtype.itemsize)
            batch = max(1, min(batch, CPU_BATCH_BYTES // per_row))
        self.runner = BatchRunner(session, self._dtype, batch=batch, fixed_batch=info.fixed_batch, what="the model")
        self._bound = None
        if self.device_plan.binding is not None:
            self.bind_io(self.device_plan.binding)
        self.n_classes: int | None = None
        self.proto = proto  # the validated onnx.ModelProto (external data loaded), for graph analysis
        self.notes: list[str] = []  # what running the model taught us (e.g. a batch it cannot take)
        self._batch_ok = False  # a batch of more than one row has run

    @property
    def max_batch(self) -> int:
        """Rows per onnxruntime run."""
        return self.runner.batch

    @property
    def queries(self) -> int:
        return self.runner.counts.rows

    @property
    def passes(self) -> int:
        """onnxruntime run calls."""
        return self.runner.counts.passes

    @property
    def run_seconds(self) -> float:
        """Wall time inside onnxruntime's run."""
        return self.runner.counts.seconds

    def fresh(self) -> "Model":
        """A new ``Model`` over this one's session (the validated model opened once): counters, class count and
        batch choice start afresh, as if the file had been opened again (``fimaudit.subject``)."""
        return Model(self._session, self.info, provider=self.provider, input_dtype=self._dtype,
                     max_batch=self.requested_batch, proto=self.proto)

    def _one_row_fallback(self, chunk: np.ndarray, rows: int) -> bool:
        """After a failed multi-row batch on a dynamic batch axis, switch to one row per run if that works.

        Some exports declare a dynamic batch but hard-code 1 inside (e.g. Reshape to [1, -1]).
        """
        if self._batch_ok or self.info.fixed_batch is not None or rows < 2 or self.max_batch == 1:
            return False
        try:
            self._session.run([self.info.output.name], {self.info.input.name: np.ascontiguousarray(chunk[:1], dtype=self._dtype)})
        except Exception:
            return False
        self.runner.batch = 1
        self.notes.append("the model declares a dynamic batch but fails on batches of more than one row; "
                          "it is queried one row at a time")
        return True

    def bind_io(self, device: str) -> None:
        """Run through I/O binding on ``device`` (automatic on CUDA; "cpu" exercises it in tests)."""
        self._bound = BoundRunner(self._session, self.info.input.name, self.info.output.name, self._dtype,
                                  self.sample_shape, self.max_batch, device)
        self.runner.execute = lambda outputs, feed: [self._bound.run(feed[self.info.input.name])]

    def _check_pass(self, outs: list, fed: int) -> None:
        """After a counted pass of ``fed`` rows: the output must have a batch axis of that many rows."""
        self._batch_ok = self._batch_ok or fed > 1
        out = outs[0]
        if out.ndim == 0 or out.shape[0] != fed:
            raise ModelOutputError(
                f"output '{self.info.output.name}' has shape {list(out.shape)}, which has no batch axis of {fed} rows"
            )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.info.sample_shape

    @property
    def d(self) -> int:
        return self.info.d

    def run(self, x: np.ndarray) -> np.ndarray:
        """Evaluate rows ``x`` of shape ``(n, *sample_shape)``; returns float64 ``(n, K)``.

        Raises ``ModelOutputError`` when the model returns NaN or Inf.
        """
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"expected rows of shape {self.sample_shape}, got {x.shape[1:]}")
        if x.shape[0] == 0:
            result = np.zeros((0, self.n_classes or 0))
        else:
            (result,) = self.runner.run([self.info.output.name], {self.info.input.name: x}, flat=True,
                                        retry=lambda feed, real: self._one_row_fallback(feed[self.info.input.name], real),
                                        check=self._check_pass)
        if not np.all(np.isfinite(result)):
            raise ModelOutputError(f"the model returned NaN or Inf in output '{self.info.output.name}'")
        if self.n_classes is None and result.shape[0]:
            self.n_classes = int(result.shape[1])
            if self.n_classes < 2:
                raise ModelOutputError(
                    f"output '{self.info.output.name}' has {self.n_classes} value per sample; fimaudit needs scores for "
                    "at least 2 classes"
                )
        return result
