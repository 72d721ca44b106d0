"""The markdown report: tables, embedded plots, and a summary derived from the numbers."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from discograd.errors import RunFolderWarning
from discograd.experiments.common import slug
from discograd.experiments.runner import RunDir, atomic_write_text

__all__ = [
    "bench_summary",
    "fmt",
    "sbn_section",
    "ssl_section",
    "toy_section",
    "vae_section",
    "variance_section",
    "write_report",
]


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _img(name: str, alt: str) -> str:
    return f"![{alt}]({name})"


# ---------------------------------------------------------------- divergence
def _diverged_rows(results: dict[str, Any], done: dict[str, Any]) -> list[list[Any]]:
    """Report rows (name, when it diverged, two empty metrics, cost) of estimators not in done."""
    return [
        [
            k,
            f"diverged at {divergence(r)}",
            None,
            None,
            r["evals_per_step"],
            _ms(r["seconds_per_step"]),
        ]
        for k, r in results.items()
        if k not in done
    ]


def divergence(result: dict[str, Any]) -> str | None:
    """Where an estimator diverged ("step 37 (non-finite loss)"), or None if it did not."""
    d = result.get("diverged")
    if isinstance(d, dict):
        return f"step {d['step']} (non-finite {d['quantity']})"
    return "yes" if d else None  # toy results written before the step was recorded


def _finished(results: dict[str, Any]) -> dict[str, Any]:
    """The results of the estimators that did not diverge (the ones with test numbers)."""
    return {k: v for k, v in results.items() if divergence(v) is None}


def _divergence_lines(study: str, results: dict[str, Any]) -> list[str]:
    gone = {k: divergence(v) for k, v in results.items() if divergence(v) is not None}
    if not gone:
        return []
    return [
        f"Diverged in the {study} and stopped there (no test numbers): "
        + ", ".join(f"`{k}` at {where}" for k, where in gone.items())
        + "."
    ]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


# ------------------------------------------------------------------------ toy
def toy_section(run: RunDir, results: dict[str, Any], cfg: Any) -> tuple[str, list[str]]:
    """The toy's table and plots; returns (markdown, summary sentences)."""
    rows = []
    for label, r in results.items():
        evals_to = (
            r["steps_to_p_last_0.9"] * r["evals_per_step"]
            if r.get("steps_to_p_last_0.9") is not None
            else None
        )
        rows.append(
            [
                label,
                r["expected_reward"],
                r["optimum"] - r["expected_reward"],
                r["p_last"],
                r.get("steps_to_p_last_0.9"),
                evals_to,
                r["mean_grad_variance"],
                r["evals_per_step"],
                1000 * r["seconds_per_step"],
                divergence(r) or "no",
            ]
        )
    text = [
        "## The ARSM toy",
        "",
        f"Maximise E[f(z)], f(z) = 0.5 + (z+1)/(C·R), C = {cfg.C}, R = {cfg.R}, from θ = 0 with "
        f"gradient ascent (step {cfg.lr:g}) for {cfg.steps} iterations (Yin, Yue & Zhou 2019). "
        f"Optimum {0.5 + 1 / cfg.R:.4f}. `exact` is the true gradient π⊙F − π(π·F). Gradient "
        f"variance: trace of the covariance of {cfg.var_draws} draws every {cfg.var_every} "
        "iterations, averaged over the run.",
        "",
        table(
            [
                "estimator",
                "final E[f]",
                "gap to optimum",
                "p(last)",
                "steps to p(last) > 0.9",
                "evaluations to p(last) > 0.9",
                "mean grad. variance",
                "f-evals / step",
                "ms / step",
                "diverged",
            ],
            rows,
        ),
        "",
    ]
    if _plots_available():
        from discograd.report import plots

        rec = run.records()
        series_r, series_p, series_v = {}, {}, {}
        for label in results:
            phase = f"toy/{label}"
            pts = [r for r in rec if r.get("phase") == phase and "expected_reward" in r]
            var = [r for r in rec if r.get("phase") == phase and "grad_variance" in r]
            series_r[label] = ([r["step"] for r in pts], [r["expected_reward"] for r in pts])
            series_p[label] = ([r["step"] for r in pts], [max(r["p_last"], 1e-12) for r in pts])
            # Zero variance (exact gradients, a collapsed policy) has no place on a
            # log axis: leave a gap instead of squashing the scale.
            series_v[label] = (
                [r["step"] for r in var],
                [r["grad_variance"] if r["grad_variance"] > 0 else math.nan for r in var],
            )
        groups = {
            "unbiased (and the exact gradient)": [
                k for k, v in results.items() if v.get("unbiased", True)
            ],
            "biased: relaxed / straight-through": [
                k for k, v in results.items() if not v.get("unbiased", True)
            ],
        }
        groups = {k: v for k, v in groups.items() if v}
        plots.curves(
            run.path / "toy_reward.png",
            series_r,
            xlabel="iteration",
            ylabel="E[f(z)]",
            title="expected reward",
            hline=0.5 + 1 / cfg.R,
            groups=groups,
        )
        plots.curves(
            run.path / "toy_p_last.png",
            series_p,
            xlabel="iteration",
            ylabel="probability of the last category",
            title="probability of the best category",
            logy=True,
            groups=groups,
        )
        plots.curves(
            run.path / "toy_grad_variance.png",
            series_v,
            xlabel="iteration",
            ylabel="trace of gradient covariance",
            title="gradient variance",
            logy=True,
            groups=groups,
        )
        text += [
            _img("toy_reward.png", "expected reward vs iteration"),
            "",
            _img("toy_p_last.png", "probability of the last category vs iteration"),
            "",
            _img("toy_grad_variance.png", "gradient variance vs iteration"),
            "",
        ]
    return "\n".join(text), _toy_summary(results)


