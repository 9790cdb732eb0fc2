"""Do two commits give the same JSON? Runs scan, attack, clever, metrics, bounds, certify, audit and verify (small settings)
with --json on sample and corpus models from each commit's tree, and compares the JSONs ignoring timing, durations,
versions and creation fields.

    python bench/json_identity.py BASE [HEAD] [--models vgg,mlp,oval] [--commands scan,attack] [--keep DIR]

Each commit is extracted with ``git archive COMMIT | tar -x`` into a temporary folder and run as
``python -m fimaudit`` with PYTHONPATH set to that folder (the installed dependencies are shared); every run has its
own working folder, so outputs written beside the JSON never mix. HEAD defaults to the working tree's HEAD.
Prints a table: command, model, identical/different, and the first differing key.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("FIMAUDIT_REALMODELS", "/work/shared/realmodels"))
FMNIST = ["--data", str(ROOT / "sample_models/fmnist_test_1000_28.npz"), "--scale", "1/255", "--mean", "0.286",
          "--std", "0.353", "--samples", "5"]
MODELS = {
    "vgg": (str(ROOT / "sample_models/vgg_small.onnx"), FMNIST, True),
    "mlp": (str(ROOT / "sample_models/mlp_small.onnx"), FMNIST, True),
    # corpus model, data in model units (no preprocessing), so no corruptions (they need images in [0, 1])
    "oval": (str(REAL / "oval21_cifar_base_kw.onnx"), ["--data", str(REAL / "oval21_cifar_base_kw.npz"), "--samples", "5"],
             False),
}
# the corpus model's data are normalised: commands that check the input range get the data's own range
RANGE = {"oval": "--input-range=-2.156,2.64"}
TAKES_RANGE = {"attack", "clever", "certify", "audit", "verify"}
COMMANDS = {
    "scan": lambda images: ["scan", "--budget", "40"],
    "attack": lambda images: ["attack", "--eps", "0.02,0.05", "--budget", "60"],
    "clever": lambda images: ["clever", "--points", "20", "--seeds", "2"],
    "metrics": lambda images: ["metrics"] + ([] if images else ["--no-corruptions"]),
    "bounds": lambda images: ["bounds"],
    "certify": lambda images: ["certify", "--sigma", "0.25"],
    "audit": lambda images: ["audit", "--budget", "40"],
    "verify": lambda images: ["verify", "--eps", "0.005", "--no-bisect"],
}
NO_DATA = {"bounds"}  # takes the model only
# keys whose values are timing, versions or creation stamps: never compared
IGNORED = re.compile(r"(time|seconds|duration|elapsed|wall|version|created|timestamp|date|host|platform|python|"
                     r"numpy|onnxruntime|throughput|per_s$|_s$|speed)", re.I)


def extract(commit: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run(tree: Path, work: Path, argv: list[str], timeout: float) -> tuple[dict | None, str]:
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    try:
        res = subprocess.run([sys.executable, "-m", "fimaudit", *argv, "--json", "out.json", "--quiet"], cwd=work,
                             env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    out = work / "out.json"
    if not out.exists():
        return None, f"exit {res.returncode}: {res.stderr.strip().splitlines()[-1:]}"
    return json.loads(out.read_text()), f"exit {res.returncode}"


TEMP = re.compile(r"/tmp/fimaudit-[A-Za-z0-9_]+/")  # audit's per-run temporary folder (e.g. the saved directions)


def first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, str) and isinstance(b, str):
        a, b = TEMP.sub("/tmp/fimaudit-*/", a), TEMP.sub("/tmp/fimaudit-*/", b)
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if IGNORED.search(str(k)):
                continue
            if k not in a or k not in b:
                return f"{path}.{k} (only in {'head' if k not in a else 'base'})"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if a != b and not (isinstance(a, float) and isinstance(b, float) and a != a and b != b):  # NaN == NaN here
        return f"{path} ({a!r:.40} vs {b!r:.40})"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("head", nargs="?", default="HEAD")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--keep", help="keep the trees and outputs in this folder")
    args = ap.parse_args()
    top = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="json_identity_"))
    revs = {}
    for side, commit in (("base", args.base), ("head", args.head)):
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit], check=True, capture_output=True,
                             text=True).stdout.strip()
        revs[side] = (rev, extract(commit, top / side / "tree"))
    print(f"base {revs['base'][0]}  head {revs['head'][0]}")
    print(f"{'command':8} {'model':5} {'result':10} first differing key")
    same = True
    for cmd in args.commands.split(","):
        for name in args.models.split(","):
            path, data, images = MODELS[name]
            argv = [*COMMANDS[cmd](images)[:1], path, *COMMANDS[cmd](images)[1:], *([] if cmd in NO_DATA else data)]
            if name in RANGE and cmd in TAKES_RANGE:
                argv.append(RANGE[name])
            out = {}
            for side in ("base", "head"):
                out[side] = run(revs[side][1], top / side / f"{cmd}_{name}", argv, args.timeout)
            (a, sa), (b, sb) = out["base"], out["head"]
            if a is None or b is None:
                verdict, key = "no-json", f"base {sa}; head {sb}"
                same = same and sa == sb
            else:
                key = first_difference(a, b)
                verdict = "identical" if key is None else "different"
                same = same and key is None
            print(f"{cmd:8} {name:5} {verdict:10} {key or ''}", flush=True)
    if not args.keep:
        shutil.rmtree(top, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
