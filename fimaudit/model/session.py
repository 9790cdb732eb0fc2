"""onnxruntime session creation: provider choice (CUDA only when it really loads) and quiet logs."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import ConfigError, ModelLoadError, UnsupportedModelError

# onnxruntime-gpu prints provider-load failures at ERROR level; keep its logger at FATAL
# unless the user asks for it (FIMAUDIT_ORT_LOG=0..4).
_SEVERITY = int(os.environ.get("FIMAUDIT_ORT_LOG", "4"))


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(_SEVERITY)
    return ort


@contextlib.contextmanager
def _silenced_stderr():
    """Redirect the C-level stderr while native code may print load errors."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when onnxruntime's CUDA provider library and its CUDA/cuDNN dependencies load."""
    ort = _ort()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not lib.exists():
        return False
    sink = io.StringIO()
    try:
        # preload_dlls finds CUDA libraries installed from PyPI; it prints when they are absent.
        with _silenced_stderr(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            if hasattr(ort, "preload_dlls"):
                with contextlib.suppress(Exception):
                    ort.preload_dlls()
            ctypes.CDLL(str(lib))
    except OSError:
        return False
    return True


_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC", "none": "ORT_DISABLE_ALL"}


def _options(threads: int, *, arena: bool = True, optimization: str = "all"):
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = _SEVERITY
    # Spinning threads starve anything else in the process (numpy, torch in benchmarks).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads > 0:
        so.intra_op_num_threads = threads
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[optimization])
    if not arena:  # tensors are allocated per run and returned, not kept in a growing pool
        so.enable_cpu_mem_arena = False
    return so


_NOT_REGISTERED = re.compile(r"(?:Fatal error:\s*)?([\w.]*):?(\w+)\(-?\d+\) is not a registered function/op")
_NO_OP = re.compile(r"No Op registered for (\w+) with domain_version of (\d+)")


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exceptions onnxruntime raises for a model it cannot load or run (its pybind11 error classes derive from
    Exception directly), with RuntimeError for the few it raises plainly: what a probe of a model may catch."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException", "InvalidProtobuf",
             "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    return tuple(getattr(state, n) for n in names if hasattr(state, n)) + (RuntimeError,)


def translate_ort_error(exc: BaseException) -> str:
    """Turn an onnxruntime exception into one readable line."""
    text = str(exc)
    m = _NOT_REGISTERED.search(text)
    if m:
        dom = f"{m.group(1)}:" if m.group(1) else ""
        return f"unsupported operator '{dom}{m.group(2)}': onnxruntime has no implementation for it"
    m = _NO_OP.search(text)
    if m:
        return f"unsupported operator '{m.group(1)}' at opset {m.group(2)}: onnxruntime has no implementation for it"
    m = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text)
    if m:
        return f"model IR version {m.group(1)} is newer than onnxruntime supports (max supported IR version: {m.group(2)})"
    # Drop onnxruntime's "[ONNXRuntimeError] : 1 : FAIL :" prefix and source locations.
    text = re.sub(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    text = re.sub(r"/onnxruntime_src/\S+\s+\S+.*?\)\s*", "", text)
    line = " ".join(text.split())
    return line[:300] if line else type(exc).__name__


def create_session(model_bytes: bytes, *, device: str = "auto", threads: int = 0, arena: bool = True,
                   optimization: str = "all", initializers: dict | None = None):
    """Return ``(session, provider)``. ``device`` is auto, cpu or cuda.

    ``arena`` False: no CPU memory arena (large tensors go back to the system after each run);
    ``optimization``: all (default), extended, basic or none; ``initializers``: name -> numpy
    array for initializers the model declares as external data (onnxruntime copies them).
    """
    ort = _ort()
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not '{device}'")
    want_cuda = device == "cuda" or (device == "auto" and cuda_available())
    if device == "cuda" and not cuda_available():
        raise ConfigError("--device cuda: onnxruntime's CUDA provider does not load on this machine (use --device cpu)")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
    try:
        with _silenced_stderr() if want_cuda else contextlib.nullcontext():
            options = _options(threads, arena=arena, optimization=optimization)
            if initializers:
                names = list(initializers)
                values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(initializers[n])) for n in names]
                options.add_external_initializers(names, values)
            session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
    except Exception as exc:
        message = translate_ort_error(exc)
        if "unsupported operator" in message:
            raise UnsupportedModelError(message) from None
        raise ModelLoadError(f"onnxruntime cannot load the model: {message}") from None
    used = session.get_providers()[0]
    if device == "cuda" and used != "CUDAExecutionProvider":
        raise ConfigError("--device cuda: the CUDA provider failed to initialise for this model")
    return session, used


# --------------------------------------------------------------- graphs whose large initializers stay numpy arrays
def reads(model: onnx.ModelProto, weights: dict) -> list[str]:
    """The names in ``weights`` that ``model`` reads (all of them when a node has a subgraph), in pool order."""
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return list(weights)
    used = {i for n in g.node for i in n.input} | {i.name for i in g.input}
    return [n for n in weights if n in used]


def with_placeholders(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` declaring ``arrays`` as initializers whose data onnxruntime gets from memory."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name, arr in arrays.items():
        t = out.graph.initializer.add()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        t.data_location = onnx.TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", "fimaudit-in-memory"  # never read: the session gets the array
    return out


def open_session(model: onnx.ModelProto, device: str = "auto", threads: int = 0, weights: dict[str, np.ndarray] | None = None,
                 **options):
    """An onnxruntime session for a derivative graph; the initializers it reads from ``weights`` are handed to
    onnxruntime as arrays (declared in the model as external data), never serialised."""
    names = reads(model, weights) if weights else []
    if names:
        model = with_placeholders(model, {n: weights[n] for n in names})
    return create_session(model.SerializeToString(), device=device, threads=threads,
                          initializers={n: weights[n] for n in names} or None, **options)
