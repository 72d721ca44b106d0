"""The VAE's section: test bounds per estimator, training curves, images, gradient checks."""

from __future__ import annotations

from typing import Any

from discograd.experiments.runner import RunDir
from discograd.report import markdown as md
from discograd.report.curves import Records, cumulative_seconds, curve
from discograd.report.images import image_plot
from discograd.report.markdown import Results, Section
from discograd.report.timing import compare_times, step_timing

__all__ = ["section"]

NATS = ("test_neg_elbo", "test_iw_bound", "valid_neg_elbo")
TIMING = "ms / step: median [interquartile range] of timed windows of each run, all seeds pooled."


def section(run: RunDir, results: Results, cfg: Any) -> Section:
    dataset = md.dataset_name(cfg)
    text = [
        "## Categorical VAE" if cfg.latent == "categorical" else "## Bernoulli VAE",
        "",
        f"{dataset}, {cfg.binarization} binarisation; "
        + (
            f"{cfg.n_latent}×{cfg.n_categories} categorical latents"
            if cfg.latent == "categorical"
            else f"{cfg.n_latent} Bernoulli latents"
        )
        + f", hidden layers {list(cfg.hidden)}, {cfg.prior} prior, {cfg.kl} KL; Adam {cfg.lr:g}, "
        f"batch {cfg.batch_size}, {cfg.steps} steps for every estimator from the same initial "
        f"weights and batches. Test −ELBO: one discrete sample, analytic KL; IW bound: "
        f"{cfg.eval_samples} importance samples on the first {cfg.iw_examples} test images. "
        "Nats, lower is better. The training curves show each estimator's own estimate of the "
        "objective (for a relaxed estimator, the relaxed objective); the validation curves "
        f"the discrete −ELBO. {TIMING} {md.seed_note(results)}",
        "",
    ]
    done = md.finished(results)
    rows = md.nats_rows(results, NATS, "test_neg_elbo")
    header = ["estimator", "test −ELBO", "test IW bound", "valid −ELBO", "f-evals / step"]
    text += [md.table([*header, "ms / step"], rows), ""]
    rec = Records(run)
    if md._plots_available():
        text += _plots(run, rec, results)
    else:
        text += [md.PLOTS_SKIPPED, ""]
    text += _grad_check(run, rec, results)
    summary = [
        f"VAE on {dataset}: {line}"
        for line in (
            md.compare(done, "test_neg_elbo", f"test −ELBO after {cfg.steps} steps", decimals=2),
            compare_times({k: step_timing(r) for k, r in done.items()}, "time per step"),
        )
        if line
    ]
    return Section("\n".join(text), summary + md.divergence_lines("VAE", results))


def _plots(run: RunDir, rec: Records, results: Results) -> list[str]:
    from discograd.report import plots

    train, valid, by_time = {}, {}, {}
    for label, r in results.items():
        ph = md.phases("vae", label, r)
        train[label] = curve(rec, ph, "train_neg_elbo")
        valid[label] = curve(rec, ph, "valid_neg_elbo")
        by_time[label] = curve(rec, ph, "train_neg_elbo", x=cumulative_seconds)
    plots.curves(
        run.path / "vae_train.png",
        [("step", train), ("training seconds", by_time)],
        ylabel="train −ELBO, the estimator's estimate (nats)",
        title="VAE training curves",
    )
    plots.curves(
        run.path / "vae_valid.png",
        [("step", valid)],
        ylabel="validation −ELBO (nats)",
        title="VAE validation −ELBO",
    )
    band = "Lines: mean over seeds; bands: min–max across seeds."
    out = [
        *md.img("vae_train.png", "VAE training curves against steps and seconds", band),
        *md.img("vae_valid.png", "VAE validation −ELBO", band),
    ]
    # The published protocols' curves, where the run recorded them.
    protocol_curves = (
        ("train_set_neg_elbo", "−ELBO over the training set (nats)", "Train −ELBO", False),
        ("test_iw_bound", "test IW bound (nats)", "Test bound", False),
        (
            "grad_var",
            "mean over encoder parameters of EMA[g²] − EMA[g]²",
            "Gradient variance",
            True,
        ),
    )
    for key, ylabel, title, logy in protocol_curves:
        series = {
            label: curve(rec, md.phases("vae", label, r), key) for label, r in results.items()
        }
        if not any(len(c) for c in series.values()):
            continue
        name = f"vae_{key}.png"
        plots.curves(run.path / name, [("step", series)], ylabel=ylabel, title=title, logy=logy)
        out += md.img(name, f"{title} against steps", band)
    for label, r in list(results.items())[:3]:
        out += image_plot(
            run,
            md.phases("vae", label, r)[0],
            label,
            ("test images", "reconstructions (decoder means)", "prior samples (decoder means)"),
            ("test", "reconstr.", "prior\nsample"),
        )
    return out


def _grad_check(run: RunDir, rec: Records, results: Results) -> list[str]:
    """Encoder-gradient quality against the exact gradient during training, if measured."""
    rows, series = [], {}
    for label, r in results.items():
        ph = md.phases("vae", label, r)
        pts = [p for phase in ph for p in rec.of(phase) if "grad_cosine" in p]
        if not pts:
            continue

        def mean(key: str, pts: list[dict[str, Any]] = pts) -> float | None:
            vals = [float(p[key]) for p in pts if md.number(p.get(key))]
            return sum(vals) / len(vals) if vals else None

        rows.append(
            [
                label,
                mean("grad_cosine"),
                mean("grad_bias"),
                mean("grad_bias_noise"),
                mean("grad_variance"),
                mean("grad_mse"),
                len(pts),
            ]
        )
        series[label] = curve(rec, ph, "grad_cosine")
    if not rows:
        return []
    out = [
        "Encoder gradient against the exact gradient (enumeration over the latent), on the "
        "training batch, during training (means over the checks of all seeds):",
        "",
        md.table(["estimator", "cosine", "bias", "noise", "variance", "MSE", "checks"], rows),
        "",
    ]
    if md._plots_available():
        from discograd.report import plots

        plots.curves(
            run.path / "vae_grad_cosine.png",
            [("step", series)],
            ylabel="mean cosine with the exact gradient",
            title="Encoder gradient during training",
        )
        out += md.img(
            "vae_grad_cosine.png",
            "gradient cosine during training",
            "Lines: mean over seeds; bands: min–max across seeds.",
        )
    return out
