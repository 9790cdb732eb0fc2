"""Dossier plots: matplotlib figures rendered to inline SVG, byte-identical for identical input.

matplotlib is the ecosystem's well-kept plotting library and writes SVG itself; its SVG ids are
derived from ``svg.hashsalt`` (fixed here) and the date metadata is dropped, so the same audit
gives the same bytes. Text stays text (``svg.fonttype = none``): small files, no font outlines.
"""

from __future__ import annotations

import io
import re

import numpy as np

_STYLE = {"svg.hashsalt": "fimaudit", "svg.fonttype": "none", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3}


def _figure(width: float = 6.4, height: float = 3.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig) -> str:
    """The figure as an ``<svg>`` element (no XML prolog), deterministic."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(_STYLE):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    # The RDF metadata block only names the generator; the page has its own footer.
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)
    return text[text.index("<svg"):]


def _with_style(fn):
    def wrapped(*args, **kw):
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            fig = fn(*args, **kw)
            return None if fig is None else to_svg(fig)

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


@_with_style
def lambda_histogram(values: list[float], bound: float | None = None, quantity: str = "lambda_max(F)"):
    """Histogram of log10(lambda_max) per sample, with the closed-form bound as a line when finite.

    ``quantity`` names what the values are: the pointwise lambda_max(F) or the smoothed lambda_max(F_sigma)."""
    vals = np.array([v for v in values if v is not None and v > 0 and np.isfinite(v)])
    if vals.size == 0:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(np.log10(vals), bins=min(30, max(5, 2 * int(np.sqrt(vals.size)))), color="#4a78b5")
    ax.set_xlabel(f"log10 {quantity} per sample")
    ax.set_ylabel("samples")
    if bound is not None and bound > 0:
        ax.axvline(np.log10(bound), color="#c0392b", linestyle="--", label=f"closed-form bound {bound:.3g}")
        ax.legend(loc="upper left")
    return fig


@_with_style
def bound_vs_measured(values: list[float], bound: float | None, blocks: list[dict], quantity: str = "lambda_max(F)"):
    """Measured lambda_max per sample (sorted) against the closed-form bound and per-block factors."""
    vals = np.sort(np.array([v for v in values if v is not None and v > 0 and np.isfinite(v)]))
    if vals.size == 0:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.semilogy(np.arange(1, vals.size + 1), vals, "o", ms=3, color="#4a78b5", label=f"measured {quantity} (sorted)")
    if bound is not None and bound > 0:
        ax.axhline(bound, color="#c0392b", linestyle="--", label=f"closed-form bound L^2/2 = {bound:.3g}")
    ax.set_xlabel("sample rank")
    ax.set_ylabel(quantity)
    ax.legend(loc="lower right")
    return fig


@_with_style
def radius_scatter(rows: list[dict], max_eps: float, distance: str = "smallest successful eps"):
    """FIM-predicted radius against the smallest eps an attack succeeded at (censored at the largest eps)."""
    if not rows:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    hit = [r for r in rows if not r["censored"]]
    cens = [r for r in rows if r["censored"]]
    if hit:
        ax.scatter([r["fim_radius"] for r in hit], [r["min_adversarial_eps"] for r in hit], s=14, color="#4a78b5",
                   label="attack succeeded")
    if cens:
        ax.scatter([r["fim_radius"] for r in cens], [max_eps] * len(cens), s=18, marker="^", color="#999999",
                   label=f"not broken up to eps {max_eps:g}")
    ax.set_xscale("log")
    ax.set_xlabel("FIM-predicted radius 1/sqrt(lambda_max)")
    ax.set_ylabel(distance)
    ax.legend(loc="lower right")
    return fig


@_with_style
def robustness_curves(runs: list[dict], tau: float | None):
    """Robust accuracy and robust ratio against eps, one curve per attack."""
    if not runs:
        return None
    fig = _figure(6.4, 3.0)
    ax1, ax2 = fig.subplots(1, 2)
    for run in runs:
        name = f"{run['config']['attack']} ({run['config']['norm']})"
        eps = [r["eps"] for r in run["results"]]
        ax1.plot(eps, [r["robust_accuracy"] for r in run["results"]], "o-", label=name)
        if tau is not None:
            key = next((k for k in run["results"][0]["robust_ratio"] if np.isclose(float(k), tau)), None)
            if key is not None:
                ax2.plot(eps, [r["robust_ratio"][key] for r in run["results"]], "o-", label=name)
    ax1.set_xlabel("eps")
    ax1.set_ylabel("robust accuracy")
    ax1.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("eps")
    ax2.set_ylabel(f"robust ratio (tau = {tau:g})" if tau is not None else "robust ratio")
    ax2.set_ylim(-0.02, 1.02)
    ax1.legend(loc="lower left")
    return fig


@_with_style
def corruption_curves(corruptions: dict[str, dict[str, float]]):
    """Accuracy against corruption severity, one line per corruption and their mean."""
    if not corruptions:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    sev = sorted({int(s) for row in corruptions.values() for s in row})
    for name, row in corruptions.items():
        ax.plot(sev, [row[str(s)] for s in sev], "-", lw=1, alpha=0.6, label=name)
    mean = [float(np.mean([row[str(s)] for row in corruptions.values()])) for s in sev]
    ax.plot(sev, mean, "k-o", lw=2, label="mean")
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left", fontsize=7, ncol=2)
    return fig


def svg_is_nonempty(svg: str) -> bool:
    """At least one drawn path or shape: what the browser test checks in the rendered DOM, too."""
    return bool(re.search(r"<(path|rect|circle|polyline|line|use)\b", svg))
