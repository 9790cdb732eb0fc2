"""``python -m fimaudit.ops --markdown``: print docs/operators.md, generated from the operator table."""

from __future__ import annotations

import sys

from . import markdown


def main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        print("usage: python -m fimaudit.ops --markdown > docs/operators.md", file=sys.stderr)
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
