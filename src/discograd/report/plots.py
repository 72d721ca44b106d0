"""Plots for the reports (matplotlib, Agg backend: files only, no screen needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

__all__ = [
    "curves",
    "image_grid",
    "simplex_samples",
    "variance_vs_evals",
]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_grid(
    images: torch.Tensor, shape: tuple[int, int], path: Path, *, title: str = "", rows: int = 1
) -> Path:
    """Images ``[N, H*W]`` with values in [0, 1] as a grid of ``rows`` rows."""
    n = images.shape[0]
    cols = math.ceil(n / rows)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].reshape(shape).numpy(), cmap="gray", vmin=0, vmax=1)
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
    coloured by their argmax, with the category probabilities in the title.
    """
    from discograd.functional import gumbel_softmax

    theta = torch.tensor(logits, dtype=torch.float64)
    probs = torch.softmax(theta, -1)
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(1, len(temperatures), figsize=(3.0 * len(temperatures), 3.0))
    for ax, tau in zip(axes, temperatures, strict=True):
        y = gumbel_softmax(theta.expand(n, -1), tau=tau, generator=gen)
        xy = y @ corners
        ax.scatter(
            xy[:, 0], xy[:, 1], s=3, c=y.argmax(-1), cmap="viridis", alpha=0.5, vmin=0, vmax=2
        )
        ax.plot(*corners[[0, 1, 2, 0]].T, color="black", lw=0.8)
        ax.set_title(f"τ = {tau:g}", fontsize=10)
        ax.set_aspect("equal")
        ax.axis("off")
    p = ", ".join(f"{float(v):.2f}" for v in probs)
    fig.suptitle(
        f"Concrete samples, π = ({p}); colour = argmax (an exact categorical sample)", fontsize=9
    )
    return _save(fig, path)


def curves(
    path: Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    hline: float | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """One line per label, ``{label: (x, y)}``; ``groups`` splits labels into panels."""
    panels = dict(groups) if groups else {title: list(series)}
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False, sharey=True
    )
    styles = ["-", "--", "-.", ":"]
    for ax, (panel, labels) in zip(axes[0], panels.items(), strict=True):
        for i, label in enumerate(labels):
            x, y = series.get(label, ((), ()))
            if len(x) == 0:
                continue
            ax.plot(x, y, styles[(i // 10) % len(styles)], label=label, lw=1.2)
        if hline is not None:
            ax.axhline(hline, color="black", lw=0.8, ls=":", label="optimum")
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(panel if groups else title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=1 if len(labels) < 8 else 2, loc="best")
    axes[0][0].set_ylabel(ylabel)
    if groups and title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def variance_vs_evals(path: Path, rows: Sequence[Mapping[str, Any]], *, title: str = "") -> Path:
    """Per-call variance against f-evaluations per call, log-log; biased estimators hollow."""
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for row in rows:
        var, evals = row["variance"], row["n_evals"]
        if not (var and var > 0 and evals and evals > 0):
            continue
        face = "C0" if row["unbiased"] else "none"
        ax.scatter(evals, var, s=30, facecolors=face, edgecolors="C0")
        ax.annotate(
            row["label"], (evals, var), fontsize=6, xytext=(3, 2), textcoords="offset points"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("evaluations of f per call")
    ax.set_ylabel("variance (trace of covariance)")
    ax.set_title(title or "variance vs cost (filled: unbiased, hollow: biased)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
