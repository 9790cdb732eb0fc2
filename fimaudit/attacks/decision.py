"""Decision-based attacks: they read only the predicted class (top-1 label), never scores or gradients.

RayS (Chen & Gu, KDD 2020), L-inf: the adversarial radius along a sign direction s in {-1, 1}^D is
g(s) = min {r : argmax f(clip(x + r s)) != y}, and the attack minimises g over s by a hierarchical
sign-flip search: at level k the D coordinates (channels first, so NCHW and NHWC inputs give the
same blocks) are cut into 2^k contiguous blocks, and flipping each block in turn gives a
candidate. A candidate is worth a binary search only when it is adversarial at the current best
radius (one query, the paper's key saving); the search then halves [0, r_best] (probing eps
first) until the bracket is within ``rtol`` (1%) of its upper end. The levels restart at 0 after
single coordinates (empty blocks are skipped). A sample stops as soon as its radius is at most eps.

Works on any model, smooth or piecewise-constant (quantized, binarized): it never needs a
derivative. Every evaluation is one counted query of one row; all samples move in lockstep, one
query each per round, with their own state (and their own random start direction from ``RowRng``),
so a sample's attack does not depend on the batch.
"""

from __future__ import annotations

import numpy as np

from .base import Attack, Budget, row_of, rows_of

CHECK, SEARCH = 0, 1


def _canonical(shape: tuple[int, ...], channel_axis: int) -> tuple[tuple[int, ...], int]:
    """(per-sample shape with the channels moved first, that axis) for an image sample; flat shapes unchanged."""
    if len(shape) == 3 and channel_axis:
        if not 0 <= channel_axis < 3:
            raise ValueError(f"channel axis {channel_axis} outside the sample shape {list(shape)}")
        return (shape[channel_axis],) + tuple(s for i, s in enumerate(shape) if i != channel_axis), channel_axis
    return tuple(shape), 0


def rays_search(oracle, x: np.ndarray, y: np.ndarray, eps: float, bounds: tuple[float, float], rng,
                acct: Budget, active: np.ndarray, channel_axis: int = 0,
                rtol: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """RayS's L-inf search; returns (radius (n,), sign direction (n, *shape)) per sample.

    ``radius[i]`` is the smallest radius found at which ``clip(x_i + radius * dir_i)`` was seen
    misclassified (inf when none was found or the row was inactive); the search stops for a row
    once its radius is at most ``eps`` (pass 0 to run to the budget) or its budget is spent.
    Queries are spent from ``acct`` (one per row per evaluation).
    """
    lo_b, hi_b = bounds
    n = len(x)
    sample = tuple(x.shape[1:])
    canon, ca = _canonical(sample, channel_axis)
    d = int(np.prod(sample))

    def to_model(dirs: np.ndarray) -> np.ndarray:
        """Directions in canonical (channels-first) flat order -> the model's layout."""
        z = dirs.reshape((-1,) + canon)
        return np.moveaxis(z, 1, 1 + ca) if ca else z.reshape((-1,) + sample)

    r_cap = float(hi_b - lo_b)  # beyond this every coordinate is clipped: the ray ends at a corner
    best_dir = np.where(rows_of(rng, np.arange(n)).uniform(size=(n, d)) < 0.5, -1.0, 1.0)
    radius = np.full(n, np.inf)
    found = np.zeros(n, dtype=bool)
    cand = best_dir.copy()
    phase = np.full(n, CHECK)
    lo, hi = np.zeros(n), np.zeros(n)
    level, block = np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int64)  # block -1: the start direction
    live = np.asarray(active, dtype=bool).copy()

    def next_candidate(i: int) -> None:
        """Advance row i to its next block flip of the current best direction."""
        while True:
            block[i] += 1
            if block[i] >= 2 ** level[i]:
                # the level after single coordinates (2^k >= d) starts over with the whole vector
                level[i] = 0 if 2 ** level[i] >= d else level[i] + 1
                block[i] = 0
            parts = 2 ** int(level[i])
            a, b = int(block[i]) * d // parts, (int(block[i]) + 1) * d // parts
            if b > a:  # at the last level some blocks are empty when d is not a power of two
                break
        cand[i] = best_dir[i]
        cand[i, a:b] *= -1.0
        phase[i] = CHECK

    while True:
        rows = np.flatnonzero(live)
        rows = rows[acct.left(rows) >= 1]
        if rows.size == 0:
            break
        # the radius each row probes: its best radius (a check), or the search's next point (eps first)
        t = np.where(found[rows], radius[rows], r_cap)
        srch = phase[rows] == SEARCH
        mid = np.where((lo[rows] < eps) & (eps < hi[rows]), eps, 0.5 * (lo[rows] + hi[rows]))
        t = np.where(srch, mid, t)
        xs = x[rows] + t.reshape((-1,) + (1,) * len(sample)) * to_model(cand[rows])
        pred = np.argmax(oracle.logp(np.clip(xs, lo_b, hi_b)), axis=1)
        acct.spend(rows, 1)
        adv = pred != y[rows]
        for j, i in enumerate(rows):
            if phase[i] == CHECK:
                if adv[j]:
                    phase[i], lo[i], hi[i] = SEARCH, 0.0, t[j]
                else:
                    next_candidate(i)
                    continue
            elif adv[j]:
                hi[i] = t[j]
            else:
                lo[i] = t[j]
            if hi[i] <= eps or hi[i] - lo[i] <= rtol * hi[i]:
                if not found[i] or hi[i] < radius[i]:
                    radius[i], best_dir[i], found[i] = hi[i], cand[i], True
                if radius[i] <= eps:
                    live[i] = False
                else:
                    next_candidate(i)
    return radius, to_model(best_dir)


