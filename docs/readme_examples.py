"""Regenerate the example outputs in README.md by running the commands they show.

    python docs/readme_examples.py          # rewrite README.md in place
    python docs/readme_examples.py --check  # exit 1 when an example is stale (prints which)

An example is a fenced block right after a marker line ``<!-- output: COMMAND -->``; the block
becomes COMMAND's stdout (run from the repository root, 100 columns, SOURCE_DATE_EPOCH=0, no
colour). ``<!-- output-head N: COMMAND -->`` keeps the first N lines and adds ``...``.

``--check`` (and tests/test_readme.py) compares what is stable across runs and machines, never one
machine's float32 rounding: lines that start with ``seconds`` (timings) are dropped, runs of spaces
and of table-drawing characters are collapsed (a column's width follows its widest number), and
numbers are compared with a relative tolerance of 2% (``REL_TOL``). In the output of
``fimaudit audit`` the numbers are not compared at all: its attack figures move in steps of one
sample (a rounding difference on another CPU can flip one), so there only the text between the
numbers (keys, PASS/FAIL, attack names, notes) must match.
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


REL_TOL = 0.02
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_BOX = re.compile(r"[\u2500-\u257f]+")


def _stable(text: str) -> list[str]:
    """Lines without timings, with runs of spaces and of box-drawing characters collapsed."""
    out = []
    for ln in text.splitlines():
        if ln.lstrip().startswith("seconds"):
            continue
        ln = _BOX.sub(lambda m: m.group(0)[0], ln)
        out.append(" ".join(ln.split()))
    return out


def _split(line: str) -> tuple[list[str], list[float]]:
    return _NUMBER.split(line), [float(t) for t in _NUMBER.findall(line)]


def differences(old: str, new: str, numbers: bool = True, rel_tol: float = REL_TOL) -> list[str]:
    """Where two outputs differ beyond timings, layout and rounding (numbers within ``rel_tol``; with
    ``numbers`` False only the text between numbers counts). Empty when they agree."""
    a, b = _stable(old), _stable(new)
    if len(a) != len(b):
        return [f"{len(a)} lines against {len(b)}"]
    out = []
    for n, (x, y) in enumerate(zip(a, b), start=1):
        (tx, nx), (ty, ny) = _split(x), _split(y)
        if tx != ty or len(nx) != len(ny):
            out.append(f"line {n}: {x!r} against {y!r}")
        elif numbers and any(abs(p - q) > rel_tol * max(abs(p), abs(q)) for p, q in zip(nx, ny)):
            out.append(f"line {n}: numbers differ by more than {rel_tol:.0%}: {x!r} against {y!r}")
    return out


def blocks(text: str) -> list[tuple[str, int | None, str]]:
    """(command, head N or None, block body) of every example in ``text``, in order."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if m and i + 1 < len(lines) and lines[i + 1].startswith("```"):
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            out.append((m.group("cmd"), int(m.group("n")) if m.group("n") else None, "\n".join(lines[i + 2:end])))
    return out


def fresh(cmd: str, head: int | None) -> str:
    """The block body a fresh run of ``cmd`` gives."""
    body = run(cmd).splitlines()
    if head is not None:
        body = body[:head] + ["  ..."]
    return "\n".join(body)


def compares_numbers(cmd: str) -> bool:
    return shlex.split(cmd)[1:2] != ["audit"]


def stale(text: str) -> list[str]:
    """The examples of ``text`` whose fresh output differs (see the module docstring), with why."""
    out = []
    for cmd, head, body in blocks(text):
        diff = differences(body, fresh(cmd, head), numbers=compares_numbers(cmd))
        out += [f"{cmd}: {d}" for d in diff]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report stale examples instead of rewriting")
    args = ap.parse_args()
    old = README.read_text(encoding="utf-8")
    if args.check:
        problems = stale(old)
        if problems:
            print("README.md examples are stale: run python docs/readme_examples.py")
            print("\n".join(problems))
            return 1
        print("README.md examples are current")
        return 0
    new = regenerate(old)
    README.write_text(new, encoding="utf-8")
    print("README.md examples regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
