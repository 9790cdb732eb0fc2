"""Branch and bound on ReLU neurons: when CROWN cannot show every margin positive over the set, split an
unstable ReLU's input into x <= 0 and x >= 0, bound each half again (its neuron is then exact), and keep
splitting the worst branch until every branch is verified, the branch budget is spent, or after 12 branches
the worst one has not closed half of the root's gap (a sample far from verified is not worth the budget).

Sound because the two halves cover the set and the bounds of each half hold on it (``BoundGraph.intervals``
with ``splits``). No split constraint enters the linear bounds themselves (as beta-CROWN's multipliers would,
Wang et al. 2021): a plain split, looser but simple.
"""

from __future__ import annotations

import heapq

import numpy as np

from .intervals import Box

PROGRESS_CHECK = 12  # after this many branches, give up unless the worst branch closed PROGRESS_SHARE of the gap
PROGRESS_SHARE = 0.5


def _relu_inputs(graph) -> list[str]:
    names = []
    for node in graph.var_nodes:
        if node.op == "Relu" and graph.graph.is_var(node.inputs[0]) and node.inputs[0] != graph.input_name:
            names.append(node.inputs[0])
    return list(dict.fromkeys(names))


def _pick(graph, bounds, names) -> tuple[str, int] | None:
    """The unstable neuron with the widest ReLU relaxation (largest u(-l)/(u-l))."""
    best, where = 0.0, None
    for name in names:
        b = bounds[name]
        lo, hi = b.lo.reshape(-1), b.hi.reshape(-1)
        score = np.where((lo < 0) & (hi > 0), hi * (-lo) / np.where(hi - lo > 0, hi - lo, 1.0), 0.0)
        j = int(np.argmax(score))
        if score[j] > best:
            best, where = float(score[j]), (name, j)
    return where


def _child(splits: dict, bounds, name: str, j: int, side: int) -> dict:
    out = dict(splits)
    b = bounds[name]
    cur = out.get(name, Box(np.full(b.shape, -np.inf), np.full(b.shape, np.inf)))
    lo, hi = cur.lo.copy().reshape(-1), cur.hi.copy().reshape(-1)
    if side < 0:
        hi[j] = min(hi[j], 0.0)
    else:
        lo[j] = max(lo[j], 0.0)
    out[name] = Box(lo.reshape(b.shape), hi.reshape(b.shape))
    return out


def verify_bab(graph, input_set, label: int, method: str = "crown", branches: int = 0, refine="auto",
               refine_limit: int = 4096) -> tuple[bool, np.ndarray, int]:
    """(verified, margin lower bounds at the root, branches used). ``branches`` 0: the root bound only."""
    root = graph.intervals(input_set, refine=refine, refine_limit=refine_limit)
    margins = graph.margins(root, input_set, label, method)
    others = np.delete(margins, label)
    if np.all(others > 0) or branches <= 0:
        return bool(np.all(others > 0)), margins, 0
    names = _relu_inputs(graph)
    heap = [(float(others.min()), 0, {}, root)]
    used, counter = 0, 1
    root_worst = float(others.min())
    while heap:
        worst, _, splits, bounds = heapq.heappop(heap)
        where = _pick(graph, bounds, names)
        if where is None or used + 2 > branches:
            return False, margins, used
        if used >= PROGRESS_CHECK and worst < PROGRESS_SHARE * root_worst:
            return False, margins, used  # the worst branch has not closed half the gap: more splits would not do
        for side in (-1, 1):
            child = _child(splits, bounds, where[0], where[1], side)
            b = graph.intervals(input_set, refine=refine, refine_limit=refine_limit, splits=child)
            used += 1
            if b is None:  # empty branch
                continue
            m = np.delete(graph.margins(b, input_set, label, method), label)
            if not np.all(m > 0):
                heapq.heappush(heap, (float(m.min()), counter, child, b))
                counter += 1
    return True, margins, used
