"""Plots for the reports (matplotlib, Agg backend: files only, no screen needed).

Conventions of every plot here:

* a curve is the mean over seeds, with the range across seeds as a shaded
  band (the figure's title says so; one seed has no band);
* legends sit to the right of the axes, never over the data;
* curves that coincide in a panel are drawn once, and the legend names them
  together ("a = b (identical)"), or notes where they do ("= a against
  iteration");
* on a log axis, zero and undefined (NaN) values cannot be drawn: they are
  marked on the bottom (or left) edge, and the legend says what the marks are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from discograd.report.curves import Curve

__all__ = [
    "curves",
    "error_lines",
    "image_grid",
    "simplex_samples",
    "timing_boxes",
    "variance_dots",
]

COLORS = tuple(f"C{i}" for i in range(10))  # the default cycle (tab10)
STYLES = ("-", "--", "-.", ":")
LEGEND = {"fontsize": 7, "frameon": False, "loc": "upper left", "bbox_to_anchor": (1.02, 1.0)}
ZERO = "v"  # marker of a zero value on a log axis
UNDEFINED = "x"  # marker of a NaN value

#: ``(xlabel, {label: curve})``: one column of panels
Column = tuple[str, Mapping[str, Curve]]


def _save(fig: Figure, path: Path) -> Path:
    # bbox_inches="tight" keeps the legends placed outside the axes in the file.
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _style(i: int) -> dict[str, Any]:
    return {"color": COLORS[i % len(COLORS)], "ls": STYLES[(i // len(COLORS)) % len(STYLES)]}


def _close(u: float, v: float) -> bool:
    if math.isnan(u) or math.isnan(v):
        return math.isnan(u) and math.isnan(v)
    return u == v or math.isclose(u, v, rel_tol=1e-9, abs_tol=0.0)


def coincide(a: Curve, b: Curve) -> bool:
    """Whether two curves are the same points (to 1e-9 relative)."""
    return (
        len(a) == len(b) > 0
        and all(_close(u, v) for u, v in zip(a.x, b.x, strict=True))
        and all(_close(u, v) for u, v in zip(a.mean, b.mean, strict=True))
    )


def _leaders(labels: Sequence[str], series: Mapping[str, Curve]) -> dict[str, str]:
    """Each drawn label -> the first label whose curve it coincides with (itself if none)."""
    leader: dict[str, str] = {}
    for label in labels:
        curve = series.get(label)
        if curve is None or not len(curve):
            continue
        leader[label] = next(
            (k for k, v in leader.items() if v == k and coincide(series[k], curve)), label
        )
    return leader


def _draw(ax: Axes, c: Curve, style: dict[str, Any], logy: bool, marks: set[str]) -> None:
    """The mean and its band; on a log axis, zero and NaN points kept for :func:`_mark`."""
    if logy:
        ys = [y if y > 0 else math.nan for y in c.mean]
        lo = [v if v > 0 else math.nan for v in c.lo]
    else:
        ys, lo = list(c.mean), list(c.lo)
    ax.plot(c.x, ys, lw=1.3, **style)
    if c.seeds > 1:
        ax.fill_between(c.x, lo, c.hi, color=style["color"], alpha=0.15, lw=0)
    if len(c) == 1:  # a single point draws no line
        ax.plot(c.x, ys, "o", ms=3, color=style["color"])
    if logy:
        zero = [x for x, y in zip(c.x, c.mean, strict=True) if y <= 0]
        nan = [x for x, y in zip(c.x, c.mean, strict=True) if math.isnan(y)]
        for marker, xs in ((ZERO, zero), (UNDEFINED, nan)):
            if xs:
                marks.add(marker)
                # On the bottom edge: x in data units, y in axes units.
                ax.plot(
                    xs,
                    [0.0] * len(xs),
                    marker,
                    ms=5,
                    color=style["color"],
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
    else:
        if any(math.isnan(y) for y in c.mean):
            marks.add(UNDEFINED)
            xs = [x for x, y in zip(c.x, c.mean, strict=True) if math.isnan(y)]
            ax.plot(
                xs,
                [0.0] * len(xs),
                UNDEFINED,
                ms=5,
                color=style["color"],
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )


def _mark_handles(marks: set[str]) -> list[tuple[Line2D, str]]:
    out = []
    if ZERO in marks:
        out.append((ZERO, "0 (marked on the bottom edge:\nnot on a log axis)"))
    if UNDEFINED in marks:
        out.append((UNDEFINED, "undefined (NaN), marked\non the bottom edge"))
    return [(Line2D([], [], marker=m, color="gray", ls="none", ms=5), text) for m, text in out]


def curves(
    path: Path,
    columns: Sequence[Column],
    *,
    ylabel: str,
    title: str,
    groups: Mapping[str, Sequence[str]] | None = None,
    logy: bool = False,
    logx: Sequence[bool] = (),
    hline: tuple[float, str] | None = None,
) -> Path:
    """Curves of several estimators: one column of panels per x quantity (iteration,
    f-evaluations, seconds), one row per group of estimators (``groups``: title ->
    labels; default one row of all), one legend per row right of the last column.

    ``logx``: per column, a log x axis (points at x <= 0, the start, are left out:
    the x label should say so). ``hline``: ``(y, label)`` of a reference line.
    """
    labels = list(dict.fromkeys(k for _, series in columns for k in series))
    rows = {t: [k for k in ls if k in labels] for t, ls in (groups or {"": labels}).items()}
    rows = {t: ls for t, ls in rows.items() if ls} or {"": []}
    seeds = max((c.seeds for _, s in columns for c in s.values()), default=1)
    ncols = len(columns)
    fig, axes = plt.subplots(
        len(rows),
        ncols,
        figsize=((4.4 if ncols > 1 else 5.6) * ncols + 2.6, 3.1 * len(rows) + 0.5),
        squeeze=False,
        sharey="row",
        layout="constrained",
    )
    for r, (row_title, row_labels) in enumerate(rows.items()):
        # Styles by position in the row: the first ten of each row are solid lines.
        index = {k: i for i, k in enumerate(row_labels)}
        leaders = [_leaders(row_labels, series) for _, series in columns]
        marks: set[str] = set()
        for c, (xlabel, series) in enumerate(columns):
            ax = axes[r][c]
            log_x = c < len(logx) and logx[c]
            # A log y axis needs a positive value to show; without one (every value 0)
            # the panel keeps a linear axis, where zeros are drawn as they are.
            log_y = logy and any(
                y > 0 for k in row_labels if leaders[c].get(k) for y in series[k].mean
            )
            for k in row_labels:
                if leaders[c].get(k) == k:
                    shown = _positive_x(series[k]) if log_x else series[k]
                    _draw(ax, shown, _style(index[k]), log_y, marks)
            if hline is not None:
                ax.axhline(hline[0], color="black", lw=0.8, ls=":")
            if log_x:
                ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            note = "\n(no positive value: linear axis)" if logy and not log_y else ""
            if row_title or note:
                ax.set_title(row_title + note, fontsize=9)
        axes[r][0].set_ylabel(ylabel)
        handles, texts = _legend(row_labels, leaders, [x for x, _ in columns], index)
        if hline is not None:
            handles.append(Line2D([], [], color="black", lw=0.8, ls=":"))
            texts.append(hline[1])
        for h, t in _mark_handles(marks):
            handles.append(h)
            texts.append(t)
        if handles:
            axes[r][-1].legend(handles, texts, ncol=1 if len(handles) <= 18 else 2, **LEGEND)
    band = f"line: mean over {seeds} seeds, band: min–max across seeds" if seeds > 1 else "one seed"
    fig.suptitle(f"{title}\n({band})", fontsize=10)
    return _save(fig, path)


def _positive_x(c: Curve) -> Curve:
    """The points of ``c`` a log x axis can show."""
    keep = [i for i, x in enumerate(c.x) if x > 0]

    def pick(v: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(v[i] for i in keep)

    return Curve(pick(c.x), pick(c.mean), pick(c.lo), pick(c.hi), c.seeds)


def _legend(
    labels: Sequence[str],
    leaders: Sequence[Mapping[str, str]],
    xlabels: Sequence[str],
    index: Mapping[str, int],
) -> tuple[list[Line2D], list[str]]:
    """One entry per set of estimators whose curves coincide in every column ("a = b
    (identical)"), in the first one's style; where that set's curve is drawn as another's
    (they coincide in that column only), the entry says so ("= c against iteration")."""
    handles, texts = [], []
    named: set[str] = set()
    for k in labels:
        cols = [c for c, lead in enumerate(leaders) if k in lead]
        if not cols or k in named:
            continue
        twins = [
            m
            for m in labels
            if m != k
            and m not in named
            and [c for c, lead in enumerate(leaders) if m in lead] == cols
            and all(leaders[c][m] == leaders[c][k] for c in cols)
        ]
        named.update([k, *twins])
        text = " = ".join([k, *twins]) + (" (identical)" if twins else "")
        notes = [f"= {leaders[c][k]} against {xlabels[c]}" for c in cols if leaders[c][k] != k]
        if notes:
            text += "\n  (" + "; ".join(notes) + ")"
        handles.append(Line2D([], [], lw=1.3, **_style(index[k])))
        texts.append(text)
    return handles, texts


def variance_dots(path: Path, rows: Sequence[Mapping[str, Any]], *, title: str) -> Path:
    """Per-call variance and variance × f-evaluations (equal cost), one row per estimator.

    ``rows``: ``{"label", "n_evals", "unbiased", "variance": (mean, lo, hi),
    "variance_x_evals": (mean, lo, hi)}`` in the order to show (top first);
    bars span the seeds' range. Log axes: a zero mean is marked on the left
    edge, an undefined one with a cross there.
    """
    n = max(len(rows), 1)
    fig, axes = plt.subplots(
        1, 2, figsize=(10.5, 0.24 * n + 1.6), sharey=True, squeeze=False, layout="constrained"
    )
    ys = list(range(n))[::-1]
    marks: set[str] = set()
    for ax, key, xlabel in (
        (axes[0][0], "variance", "variance of one call (trace of covariance)"),
        (axes[0][1], "variance_x_evals", "variance × f-evaluations (equal cost)"),
    ):
        positive = False
        for y, row in zip(ys, rows, strict=False):
            mean, lo, hi = row[key]
            face = "C0" if row["unbiased"] else "white"
            if mean is None or math.isnan(mean):
                marks.add(UNDEFINED)
                ax.plot(
                    [0.0],
                    [y],
                    UNDEFINED,
                    color="C3",
                    transform=ax.get_yaxis_transform(),
                    clip_on=False,
                )
            elif mean <= 0:
                marks.add(ZERO)
                ax.plot(
                    [0.0], [y], "<", color="C3", transform=ax.get_yaxis_transform(), clip_on=False
                )
            else:
                positive = True
                if lo is not None and hi is not None and lo > 0 and hi > lo:
                    ax.plot([lo, hi], [y, y], color="C0", lw=1.0)
                ax.plot([mean], [y], "o", ms=5, mfc=face, mec="C0")
        if positive:
            ax.set_xscale("log")
        for i in range(1, len(rows)):  # a line between the groups (exact, unbiased, biased)
            if rows[i]["unbiased"] != rows[i - 1]["unbiased"]:
                ax.axhline(ys[i] + 0.5, color="gray", lw=0.6, ls="--")
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3, which="both", axis="x")
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels(
        [f"{r['label']}  ({_evals(r['n_evals'])})" for r in rows], fontsize=7
    )
    axes[0][0].set_ylim(-0.7, n - 0.3)
    handles = [
        Line2D([], [], marker="o", ls="none", mfc="C0", mec="C0"),
        Line2D([], [], marker="o", ls="none", mfc="white", mec="C0"),
        Line2D([], [], color="C0", lw=1.0),
    ]
    texts = ["unbiased", "biased", "min–max across seeds"]
    if ZERO in marks:
        handles.append(Line2D([], [], marker="<", ls="none", color="C3"))
        texts.append("0 (marked on the left edge:\nnot on a log axis)")
    if UNDEFINED in marks:
        handles.append(Line2D([], [], marker=UNDEFINED, ls="none", color="C3"))
        texts.append("undefined (NaN)")
    axes[0][1].legend(handles, texts, **LEGEND)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _evals(n: Any) -> str:
    if not isinstance(n, (int, float)) or not math.isfinite(n):
        return "? f-evals"
    return f"{n:.3g} f-evals"


def timing_boxes(
    path: Path, panels: Mapping[str, Mapping[str, Sequence[float]]], *, xlabel: str, title: str
) -> Path:
    """Box plots of repeated timings: one panel per run, one box per method (top first).

    Boxes span the interquartile range with the median marked; whiskers reach
    the furthest value within 1.5 interquartile ranges; points beyond are drawn.
    """
    panels = {t: {k: v for k, v in p.items() if v} for t, p in panels.items()}
    panels = {t: p for t, p in panels.items() if p}
    n = max((len(p) for p in panels.values()), default=1)
    fig, axes = plt.subplots(
        len(panels) or 1,
        1,
        figsize=(7.5, (0.35 * n + 1.1) * max(len(panels), 1)),
        squeeze=False,
        layout="constrained",
    )
    for ax, (panel, data) in zip(axes[:, 0], panels.items(), strict=False):
        labels = list(data)[::-1]
        ax.boxplot(
            [list(data[k]) for k in labels],
            **_horizontal(),
            widths=0.6,
            flierprops={"markersize": 2},
            medianprops={"color": "C1"},
        )
        values = [v for k in labels for v in data[k]]
        if min(values) > 0 and max(values) > 10 * min(values):
            ax.set_xscale("log")  # methods an order of magnitude apart: both legible
        ax.set_yticks(range(1, len(labels) + 1))
        ax.set_yticklabels([f"{k}  (n={len(data[k])})" for k in labels], fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _horizontal() -> dict[str, Any]:
    """Horizontal boxes: ``orientation`` from matplotlib 3.10, ``vert`` before it."""
    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def image_grid(
    images: torch.Tensor,
    shape: tuple[int, int],
    path: Path,
    *,
    title: str = "",
    rows: int = 1,
    row_labels: Sequence[str] = (),
) -> Path:
    """Images ``[N, H*W]`` with values in [0, 1] as a grid of ``rows`` rows, each row named
    on its left by ``row_labels``."""
    n = images.shape[0]
    cols = math.ceil(n / rows)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if i < n:
            ax.imshow(images[i].reshape(shape).numpy(), cmap="gray", vmin=0, vmax=1)
    for row, text in zip(axes[:, 0], row_labels, strict=False):
        row.set_ylabel(text, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def simplex_samples(
    path: Path,
    logits: Sequence[float] = (1.0, 0.0, -0.5),
    temperatures: Sequence[float] = (0.1, 0.5, 1.0, 5.0),
    n: int = 1500,
    seed: int = 0,
) -> Path:
    """Concrete samples on the 2-simplex at several temperatures (Jang et al. Fig. 1's idea).

    Each panel shows samples of softmax((θ + G)/τ) in barycentric coordinates,
    coloured by their argmax (the colour bar), with the corners labelled by
    their category and its probability.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap

    from discograd.functional import gumbel_softmax

    theta = torch.tensor(logits, dtype=torch.float64)
    probs = torch.softmax(theta, -1)
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    cmap = ListedColormap([COLORS[0], COLORS[1], COLORS[2]])
    norm = BoundaryNorm([-0.5, 0.5, 1.5, 2.5], cmap.N)
    fig, axes = plt.subplots(
        1, len(temperatures), figsize=(3.0 * len(temperatures) + 1.0, 3.3), layout="constrained"
    )
    scatter = None
    for ax, tau in zip(axes, temperatures, strict=True):
        y = gumbel_softmax(theta.expand(n, -1), tau=tau, generator=gen)
        xy = y @ corners
        scatter = ax.scatter(
            xy[:, 0], xy[:, 1], s=3, c=y.argmax(-1), cmap=cmap, norm=norm, alpha=0.5
        )
        ax.plot(*corners[[0, 1, 2, 0]].T, color="black", lw=0.8)
        for k, (cx, cy) in enumerate(corners.tolist()):
            # Below the bottom corners, above the top one.
            dy = 0.1 if cy > 0 else -0.1
            ax.text(
                cx,
                cy + dy,
                f"{k + 1}\nπ={float(probs[k]):.2f}",
                ha="center",
                va="center",
                fontsize=7,
            )
        ax.set_title(f"τ = {tau:g}", fontsize=10)
        ax.set_xlim(-0.15, 1.15)
        ax.set_ylim(-0.25, math.sqrt(3) / 2 + 0.2)
        ax.set_aspect("equal")
        ax.axis("off")
    assert scatter is not None
    bar = fig.colorbar(scatter, ax=list(axes), ticks=[0, 1, 2], shrink=0.8)
    bar.set_ticklabels(["1", "2", "3"])
    bar.set_label("argmax of the sample (category)", fontsize=8)
    if bar.solids is not None:  # the scatter's alpha would pale the bar
        bar.solids.set_alpha(1.0)
    fig.suptitle(
        "Concrete samples softmax((θ + G)/τ) of a 3-category variable; corners: categories "
        "with their probabilities π",
        fontsize=9,
    )
    return _save(fig, path)


def error_lines(
    path: Path,
    lines: Mapping[str, Sequence[tuple[float, float, float | None, float | None]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """One line per label through points ``(x, y, x s.e., y s.e.)`` with standard-error bars
    in both directions (``None``: no bar), in the order given."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    for i, (label, points) in enumerate(lines.items()):
        if not points:
            continue
        xs, ys, xe, ye = zip(*points, strict=True)
        ax.errorbar(
            xs,
            ys,
            xerr=[e or 0.0 for e in xe],
            yerr=[e or 0.0 for e in ye],
            marker="o",
            ms=4,
            capsize=3,
            label=label,
            **_style(i),
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(**LEGEND)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
