"""Options shared by every job that loads a model and reads data (scan, attack, metrics, certify, audit)."""

from __future__ import annotations

from dataclasses import dataclass

from .images import DEFAULT_RESIZE


@dataclass(frozen=True, kw_only=True)
class ModelDataOptions:
    """How to open the model and read its data: one declaration for every job's config.

    Keyword-only, so each job's own fields (``model``, ``data``, ...) keep their positions.
    """

    device: str = "auto"
    input_name: str | None = None
    output_name: str | None = None
    input_shape: tuple[int, ...] | None = None
    output_kind: str = "auto"  # certify records it only: the argmax is the same for logits and (log-)probabilities
    max_batch: int = 256  # rows per onnxruntime call; 0: automatic (from free memory on a GPU)
    threads: int = 0
    layout: str = "auto"
    resize: str = DEFAULT_RESIZE
    channels: str = "rgb"
    preset: str | None = None
    classes: str | None = None  # image folders: --classes FILE, class names in the model's output order
