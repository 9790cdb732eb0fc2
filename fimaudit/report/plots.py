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
    """The figure builder ``fn`` rendered to SVG; ``wrapped.figure`` is ``fn`` itself (tests read its axes)."""
    def wrapped(*args, **kw):
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            fig = fn(*args, **kw)
            return None if fig is None else to_svg(fig)

    def figure(*args, **kw):
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kw)

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    wrapped.figure = figure  # type: ignore[attr-defined]
    return wrapped


NORMS = {"linf": "L-inf", "l2": "L2", "l1": "L1"}


def eps_label(norm: str | None, what: str = "eps") -> str:
    """'eps (L-inf, attack units: data × --scale)': an attack radius axis names its norm and units."""
    return f"{what} ({NORMS.get(norm or '', norm or '?')}, attack units: data × --scale)"


def _legend_below(fig, ax_or_axes, ncols: int | None = None) -> None:
    """One legend for the figure, outside (below) the axes: it never covers data."""
    axes = ax_or_axes if isinstance(ax_or_axes, (list, tuple, np.ndarray)) else [ax_or_axes]
    handles, labels, seen = [], [], set()
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in seen:
                seen.add(lab)
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols or min(len(labels), 3), frameon=False)


def _integer_axis(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


@_with_style
def lambda_histogram(values: list[float], bound: float | None = None, quantity: str = "lambda_max(F)"):
    """Histogram of log10(lambda_max) per sample (integer counts), with the closed-form bound as a line when it
    lies within a decade of the data, else named in the legend as off scale (the bars keep the axis).

    ``quantity`` names what the values are: the pointwise lambda_max(F) or the smoothed lambda_max(F_sigma)."""
    from matplotlib.lines import Line2D

    vals = np.array([v for v in values if v is not None and v > 0 and np.isfinite(v)])
    if vals.size == 0:
        return None
    fig = _figure(6.4, 3.3)
    ax = fig.add_subplot()
    logs = np.log10(vals)
    ax.hist(logs, bins=min(30, max(5, 2 * int(np.sqrt(vals.size)))), color="#4a78b5", label=f"{vals.size} samples")
    ax.set_xlabel(f"log10 {quantity} per sample (per model-input unit)")
    ax.set_ylabel("samples")
    _integer_axis(ax.yaxis)
    if bound is not None and bound > 0:
        lb = float(np.log10(bound))
        if lb <= logs.max() + max(1.0, 0.5 * float(np.ptp(logs))):  # near enough to share the axis
            ax.axvline(lb, color="#c0392b", linestyle="--", label=f"closed-form bound {bound:.3g}")
        else:
            ax.add_line(Line2D([], [], color="#c0392b", linestyle="--",
                               label=f"closed-form bound {bound:.3g}: off scale, {bound / vals.max():.3g}× the largest value"))
    _legend_below(fig, ax, ncols=2)
    return fig


@_with_style
def bound_vs_measured(values: list[float], bound: float | None, blocks: list[dict], quantity: str = "lambda_max(F)"):
    """Measured lambda_max per sample (sorted) against the closed-form bound; legend below the axes."""
    vals = np.sort(np.array([v for v in values if v is not None and v > 0 and np.isfinite(v)]))
    if vals.size == 0:
        return None
    fig = _figure(6.4, 3.3)
    ax = fig.add_subplot()
    ax.semilogy(np.arange(1, vals.size + 1), vals, "o", ms=3, color="#4a78b5", label=f"measured {quantity} (sorted)")
    if bound is not None and bound > 0:
        ax.axhline(bound, color="#c0392b", linestyle="--",
                   label=f"closed-form bound L^2/2 = {bound:.3g} ({bound / vals.max():.3g}× the largest measured)")
    else:
        from matplotlib.lines import Line2D

        ax.add_line(Line2D([], [], color="#c0392b", linestyle="--", label="no finite closed-form bound (see its section)"))
    ax.set_xlabel("sample rank (by measured value)")
    ax.set_ylabel(f"{quantity} (per model-input unit)")
    _integer_axis(ax.xaxis)
    _legend_below(fig, ax, ncols=1)
    return fig


@_with_style
def radius_scatter(rows: list[dict], max_eps: float, distance: str = "smallest successful eps", norm: str | None = None):
    """FIM-predicted radius against the smallest eps an attack succeeded at (censored at the largest eps)."""
    if not rows:
        return None
    fig = _figure(6.4, 3.3)
    ax = fig.add_subplot()
    hit = [r for r in rows if not r["censored"]]
    cens = [r for r in rows if r["censored"]]
    if hit:
        ax.scatter([r["fim_radius"] for r in hit], [r["min_adversarial_eps"] for r in hit], s=16, color="#4a78b5",
                   label=f"attack succeeded ({len(hit)})")
    if cens:
        ax.scatter([r["fim_radius"] for r in cens], [max_eps] * len(cens), s=20, marker="^", color="#999999",
                   label=f"not broken up to eps {max_eps:g} ({len(cens)}, plotted at {max_eps:g})")
    ax.set_xscale("log")
    ax.set_xlabel("FIM-predicted radius 1/sqrt(lambda_max) (L2, model-input units)")
    ax.set_ylabel(eps_label(norm, distance).replace(", attack units", ",\nattack units"))
    _legend_below(fig, ax, ncols=2)
    return fig


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_SIZES = (9, 7, 5.5, 4.5, 4, 3.5, 3)


def _coinciding(series: dict[str, list[float]]) -> list[str]:
    """Groups of series names whose values are equal: 'apgd = pgd'."""
    names = list(series)
    groups, used = [], set()
    for i, a in enumerate(names):
        if a in used:
            continue
        same = [b for b in names[i + 1:] if b not in used and len(series[b]) == len(series[a])
                and np.allclose(series[a], series[b], equal_nan=True)]
        if same:
            used.update(same)
            groups.append(" = ".join([a, *same]))
    return groups


@_with_style
def robustness_curves(runs: list[dict], tau: float | None, worst: dict | None = None, norm: str | None = None):
    """Robust accuracy and robust ratio against eps, one curve per attack (distinct markers and sizes, hollow, so
    equal values stay visible) plus the per-sample worst case; coinciding curves are named under the axes."""
    if not runs:
        return None
    fig = _figure(7.2, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    ra, rr = {}, {}
    for k, run in enumerate(runs):
        name = f"{run['config']['attack']}"
        eps = [r["eps"] for r in run["results"]]
        style = dict(marker=_MARKERS[k % len(_MARKERS)], ms=_SIZES[k % len(_SIZES)], mfc="none", mew=1.4,
                     lw=1.2, color=f"C{k}", label=name)
        ra[name] = [r["robust_accuracy"] for r in run["results"]]
        ax1.plot(eps, ra[name], **style)
        if tau is not None:
            key = next((kk for kk in run["results"][0]["robust_ratio"] if np.isclose(float(kk), tau)), None)
            if key is not None:
                rr[name] = [r["robust_ratio"][key] for r in run["results"]]
                ax2.plot(eps, rr[name], **style)
    wc = {k: v for k, v in ((worst or {}).get("robust_accuracy") or {}).items() if _is_number(k)}  # not "per-sample"
    if wc:
        xs = sorted(wc, key=float)
        ax1.plot([float(x) for x in xs], [wc[x] for x in xs], "k--", lw=1.6, marker=".", ms=6,
                 label="worst case per sample over the attacks")
        wrr = (worst or {}).get("robust_ratio") or {}  # per eps, per tau (newer audits)
        if tau is not None and all(x in wrr for x in xs):
            key = next((k for k in wrr[xs[0]] if np.isclose(float(k), tau)), None)
            if key is not None:
                ax2.plot([float(x) for x in xs], [wrr[x][key] for x in xs], "k--", lw=1.6, marker=".", ms=6,
                         label="worst case per sample over the attacks")
                if all(len(v) == len(xs) for v in rr.values()):
                    rr["worst case"] = [wrr[x][key] for x in xs]
    for ax in (ax1, ax2):
        ax.set_xlabel(eps_label(norm).replace(" (", "\n("))
        ax.set_ylim(-0.04, 1.04)
    ax1.set_ylabel("robust accuracy")
    ax2.set_ylabel(f"robust ratio (tau = {tau:g})" if tau is not None else "robust ratio")
    notes = []
    if wc and all(len(v) == len(wc) for v in ra.values()):
        ra["worst case"] = [wc[x] for x in sorted(wc, key=float)]
    same = _coinciding(ra)
    if same:
        notes.append("robust accuracy equal: " + "; ".join(same))
    same = _coinciding(rr)
    if same:
        notes.append("robust ratio equal: " + "; ".join(same))
    _legend_below(fig, [ax1, ax2], ncols=min(len(runs) + bool(wc), 4))
    if notes:
        fig.suptitle("; ".join(notes), fontsize=8, color="#555555")
    return fig


@_with_style
def corruption_curves(corruptions: dict[str, dict[str, float]]):
    """Accuracy against corruption severity, one line per corruption and their mean; legend right of the axes."""
    if not corruptions:
        return None
    fig = _figure(6.4, 3.3)
    ax = fig.add_subplot()
    sev = sorted({int(s) for row in corruptions.values() for s in row})
    for k, (name, row) in enumerate(corruptions.items()):
        ax.plot(sev, [row[str(s)] for s in sev], "-", lw=1.2, alpha=0.8, color=f"C{k % 10}",
                marker=_MARKERS[k % len(_MARKERS)], ms=3, label=name)
    mean = [float(np.mean([row[str(s)] for row in corruptions.values()])) for s in sev]
    ax.plot(sev, mean, "k-o", lw=2, label="mean")
    ax.set_xlabel("severity (0: clean)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    _integer_axis(ax.xaxis)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=7, frameon=False)
    return fig


def svg_is_nonempty(svg: str) -> bool:
    """At least one drawn path or shape: what the browser test checks in the rendered DOM, too."""
    return bool(re.search(r"<(path|rect|circle|polyline|line|use)\b", svg))
