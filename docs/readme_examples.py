"""Regenerate the example outputs in README.md by running the commands they show.

    python docs/readme_examples.py          # rewrite README.md in place
    python docs/readme_examples.py --check  # exit 1 when an example is stale (prints which)

An example is a fenced block right after a marker line ``<!-- output: COMMAND -->``; the block
becomes COMMAND's stdout (run from the repository root, 100 columns, SOURCE_DATE_EPOCH=0, no
colour). ``<!-- output-head N: COMMAND -->`` keeps the first N lines and adds ``...``. Timings
in an output (``seconds`` lines) differ run to run; ``--check`` ignores lines that start with
``seconds``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- output(?:-head (?P<n>\d+))?: (?P<cmd>.+?) -->$")


def run(cmd: str) -> str:
    env = dict(os.environ, COLUMNS="100", SOURCE_DATE_EPOCH="0", NO_COLOR="1", TERM="dumb")
    args = shlex.split(cmd)
    if args and args[0] == "fimaudit":
        args = [sys.executable, "-m", "fimaudit", *args[1:]]
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode not in (0, 1):
        raise SystemExit(f"{cmd}: exit {out.returncode}\n{out.stderr}")
    return "\n".join(line.rstrip() for line in out.stdout.rstrip("\n").splitlines())


def regenerate(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        m = MARKER.match(line.strip())
        i += 1
        if not m:
            continue
        if i >= len(lines) or not lines[i].startswith("```"):
            raise SystemExit(f"README line {i}: a marker must be followed by a fenced block")
        fence = lines[i]
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = run(m.group("cmd")).splitlines()
        if m.group("n"):
            body = body[: int(m.group("n"))] + ["  ..."]
        out += [fence, *body, lines[end]]
        i = end + 1
    return "\n".join(out) + "\n"


def _stable(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if not ln.lstrip().startswith("seconds")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report stale examples instead of rewriting")
    args = ap.parse_args()
    old = README.read_text(encoding="utf-8")
    new = regenerate(old)
    if args.check:
        if _stable(old) != _stable(new):
            print("README.md examples are stale: run python docs/readme_examples.py")
            return 1
        print("README.md examples are current")
        return 0
    README.write_text(new, encoding="utf-8")
    print("README.md examples regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
