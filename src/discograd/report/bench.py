"""What only the bench's report has: the Concrete samples on the simplex."""

from __future__ import annotations

from discograd.experiments.runner import RunDir
from discograd.report import markdown as md

__all__ = ["simplex_section"]

LOGITS = (1.0, 0.0, -0.5)
SAMPLES = 1500


def simplex_section(run: RunDir) -> str:
    """A figure of Gumbel-Softmax samples at several temperatures, and what it shows."""
    text = [
        "## Concrete samples on the simplex",
        "",
        "Gumbel-Softmax samples softmax((θ + G)/τ) of a 3-category variable with logits "
        f"θ = {LOGITS}, {SAMPLES} per temperature, coloured by their argmax; the argmax of each "
        "sample is an exact categorical sample at every τ (Jang et al. 2017, Fig. 1; Maddison "
        "et al. 2017).",
        "",
    ]
    if not md._plots_available():
        return "\n".join([*text, md.PLOTS_SKIPPED, ""])
    from discograd.report import plots

    plots.simplex_samples(run.path / "concrete_simplex.png", LOGITS, n=SAMPLES)
    return "\n".join([*text, *md.img("concrete_simplex.png", "Concrete samples")])
