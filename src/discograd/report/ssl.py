"""The semi-supervised M2 section: accuracy, −ELBO, and the time per step of each method."""

from __future__ import annotations

from typing import Any

from discograd.experiments.runner import RunDir
from discograd.report import markdown as md
from discograd.report.curves import Records, curve
from discograd.report.markdown import Results, Section, divergence
from discograd.report.timing import compare_times, fmt_timing, speedup_cell, step_timing

__all__ = ["section"]

ACCURACY = ("test_accuracy", "valid_accuracy")


def _timing_rows(results: Results) -> list[list[Any]]:
    return [
        [k, fmt_timing(step_timing(r), scale=1000), speedup_cell(results, k)]
        for k, r in results.items()
    ]


def section(run: RunDir, results: Results, cfg: Any, timing: Results | None = None) -> Section:
    """Semi-supervised M2: accuracy, −ELBO and the speed of each way of handling labels.

    ``timing``: the results of the timing run (random labels over
    ``cfg.timing_classes`` classes), if there was one.
    """
    dataset = md.dataset_name(cfg)
    text = [
        "## Semi-supervised classification (M2)",
        "",
        f"{dataset}, {cfg.n_labels} labelled examples, {cfg.n_classes} classes, "
        f"{cfg.steps} steps. `marginal` sums the unlabelled bound over all classes exactly "
        "(one decoder pass per class); the estimators sample the label (one pass). Test "
        "−ELBO: the unlabelled bound with labels marginalised exactly (Jang et al. 2017 §4.3; "
        "Kingma et al. 2014). ms / step: median [interquartile range] of timed windows of each "
        "run, all seeds pooled; speed-up: marginal's median over the method's, in brackets "
        "the ratios of their quartiles (marginal's lower over the method's upper, and upper "
        f"over lower). {md.seed_note(results)}",
        "",
    ]
    done = md.finished(results)
    acc = {key: md.column(done, key, scale=100, decimals=1) for key in ACCURACY}
    elbo = md.column(done, "test_neg_elbo", decimals=2)
    rows = [
        [k, acc["test_accuracy"][k] + " %", elbo[k], acc["valid_accuracy"][k] + " %"]
        if divergence(r) is None
        else [k, f"diverged at {divergence(r)}", None, None]
        for k, r in results.items()
    ]
    rows = [row + t[1:] for row, t in zip(rows, _timing_rows(results), strict=True)]
    header = ["method", "test accuracy", "test −ELBO", "valid accuracy"]
    text += [md.table([*header, "ms / step", "speed-up vs marginal"], rows), ""]
    if timing:
        text += [
            f"Time per step with {cfg.timing_classes} classes ({cfg.timing_steps} steps; the "
            "labels are random, so accuracy is at chance by construction and only the cost is "
            "shown):",
            "",
            md.table(["method", "ms / step", "speed-up vs marginal"], _timing_rows(timing)),
            "",
        ]
    if md._plots_available():
        text += _plots(run, results, cfg, timing)
    else:
        text += [md.PLOTS_SKIPPED, ""]
    summary = [
        f"Semi-supervised M2 on {dataset}: {line}"
        for line in (
            md.compare(
                done, "test_accuracy", "test accuracy (%)", lower=False, scale=100, decimals=1
            ),
            compare_times(
                {k: step_timing(r) for k, r in results.items()},
                f"time per step with {cfg.n_classes} classes",
            ),
            compare_times(
                {k: step_timing(r) for k, r in (timing or {}).items()},
                f"time per step with {cfg.timing_classes} classes",
            ),
        )
        if line
    ]
    summary += md.divergence_lines("semi-supervised M2", results)
    if timing:
        summary += md.divergence_lines(f"timing run ({cfg.timing_classes} classes)", timing)
    return Section("\n".join(text), summary)


def _plots(run: RunDir, results: Results, cfg: Any, timing: Results | None) -> list[str]:
    from discograd.report import plots

    rec = Records(run)
    series: dict[str, dict[str, Any]] = {"objective": {}, "accuracy": {}, "elbo": {}}
    for label, r in results.items():
        ph = md.phases("ssl", label, r)
        series["objective"][label] = curve(rec, ph, "train_objective")
        series["accuracy"][label] = curve(rec, ph, "valid_accuracy")
        series["elbo"][label] = curve(rec, ph, "valid_neg_elbo")
    plots.curves(
        run.path / "ssl_train.png",
        [("step", series["objective"])],
        ylabel="training objective J/N",
        title="M2 training objective",
    )
    plots.curves(
        run.path / "ssl_valid_accuracy.png",
        [("step", series["accuracy"])],
        ylabel="validation accuracy",
        title="M2 validation accuracy",
    )
    plots.curves(
        run.path / "ssl_valid_elbo.png",
        [("step", series["elbo"])],
        ylabel="validation −ELBO, labels marginalised (nats)",
        title="M2 validation −ELBO",
    )
    panels = {
        f"{cfg.n_classes} classes": _windows(results),
        **({f"{cfg.timing_classes} classes (timing run)": _windows(timing)} if timing else {}),
    }
    plots.timing_boxes(
        run.path / "ssl_timing.png",
        panels,
        xlabel="ms per step (one value per timed window, all seeds)",
        title="M2: time per step of each method",
    )
    band = "Lines: mean over seeds; bands: min–max across seeds."
    return [
        *md.img("ssl_train.png", "M2 training objective", band),
        *md.img("ssl_valid_accuracy.png", "M2 validation accuracy", band),
        *md.img("ssl_valid_elbo.png", "M2 validation −ELBO", band),
        *md.img(
            "ssl_timing.png",
            "M2 time per step",
            "Boxes: interquartile range with the median; whiskers: the furthest window within "
            "1.5 interquartile ranges; dots: windows beyond.",
        ),
    ]


def _windows(results: Results) -> dict[str, list[float]]:
    """Each method's timed windows (ms), all seeds pooled."""
    out = {}
    for k, r in results.items():
        t = step_timing(r)
        out[k] = [v * 1000 for v in t.values] if t is not None else []
    return out