def _toy_summary(results: dict[str, Any]) -> list[str]:
    out = []
    sampled = {k: v for k, v in results.items() if k != "exact" and not v["diverged"]}
    reached = {k: v for k, v in sampled.items() if v.get("steps_to_p_last_0.9") is not None}
    if reached:

        def evals_needed(k: str) -> float:
            return reached[k]["steps_to_p_last_0.9"] * reached[k]["evals_per_step"]

        by_evals = min(reached, key=evals_needed)
        by_steps = min(reached, key=lambda k: reached[k]["steps_to_p_last_0.9"])
        out.append(
            f"On the toy, `{by_steps}` reached p(last) > 0.9 in the fewest iterations "
            f"({reached[by_steps]['steps_to_p_last_0.9']}) and `{by_evals}` with the fewest "
            f"evaluations of f ({fmt(evals_needed(by_evals))})."
        )
    elif sampled:
        best = max(sampled, key=lambda k: sampled[k]["p_last"])
        out.append(
            f"On the toy no sampling estimator reached p(last) > 0.9 in the run; "
            f"`{best}` got furthest (p(last) = {fmt(sampled[best]['p_last'])})."
        )
    gone = {k: divergence(v) for k, v in results.items() if divergence(v) is not None}
    if gone:
        out.append(
            "Diverged on the toy: " + ", ".join(f"`{k}` at {w}" for k, w in gone.items()) + "."
        )
    return out


# ------------------------------------------------------------------- variance
_COLUMN = {
    "var × evals": lambda v: v["variance_x_evals"],
    "MSE": lambda v: v["mse"],
    "variance": lambda v: v["variance"],
    "f-evals": lambda v: v["n_evals"],
    "bias": lambda v: v["bias"],
    "noise": lambda v: v["bias_noise"],
    "SNR": lambda v: v["snr"],
    "cosine": lambda v: v["cosine"],
    "µs / draw": lambda v: 1e6 * v["seconds_per_draw"],
}
UNBIASED_COLUMNS = (
    "var × evals",
    "variance",
    "f-evals",
    "bias",
    "noise",
    "SNR",
    "cosine",
    "µs / draw",
)
BIASED_COLUMNS = ("MSE", "bias", "variance", "f-evals", "SNR", "cosine", "µs / draw")


def _stats_table(stats: dict[str, dict[str, Any]], columns: Sequence[str], sort_key: str) -> str:
    """One row per estimator, best (lowest ``sort_key``) first."""
    order = sorted(stats.items(), key=lambda kv: kv[1][sort_key])
    rows = [[label, *(_COLUMN[c](v) for c in columns)] for label, v in order]
    return table(["estimator", *columns], rows)


