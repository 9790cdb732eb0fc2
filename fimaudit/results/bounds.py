"""The result of ``bounds`` (``kind`` "bounds"): the closed-form Lipschitz bound, per block and per operation.

fimaudit.graph.bounds computes it from the weights; ``lipschitz`` bounds |J|_2 of the logit map (model-input units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .base import SCHEMA_VERSION, check_kind, clean, read_version


@dataclass(frozen=True)
class OpBound:
    """One operation's Lipschitz constant (None: none that is global) and how it was computed."""

    name: str
    op: str
    lipschitz: float | None
    how: str

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "lipschitz": finite_or_none(self.lipschitz), "how": self.how}


BLOCK_STATUSES = ("bounded", "unbounded", "not computed")


@dataclass(frozen=True)
class Block:
    """A recognised block; ``status`` bounded (``lipschitz`` is its constant), unbounded (``reason``: what in it has
    no global constant) or not computed (``reason``: why its constant was not measured)."""

    name: str
    kind: str
    lipschitz: float | None
    nodes: tuple[str, ...] = ()
    detail: str = ""
    status: str = ""
    reason: str | None = None
    span: tuple[str, str] | None = field(default=None, compare=False, repr=False)  # (input, output) tensors

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "lipschitz": finite_or_none(self.lipschitz), "detail": self.detail,
                "status": self.status or ("bounded" if self.lipschitz is not None else "unbounded"),
                "reason": self.reason, "nodes": list(self.nodes)}

    @classmethod
    def from_dict(cls, d: dict) -> "Block":
        return cls(d["name"], d["kind"], d.get("lipschitz"), tuple(d.get("nodes") or ()), d.get("detail", ""),
                   d.get("status", ""), d.get("reason"))


@dataclass(frozen=True)
class BoundResult:
    """``lipschitz`` bounds |J|_2 of the logit map (model-input units); ``fim_upper`` = L^2/2."""

    model: str
    lipschitz: float | None
    fim_upper: float | None
    reason: str | None
    family: str | None
    blocks: tuple[Block, ...]
    ops: tuple[OpBound, ...]
    excluded_output_op: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    schema_version: str = SCHEMA_VERSION
    show_ops: bool = False  # `bounds --ops`: the text lists every operation's constant (so `report` does too)
    # `bounds --domain LO,HI`: the logits' interval over the input box (IBP): input_range, method, units,
    # logits_lower, logits_upper
    domain_bounds: dict | None = None
    kind: str = field(default="bounds", init=False)

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "model": self.model,
            "lipschitz": finite_or_none(self.lipschitz),
            "fim_upper": finite_or_none(self.fim_upper),
            "reason": self.reason,
            "family": self.family,
            "excluded_output_op": self.excluded_output_op,
            "blocks": [b.to_dict() for b in self.blocks],
            "ops": [o.to_dict() for o in self.ops],
            "notes": list(self.notes),
        } | ({"show_ops": True} if self.show_ops else {}) | (
            {} if self.domain_bounds is None else {"domain_bounds": clean(self.domain_bounds)})

    @classmethod
    def from_dict(cls, d: dict) -> "BoundResult":
        """A saved ``fimaudit bounds --json`` result (per-op constants kept, as read)."""
        check_kind(d, "bounds")
        read_version(d, "bounds")
        if "blocks" not in d or "fim_upper" not in d:
            raise ValueError("not a bounds result (no blocks or fim_upper)")
        return cls(model=str(d.get("model", "")), lipschitz=d.get("lipschitz"), fim_upper=d.get("fim_upper"),
                   reason=d.get("reason"), family=d.get("family"), blocks=tuple(Block.from_dict(b) for b in d["blocks"]),
                   ops=tuple(OpBound(o["name"], o["op"], o.get("lipschitz"), o.get("how", "")) for o in d.get("ops") or ()),
                   excluded_output_op=d.get("excluded_output_op"), notes=tuple(d.get("notes") or ()),
                   show_ops=bool(d.get("show_ops", False)), domain_bounds=d.get("domain_bounds"))


def finite_or_none(x: float | None) -> float | None:
    """A constant as JSON writes it: None when there is none or it is infinite."""
    return None if x is None or not math.isfinite(x) else float(x)
