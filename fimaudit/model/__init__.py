"""Model loading, validation, the onnxruntime session and the log-probability oracle."""

from .engine import Model
from .loader import load_model, parse_input_shape
from .spec import ModelInfo, TensorSpec
from .oracle import OUTPUT_KINDS, LogProbOracle, detect_output_kind

__all__ = [
    "Model",
    "ModelInfo",
    "TensorSpec",
    "load_model",
    "parse_input_shape",
    "LogProbOracle",
    "detect_output_kind",
    "OUTPUT_KINDS",
]