def variance_section(run: RunDir, results: dict[str, Any], cfg: Any) -> tuple[str, list[str]]:
    text = [
        "## Bias and variance against the exact gradient",
        "",
        f"{cfg.n_draws} vectorised draws per estimator and problem, compared with the exact "
        "gradient by enumeration (`discograd.diagnostics.gradient_stats`). Estimators with state "
        f"(EMA baselines, REBAR/RELAX control variates) first get {cfg.warmup} training calls. "
        "*bias* is ‖mean − exact‖ (its Monte-Carlo floor is *noise*: an unbiased estimator's bias "
        "is of that size); *var × evals* is the variance at equal cost (averaging k draws divides "
        "the variance by k and multiplies the cost by k); *cosine* is the mean cosine between a "
        "single draw and the exact gradient.",
        "",
    ]
    summary: list[str] = []
    for pname, res in results.items():
        ests = res["estimators"]
        unbiased = {k: v for k, v in ests.items() if v["unbiased"] and k != "exact"}
        biased = {k: v for k, v in ests.items() if not v["unbiased"]}
        text += [f"### Problem `{pname}`: {res['description']}", ""]
        text += [
            "Unbiased estimators, best first (variance at equal cost):",
            "",
            _stats_table(unbiased, UNBIASED_COLUMNS, "variance_x_evals"),
            "",
        ]
        if biased:
            text += [
                "Biased (relaxed / straight-through) estimators, best first (mean squared error):",
                "",
                _stats_table(biased, BIASED_COLUMNS, "mse"),
                "",
            ]
        if _plots_available():
            from discograd.report import plots

            name = f"variance_{pname}.png"
            plots.variance_vs_evals(
                run.path / name,
                [{"label": k, **v} for k, v in ests.items() if k != "exact"],
                title=f"{pname}: variance vs evaluations (filled: unbiased, hollow: biased)",
            )
            text += [_img(name, f"variance vs evaluations on {pname}"), ""]
        summary += _variance_summary(pname, unbiased, biased)
    return "\n".join(text), summary


def _variance_summary(pname: str, unbiased: dict, biased: dict) -> list[str]:
    out = []
    if unbiased:
        order = sorted(unbiased, key=lambda k: unbiased[k]["variance_x_evals"])
        best = order[0]
        runner = order[1] if len(order) > 1 else None
        s = (
            f"`{pname}`: at equal cost the lowest-variance unbiased estimator was `{best}` "
            f"(variance × evals {fmt(unbiased[best]['variance_x_evals'])}"
        )
        if runner:
            ratio = unbiased[runner]["variance_x_evals"] / max(
                unbiased[best]["variance_x_evals"], 1e-300
            )
            s += f"; next `{runner}`, {fmt(ratio)}× higher"
        out.append(s + ").")
    if biased:
        best_b = min(biased, key=lambda k: biased[k]["mse"])
        b = biased[best_b]
        share = (b["bias"] ** 2) / b["mse"] if b["mse"] > 0 else 0.0
        best_u_mse = min((v["mse"] for v in unbiased.values()), default=math.inf)
        verdict = "below" if b["mse"] < best_u_mse else "above"
        out.append(
            f"`{pname}`: among biased estimators `{best_b}` had the lowest error "
            f"(MSE {fmt(b['mse'])}, {fmt(100 * share)}% of it bias), {verdict} the best "
            "single-call "
            f"unbiased MSE ({fmt(best_u_mse)})."
        )
    return out


