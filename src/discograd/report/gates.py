"""The sparse-gate section: test accuracy against the fraction of gates open, per family."""

from __future__ import annotations

from typing import Any

from discograd.report import markdown as md
from discograd.report.markdown import Results, Section, divergence

__all__ = ["section"]

PLOT = "gates_accuracy_vs_open.png"


def _by_family(results: Results) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    """Each family's finished units as (λ, result), in increasing λ."""
    out: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for key, r in md.finished(results).items():
        family, lam = key.rsplit("@", 1)
        out.setdefault(family, []).append((float(lam), r))
    return {f: sorted(units, key=lambda u: u[0]) for f, units in out.items()}


def section(run: Any, results: Results, cfg: Any) -> Section:
    """L0 feature selection: per family and λ, test accuracy and the fraction of gates open."""
    dataset = md.dataset_name(cfg)
    text = [
        "## Sparse gates: L0-regularised feature selection",
        "",
        f"{dataset}, a linear softmax classifier on the pixels with one gate per pixel, "
        f"{cfg.steps} steps of Adam (lr {cfg.lr:g}), loss = cross-entropy + λ Σ_d P(z_d ≠ 0). "
        "Test accuracy with each family's deterministic test-time gates; fraction open: "
        "the share of test-time gates that are not 0; expected open: mean P(z_d ≠ 0) at the "
        f"end of training. {md.seed_note(results)}",
        "",
    ]
    rows = []
    for key, r in results.items():
        family, lam = key.rsplit("@", 1)
        if divergence(r) is not None:
            rows.append([family, lam, f"diverged at {divergence(r)}", None, None])
            continue
        rows.append(
            [
                family,
                lam,
                md.pm(r, "test_accuracy", scale=100, decimals=1) + " %",
                md.pm(r, "fraction_open", decimals=3),
                md.pm(r, "expected_open", decimals=3),
            ]
        )
    header = ["family", "λ", "test accuracy", "fraction open", "expected open"]
    text += [md.table(header, rows), ""]
    if md._plots_available():
        from discograd.report import plots

        lines = {
            family: [
                (
                    r["fraction_open"],
                    r["test_accuracy"],
                    md.se_of(r, "fraction_open"),
                    md.se_of(r, "test_accuracy"),
                )
                for _, r in units
            ]
            for family, units in _by_family(results).items()
        }
        plots.error_lines(
            run.path / PLOT,
            lines,
            xlabel="fraction of gates open at test time",
            ylabel="test accuracy",
            title="L0 feature selection: accuracy against gates open",
        )
        text += md.img(
            PLOT,
            "test accuracy against fraction of gates open",
            "One point per λ (larger λ: fewer gates open); bars: standard error over seeds "
            "in both directions.",
        )
    else:
        text += [md.PLOTS_SKIPPED, ""]
    summary = md.divergence_lines("sparse-gate task", results)
    return Section("\n".join(text), summary)
