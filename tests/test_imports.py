"""The package's import graph has no cycles, counting imports inside functions too; help starts light.

Edges come from the source (ast), not from running it: ``from .a import b`` is an edge to ``a``,
or to ``a.b`` when ``b`` is a submodule; ``import fimaudit.x`` an edge to ``fimaudit.x``. Implicit
parent-package imports are not edges (every submodule would otherwise depend on ``__init__``).
Run ``python tests/test_imports.py`` to print the graph's cycles.

``import fimaudit``, ``import fimaudit.cli`` and every ``--help`` must not import the heavy libraries
(onnx pulls ml_dtypes, scipy.special, matplotlib: a second or more before any help is shown); each is
checked in a fresh interpreter, by the modules loaded, never by the wall time.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "fimaudit"
HEAVY = ("onnx", "onnxruntime", "scipy", "matplotlib")


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = PKG) -> dict[str, set[str]]:
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in files else src for a in node.names]
            else:
                continue
            graph[mod].update(t for t in targets if t in files and t != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_checker_finds_a_cycle(tmp_path):
    pkg = tmp_path / "fimaudit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n__version__ = '1'\n")
    (pkg / "a.py").write_text("def f():\n    from .sub.b import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import __version__\nfrom ..a import f\n")
    (pkg / "c.py").write_text("import fimaudit.a\n")
    g = import_graph(pkg)
    assert g["fimaudit.c"] == {"fimaudit.a"}
    assert cycles(g) == [["fimaudit", "fimaudit.a", "fimaudit.sub.b"]]


def _loaded(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter (from the checkout): the modules loaded when it ends."""
    probe = code + "\nimport json, sys\nprint('MODULES ' + json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", probe], cwd=PKG.parent, capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1].removeprefix("MODULES ")))


def _heavy_loaded(code: str) -> list[str]:
    return sorted({m.split(".")[0] for m in _loaded(code)} & set(HEAVY))


@pytest.mark.parametrize("module", ["fimaudit", "fimaudit.cli"])
def test_import_is_light(module):
    assert _heavy_loaded(f"import {module}") == []


@pytest.mark.parametrize("argv", [["--help"], ["scan", "--help"], ["--version"]], ids=" ".join)
def test_python_m_fimaudit_help_is_light(argv):
    code = ("import runpy, sys\n"
            f"sys.argv = ['fimaudit', *{argv!r}]\n"
            "try:\n"
            "    runpy.run_module('fimaudit', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exc:\n"
            "    assert exc.code in (0, None), exc.code\n")
    assert _heavy_loaded(code) == []


def test_every_command_help_is_light():
    code = ("import typer.main\n"
            "from typer.testing import CliRunner\n"
            "from fimaudit.cli import app\n"
            "names = sorted(typer.main.get_command(app).commands)\n"
            "assert len(names) > 5, names\n"
            "for args in [['--help'], ['--version']] + [[n, '--help'] for n in names]:\n"
            "    res = CliRunner().invoke(app, args)\n"
            "    assert res.exit_code == 0 and res.stdout.strip(), (args, res.exit_code, res.stdout, res.stderr)\n")
    assert _heavy_loaded(code) == []


def test_public_api_loads_on_first_use():
    """``fimaudit.scan`` stays the function even after the submodule of that name is imported lazily."""
    code = ("import fimaudit, sys\n"
            "assert 'fimaudit.scan' not in sys.modules\n"
            "from fimaudit.scan import ScanConfig as C\n"
            "assert callable(fimaudit.scan) and fimaudit.scan.__module__ == 'fimaudit', fimaudit.scan\n"
            "assert fimaudit.ScanConfig is C and fimaudit.ScanResult.__name__ == 'ScanResult'\n"
            "assert issubclass(fimaudit.FimauditError, Exception) and fimaudit.__version__\n"
            "from fimaudit import ScanResult, scan\n"
            "assert set(fimaudit.__all__) <= set(dir(fimaudit))\n")
    assert {"fimaudit.scan", "fimaudit.results"} <= _loaded(code)


if __name__ == "__main__":
    for comp in cycles(import_graph()):
        print(" <-> ".join(comp))
