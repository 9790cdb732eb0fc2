"""Performance and uncertainty on data: accuracy, macro P/R/F1, log-loss, entropy, margin, ECE."""

from __future__ import annotations

import numpy as np


def performance(logp: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, float]:
    """Metrics from log-probabilities ``(n, K)`` and labels ``(n,)``.

    margin: true-class logit minus the largest other logit (= the log-probability margin);
    ``margin_p10`` is its 10th percentile over the data; ``margin_p10_correct`` the same over the
    correctly classified samples (positive by construction), the margin gamma of the norm measures:
    on test data with more than 10% errors ``margin_p10`` is <= 0 and cannot normalise anything.
    ECE: equal-width confidence bins, |accuracy - confidence| weighted by bin size.
    """
    n, k = logp.shape
    p = np.exp(logp)
    pred = np.argmax(logp, axis=1)
    rows = np.arange(n)
    correct = pred == y
    prec, rec, f1 = [], [], []
    for c in range(k):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        if tp + fn == 0 and tp + fp == 0:
            continue
        pc = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        prec.append(pc)
        rec.append(rc)
        f1.append(2 * pc * rc / (pc + rc) if pc + rc else 0.0)
    other = logp.copy()
    other[rows, y] = -np.inf
    margin = logp[rows, y] - other.max(axis=1)
    entropy = -np.sum(np.where(p > 0, p * logp, 0.0), axis=1)
    conf = p.max(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return {
        "accuracy": float(correct.mean()),
        "precision_macro": float(np.mean(prec)) if prec else 0.0,
        "recall_macro": float(np.mean(rec)) if rec else 0.0,
        "f1_macro": float(np.mean(f1)) if f1 else 0.0,
        "log_loss": float(-np.mean(logp[rows, y])),
        "entropy_mean": float(np.mean(entropy)),
        "confidence_mean": float(np.mean(conf)),
        "margin_p10": float(np.percentile(margin, 10)),
        "margin_p10_correct": float(np.percentile(margin[correct], 10)) if correct.any() else float("nan"),
        "margin_median": float(np.median(margin)),
        "ece": float(ece),
    }


def shift_robustness(clean: dict[str, float], shifted: dict[str, float]) -> dict[str, float]:
    """The three notions of robustness under a shift (clean vs shifted performance dicts).

    accuracy_gap: clean - shifted accuracy; relative_accuracy: shifted / clean accuracy;
    relative_confidence: shifted / clean mean confidence (certainty); uncertainty_shift:
    shifted - clean log-loss.
    """
    return {
        "accuracy_gap": clean["accuracy"] - shifted["accuracy"],
        "relative_accuracy": shifted["accuracy"] / clean["accuracy"] if clean["accuracy"] > 0 else float("nan"),
        "relative_confidence": shifted["confidence_mean"] / clean["confidence_mean"],
        "uncertainty_shift": shifted["log_loss"] - clean["log_loss"],
    }
