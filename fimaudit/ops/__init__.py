"""The operator table: one entry per ONNX operator with every rule fimaudit has for it (``fimaudit.ops.registry``).

The families (``elementwise``, ``linear``, ``pool``, ``shape``, ``norm``, ``quant``, ``other``) register their
entries when the table is first read (``table()``), not when this package is imported: the families use the
interval and emission helpers of ``fimaudit.verify`` and ``fimaudit.autodiff``, whose packages read the table.
"""

from __future__ import annotations

from . import registry as _registry
from .registry import HOOKS, TABLE, Op, Reason

_loaded = False


def table() -> dict[str, Op]:
    """The operator table, every family registered (readers look entries up at call time)."""
    global _loaded
    if not _loaded:
        from . import elementwise, linear, norm, other, pool, quant, shape  # noqa: F401  (each registers its entries)

        _loaded = True
    return TABLE


def entry(name: str) -> Op | None:
    """The entry of op type ``name`` (None: fimaudit knows nothing of it)."""
    return table().get(name)


def supported(hook: str) -> tuple[str, ...]:
    """Operators with a rule for ``hook`` (one of ``HOOKS``), sorted."""
    table()
    return _registry.supported(hook)


def with_flag(flag: str) -> tuple[str, ...]:
    """Operators whose plain field ``flag`` is set, sorted."""
    table()
    return _registry.with_flag(flag)


def differentiable() -> tuple[str, ...]:
    """Operators whose outputs carry a derivative and that have both derivative rules."""
    table()
    return _registry.differentiable()


def markdown() -> str:
    """docs/operators.md, generated from the table."""
    table()
    return _registry.markdown()


__all__ = ["HOOKS", "Op", "Reason", "TABLE", "differentiable", "entry", "markdown", "supported", "table", "with_flag"]