# ------------------------------------------------------------------------ vae
def vae_section(
    run: RunDir, results: dict[str, Any], cfg: Any, dataset: str
) -> tuple[str, list[str]]:
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
        "Lower is better (nats). Training curves show each estimator's own estimate of the "
        "objective: for Gumbel-Softmax that is the relaxed objective, which can lie below the "
        "discrete −ELBO it is meant to approximate.",
        "",
    ]
    done = _finished(results)
    rows = [
        [
            k,
            f"{r['test_neg_elbo']:.2f}",  # nats: two decimals, whatever the magnitude
            f"{r['test_iw_bound']:.2f}",
            f"{r['valid_neg_elbo']:.2f}",
            r["evals_per_step"],
            1000 * r["seconds_per_step"],
        ]
        for k, r in sorted(done.items(), key=lambda kv: kv[1]["test_neg_elbo"])
    ]
    rows += _diverged_rows(results, done)
    text += [
        table(
            [
                "estimator",
                "test −ELBO",
                "test IW bound",
                "valid −ELBO",
                "f-evals / step",
                "ms / step",
            ],
            rows,
        ),
        "",
    ]
    if _plots_available():
        from discograd.report import plots

        rec = run.records()
        train, by_time = {}, {}
        for label in results:
            pts = [r for r in rec if r.get("phase") == f"vae/{label}" and "train_neg_elbo" in r]
            train[label] = ([r["step"] for r in pts], [r["train_neg_elbo"] for r in pts])
            by_time[label] = (
                [r["step"] * r["seconds_per_step"] for r in pts],
                [r["train_neg_elbo"] for r in pts],
            )
        plots.curves(
            run.path / "vae_train.png",
            train,
            xlabel="step",
            ylabel="train −ELBO (nats)",
            title="training curves",
        )
        plots.curves(
            run.path / "vae_train_time.png",
            by_time,
            xlabel="seconds",
            ylabel="train −ELBO (nats)",
            title="training curves against wall time",
        )
        text += [
            _img("vae_train.png", "VAE training curves"),
            "",
            _img("vae_train_time.png", "VAE training against wall time"),
            "",
        ]
        for label in list(results)[:3]:
            text += _vae_images(run, label)
    text += _grad_check_table(run, results)
    summary = []
    if done:
        best = min(done, key=lambda k: done[k]["test_neg_elbo"])
        fastest = min(done, key=lambda k: done[k]["seconds_per_step"])
        summary.append(
            f"VAE on {dataset}: `{best}` reached the lowest test −ELBO after {cfg.steps} steps "
            f"({fmt(done[best]['test_neg_elbo'])} nats); `{fastest}` was the cheapest per step "
            f"({fmt(1000 * done[fastest]['seconds_per_step'])} ms)."
        )
    summary += _divergence_lines("VAE", results)
    return "\n".join(text), summary


def _grad_check_table(run: RunDir, results: dict[str, Any]) -> list[str]:
    """Encoder-gradient quality against the exact gradient during training, if measured."""
    rec = run.records()
    rows, series = [], {}
    for label in results:
        pts = [r for r in rec if r.get("phase") == f"vae/{label}" and "grad_cosine" in r]
        if not pts:
            continue

        def mean(key: str, pts=pts) -> float:
            vals = [float(r[key]) for r in pts if isinstance(r.get(key), (int, float))]
            return sum(vals) / len(vals) if vals else math.nan

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
        series[label] = ([r["step"] for r in pts], [r["grad_cosine"] for r in pts])
    if not rows:
        return []
    out = [
        "Encoder gradient against the exact gradient (enumeration over the latent), on the "
        "training batch, during training (means over the checks):",
        "",
        table(["estimator", "cosine", "bias", "noise", "variance", "MSE", "checks"], rows),
        "",
    ]
    if _plots_available():
        from discograd.report import plots

        plots.curves(
            run.path / "vae_grad_cosine.png",
            series,
            xlabel="step",
            ylabel="mean cosine with the exact gradient",
            title="encoder gradient quality during training",
        )
        out += [_img("vae_grad_cosine.png", "gradient cosine during training"), ""]
    return out


def _vae_images(run: RunDir, label: str, prefix: str = "vae", what: str = "") -> list[str]:
    from discograd.report import plots

    stem = slug(f"{prefix}/{label}")
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
    name = f"{prefix}_{stem}.png"
    grid = torch.cat([saved["test"][:8], saved["recon"][:8], saved["samples"][:8]])
    plots.image_grid(
        grid,
        saved["shape"],
        run.path / name,
        rows=3,
        title=f"{label}: {what or 'test images, reconstructions, prior samples'}",
    )
    return [_img(name, f"{label} images"), ""]


