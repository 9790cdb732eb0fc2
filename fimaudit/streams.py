"""The one registry of random streams: every seeded ``np.random.Generator`` in fimaudit comes from here.

A stream is named by its purpose (``"scan.probes"``); ``rng(seed, name, *keys)`` gives its Generator, ``keys`` being
the indices the stream declares (a sample index, an eps index, a draw block...). Nothing outside this module calls
``np.random.default_rng`` or ``np.random.SeedSequence`` (``tests/test_streams.py`` checks the source).

Ordering convention (new streams): ``named`` -- ``[seed, NAMED_MARK, number, *keys]``: the user's seed, a constant
no legacy stream has in second place, the stream's own number, then its keys in the declared order. Every purpose that
was drawn in the same run as another purpose sharing its numbers moved to it (docs/streams.md lists the pairs and the
outputs that moved); the others keep the EXACT SeedSequence entropy fimaudit used before the registry existed:

* ``tag-first``   ``[seed, *tag, *keys]``  (scan's streams, the synthetic data, the gradient graph, the metrics'
  Square, the fixed Lanczos start and FiniteDifferences' fallback)

SeedSequence pads its entropy with zeros up to 4 words, so ``[s, 5] == [s, 5, 0] == [s, 5, 0, 0]``: distinct
lists are not always distinct streams. ``tests/test_streams.py`` compares the generated states: no two purposes drawn
in one run (its COMMANDS map, checked against a real audit) share a stream, and the one pair sharing one at all
(``HARMLESS`` there) is never drawn in one run.

``fixed`` streams use a constant seed (0), documented below: they are deterministic internals (a Lanczos start
vector, a graph probe's input) used where a caller gives no Generator, never a statistical draw of a report.
``derived`` streams are seeded by a number drawn from a caller's Generator (not the user's seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TAG_FIRST = "tag-first"
NAMED = "named"
FIXED_SEED = 0  # the documented seed of every ``fixed`` stream
# The second entropy word of every ``named`` stream: no legacy stream has it there (their tags are at most 8, their
# keys sample indices), so a named stream never meets a legacy one; the third word is the stream's own number.
NAMED_MARK = 0x5EEDF1A0


@dataclass(frozen=True)
class Stream:
    name: str
    tag: tuple[int, ...]
    keys: tuple[str, ...]
    order: str
    purpose: str
    fixed: bool = False  # seeded by FIXED_SEED, not the user's seed
    derived: bool = False  # seeded by a number drawn from another Generator

    def entropy(self, seed: int, *keys: int) -> list[int]:
        if len(keys) != len(self.keys):
            raise TypeError(f"stream {self.name!r} takes keys {self.keys}, got {len(keys)} value(s)")
        if self.fixed and int(seed) != FIXED_SEED:
            raise ValueError(f"stream {self.name!r} is fixed-seed ({FIXED_SEED}), got seed {seed}")
        ks = [int(k) for k in keys]
        if self.order == NAMED:
            return [int(seed), NAMED_MARK, *self.tag, *ks]
        return [int(seed), *self.tag, *ks]  # tag-first


_STREAMS = [
    # name, tag (a named stream's number), keys, order, purpose
    Stream("data.synthetic", (1,), (), TAG_FIRST, "synthetic inputs when no --data is given (scan and certify: "
           "the same inputs for the same seed, by design)"),
    Stream("scan.fd_step", (2,), (), TAG_FIRST, "finite-difference step calibration at the first sample"),
    Stream("scan.probes", (3,), ("sample",), TAG_FIRST, "a sample's estimator probes and FD VJP probes"),
    Stream("scan.dither", (4,), ("sample",), TAG_FIRST, "a sample's dither xi at exact ties (scan; the gradient "
           "self-check of attack/clever dithers its check rows the same way)"),
    Stream("gradients.build", (5,), (), TAG_FIRST, "building and self-checking the gradient graph (scan, "
           "attack, clever, validity)"),
    Stream("scan.smoothing", (6,), ("sample", "block"), TAG_FIRST, "block j of a sample's smoothed-Fisher draws"),
    Stream("scan.piecewise", (7,), (), TAG_FIRST, "the piecewise-constant behaviour probe"),
    Stream("certify.noise", (12,), ("sample",), NAMED, "a sample's randomized-smoothing noise (certify)"),
    Stream("metrics.sharpness", (9,), (), NAMED, "sharpness sigma search (metrics)"),
    Stream("metrics.sharpness_magnitude", (10,), (), NAMED, "magnitude-aware sharpness (metrics)"),
    Stream("metrics.corruptions", (11,), (), NAMED, "corruption noise (metrics)"),
    Stream("metrics.attack", (8,), (), TAG_FIRST, "the Square attack of the metrics suite"),
    Stream("validity.distance", (7,), (), NAMED, "minimal adversarial distance for validity"),
    Stream("validity.bootstrap", (8,), (), NAMED, "validity's bootstrap"),
    Stream("compare.clever", (5,), ("sample",), NAMED, "compare's CLEVER score of a sample"),
    Stream("compare.correlation", (6,), (), NAMED, "compare's correlation bootstrap"),
    Stream("clever.runs", (4,), ("run", "sample"), NAMED, "clever: run s of sample i"),
    Stream("attack.rows", (1,), ("row", "eps_index"), NAMED, "a sample's attack at the k-th eps (k = number "
           "of eps for its own radius, --eps-from); RowRng"),
    Stream("attack.sanity_square", (2,), ("row", "eps_index"), NAMED, "the sanity Square beside a "
           "white-box attack"),
    Stream("attack.min_distance", (3,), ("row",), NAMED, "--min-distance's minimal-distance search (attack; audit's "
           "validity section)"),
    Stream("probes.block", (), ("block",), TAG_FIRST, "block g of a ProbeStream (seed drawn from the caller's "
           "Generator)", derived=True),
    Stream("fallback.fd_vjp", (), (), TAG_FIRST, "FiniteDifferences' VJP probes when the caller gives no "
           "Generator (tests, tools; scan always passes scan.probes)", fixed=True),
    Stream("fallback.operator_norm", (), (), TAG_FIRST, "Lanczos start vector of a sparse operator norm "
           "(bounds)", fixed=True),
    Stream("fallback.graph_probe", (13,), (), NAMED, "input of the intermediate-tensor probe of a gradient "
           "graph", fixed=True),
]

STREAMS: dict[str, Stream] = {s.name: s for s in _STREAMS}
assert len(STREAMS) == len(_STREAMS), "duplicate stream name"


def stream(name: str) -> Stream:
    try:
        return STREAMS[name]
    except KeyError:
        raise KeyError(f"unknown random stream {name!r}; register it in fimaudit/streams.py") from None


def entropy(seed: int, name: str, *keys: int) -> list[int]:
    """The SeedSequence entropy of stream ``name`` for ``seed`` and its keys."""
    return stream(name).entropy(seed, *keys)


def rng(seed: int, name: str, *keys: int) -> np.random.Generator:
    """The Generator of stream ``name`` (see the module docstring for the ordering)."""
    return np.random.default_rng(entropy(seed, name, *keys))


def fixed(name: str) -> np.random.Generator:
    """A ``fixed`` stream's Generator (constant seed FIXED_SEED)."""
    return rng(FIXED_SEED, name)


def table() -> str:
    """The stream table (markdown), for docs and reports."""
    lines = ["| name | entropy | purpose |", "|---|---|---|"]
    for s in _STREAMS:
        seed = str(FIXED_SEED) if s.fixed else ("drawn" if s.derived else "seed")
        parts = [seed, *(["MARK"] if s.order == NAMED else []), *map(str, s.tag), *s.keys]
        lines.append(f"| {s.name} | [{', '.join(parts)}] ({s.order}) | {s.purpose} |")
    return "\n".join(lines)
