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


def test_every_entropy_is_the_documented_one():
    """Legacy entropies kept where no purpose drawn in the same run shares them (scan's own streams, the data, the
    gradient graph, the metrics' Square, the Lanczos start); the rest moved to the named layout (docs/streams.md)."""
    e = streams.entropy
    assert e(7, "data.synthetic") == [7, 1]
    assert e(7, "scan.fd_step") == [7, 2]
    assert e(7, "scan.probes", 4) == [7, 3, 4]
    assert e(7, "scan.dither", 4) == [7, 4, 4]
    assert e(7, "gradients.build") == [7, 5]
    assert e(7, "scan.smoothing", 4, 2) == [7, 6, 4, 2]
    assert e(7, "scan.piecewise") == [7, 7]
    assert e(7, "metrics.attack") == [7, 8]
    assert e(0, "fallback.operator_norm") == [0]
    m = streams.NAMED_MARK
    assert e(7, "attack.rows", 4, 2) == [7, m, 1, 4, 2]
    assert e(7, "attack.sanity_square", 4, 2) == [7, m, 2, 4, 2]
    assert e(7, "attack.min_distance", 4) == [7, m, 3, 4]
    assert e(7, "clever.runs", 2, 4) == [7, m, 4, 2, 4]
    assert e(7, "compare.clever", 4) == [7, m, 5, 4] and e(7, "compare.correlation") == [7, m, 6]
    assert e(7, "validity.distance") == [7, m, 7] and e(7, "validity.bootstrap") == [7, m, 8]
    assert [e(7, f"metrics.{n}") for n in ("sharpness", "sharpness_magnitude", "corruptions")] == \
        [[7, m, 9], [7, m, 10], [7, m, 11]]
    assert e(7, "certify.noise", 4) == [7, m, 12, 4]
    assert e(0, "fallback.graph_probe") == [0, m, 13] and e(0, "fallback.fd_vjp") == [0]
    numbers = [s.tag for s in streams.STREAMS.values() if s.order == streams.NAMED]
    assert len(numbers) == len(set(numbers)), "two named streams share a number"
    a = RowRng.seeded(7, [4, 9], 2).gens
    assert [g.standard_normal() for g in a] == [np.random.Generator(np.random.PCG64(np.random.SeedSequence(x))).standard_normal()
                                                for x in ([7, m, 1, 4, 2], [7, m, 1, 9, 2])]


def test_keys_are_checked():
    with pytest.raises(TypeError):
        streams.rng(0, "scan.probes")  # the sample index is missing
    with pytest.raises(KeyError):
        streams.rng(0, "scan.nothing")
    with pytest.raises(ValueError):
        streams.rng(1, "fallback.operator_norm")  # fixed-seed streams take only their documented seed


# The streams each command draws in ONE run, all with the user's one seed (fixed streams with theirs): docs/streams.md
# says where each is drawn. audit runs scan, the attacks (white-box APGD with its sanity Square; the minimal
# distances of its validity section), CLEVER (2 runs),
# the metric suite without its Square (attack_samples = 0), certify, bounds and verify; compare runs per model scan,
# three attacks, its own CLEVER, the metric suite and (--validity) validity, then the correlation bootstrap.
SCAN = {"data.synthetic", "scan.fd_step", "scan.probes", "scan.dither", "gradients.build", "scan.smoothing",
        "scan.piecewise", "fallback.operator_norm", "fallback.graph_probe"}