# ------------------------------------------------------------------------ sbn
def sbn_section(
    run: RunDir, results: dict[str, Any], cfg: Any, dataset: str
) -> tuple[str, list[str]]:
    """Structured output prediction: importance-sampled −log p(bottom | top)."""
    any_result = next(iter(results.values()), {})
    units = any_result.get("units", [])
    kind = any_result.get("latent", cfg.latent)
    m = any_result.get("iw_samples", cfg.eval_samples)
    text = [
        "## Structured output prediction (stochastic binary network)",
        "",
        f"Predict the bottom half of a {dataset} image from its top half through two stochastic "
        f"layers ({kind}, units {units}), trained with each estimator on "
        f"E[−log p(bottom | h)] for {cfg.steps} steps (Jang et al. 2017 §4.2). Test: "
        f"−log (1/m) Σ p(bottom | h_i), h_i ~ p(h | top), m = {m} (and m = 1). "
        "Decoder passes count every evaluation of the last layer (outer × inner calls). "
        "Lower is better (nats).",
        "",
    ]
    done = _finished(results)
    rows = [
        [
            k,
            f"{r['test_nll']:.2f}",
            f"{r['test_nll_1']:.2f}",
            f"{r['valid_nll']:.2f}",
            r["evals_per_step"],
            1000 * r["seconds_per_step"],
        ]
        for k, r in sorted(done.items(), key=lambda kv: kv[1]["test_nll"])
    ]
    rows += _diverged_rows(results, done)
    text += [
        table(
            [
                "estimator",
                f"test NLL (m={m})",
                "test NLL (m=1)",
                "valid NLL",
                "decoder passes / step",
                "ms / step",
            ],
            rows,
        ),
        "",
    ]
    if _plots_available():
        from discograd.report import plots

        rec = run.records()
        series = {}
        for label in results:
            pts = [r for r in rec if r.get("phase") == f"sbn/{label}" and "train_nll_bound" in r]
            series[label] = ([r["step"] for r in pts], [r["train_nll_bound"] for r in pts])
        plots.curves(
            run.path / "sbn_train.png",
            series,
            xlabel="step",
            ylabel="train E[−log p(bottom | h)] (nats)",
            title="SBN training curves",
        )
        text += [_img("sbn_train.png", "SBN training curves"), ""]
        for label in list(results)[:2]:
            text += _vae_images(
                run, label, "sbn", "true digits, predicted bottom halves (mean), one sample"
            )
    summary = []
    if done:
        best = min(done, key=lambda k: done[k]["test_nll"])
        summary.append(
            f"Structured prediction ({kind} SBN on {dataset}): `{best}` reached the lowest "
            f"test −log-likelihood ({done[best]['test_nll']:.2f} nats, m = {m})."
        )
    summary += _divergence_lines("SBN", results)
    return "\n".join(text), summary


# ------------------------------------------------------------------------ ssl
def ssl_section(
    run: RunDir,
    results: dict[str, Any],
    cfg: Any,
    dataset: str,
    timing: dict[str, Any] | None = None,
    timing_classes: int | None = None,
) -> tuple[str, list[str]]:
    """Semi-supervised M2: accuracy, −ELBO and the speed of each way of handling labels."""
    text = [
        "## Semi-supervised classification (M2)",
        "",
        f"{dataset}, {cfg.n_labels} labelled examples, {cfg.n_classes} classes, "
        f"{cfg.steps} steps. `marginal` sums the unlabelled bound over all classes exactly "
        "(one decoder pass per class); the estimators sample the label (one pass). Test "
        "−ELBO: the unlabelled bound with labels marginalised exactly (Jang et al. 2017 §4.3; "
        "Kingma et al. 2014).",
        "",
    ]
    rows = [
        [
            k,
            f"{100 * r['test_accuracy']:.1f} %",
            f"{r['test_neg_elbo']:.2f}",
            f"{100 * r['valid_accuracy']:.1f} %",
            1000 * r["seconds_per_step"],
            r.get("speedup_vs_marginal"),
        ]
        if divergence(r) is None
        else [
            k,
            f"diverged at {divergence(r)}",
            None,
            None,
            _ms(r["seconds_per_step"]),
            r.get("speedup_vs_marginal"),
        ]
        for k, r in results.items()
    ]
    text += [
        table(
            [
                "method",
                "test accuracy",
                "test −ELBO",
                "valid accuracy",
                "ms / step",
                "speed-up vs marginal",
            ],
            rows,
        ),
        "",
    ]
    if timing:
        text += [
            f"Speed with {timing_classes} classes (random labels, so only the cost per step "
            "means anything):",
            "",
            table(
                ["method", "ms / step", "speed-up vs marginal"],
                [
                    [k, _ms(r["seconds_per_step"]), r.get("speedup_vs_marginal")]
                    for k, r in timing.items()
                ],
            ),
            "",
        ]
    summary = []
    done = _finished(results)
    if done:
        best = max(done, key=lambda k: done[k]["test_accuracy"])
        line = (
            f"Semi-supervised M2 on {dataset}: `{best}` had the best test accuracy "
            f"({100 * done[best]['test_accuracy']:.1f} %)"
        )
        speed = {
            k: r["speedup_vs_marginal"]
            for k, r in done.items()
            if r.get("speedup_vs_marginal") and k != "marginal"
        }
        if speed:
            fastest = max(speed, key=speed.get)  # type: ignore[arg-type]
            line += f"; `{fastest}` stepped {speed[fastest]:.1f}× faster than marginalising"
            line += f" over {cfg.n_classes} classes"
        if timing:
            t_speed = {
                k: r["speedup_vs_marginal"]
                for k, r in _finished(timing).items()
                if r.get("speedup_vs_marginal") and k != "marginal"
            }
            if t_speed:
                f2 = max(t_speed, key=t_speed.get)  # type: ignore[arg-type]
                line += f" and {t_speed[f2]:.1f}× over {timing_classes}"
        summary.append(line + ".")
    summary += _divergence_lines("semi-supervised M2", results)
    if timing:
        summary += _divergence_lines(f"timing run ({timing_classes} classes)", timing)
    return "\n".join(text), summary


