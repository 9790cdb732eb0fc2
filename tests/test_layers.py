"""Layer rules over fimaudit's import graph (every import statement, function-level ones included)."""

import ast
from pathlib import Path

import fimaudit

PKG = Path(fimaudit.__file__).parent

# Job modules: they load models and data and run a command end to end.
JOBS = {"fimaudit.scan", "fimaudit.audit", "fimaudit.audit_command", "fimaudit.verify.run", "fimaudit.evidence", "fimaudit.certify", "fimaudit.metrics.suite"}
CLI = {"fimaudit.cli", "fimaudit.commandline", "fimaudit.__main__"}

def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the fimaudit modules ``path`` imports (``from . import x`` counts as module ``pkg.x``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in out if m == "fimaudit" or m.startswith("fimaudit.")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PKG.rglob("*.py"))}


def edges(g, src_pred, dst_set) -> set[tuple[str, str]]:
    return {(s, d) for s, targets in g.items() if src_pred(s) for d in targets if d in dst_set}


def test_the_import_graph_is_read():
    g = graph()
    assert "fimaudit.scan" in g["fimaudit.audit"] and "fimaudit.streams" in g["fimaudit.estimators.probes"]
    assert "fimaudit.model.oracle" in g["fimaudit.estimators.source"]


def is_report(m: str) -> bool:
    return m == "fimaudit.report" or m.startswith("fimaudit.report.")


def is_results(m: str) -> bool:
    return m == "fimaudit.results" or m.startswith("fimaudit.results.")


def test_renderers_import_results_only():
    """A renderer reads results: it imports fimaudit.results, the other renderers and a few leaf helpers, never a job
    (nor anything that loads models: the model, graph, autodiff or estimator packages)."""
    allowed = {"fimaudit", "fimaudit.errors"}
    found = {(s, d) for s, d in edges(graph(), is_report, set(graph())) if not (is_report(d) or is_results(d))}
    assert {(s, d) for s, d in found if d not in allowed} == set(), "a renderer imports beyond the results"


def test_results_import_no_job_no_renderer_and_no_cli():
    g = graph()
    assert {(s, d) for s, d in edges(g, is_results, set(g))
            if not (is_results(d) or d in {"fimaudit", "fimaudit.errors", "fimaudit._version"})} == set()


def test_nothing_but_the_entry_points_imports_the_cli():
    assert edges(graph(), lambda m: m not in CLI, CLI) == set()


def test_estimators_import_no_job_and_no_cli():
    assert edges(graph(), lambda m: m.startswith("fimaudit.estimators"), JOBS | CLI) == set()
