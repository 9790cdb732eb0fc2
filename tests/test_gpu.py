"""The GPU path without a GPU: batch choice from (mocked) free memory, provider choice, I/O binding on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from fimaudit.errors import ConfigError
from fimaudit.model import engine, gpu, load_model, session

from . import builders as B

D, H, K = 30, 7, 4


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu")
    params = B.random_mlp(np.random.default_rng(0), d=D, hidden=H, k=K)
    return B.save(B.mlp_model(*params, sample_shape=(D,)), tmp / "mlp.onnx")


def test_row_bytes_counts_every_intermediate_tensor(mlp):
    m = load_model(str(mlp), device="cpu")
    # input x, then Flatten -> xf (D), Gemm -> a (H), Tanh -> t (H), Gemm -> z (K); float32
    assert gpu.row_bytes(m.proto, (D,)) == 4 * (D + D + H + H + K)
    assert gpu.row_bytes(None, (D,)) == 16 * 4 * D


@pytest.mark.parametrize(
    "free, per_row, limit, rows",
    [
        (None, 100, 16384, 256),  # free memory unknown: the CPU default
        (10**9, 1000, 16384, 16384),  # 500000 rows fit: capped
        (10**9, 1000, 4096, 4096),  # the user's --max-batch is the limit
        (10**6, 1000, 16384, 256),  # 500 rows fit: the power of two below
        (2 * 10**6, 1000, 16384, 512),  # 1000 rows fit -> 512
        (100, 1000, 16384, 1),  # not even one row: one at a time rather than none
    ],
)
def test_batch_from_free_memory(free, per_row, limit, rows):
    assert gpu.choose_batch(free, per_row, limit) == rows


def test_device_plan_per_provider(mlp, monkeypatch):
    m = load_model(str(mlp), device="cpu")
    assert gpu.device_plan(gpu.CPU, 0) == gpu.DevicePlan(256, None)
    assert gpu.device_plan(gpu.CPU, 64) == gpu.DevicePlan(64, None)
    monkeypatch.setattr(gpu, "free_device_memory", lambda device_id=0: 4 * 10**6)
    plan = gpu.device_plan(gpu.CUDA, 0, m.proto, (D,))
    per_row = 4 * (2 * D + 2 * H + K)
    assert plan == gpu.DevicePlan(1 << int(np.log2(0.5 * 4e6 / per_row)), "cuda", 4 * 10**6, per_row)


def test_cuda_model_binds_io_and_sizes_batches_from_free_memory(mlp, monkeypatch):
    """A session that reports the CUDA provider gets a device-sized batch and an I/O-bound runner."""
    m = load_model(str(mlp), device="cpu")
    made = []

    class Recorder:
        def __init__(self, sess, inp, out, dtype, shape, batch, device):
            made.append((inp, out, shape, batch, device))

    monkeypatch.setattr(gpu, "free_device_memory", lambda device_id=0: 10**7)
    monkeypatch.setattr(engine, "BoundRunner", Recorder)
    cuda = engine.Model(m._session, m.info, provider=gpu.CUDA, input_dtype=np.float32, max_batch=0, proto=m.proto)
    # half of 10**7 free bytes over 4 * (2D + 2H + K) = 312 bytes a row: 16025 rows, the power of two below
    assert cuda.max_batch == 8192
    assert made == [("x", "z", (D,), cuda.max_batch, "cuda")]
    cpu = engine.Model(m._session, m.info, provider=gpu.CPU, input_dtype=np.float32, max_batch=0, proto=m.proto)
    assert cpu.max_batch == 256 and cpu._bound is None and len(made) == 1


def test_io_binding_gives_the_same_scores_as_session_run(mlp):
    plain = load_model(str(mlp), device="cpu", max_batch=8)
    bound = load_model(str(mlp), device="cpu", max_batch=8)
    bound.bind_io("cpu")  # the same OrtValue code path as CUDA, with the buffers in host memory
    x = np.random.default_rng(1).standard_normal((21, D))  # two full batches and a short one
    np.testing.assert_array_equal(bound.run(x), plain.run(x))
    np.testing.assert_array_equal(bound.run(x[:8] * 2), plain.run(x[:8] * 2))  # the device buffer is refilled
    assert bound.queries == plain.queries == 29


def test_provider_list_with_cuda_but_no_library(monkeypatch):
    """onnxruntime-gpu lists CUDA even where it cannot load: auto falls back, cuda is one clear line."""

    class FakeOrt:
        __file__ = "/nonexistent/onnxruntime/__init__.py"

        @staticmethod
        def get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(session, "_ort", lambda: FakeOrt)
    session.cuda_available.cache_clear()
    try:
        assert session.cuda_available() is False
        with pytest.raises(ConfigError, match="--device cuda: onnxruntime's CUDA provider does not load"):
            session.create_session(b"", device="cuda")
    finally:
        session.cuda_available.cache_clear()