# ----------------------------------------------------------- bench summary
def _geo_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def bench_summary(results: dict[str, Any]) -> list[str]:
    """The "which estimator when" bullets, derived from the bench's numbers."""
    out: list[str] = []
    var = results.get("variance", {})
    if var:
        out += _unbiased_advice(var, results.get("vae"))
        out += _single_call_advice(var)
        out += _temperature_advice(var)
        out += _exactness_notes(var)
    if "toy" in results:
        out += _toy_summary(results["toy"])
    if _finished(results.get("vae", {})):
        vae = _finished(results["vae"])
        best = min(vae, key=lambda k: vae[k]["test_neg_elbo"])
        cheap = min(vae, key=lambda k: vae[k]["seconds_per_step"])
        spread = max(v["test_neg_elbo"] for v in vae.values()) - vae[best]["test_neg_elbo"]
        out.append(
            f"Training a VAE for the same number of steps, `{best}` reached the lowest test "
            f"−ELBO ({fmt(vae[best]['test_neg_elbo'])} nats; the spread across estimators was "
            f"{fmt(spread)} nats); `{cheap}` had the cheapest step "
            f"({fmt(1000 * vae[cheap]['seconds_per_step'])} ms vs "
            f"{fmt(1000 * vae[best]['seconds_per_step'])} ms)."
        )
    out += _divergence_lines("VAE", results.get("vae", {}))
    return out


def _unbiased_advice(var: dict[str, Any], vae: dict[str, Any] | None = None) -> list[str]:
    ratios: dict[str, list[float]] = {}
    wins: dict[str, list[str]] = {}
    for pname, res in var.items():
        ub = {
            k: v["variance_x_evals"]
            for k, v in res["estimators"].items()
            if v["unbiased"] and k != "exact" and v["variance_x_evals"] > 0
        }
        if not ub:
            continue
        best = min(ub.values())
        wins.setdefault(min(ub, key=ub.get), []).append(pname)  # type: ignore[arg-type]
        for k, v in ub.items():
            ratios.setdefault(k, []).append(v / best)
    n_problems = max((len(v) for v in ratios.values()), default=0)
    complete = {k: _geo_mean(v) for k, v in ratios.items() if len(v) == n_problems}
    if not complete:
        return []
    robust = min(complete, key=complete.get)  # type: ignore[arg-type]
    won = "; ".join(f"`{k}` on {', '.join(v)}" for k, v in wins.items())
    line = (
        f"Need unbiased gradients? At equal cost (variance × evaluations) the per-problem "
        f"winners were {won}. Across all {n_problems} problems `{robust}` was the most robust "
        f"(on average {fmt(complete[robust])}× the best variance)."
    )
    if vae and robust in _finished(vae):
        # The variance study holds θ fixed (baselines at their best); training moves it.
        from discograd.estimators.registry import make

        unbiased_vae = [k for k in _finished(vae) if make(k).unbiased]
        ranked = sorted(unbiased_vae, key=lambda k: vae[k]["test_neg_elbo"])
        if len(ranked) > 1:
            line += (
                f" Training the VAE, where θ moves and every image has its own cost scale, "
                f"`{robust}` ranked {ranked.index(robust) + 1} of the {len(ranked)} unbiased "
                f"estimators by test −ELBO (best: `{ranked[0]}`)."
            )
    return [line]


