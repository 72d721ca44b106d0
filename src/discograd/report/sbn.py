"""The SBN's section: structured output prediction, importance-sampled −log p(bottom | top)."""

from __future__ import annotations

from typing import Any

from discograd.experiments.runner import RunDir
from discograd.report import markdown as md
from discograd.report.curves import Records, curve
from discograd.report.images import image_plot
from discograd.report.markdown import Results, Section
from discograd.report.vae import TIMING

__all__ = ["section"]

NATS = ("test_nll", "test_nll_1", "valid_nll")


def section(run: RunDir, results: Results, cfg: Any) -> Section:
    dataset = md.dataset_name(cfg)
    done = md.finished(results)
    any_result: dict[str, Any] = next(iter(done.values()), {})
    units = any_result.get("units") or list(cfg.units)
    m = cfg.eval_samples
    text = [
        "## Structured output prediction (stochastic binary network)",
        "",
        f"Predict the bottom half of a {dataset} image from its top half through two stochastic "
        f"layers ({cfg.latent}, units {units}), trained with each estimator on "
        f"E[−log p(bottom | h)] for {cfg.steps} steps (Jang et al. 2017 §4.2). Test: "
        f"−log (1/m) Σ p(bottom | h_i), h_i ~ p(h | top), m = {m} (and m = 1). "
        "Decoder passes count every evaluation of the last layer (outer × inner calls). "
        f"Nats, lower is better. {TIMING} {md.seed_note(results)}",
        "",
    ]
    rows = md.nats_rows(results, NATS, "test_nll")
    header = ["estimator", f"test NLL (m={m})", "test NLL (m=1)", "valid NLL"]
    text += [md.table([*header, "decoder passes / step", "ms / step"], rows), ""]
    if md._plots_available():
        text += _plots(run, results)
    else:
        text += [md.PLOTS_SKIPPED, ""]
    summary = []
    line = md.compare(done, "test_nll", f"test −log-likelihood (m = {m}, nats)", decimals=2)
    if line:
        summary.append(f"Structured prediction ({cfg.latent} SBN on {dataset}): {line}")
    return Section("\n".join(text), summary + md.divergence_lines("SBN", results))


def _plots(run: RunDir, results: Results) -> list[str]:
    from discograd.report import plots

    rec = Records(run)
    train, valid = {}, {}
    for label, r in results.items():
        ph = md.phases("sbn", label, r)
        train[label] = curve(rec, ph, "train_nll_bound")
        valid[label] = curve(rec, ph, "valid_nll")
    plots.curves(
        run.path / "sbn_train.png",
        [("step", train)],
        ylabel="train E[−log p(bottom | h)] (nats)",
        title="SBN training curves",
    )
    plots.curves(
        run.path / "sbn_valid.png",
        [("step", valid)],
        ylabel="validation −log p(bottom | top) (nats)",
        title="SBN validation NLL",
    )
    band = "Lines: mean over seeds; bands: min–max across seeds."
    out = [
        *md.img("sbn_train.png", "SBN training curves", band),
        *md.img("sbn_valid.png", "SBN validation NLL", band),
    ]
    for label, r in list(results.items())[:2]:
        out += image_plot(
            run,
            md.phases("sbn", label, r)[0],
            label,
            (
                "true images",
                "top half + predicted bottom half (mean of 100 samples)",
                "top half + one sample's bottom-pixel probabilities",
            ),
            ("true", "mean of\n100", "one\nsample"),
        )
    return out
