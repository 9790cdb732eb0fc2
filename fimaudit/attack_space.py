"""Attack space: stored data x --scale (e.g. pixels in [0, 1]); the model sees (x - mean) / std.

Attacks, CLEVER, corruptions and the metric suite all query the model through ``attack_oracle``.
"""

from __future__ import annotations

import numpy as np

from .data import Preprocess
from .model import LogProbOracle, Model, detect_output_kind


def attack_oracle(
    model: Model, mean: tuple[float, ...], std: tuple[float, ...], output_kind: str, x_attack: np.ndarray
) -> tuple[LogProbOracle, str]:
    """Oracle over attack-space rows (model input = (x - mean)/std) and the output kind it uses.

    ``output_kind`` "auto" is detected from the outputs at the first rows of ``x_attack``.
    """
    shape = model.sample_shape
    pre = Preprocess(1.0, tuple(mean), tuple(std))
    pre.check(shape)
    to_input = None if pre.is_identity else (lambda rows: pre.apply(rows, shape))
    probe = LogProbOracle(model, "logits", to_input)
    kind = output_kind if output_kind != "auto" else detect_output_kind(probe.raw(x_attack[: min(16, len(x_attack))]))
    return LogProbOracle(model, kind, to_input), kind