def _single_call_advice(var: dict[str, Any]) -> list[str]:
    parts = []
    for pname, res in var.items():
        one = {
            k: v
            for k, v in res["estimators"].items()
            if k != "exact" and v["n_evals"] <= 1.0 + 1e-9 and v["mse"] is not None
        }
        if not one:
            continue
        norm2 = max(res.get("exact_norm", 1.0) ** 2, 1e-300)
        best = min(one, key=lambda k: one[k]["mse"])
        ub = [k for k in one if one[k]["unbiased"]]
        s = f"on `{pname}` `{best}` (relative MSE {fmt(one[best]['mse'] / norm2)})"
        if ub:
            b = min(ub, key=lambda k: one[k]["mse"])
            if b != best:
                s += f" against the best unbiased `{b}` ({fmt(one[b]['mse'] / norm2)})"
        parts.append(s)
    if not parts:
        return []
    return [
        "One evaluation of f per step and a differentiable f: the lowest mean squared error "
        "(relative to ‖exact‖²) was " + "; ".join(parts) + "."
    ]


def _temperature_advice(var: dict[str, Any]) -> list[str]:
    lines = []
    for pname, res in var.items():
        gs = {}
        for k, v in res["estimators"].items():
            name, _, params = k.partition(":")
            if name != "gumbel_softmax" or "tau=" not in params:
                continue
            tau = float(params.split("tau=")[1].split(",")[0])
            gs[tau] = v
        if len(gs) < 2:
            continue
        lo, hi = min(gs), max(gs)
        noise = lambda v: max(v["bias"] ** 2 - v["bias_noise"] ** 2, 0.0) ** 0.5  # noqa: E731
        best_tau = min(gs, key=lambda t: gs[t]["mse"])
        lines.append(
            f"Gumbel-Softmax on `{pname}`: raising τ from {lo:g} to {hi:g} cut the variance "
            f"{fmt(gs[lo]['variance'] / max(gs[hi]['variance'], 1e-300))}× and changed the bias "
            f"from {fmt(noise(gs[lo]))} to {fmt(noise(gs[hi]))}; "
            f"the lowest error was at τ = {best_tau:g}."
        )
    return lines[:2]


def _exactness_notes(var: dict[str, Any]) -> list[str]:
    lines = []
    for pname, res in var.items():
        norm2 = max(res.get("exact_norm", 1.0) ** 2, 1e-300)
        exact_ones = [
            k
            for k, v in res["estimators"].items()
            if k != "exact" and v["mse"] is not None and v["mse"] / norm2 < 1e-12
        ]
        if exact_ones:
            lines.append(
                f"On `{pname}` "
                + ", ".join(f"`{k}`" for k in exact_ones)
                + " matched the exact gradient to rounding error on every draw (there f is "
                "linear in z, where straight-through is exact)."
            )
    return lines


# --------------------------------------------------------------------- report
def machine() -> str:
    cpu = os.cpu_count()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    py = platform.python_version()
    return f"{platform.platform()}, Python {py}, torch {torch.__version__}, {cpu} CPUs, {dev}"


def write_report(
    run: RunDir,
    title: str,
    command: str,
    sections: Sequence[str],
    summary: Sequence[str],
    extra_top: Sequence[str] = (),
) -> Path:
    """``report.md`` in the run folder: summary first, then the sections."""
    lines = [
        f"# {title}",
        "",
        f"`{command}` — {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, {machine()}.",
        "",
        "## Which estimator when (from these numbers)",
        "",
    ]
    lines += [f"* {s}" for s in summary] or ["* (no results)"]
    lines += ["", *extra_top, *sections]
    path = run.path / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path
