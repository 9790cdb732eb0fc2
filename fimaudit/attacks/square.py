"""Square Attack (Andriushchenko et al. 2020): score-based random search with square updates.

L-inf: vertical-stripe initialisation at +-eps; each iteration re-draws a random s x s
square (every channel) at +-eps and keeps it when the margin loss falls. L2: the
initialisation is a grid of centred bumps with random signs scaled to norm eps; an
iteration draws two square windows, puts a fresh bump with a random sign in the first and
rescales the second, splitting their joint energy (plus any unused budget) at a random
fraction: a two-window mass transfer in the spirit of the paper's update that keeps every
iterate inside the ball; it is kept when the margin falls. The square side
follows the published schedule: s = round(sqrt(p * H * W)) with p = p_init halved at 10, 50,
200, 500, 1000, 2000, 4000, 6000 and 8000 of 10 000 iterations (rescaled to the budget).
"""

from __future__ import annotations

import numpy as np

from .base import Attack, Budget, margins, project, row_of, rows_of

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of pixels changed at iteration ``it`` of ``n_iters`` (the published schedule)."""
    scaled = int(it / max(n_iters, 1) * 10000)
    p = p_init
    for h in _HALVINGS:
        if scaled > h:
            p /= 2
    return p


def _as_chw(shape: tuple[int, ...], channel_axis: int = 0) -> tuple[int, int, int]:
    """(C, H, W) of a per-sample shape whose channels lie on ``channel_axis`` (0 for CHW, 2 for HWC)."""
    if len(shape) == 3:
        c = shape[channel_axis]
        h, w = (s for i, s in enumerate(shape) if i != channel_axis)
        return (c, h, w)
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    return (1, 1, int(np.prod(shape)))


def _bump(s: int) -> np.ndarray:
    """A centred s x s bump of unit L2 norm (the 'meta pseudo-Gaussian' shape, simplified)."""
    r = np.arange(s) - (s - 1) / 2
    g = 1.0 / (1.0 + r[:, None] ** 2 + r[None, :] ** 2)
    return g / np.linalg.norm(g)


class Square(Attack):
    name = "square"

    def __init__(self, p_init: float | None = None, n_iters: int | None = None, channel_axis: int = 0) -> None:
        """``channel_axis``: the axis of a sample that holds its channels (the detected layout: 0 NCHW, 2 NHWC).

        Squares are drawn over the two spatial axes and cover every channel, whatever the layout,
        so the same weights in NCHW and NHWC give the same attack for the same seed.
        """
        self.p_init = p_init
        self.n_iters = n_iters
        self.channel_axis = int(channel_axis)

    def run(self, oracle, x, y, eps, norm, bounds, rng, acct: Budget, active: np.ndarray) -> np.ndarray:
        lo, hi = bounds
        n = len(x)
        sample = tuple(x.shape[1:])
        ca = self.channel_axis if len(sample) == 3 else 0
        if not 0 <= ca < max(len(sample), 1):
            raise ValueError(f"channel axis {ca} outside the sample shape {list(sample)}")
        c, hh, ww = _as_chw(sample, ca)
        # Work on (n, C, H, W); the model sees its own layout (``back``).
        xs = np.moveaxis(x, 1 + ca, 1).reshape(n, c, hh, ww) if ca else x.reshape(n, c, hh, ww)

        def back(rows: np.ndarray) -> np.ndarray:
            return np.moveaxis(rows, 1, 1 + ca) if ca else rows.reshape((-1,) + sample)
        p_init = self.p_init or (0.05 if norm == "linf" else 0.1)
        n_iters = self.n_iters or int(acct.left().min()) - 1
        if n_iters < 1:
            return x.copy()
        if norm == "linf":
            delta = eps * rng.choice(np.array([-1.0, 1.0]), size=(n, c, 1, ww)) * np.ones((1, 1, hh, 1))
        else:
            delta = self._l2_init(n, c, hh, ww, eps, rng)
        x_adv = np.clip(xs + delta, lo, hi)
        todo = np.flatnonzero(active)
        loss = np.full(n, np.inf)
        if todo.size:
            loss[todo] = margins(oracle.logp(back(x_adv[todo])), y[todo])
            acct.spend(todo, 1)
        for it in range(n_iters):
            todo = todo[(loss[todo] >= 0) & (acct.left(todo) >= 1)]
            if todo.size == 0:
                break
            p = p_schedule(p_init, it, n_iters)
            s = int(round(np.sqrt(p * hh * ww)))
            s = max(1, min(s, hh if hh > 1 else ww, ww))
            sh = min(s, hh)
            cand = x_adv[todo].copy()
            cur = cand - xs[todo]
            na = len(todo)
            sub = rows_of(rng, todo)
            r0 = sub.integers(0, hh - sh + 1, size=na)
            c0 = sub.integers(0, ww - s + 1, size=na)
            if norm == "linf":
                # One batched assignment of every active sample's window.
                rr = (r0[:, None] + np.arange(sh))[:, None, :, None]
                cc = (c0[:, None] + np.arange(s))[:, None, None, :]
                signs = sub.choice(np.array([-1.0, 1.0]), size=(na, c, 1, 1))
                cur[np.arange(na)[:, None, None, None], np.arange(c)[None, :, None, None], rr, cc] = eps * signs
            else:
                for j in range(na):
                    cur[j] = self._l2_update(cur[j], int(r0[j]), int(c0[j]), sh, s, eps, row_of(sub, j))
            cur = project(cur, eps, norm)
            cand = np.clip(xs[todo] + cur, lo, hi)
            new_loss = margins(oracle.logp(back(cand)), y[todo])
            acct.spend(todo, 1)
            better = new_loss < loss[todo]
            x_adv[todo[better]] = cand[better]
            loss[todo[better]] = new_loss[better]
        return back(x_adv).reshape(x.shape)

    @staticmethod
    def _l2_update(cur: np.ndarray, r0: int, c0: int, sh: int, s: int, eps: float, rng) -> np.ndarray:
        """Move energy between a window W1 (new bump, random sign) and a second window W2 (rescaled).

        The energy of W1 and W2 together, plus whatever the ball leaves unused, is split at a
        uniform random fraction: the norm never exceeds eps and mass can flow to where it helps.
        """
        c, hh, ww = cur.shape
        out = cur.copy()
        r1, c1 = rng.integers(0, hh - sh + 1), rng.integers(0, ww - s + 1)
        w1 = (slice(None), slice(r0, r0 + sh), slice(c0, c0 + s))
        w2 = (slice(None), slice(r1, r1 + sh), slice(c1, c1 + s))
        overlap = not (r0 + sh <= r1 or r1 + sh <= r0 or c0 + s <= c1 or c1 + s <= c0)
        e1 = float(np.sum(out[w1] ** 2))
        e2 = 0.0 if overlap else float(np.sum(out[w2] ** 2))
        spare = max(eps**2 - float(np.sum(out**2)), 0.0)
        total = e1 + e2 + spare
        t = rng.uniform()
        bump = _bump(max(sh, s))[:sh, :s]
        bump = bump / np.linalg.norm(bump)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(c, 1, 1))
        out[w1] = signs * bump[None] * np.sqrt(total * t / c)
        if not overlap and e2 > 0:
            out[w2] = out[w2] * np.sqrt(total * (1 - t) / e2)
        return out

    @staticmethod
    def _l2_init(n, c, hh, ww, eps, rng) -> np.ndarray:
        delta = np.zeros((n, c, hh, ww))
        s = max(1, min(hh, ww) // 5) if hh > 1 else max(1, ww // 5)
        sh = min(s, hh)
        bump = _bump(s)[:sh, :s]
        for r0 in range(0, hh, sh):
            for c0 in range(0, ww, s):
                blk = bump[: min(sh, hh - r0), : min(s, ww - c0)]
                delta[:, :, r0 : r0 + blk.shape[0], c0 : c0 + blk.shape[1]] += (
                    rng.choice(np.array([-1.0, 1.0]), size=(n, c, 1, 1)) * blk[None, None]
                )
        flat = delta.reshape(n, -1)
        flat *= eps / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-300)
        return flat.reshape(delta.shape)
