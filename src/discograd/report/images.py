"""Image grids of the image tasks (vae, sbn): what a phase saved as ``images-<phase>.pt``."""

from __future__ import annotations

import warnings

import torch

from discograd.errors import RunFolderWarning
from discograd.experiments.common import slug
from discograd.experiments.runner import RunDir
from discograd.report import markdown as md

__all__ = ["image_plot"]


def image_plot(
    run: RunDir, phase: str, label: str, rows: tuple[str, str, str], short: tuple[str, str, str]
) -> list[str]:
    """A PNG of the first 8 test images, their reconstructions and samples of ``phase``, and
    its markdown; ``rows`` says what the three rows are (in the caption), ``short`` names
    them on the image. Nothing if the phase saved no images."""
    from discograd.report import plots

    stem = slug(phase)
    src = run.path / f"images-{stem}.pt"
    if not src.exists():
        return []
    try:
        saved = torch.load(src, weights_only=False)
    except Exception as err:  # a damaged file fails in many ways; the report goes on
        warnings.warn(
            f"{src} is damaged ({type(err).__name__}); the report leaves its images out",
            RunFolderWarning,
            stacklevel=2,
        )
        return []
    name = f"{stem}.png"
    grid = torch.cat([saved["test"][:8], saved["recon"][:8], saved["samples"][:8]])
    plots.image_grid(
        grid, saved["shape"], run.path / name, rows=3, title=f"{label} ({phase})", row_labels=short
    )
    return md.img(name, f"{label} images", f"Rows, top to bottom: {', '.join(rows)} ({phase}).")