class RayS(Attack):
    """RayS (Chen & Gu 2020): decision-based L-inf attack by hierarchical sign-flip search of the ray direction."""

    name = "rays"
    norms = ("linf",)

    def __init__(self, channel_axis: int = 0, rtol: float = 1e-2) -> None:
        """``channel_axis``: the axis of a sample holding its channels (0 NCHW, 2 NHWC); blocks are cut channels first."""
        self.channel_axis = int(channel_axis)
        self.rtol = float(rtol)

    def run(self, oracle, x, y, eps, norm, bounds, rng, acct: Budget, active: np.ndarray) -> np.ndarray:
        radius, dirs = rays_search(oracle, x, y, eps, bounds, rng, acct, active, self.channel_axis, self.rtol)
        # the best ray's point inside the ball: adversarial where the radius is at most eps
        r = np.minimum(radius, eps).reshape((-1,) + (1,) * (x.ndim - 1))
        return np.clip(x + r * dirs, *bounds)


# ------------------------------------------------------------------ HopSkipJump (L2)
class HopSkipJump(Attack):
    """HopSkipJumpAttack (Chen, Jordan & Wainwright 2020), untargeted L2, from the predicted class only.

    Per sample: a uniform random point of the input box that is misclassified starts the search
    (up to ``init_tries`` draws); then each iteration t (1) binary-searches the segment from x to the
    current adversarial point for the boundary (the blend at distance eps is probed first; the
    search stops when the bracket is within ``rtol`` of its upper end), (2) estimates the boundary's
    normal at that point from ``probes * sqrt(t)`` decisions at x_b + delta u_b (u_b uniform on the
    sphere, delta = ||x_b - x|| / d, the paper's sqrt(d) theta dist with theta = d^(-3/2)), with the
    mean decision subtracted as a baseline, and (3) steps along it by ||x_b - x|| / sqrt(t), halved
    until the point is adversarial (the geometric step search). A sample stops once its boundary
    point lies within eps. Samples run one after another, each from its own stream, so the batch
    changes nothing; every decision is one counted query. Random points and probes are drawn
    channels first (``channel_axis``), so NCHW and NHWC inputs get the same draws.
    """

    name = "hsja"
    norms = ("l2",)

    def __init__(self, channel_axis: int = 0, probes: int = 100, init_tries: int = 100, rtol: float = 1e-3,
                 halvings: int = 30) -> None:
        self.channel_axis = int(channel_axis)
        self.probes = int(probes)
        self.init_tries = int(init_tries)
        self.rtol = float(rtol)
        self.halvings = int(halvings)

    def run(self, oracle, x, y, eps, norm, bounds, rng, acct: Budget, active: np.ndarray) -> np.ndarray:
        x_adv = x.copy()
        for i in np.flatnonzero(active):
            point = self._one(oracle, x[i], int(y[i]), float(eps), bounds, row_of(rng, int(i)), acct, int(i))
            if point is not None:
                x_adv[i] = point
        return x_adv

    def _one(self, oracle, x0: np.ndarray, label: int, eps: float, bounds, gen, acct: Budget, i: int):
        """One sample's attack; the adversarial point closest to x0 found (None if none)."""
        lo_b, hi_b = bounds
        shape = x0.shape
        d = x0.size
        flat = x0.reshape(-1)
        me = np.array([i])
        canon, ca = _canonical(tuple(shape), self.channel_axis)

        def draw(rows: np.ndarray) -> np.ndarray:
            """Rows drawn in channels-first order -> the model's flat order."""
            if not ca:
                return rows
            return np.moveaxis(rows.reshape((-1,) + canon), 1, 1 + ca).reshape(len(rows), -1)

        def decide(rows: np.ndarray) -> np.ndarray:
            """Misclassified or not, for as many rows as the budget pays (the first ones)."""
            rows = rows[: max(int(acct.left(me)[0]), 0)]
            if len(rows) == 0:
                return np.zeros(0, dtype=bool)
            pred = np.argmax(oracle.logp(rows.reshape((-1,) + shape)), axis=1)
            acct.spend(me, len(rows))
            return pred != label

        adv = None
        for _ in range(self.init_tries):
            cand = draw(gen.uniform(lo_b, hi_b, size=(1, d)))
            got = decide(cand)
            if got.size == 0:
                return None
            if got[0]:
                adv = cand[0]
                break
        if adv is None:
            return None
        best, best_dist = None, np.inf
        t = 0
        while acct.left(me)[0] >= 1:
            t += 1
            # (1) the boundary on the segment x0 -> adv: blends a in (lo, hi], hi adversarial
            span = float(np.linalg.norm(adv - flat))
            a_lo, a_hi = 0.0, 1.0
            a_eps = eps / span if span > 0 else 1.0
            while a_hi - a_lo > self.rtol * a_hi:
                a = a_eps if a_lo < a_eps < a_hi else 0.5 * (a_lo + a_hi)
                got = decide(((1 - a) * flat + a * adv)[None])
                if got.size == 0:
                    break
                if got[0]:
                    a_hi = a
                else:
                    a_lo = a
                if a_hi * span <= eps:
                    break
            xb = (1 - a_hi) * flat + a_hi * adv
            dist = a_hi * span
            if dist < best_dist:
                best, best_dist = xb, dist
            if best_dist <= eps or acct.left(me)[0] < 2:
                break
            # (2) the boundary's normal from decisions around xb
            m = int(min(self.probes * np.sqrt(t), acct.left(me)[0] - 1))
            u = draw(gen.standard_normal((m, d)))
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            delta = dist / d
            phi = np.where(decide(np.clip(xb + delta * u, lo_b, hi_b)), 1.0, -1.0)
            if phi.size < m:
                break
            centred = phi - phi.mean() if abs(phi.mean()) < 1 else phi
            v = centred @ u
            nv = float(np.linalg.norm(v))
            if nv == 0:
                break
            v /= nv
            # (3) geometric step: halve until the point is adversarial
            xi = dist / np.sqrt(t)
            moved = None
            for _ in range(self.halvings):
                cand = np.clip(xb + xi * v, lo_b, hi_b)
                got = decide(cand[None])
                if got.size == 0:
                    break
                if got[0]:
                    moved = cand
                    break
                xi /= 2
            adv = moved if moved is not None else xb
        return None if best is None else best.reshape(shape)