GRADIENTS = {"gradients.build", "scan.dither", "fallback.graph_probe"}  # the graph's build and dithered self-check
COMMANDS = {
    "scan": SCAN,
    "bounds": {"fallback.operator_norm"},
    "verify": set(),
    "attack": {"attack.rows", "attack.sanity_square", "attack.min_distance"} | GRADIENTS,
    "clever": {"clever.runs"} | GRADIENTS,
    "metrics": {"metrics.sharpness", "metrics.sharpness_magnitude", "metrics.corruptions", "metrics.attack"},
    "certify": {"data.synthetic", "certify.noise"},
    "validity": SCAN | {"validity.distance", "validity.bootstrap"} | GRADIENTS,
    "audit": SCAN | {"attack.rows", "attack.sanity_square", "attack.min_distance", "clever.runs", "metrics.sharpness",
                     "metrics.sharpness_magnitude", "metrics.corruptions", "certify.noise"} | GRADIENTS,
    "compare": SCAN | {"attack.rows", "compare.clever", "metrics.sharpness", "metrics.sharpness_magnitude",
                       "metrics.corruptions", "metrics.attack", "validity.distance", "validity.bootstrap",
                       "compare.correlation"} | GRADIENTS,
    "tools": {"fallback.fd_vjp"},  # FiniteDifferences without a Generator (tests, bench); never a command
}


def test_the_command_map_covers_every_stream():
    assert set().union(*COMMANDS.values()) == {n for n, s in streams.STREAMS.items() if not s.derived}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_two_purposes_drawn_in_one_run_share_a_stream(command):
    """The bug the legacy layouts had (e.g. audit: attack row 5 at eps index i drew certify's noise of sample i;
    metrics' corruption noise was scan's piecewise probe): every purpose of one run draws its own numbers."""
    assert _shared_pairs(COMMANDS[command]) == set()


# The one pair of purposes that share a stream (both fixed-seed [0]): FiniteDifferences' fallback is never drawn by a
# command, so never in a run with the Lanczos start. It keeps its legacy entropy; this set may only shrink.
HARMLESS = {("fallback.fd_vjp", "fallback.operator_norm")}


def test_only_harmless_pairs_share_a_stream():
    """Beyond single commands: no two registered purposes share a stream (seeds 0-2, keys 0-11) except HARMLESS,
    whose members never run together, so a new command combining any of the others is safe too."""
    assert _shared_pairs([n for n, s in streams.STREAMS.items() if not s.derived]) == HARMLESS
    assert not any(a in c and b in c for a, b in HARMLESS for c in COMMANDS.values())


def test_an_audit_draws_only_the_streams_the_map_lists(tmp_path, monkeypatch):
    """The map above is checked where it matters most: every stream one audit draws (scan, attacks with APGD and its
    sanity Square, CLEVER, metrics, certify, verify) is in COMMANDS["audit"]."""
    import json

    import onnxruntime as ort
    from typer.testing import CliRunner

    from fimaudit.cli import app

    from . import builders as B

    drawn = set()
    real = streams.rng

    def spy(seed, name, *keys):
        drawn.add(name)
        return real(seed, name, *keys)

    monkeypatch.setattr(streams, "rng", spy)  # streams.fixed and RowRng go through it too
    gen = np.random.Generator(np.random.PCG64(11))
    model = B.save(B.conv_model(gen.standard_normal((2, 1, 3, 3)) * 0.8, np.zeros(2),
                                gen.standard_normal((3, 2 * 8 * 8)) * 0.3, np.zeros(3), (1, 8, 8)), tmp_path / "conv.onnx")
    x = gen.integers(0, 256, size=(8, 1, 8, 8)).astype(np.uint8)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.savez(tmp_path / "d.npz", x=x, y=sess.run(None, {"x": (x / 255.0).astype(np.float32)})[0].argmax(1))
    settings = dict(samples=4, budget=200, metrics_samples=8, clever_samples=2, clever_points=20, eps=[0.02],
                    certify_sigma=0.25, certify_n=100, verify=True)
    (tmp_path / "p.toml").write_text("[audit]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
                                     + '[policy]\nname = "t"\nchecks = ["clean.accuracy >= 0"]\n')
    res = CliRunner().invoke(app, ["audit", str(model), "--data", str(tmp_path / "d.npz"), "--scale", "1/255",
                                   "--policy", str(tmp_path / "p.toml"), "--out", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output
    assert {"scan.probes", "attack.rows", "attack.sanity_square", "clever.runs", "certify.noise",
            "metrics.corruptions", "gradients.build"} <= drawn
    assert drawn <= COMMANDS["audit"], drawn - COMMANDS["audit"]


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
