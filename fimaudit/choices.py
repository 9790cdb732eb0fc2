"""Option vocabularies and the text parsers of option values: what the CLI needs to build its help.

Standard library only (no numpy, onnx or scipy), so that ``fimaudit --help`` starts fast; the modules
that use these names (``model.layout``, ``model.oracle``, ``model.loader``, ``images``, ``data``)
re-export them from here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ConfigError, UnsupportedModelError

# Image layout of a model input; auto reads it from the graph (fimaudit.model.layout).
LAYOUTS = ("auto", "nchw", "nhwc")
# What a model's output holds (fimaudit.model.oracle); auto detects it from the values.
OUTPUT_KINDS = ("logits", "probabilities", "log-probabilities")
# Image folders (fimaudit.images): how a photo becomes the model's input size, and channel order.
RESIZE_POLICIES = ("shorter-side+center-crop", "stretch")
DEFAULT_RESIZE = RESIZE_POLICIES[0]
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class Preset:
    """A named normalisation: model input = (pixel * scale - mean) / std, mean/std in RGB order."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


PRESETS: dict[str, Preset] = {
    "imagenet": Preset(1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                       "pixel/255, then per channel (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] (RGB order)"),
    "inception": Preset(1 / 255, (0.5,), (0.5,), "pixel/127.5 - 1, i.e. inputs in [-1, 1]"),
    "unit": Preset(1 / 255, (0.0,), (1.0,), "pixel/255, i.e. inputs in [0, 1]"),
    "none": Preset(1.0, (0.0,), (1.0,), "raw pixel values 0-255"),
}


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(eval_fraction(t)) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"{flag} '{text}' must be numbers separated by commas") from None
    if not vals:
        raise ConfigError(f"{flag} needs at least one number")
    return vals


def eval_fraction(token: str) -> float:
    """Accept '0.5' and '1/255'."""
    token = token.strip()
    if "/" in token:
        num, den = token.split("/", 1)
        if float(den) == 0:
            raise ValueError(token)
        value = float(num) / float(den)
    else:
        value = float(token)
    if not math.isfinite(value):
        raise ValueError(token)
    return value


def parse_range(text: str) -> tuple[float, float]:
    vals = parse_floats(text, "--input-range")
    if vals is None or len(vals) != 2 or not vals[0] < vals[1]:
        raise ConfigError(f"--input-range '{text}' must be LO,HI with LO < HI")
    return vals[0], vals[1]


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``C,H,W`` (or ``3x224x224``) into positive ints."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise UnsupportedModelError(f"--input-shape '{text}' must be positive integers such as 3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise UnsupportedModelError(f"--input-shape '{text}' must be positive integers such as 3,224,224")
    return dims


def parse_nonnegative(text: str, flag: str) -> tuple[float, ...]:
    """``--eps``/``--tau``/``--radii``: nonnegative numbers (or fractions) separated by commas."""
    vals = parse_floats(text, flag)
    if vals is None or any(v < 0 for v in vals):
        raise ConfigError(f"{flag} '{text}' must be nonnegative numbers separated by commas")
    return vals


def parse_eps_or_inf(text: str) -> tuple[float, ...]:
    """--eps of verify: numbers or fractions, and inf (the whole input box)."""
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok.lower() in ("inf", "infinity"):
            out.append(float("inf"))
            continue
        try:
            out.append(eval_fraction(tok))
        except ValueError:
            raise ConfigError(f"--eps '{text}' must be numbers (or inf) separated by commas") from None
    if not out:
        raise ConfigError("--eps needs at least one number")
    return tuple(out)


def parse_domain(text: str) -> tuple[float, float]:
    """``bounds --domain LO,HI``."""
    try:
        return parse_range(text)
    except ConfigError:
        raise ConfigError(f"--domain '{text}' must be LO,HI with LO < HI") from None
