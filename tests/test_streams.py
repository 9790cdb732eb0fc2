"""The random-stream registry (fimaudit/streams.py): one place, legacy entropies kept, sharing made explicit."""

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest

from fimaudit import streams
from fimaudit.attacks import RowRng

PKG = Path(streams.__file__).parent
SEEDS = range(3)
KEY_RANGE = range(12)


def _state(entropy) -> tuple:
    # SeedSequence pads entropy with zeros to 4 words, so [s, 5] and [s, 5, 0] are ONE stream: compare states
    return tuple(np.random.SeedSequence(entropy).generate_state(4))


def _shared_pairs(names) -> set[tuple[str, str]]:
    seen: dict[tuple, set[str]] = {}
    pairs = set()
    for name in names:
        s = streams.stream(name)
        for seed in ([streams.FIXED_SEED] if s.fixed else SEEDS):
            for keys in itertools.product(KEY_RANGE, repeat=len(s.keys)):
                st = _state(s.entropy(seed, *keys))
                pairs |= {tuple(sorted((o, name))) for o in seen.get(st, ()) if o != name}
                seen.setdefault(st, set()).add(name)
    return pairs


def test_every_legacy_entropy_is_kept():
    """The registry reproduces the entropy lists used before it existed (so every report is unchanged)."""
    e = streams.entropy
    assert e(7, "data.synthetic") == [7, 1]
    assert e(7, "scan.fd_step") == [7, 2]
    assert e(7, "scan.probes", 4) == [7, 3, 4]
    assert e(7, "scan.dither", 4) == [7, 4, 4]
    assert e(7, "gradients.build") == [7, 5]
    assert e(7, "scan.smoothing", 4, 2) == [7, 6, 4, 2]
    assert e(7, "scan.piecewise") == [7, 7]
    assert e(7, "certify.noise", 4) == [7, 5, 4]
    assert [e(7, f"metrics.{n}") for n in ("sharpness", "sharpness_magnitude", "corruptions", "attack")] == \
        [[7, 5], [7, 6], [7, 7], [7, 8]]
    assert e(7, "validity.distance") == [7, 7] and e(7, "validity.bootstrap") == [7, 8]
    assert e(7, "compare.clever", 4) == [7, 4] and e(7, "compare.correlation") == [7]
    assert e(7, "clever.runs", 2, 4) == [7, 2, 4]
    # RowRng's keys-first order
    assert e(7, "attack.rows", 4, 2) == [7, 4, 2]
    assert e(7, "attack.sanity_square", 4, 2) == [7, 4, 2, 1]
    assert e(7, "attack.min_distance", 4) == [7, 4, 9]
    assert e(0, "fallback.fd_vjp") == [0]
    a = RowRng.seeded(7, [4, 9], 2).gens
    assert [g.standard_normal() for g in a] == \
        [np.random.Generator(np.random.PCG64(np.random.SeedSequence(x))).standard_normal() for x in ([7, 4, 2], [7, 9, 2])]


def test_keys_are_checked():
    with pytest.raises(TypeError):
        streams.rng(0, "scan.probes")  # the sample index is missing
    with pytest.raises(KeyError):
        streams.rng(0, "scan.nothing")
    with pytest.raises(ValueError):
        streams.rng(1, "fallback.operator_norm")  # fixed-seed streams take only their documented seed


def test_scan_certify_and_metrics_each_draw_distinct_streams():
    """Within each of these jobs no two purposes share a stream (scan.probes and metrics.sharpness differ too)."""
    scan = ["data.synthetic", "scan.fd_step", "scan.probes", "scan.dither", "gradients.build", "scan.smoothing",
            "scan.piecewise", "fallback.fd_vjp"]
    assert _shared_pairs(scan) == set()
    assert _shared_pairs(["data.synthetic", "certify.noise"]) == set()
    assert _shared_pairs([n for n in streams.STREAMS if n.startswith("metrics.")]) == set()
    assert _shared_pairs(["scan.probes", "metrics.sharpness"]) == set()


