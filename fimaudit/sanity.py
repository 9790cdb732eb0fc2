"""Is the model seeing what it expects? Clean predictions against labels, the same rule in every command.

A model fed wrongly preprocessed inputs (pixels 0-255 where it expects 0-1, a missing
normalisation, BGR for RGB, NHWC for NCHW) still returns numbers: every Fisher value,
robust accuracy or certificate computed from them is then about inputs the model never
sees. Two symptoms catch most such mistakes before any estimate is read:

* labelled data: clean accuracy at or below ``CHANCE_FACTOR`` times chance (1/K);
* with or without labels: the predictions collapse onto one class (at least
  ``COLLAPSE_SHARE`` of the samples) while the labels, when given, do not.

Either makes the check fail; each command adds the returned note to its report, writes it to
stderr as a warning (``warn``) and the audit turns it into the failing policy check
``preprocessing.sane``.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

CHANCE_FACTOR = 1.5
MIN_LABELLED = 5  # fewer labelled samples say too little about accuracy
COLLAPSE_SHARE = 0.9
MIN_COLLAPSE = 10  # fewer samples can share a class by chance
HINT = "check --scale and --mean/--std (or --preset), --channels (rgb | bgr) and --layout"


@dataclass(frozen=True)
class PreprocessingCheck:
    """The verdict with the figures behind it; ``note`` says what is wrong and what to check (None when sane)."""

    sane: bool
    samples: int
    classes: int
    accuracy: float | None  # clean accuracy on the labelled samples (None without labels)
    chance: float  # 1 / classes
    top_class: int | None
    top_class_share: float  # share of predictions in the most predicted class
    note: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def preprocessing_check(predicted, labels, n_classes: int) -> PreprocessingCheck:
    """Apply the rule to clean predictions (``labels`` None for unlabelled data)."""
    pred = np.asarray(predicted, dtype=np.int64).reshape(-1)
    n, k = int(pred.size), int(n_classes)
    chance = 1.0 / k if k > 0 else 1.0
    if n == 0:
        return PreprocessingCheck(True, 0, k, None, chance, None, 0.0, None)
    counts = np.bincount(pred, minlength=max(k, 1))
    top = int(np.argmax(counts))
    share = float(counts[top] / n)
    accuracy = None
    problems = []
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)[:n]
        accuracy = float(np.mean(pred == y))
        if n >= MIN_LABELLED and k >= 2 and accuracy <= CHANCE_FACTOR * chance:
            problems.append(f"clean accuracy {100 * accuracy:.0f}% on {n} labelled samples is at or below "
                            f"{CHANCE_FACTOR:g}x chance ({100 * chance:.0f}% for {k} classes)")
        label_share = float(np.bincount(y, minlength=max(k, 1)).max() / n) if y.size else 0.0
    else:
        label_share = 0.0
    if n >= MIN_COLLAPSE and k >= 3 and share >= COLLAPSE_SHARE and label_share < COLLAPSE_SHARE:
        problems.append(f"the model predicts class {top} for {100 * share:.0f}% of the {n} samples")
    if not problems:
        return PreprocessingCheck(True, n, k, accuracy, chance, top, share, None)
    note = ("preprocessing looks wrong: " + "; ".join(problems) + ": the inputs are probably not what the model "
            f"expects, so the numbers in this report describe inputs it never sees; {HINT}")
    return PreprocessingCheck(False, n, k, accuracy, chance, top, share, note)


RANGE_TOLERANCE = 1e-6  # relative to the width of --input-range: float noise of stored data, not bad input


def fit_to_range(x: np.ndarray, input_range: tuple[float, float], notes: list[str] | None = None) -> np.ndarray:
    """``x`` clipped into ``input_range`` when it leaves it by at most ``RANGE_TOLERANCE`` of the range's width
    (a note says so); a larger excursion is a one-line ``ConfigError`` that gives the data's range."""
    from .errors import ConfigError

    lo, hi = (float(v) for v in input_range)
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    xmin, xmax = float(x.min()), float(x.max())
    if xmin >= lo and xmax <= hi:
        return x
    slack = RANGE_TOLERANCE * (hi - lo)
    if xmin < lo - slack or xmax > hi + slack:
        raise ConfigError(
            f"the data lie in [{xmin:.6g}, {xmax:.6g}] after --scale, outside --input-range [{lo:g}, {hi:g}] by more "
            f"than {RANGE_TOLERANCE:g} of its width; set --input-range to the data's valid range (e.g. "
            f"--input-range {min(lo, xmin):.4g},{max(hi, xmax):.4g} for normalised data) or fix --scale"
        )
    moved = int(np.sum((x < lo) | (x > hi)))
    if notes is not None:
        notes.append(f"{moved} input values lay outside --input-range [{lo:g}, {hi:g}] by at most "
                     f"{max(lo - xmin, xmax - hi, 0.0):.2g} (float noise of the stored data; tolerance "
                     f"{RANGE_TOLERANCE:g} of the range's width) and were clipped into it")
    return np.clip(x, lo, hi)


_WARNED: set[str] = set()
_MUTED = [0]
_PENDING: list[str] | None = None  # the CLI holds warnings until the command succeeds


def warn(message: str) -> None:
    """``fimaudit: warning: ...`` on stderr, once per message in a process, unless ``muted``.

    Inside a CLI command (``hold_warnings``) they are written when the command succeeds, so a
    command that fails on bad input still prints its one error line and nothing else.
    """
    if message in _WARNED or _MUTED[0]:
        return
    _WARNED.add(message)
    line = f"fimaudit: warning: {message}\n"
    if _PENDING is not None:
        _PENDING.append(line)
        return
    sys.stderr.write(line)
    sys.stderr.flush()


def hold_warnings() -> None:
    """Start a CLI command: forget earlier warnings and hold new ones until ``release_warnings``."""
    global _PENDING
    _WARNED.clear()
    _PENDING = []


def release_warnings(write: bool) -> None:
    """End a CLI command: write the held warnings (``write``: it succeeded) or drop them (it failed)."""
    global _PENDING
    pending, _PENDING = _PENDING or [], None
    if write and pending:
        sys.stderr.write("".join(pending))
        sys.stderr.flush()


@contextmanager
def muted():
    """No warnings from the jobs inside (the audit and compare warn once themselves; notes are still written)."""
    _MUTED[0] += 1
    try:
        yield
    finally:
        _MUTED[0] -= 1


def checked(predicted, labels, n_classes: int, notes: list[str] | None = None) -> PreprocessingCheck:
    """``preprocessing_check`` plus its consequences: the note appended to ``notes`` and a warning on stderr."""
    check = preprocessing_check(predicted, labels, n_classes)
    if check.note is not None:
        if notes is not None:
            notes.append(check.note)
        warn(check.note)
    return check


__all__ = ["PreprocessingCheck", "preprocessing_check", "checked", "warn", "fit_to_range", "CHANCE_FACTOR",
           "COLLAPSE_SHARE", "RANGE_TOLERANCE"]
