"""The subject of a command: the validated model, its data and spaces, and its random streams, opened once.

``open_subject(options)`` validates and opens the model file once (``fimaudit.model.load_model``: read, external
data, operators, input/output, session). Every job takes the subject, ``job(subject, config) -> Result``, instead of
a path, so a command validates its model once however many jobs or sections run on it (an audit runs eight; a
compare row six). ``tests/test_subject.py`` counts the validations per command.

What the subject holds and hands out:

* the validated model: ``info`` (spec, sha256, notes, piecewise), ``proto``, ``model_bytes`` (the validated proto,
  external data inlined, serialised once) and the onnxruntime session. ``subject.model()`` is a fresh
  query-counting ``Model`` over that one session: each job counts its own queries, learns the class count and
  chooses its batch as when it opened the file itself, so its report is unchanged.
* the data and the spaces: ``prepare`` (layout, preprocessing and samples, the one load-and-prepare path) and
  ``attack_inputs`` (the attack-space rows, labels, oracle and output kind). Three spaces, mapped by ``Spaces``:
  stored data (as read: pixel values 0-255 for images), attack space (stored x --scale, e.g. [0, 1]: eps, attacks,
  CLEVER and corruptions live there) and model input ((attack - mean) / std, what the model receives).
* the seed: ``subject.rng(name, *keys)`` is ``fimaudit.streams.rng(seed, name, *keys)``.

Dask workers receive ``model_bytes`` once (scattered) with the picklable ``SubjectSpec`` and rebuild the subject by
``Subject.from_bytes`` (sessions from bytes, no second validation).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from . import streams
from .data import Preprocess
from .errors import ConfigError
from .images import DataOptions, Prepared, prepare
from .model.engine import Model
from .model.spec import ModelInfo

# The config fields that decide how the model is opened; a job's config must agree with its subject on them.
OPEN_FIELDS = ("input_name", "output_name", "input_shape", "device", "max_batch", "threads")


@dataclass(frozen=True)
class OpenOptions:
    """How to open a model: its path and the ``ModelDataOptions`` fields that decide the validation and session."""

    model: str
    input_name: str | None = None
    output_name: str | None = None
    input_shape: tuple[int, ...] | None = None
    device: str = "auto"
    max_batch: int = 256
    threads: int = 0
    seed: int = 0

    @classmethod
    def of(cls, config) -> "OpenOptions":
        """The open options of any job config (ScanConfig, AttackConfig, MetricsConfig, ...): same names."""
        names = [f.name for f in fields(cls)]
        return cls(**{n: getattr(config, n) for n in names if hasattr(config, n)} | {"model": str(config.model)})


@dataclass(frozen=True)
class SubjectSpec:
    """What a worker needs besides the model bytes to rebuild the subject (picklable)."""

    options: OpenOptions
    info: ModelInfo
    input_dtype: str
    provider: str


@dataclass(frozen=True)
class Spaces:
    """Stored data, attack space and model input, and the maps between them (MATH §1).

    ``stored_to_input`` is the resolved preprocessing (``--preset`` or --scale/--mean/--std);
    ``attack_to_input`` the same mean/std with scale 1 (attack space is stored x scale).
    """

    stored_to_input: Preprocess
    sample_shape: tuple[int, ...]

    @property
    def scale(self) -> float:
        return float(self.stored_to_input.scale)

    @property
    def attack_to_input(self) -> Preprocess:
        pre = self.stored_to_input
        return Preprocess(1.0, pre.mean, pre.std, pre.channel_axis)

    def to_attack(self, stored: np.ndarray) -> np.ndarray:
        """Stored rows in attack space (float64): stored x scale."""
        return np.asarray(stored, dtype=np.float64) * self.stored_to_input.scale

    def to_input(self, stored: np.ndarray) -> np.ndarray:
        """Stored rows as the model receives them."""
        return self.stored_to_input.apply(stored, self.sample_shape)


@dataclass(frozen=True)
class AttackInputs:
    """A job's attack-space view of the subject's data: ``subject.attack_inputs``."""

    model: Model  # the job's query-counting view
    oracle: object  # fimaudit.model.LogProbOracle over attack-space rows
    kind: str  # the output kind (detected or given)
    x: np.ndarray  # (n, *sample_shape) attack-space rows (fitted into --input-range)
    y: np.ndarray  # labels
    pre: Preprocess  # attack space -> model input (scale 1)
    notes: list[str]
    prepared: Prepared
    subject: "Subject"

    def __iter__(self):
        """Unpacks as the former ``load_attack_inputs`` tuple: (model, oracle, kind, x, y, pre, notes)."""
        return iter((self.model, self.oracle, self.kind, self.x, self.y, self.pre, self.notes))


class Subject:
    """One validated model (and its seed) that every job of a command runs on. Not thread-safe."""

    def __init__(self, opened: Model, options: OpenOptions) -> None:
        self._opened = opened
        self.options = options
        self._bytes: bytes | None = None

    # ------------------------------------------------------------------ the model
    @property
    def info(self) -> ModelInfo:
        return self._opened.info

    @property
    def proto(self):
        """The validated ``onnx.ModelProto`` (external data loaded), for graph analysis."""
        return self._opened.proto

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._opened.sample_shape

    @property
    def provider(self) -> str:
        return self._opened.provider

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def model_bytes(self) -> bytes:
        """The validated model serialised (once): what workers receive."""
        if self._bytes is None:
            self._bytes = self._opened.proto.SerializeToString()
        return self._bytes

    @property
    def spec(self) -> SubjectSpec:
        return SubjectSpec(self.options, self.info, np.dtype(self._opened.input_dtype).name, self.provider)

    def model(self) -> Model:
        """A fresh query-counting ``Model`` over the subject's session (queries, class count and batch its own)."""
        return self._opened.fresh()

    def check(self, config) -> None:
        """Refuse a config that would open the model differently from this subject (a caller's mistake)."""
        if str(getattr(config, "model", self.options.model)) != self.options.model:
            raise ValueError(f"the config names model {config.model!r}, the subject is {self.options.model!r}")
        differ = [n for n in OPEN_FIELDS + ("seed",) if hasattr(config, n) and getattr(config, n) != getattr(self.options, n)]
        if differ:
            raise ValueError(f"the config's {', '.join(differ)} differ from the subject's: open a subject for it")

    def rng(self, name: str, *keys: int) -> np.random.Generator:
        """The subject's Generator of stream ``name`` (fimaudit.streams) at ``keys``."""
        return streams.rng(self.seed, name, *keys)

    # ------------------------------------------------------------------ data and spaces
    def prepare(self, model: Model, data: str | None, samples: int | None, scale: float, mean: tuple[float, ...],
                std: tuple[float, ...], options: DataOptions) -> Prepared:
        """Layout, preprocessing and the samples (``fimaudit.images.prepare``), read for the job's ``model`` view
        (an image folder numbered by sorted class name costs that view one query)."""
        return prepare(model, data, samples, scale, tuple(mean), tuple(std), options)

    def spaces(self, prepared: Prepared) -> Spaces:
        return Spaces(prepared.pre, tuple(self.sample_shape))

    def attack_inputs(self, cfg, needs: str = "attacks and robust accuracy need labels") -> AttackInputs:
        """The attack-space rows of ``cfg.data`` (an AttackConfig-like config) with the oracle over them.

        Attack space is the data times the scale; the returned ``Preprocess`` (scale 1) maps it to model input with
        the resolved mean/std (preset or flags) on the detected channel axis. Rows within float noise of
        ``--input-range`` are clipped into it (noted); larger excursions are refused.
        """
        from .attack_space import attack_oracle
        from .piecewise import piecewise_notes
        from .sanity import fit_to_range

        model = self.model()
        prep = self.prepare(model, cfg.data, cfg.samples, cfg.scale, cfg.mean, cfg.std, DataOptions.of(cfg))
        ds, spaces = prep.dataset, self.spaces(prep)
        if ds.y is None:
            raise ConfigError(f"{cfg.data} has no labels (y, subfolders or labels.csv): {needs}")
        notes: list[str] = piecewise_notes(model) + list(prep.notes)
        x = fit_to_range(spaces.to_attack(ds.x), cfg.input_range, notes)
        pre = spaces.attack_to_input
        oracle, kind = attack_oracle(model, pre, cfg.output_kind, x, ds.y, ds.source)
        return AttackInputs(model, oracle, kind, x, ds.y, pre, notes, prep, self)

    # ------------------------------------------------------------------ workers
    @classmethod
    def from_bytes(cls, blob: bytes, spec: SubjectSpec) -> "Subject":
        """The subject rebuilt from its validated bytes (on a worker): a session, no second validation."""
        import onnx

        from .model.loader import open_session

        proto = onnx.load_from_string(blob)
        session, provider, _ = open_session(proto, Path(spec.info.path), spec.options.device, spec.options.threads)
        model = Model(session, spec.info, provider=provider, input_dtype=spec.input_dtype,
                      max_batch=spec.options.max_batch, proto=proto)
        subject = cls(model, spec.options)
        subject._bytes = blob
        return subject


def open_subject(options) -> Subject:
    """Validate and open ``options.model`` once (any job config, or ``OpenOptions``); bad input raises
    ``FimauditError`` subclasses with one-line messages."""
    from .model import loader

    opts = options if isinstance(options, OpenOptions) else OpenOptions.of(options)
    model = loader.load_model(opts.model, input_name=opts.input_name, output_name=opts.output_name,
                              input_shape=opts.input_shape, device=opts.device, max_batch=opts.max_batch,
                              threads=opts.threads)
    return Subject(model, opts)


__all__ = ["AttackInputs", "OpenOptions", "Spaces", "Subject", "SubjectSpec", "open_subject"]
