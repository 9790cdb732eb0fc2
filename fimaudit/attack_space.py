"""Attack space: stored data x --scale (e.g. pixels in [0, 1]); the model sees (x - mean) / std.

Attacks, CLEVER, corruptions and the metric suite all query the model through ``attack_oracle``.
"""

from __future__ import annotations

import numpy as np

from .data import Preprocess, check_labels
from .model import LogProbOracle, Model, detect_output_kind


def attack_oracle(
    model: Model, pre: Preprocess, output_kind: str, x_attack: np.ndarray,
    labels: np.ndarray | None = None, source: str = "",
) -> tuple[LogProbOracle, str]:
    """Oracle over attack-space rows (model input = ``pre`` of them: (x - mean)/std) and the output kind it uses.

    ``pre`` is the attack-space map (``fimaudit.subject.Spaces.attack_to_input``: scale 1). ``output_kind`` "auto" is
    detected from the outputs at the first rows of ``x_attack``; ``labels``, when given, are checked against the
    model's number of classes.
    """
    shape = model.sample_shape
    if pre.scale != 1.0:
        raise ValueError("attack_oracle takes the attack-space map (scale 1): attack space is already scaled")
    pre.check(shape)
    to_input = None if pre.is_identity else (lambda rows: pre.apply(rows, shape))
    probe = LogProbOracle(model, "logits", to_input)
    kind = output_kind if output_kind != "auto" else detect_output_kind(probe.raw(x_attack[: min(16, len(x_attack))]))
    if labels is not None:
        if model.n_classes is None:
            probe.raw(x_attack[:1])
        check_labels(labels, int(model.n_classes), source)
    return LogProbOracle(model, kind, to_input), kind