# Pairs of purposes that draw the SAME stream today for some seed and keys (seeds 0-2, keys 0-11), because the
# legacy layouts overlap: RowRng's keys-first [seed, row, k] meets every tag-first [seed, tag, i]; SeedSequence's
# zero padding makes [s, t] equal [s, t, 0]; metrics/validity/scan/certify reuse tags 5-8. Keeping them keeps every
# report identical; each one is a bug for the redesign to remove (a change that moves the affected outputs), and
# this list may only shrink. Pairs whose members run in one process today (audit runs scan, attacks, clever,
# metrics and certify; compare runs scan, attacks, CLEVER, metrics and validity) are marked "# same run" (when both purposes are drawn).
KNOWN_SHARED = {
    ("attack.min_distance", "attack.rows"),  # same run (attack --min-distance with >= 10 eps)
    ("attack.min_distance", "certify.noise"), ("attack.min_distance", "clever.runs"),
    ("attack.min_distance", "scan.dither"),
    ("attack.min_distance", "scan.probes"), ("attack.min_distance", "scan.smoothing"),
    ("attack.rows", "certify.noise"),  # same run (audit)
    ("attack.rows", "clever.runs"),  # same run (audit)
    ("attack.rows", "compare.clever"),  # same run (compare)
    ("attack.rows", "compare.correlation"), ("attack.rows", "data.synthetic"),
    ("attack.rows", "fallback.fd_vjp"), ("attack.rows", "fallback.graph_probe"), ("attack.rows", "fallback.operator_norm"),
    ("attack.rows", "gradients.build"),  # same run (attack --gradients graph: row 5 at the first eps)
    ("attack.rows", "metrics.attack"), ("attack.rows", "metrics.corruptions"), ("attack.rows", "metrics.sharpness"),
    ("attack.rows", "metrics.sharpness_magnitude"),
    ("attack.rows", "scan.dither"),  # same run (attack's gradient self-check dither, rows 0-1)
    ("attack.rows", "scan.fd_step"), ("attack.rows", "scan.piecewise"), ("attack.rows", "scan.probes"),
    ("attack.rows", "scan.smoothing"), ("attack.rows", "validity.bootstrap"), ("attack.rows", "validity.distance"),
    ("attack.sanity_square", "scan.smoothing"),
    ("certify.noise", "clever.runs"), ("certify.noise", "compare.clever"),
    ("certify.noise", "gradients.build"),  # same run (audit: certify's sample 0 and the gradient graph)
    ("certify.noise", "metrics.sharpness"),  # same run (audit)
    ("clever.runs", "compare.clever"), ("clever.runs", "compare.correlation"), ("clever.runs", "data.synthetic"),
    ("clever.runs", "fallback.fd_vjp"), ("clever.runs", "fallback.graph_probe"), ("clever.runs", "fallback.operator_norm"),
    ("clever.runs", "gradients.build"),  # same run (clever --seeds >= 6: run 5, sample 0)
    ("clever.runs", "metrics.attack"), ("clever.runs", "metrics.corruptions"), ("clever.runs", "metrics.sharpness"),
    ("clever.runs", "metrics.sharpness_magnitude"),
    ("clever.runs", "scan.dither"),  # same run (clever --seeds >= 5: run 4, samples 0-1)
    ("clever.runs", "scan.fd_step"), ("clever.runs", "scan.piecewise"), ("clever.runs", "scan.probes"),
    ("clever.runs", "scan.smoothing"), ("clever.runs", "validity.bootstrap"), ("clever.runs", "validity.distance"),
    ("compare.clever", "compare.correlation"),  # same run (compare)
    ("compare.clever", "data.synthetic"), ("compare.clever", "fallback.fd_vjp"), ("compare.clever", "fallback.graph_probe"),
    ("compare.clever", "fallback.operator_norm"),
    ("compare.clever", "gradients.build"),  # same run (compare)
    ("compare.clever", "metrics.attack"),  # same run (compare)
    ("compare.clever", "metrics.corruptions"), ("compare.clever", "metrics.sharpness"),  # same run (compare)
    ("compare.clever", "metrics.sharpness_magnitude"), ("compare.clever", "scan.dither"),
    ("compare.clever", "scan.fd_step"), ("compare.clever", "scan.piecewise"), ("compare.clever", "scan.probes"),
    ("compare.clever", "scan.smoothing"), ("compare.clever", "validity.bootstrap"), ("compare.clever", "validity.distance"),
    ("compare.correlation", "fallback.fd_vjp"), ("compare.correlation", "fallback.graph_probe"),
    ("compare.correlation", "fallback.operator_norm"),
    ("fallback.fd_vjp", "fallback.graph_probe"), ("fallback.fd_vjp", "fallback.operator_norm"),
    ("fallback.graph_probe", "fallback.operator_norm"),
    ("gradients.build", "metrics.sharpness"),  # same run (audit, compare): tag 5
    ("metrics.attack", "validity.bootstrap"),  # same run (compare): tag 8
    ("metrics.corruptions", "scan.piecewise"),  # same run (audit): tag 7
    ("metrics.corruptions", "validity.distance"),  # same run (compare): tag 7
    ("metrics.sharpness_magnitude", "scan.smoothing"),  # same run (audit): [s, 6] == [s, 6, 0, 0]
    ("scan.piecewise", "validity.distance"),  # same run (compare): tag 7
}


def test_no_purposes_share_a_stream_beyond_the_recorded_legacy_ones():
    shared = _shared_pairs([n for n, s in streams.STREAMS.items() if not s.derived])
    assert shared - KNOWN_SHARED == set(), "new shared streams: give the new purpose its own tag"
    assert KNOWN_SHARED - shared == set(), "a recorded sharing is gone: remove it from KNOWN_SHARED"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            yield node, (f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else "")


def test_no_generator_is_seeded_outside_the_registry():
    banned = {"default_rng", "SeedSequence", "RandomState", "PCG64", "Philox", "MT19937", "SFC64"}
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path == PKG / "streams.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f"{path.relative_to(PKG)}:{node.lineno} {name}" for node, name in _calls(tree) if name in banned]
    assert found == []


def test_every_named_stream_at_a_call_site_is_registered():
    used = set()
    for path in sorted(PKG.rglob("*.py")):
        for node, name in _calls(ast.parse(path.read_text())):
            if name in ("rng", "named", "fixed", "entropy"):
                used |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    assert used and used <= set(streams.STREAMS), used - set(streams.STREAMS)
    assert {"scan.probes", "attack.rows", "certify.noise", "metrics.sharpness"} <= used


def test_the_documented_table_is_the_registry():
    doc = (PKG.parent / "docs" / "streams.md").read_text()
    assert streams.table() in doc
