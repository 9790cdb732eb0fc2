"""Start-up time of the command line: wall seconds of ``fimaudit --help`` and friends, each in a fresh process.

    python bench/startup.py [--repeats 7] [--label after]
    PYTHONPATH=/tmp/fimaudit-base python bench/startup.py --label before   # another checkout of the package

Each command runs ``--repeats`` times in a new child process (after one untimed run that writes the
bytecode caches); the wall time includes the interpreter's own start. ``fimaudit`` is the console
script next to this Python (or ``python -m fimaudit`` when there is none). Goal (start-up issue):
``fimaudit --help`` and ``fimaudit scan --help`` <= 0.5 s wall: help must not import onnx, onnxruntime,
scipy or matplotlib. Prints a table and writes the run, under its ``--label``, into
bench/results/startup.json (other labels already there are kept, so a before/after pair sits side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "startup.json"
GOAL_S = 0.5
GOAL_COMMANDS = ("fimaudit --help", "fimaudit scan --help")


def _fimaudit() -> list[str]:
    script = Path(sys.executable).parent / "fimaudit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fimaudit"]


def commands() -> dict[str, list[str]]:
    exe = _fimaudit()
    return {
        "fimaudit --help": [*exe, "--help"],
        "fimaudit scan --help": [*exe, "scan", "--help"],
        "python -c 'import fimaudit'": [sys.executable, "-c", "import fimaudit"],
        "fimaudit --version": [*exe, "--version"],
    }


def wall(argv: list[str], env: dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--label", default="after", help="Name of this run in the JSON (e.g. before, after).")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    env = dict(os.environ, COLUMNS="120")
    # Children run in an empty folder: `python -c` puts the working directory first on sys.path, so a
    # checkout there would shadow the one PYTHONPATH names.
    cwd = tempfile.mkdtemp(prefix="fimaudit-startup-")
    where = subprocess.run([sys.executable, "-c", "import fimaudit; print(fimaudit.__file__)"], env=env, cwd=cwd,
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"fimaudit from {where}, {args.repeats} runs each\n")
    header = f"{'command':30s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'goal':>6s}"
    print(header)
    print("-" * len(header))
    rows = []
    for name, argv in commands().items():
        wall(argv, env, cwd)  # untimed: writes __pycache__ for a fresh checkout
        times = [wall(argv, env, cwd) for _ in range(args.repeats)]
        goal = GOAL_S if name in GOAL_COMMANDS else None
        row = {"command": name, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
               "goal_s": goal, "times_s": times}
        rows.append(row)
        print(f"{name:30s} {row['median_s']:9.3f} {row['min_s']:7.3f} {row['max_s']:7.3f} "
              f"{'' if goal is None else f'{goal:.1f}':>6s}", flush=True)
    os.rmdir(cwd)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg": os.getloadavg(), "repeats": args.repeats, "fimaudit": where}
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = old.get("runs", {})
    runs[args.label] = {"meta": meta, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"goal_s": GOAL_S, "goal_commands": list(GOAL_COMMANDS), "runs": runs}, indent=2)
                        + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} ({args.label})")


if __name__ == "__main__":
    main()
