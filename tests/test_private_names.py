"""No fimaudit module imports another module's private name (``from .scan import _runtime``).

A name with a leading underscore is its module's own business; a module that needs it from outside gets a public
name (``scan.runtime_info``, ``scan.tie_fraction``, ``loader.open_session``, ``result.clean``). The pairs recorded
below exist today in areas other redesign steps rework (the renderers' shared formatters, the operator code); the
list may only shrink.
"""

import ast
from pathlib import Path

import fimaudit

PKG = Path(fimaudit.__file__).parent

PRIVATE_IMPORTS_TODAY = {
    ("fimaudit.model.gpu", "fimaudit.model.session", "_ort"),
} | {(f"fimaudit.report.{m}", "fimaudit.report.terminal", "_fmt")
     for m in ("compare", "evidence", "certify", "markdown", "bounds", "audit", "html")} | {
    (f"fimaudit.report.{m}", "fimaudit.report.terminal", name)
    for m in ("markdown", "html") for name in ("_dither_text", "_gradients_text")}


def private_imports() -> set[tuple[str, str, str]]:
    """(importing module, imported module, private name) for every ``from M import _name`` across modules."""
    found = set()
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_pkg else parts)
        package = name if is_pkg else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("fimaudit") or source == name:
                continue
            found |= {(name, source, a.name) for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")}
    return found


def test_the_check_sees_private_imports():
    assert ("fimaudit.report.bounds", "fimaudit.report.terminal", "_fmt") in private_imports()


def test_no_module_imports_another_modules_private_name():
    found = private_imports()
    assert found - PRIVATE_IMPORTS_TODAY == set(), "import a public name instead (or make one)"
    assert PRIVATE_IMPORTS_TODAY - found == set(), "an import is gone: remove it from the list"
