"""The markdown report: tables of mean ± standard error over seeds, plots, a guarded summary.

Results come from :func:`discograd.experiments.trainer.aggregate`: per
estimator the mean of every number over seeds, with ``se`` (standard errors),
``n`` (seeds behind each mean), ``seeds`` and ``per_seed``. Tables print
``mean ± s.e.``. A sentence that ranks estimators is made only when the
difference exceeds its standard error, and says so with the numbers;
otherwise it says they are not distinguishable at that many seeds.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import torch

from discograd.errors import RunFolderWarning
from discograd.experiments.common import slug
from discograd.experiments.runner import RunDir, atomic_write_text
from discograd.experiments.trainer import aggregate

__all__ = [
    "bench_summary",
    "compare",
    "fmt",
    "pm",
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


def _number(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _se(r: dict[str, Any], key: str) -> float | None:
    return (r.get("se") or {}).get(key)


def _n(r: dict[str, Any], key: str) -> int:
    return (r.get("n") or {}).get(key, 1 if _number(r.get(key)) else 0)


def _seeds(r: dict[str, Any]) -> int:
    return len(r.get("seeds") or [0])


def pm(r: dict[str, Any], key: str, *, scale: float = 1.0, decimals: int | None = None) -> str:
    """``r[key]`` as ``mean ± s.e.`` (the s.e. when there are two seeds or more).

    ``decimals``: fixed decimals (nats) instead of three significant digits;
    a mean over fewer seeds than the run had says so ("2 of 3 seeds").
    """
    v = r.get(key)
    if not _number(v):
        return fmt(v)

    def show(x: float) -> str:
        return f"{x:.{decimals}f}" if decimals is not None else fmt(x)

    text = show(v * scale)
    se = _se(r, key)
    if se is not None:
        text += f" ± {show(se * scale)}"
    n, total = _n(r, key), _seeds(r)
    if n < total:
        text += f" ({n} of {total} seeds)"
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def compare(
    results: dict[str, dict[str, Any]],
    key: str,
    what: str,
    *,
    lower: bool = True,
    decimals: int | None = None,
    scale: float = 1.0,
) -> str | None:
    """A sentence on which estimator is best by ``key``, or that none can be told apart.

    The best two (by mean) are compared: the best is named only when their
    difference exceeds its standard error √(se₁² + se₂²); with one seed there is
    no standard error, and the sentence says they are not distinguishable.
    Estimators whose mean is over fewer seeds than the run had are left out.
    """
    candidates = {
        k: r for k, r in results.items() if _number(r.get(key)) and _n(r, key) == _seeds(r)
    }
    if len(candidates) < 2:
        return None
    order = sorted(candidates, key=lambda k: candidates[k][key], reverse=not lower)
    a, b = order[0], order[1]
    ra, rb = candidates[a], candidates[b]
    shown_a, shown_b = (pm(r, key, scale=scale, decimals=decimals) for r in (ra, rb))
    n = min(_n(ra, key), _n(rb, key))
    word = "lowest" if lower else "highest"
    sa, sb = _se(ra, key), _se(rb, key)
    if sa is not None and sb is not None:
        diff = abs(ra[key] - rb[key]) * scale
        se = math.hypot(sa, sb) * scale
        if diff > se:
            return (
                f"`{a}` had the {word} {what}: {shown_a}, against {shown_b} for `{b}`, the next "
                f"(difference {fmt(diff)}, more than its standard error {fmt(se)}; "
                f"{_plural(n, 'seed')})."
            )
    return (
        f"The {word} {what}: `{a}` ({shown_a}) and `{b}` ({shown_b}) are not distinguishable "
        f"at {_plural(n, 'seed')}."
    )


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


def _dataset(cfg: Any) -> str:
    return Path(cfg.dataset).name


def _derived(r: dict[str, Any], fn: Callable[[dict[str, Any]], float | None]) -> dict[str, Any]:
    """A number computed from each seed's result, aggregated like the others (key ``x``)."""
    per_seed = r.get("per_seed") or {"0": r}
    return aggregate({int(s): {"x": fn(v)} for s, v in per_seed.items()})


def _mean_curve(
    records: list[dict[str, Any]],
    phases: Sequence[str],
    key: str,
    x: Callable[[dict[str, Any]], float] = lambda r: r["step"],
    y: Callable[[float], float] = lambda v: v,
) -> tuple[list[float], list[float]]:
    """``key`` against ``x`` averaged over the seeds' phases, at the steps all of them logged."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for r in records:
        if r.get("phase") in phases and _number(r.get(key)):
            by_step.setdefault(r["step"], []).append((x(r), y(r[key])))
    steps = sorted(s for s, pts in by_step.items() if len(pts) == len(phases))
    xs = [sum(p[0] for p in by_step[s]) / len(phases) for s in steps]
    ys = [sum(p[1] for p in by_step[s]) / len(phases) for s in steps]
    return xs, ys


def _phases(task: str, label: str, r: dict[str, Any]) -> list[str]:
    return [f"{task}/{label}/seed{s}" for s in r.get("seeds") or [0]]


# ---------------------------------------------------------------- divergence
def _diverged_rows(results: dict[str, Any], done: dict[str, Any]) -> list[list[Any]]:
    """Report rows (name, when it diverged, two empty metrics, cost) of estimators not in done."""
    return [
        [
            k,
            f"diverged at {divergence(r)}",
            None,
            None,
            pm(r, "evals_per_step"),
            pm(r, "seconds_per_step", scale=1000),
        ]
        for k, r in results.items()
        if k not in done
    ]


def divergence(result: dict[str, Any]) -> str | None:
    """Where an estimator diverged ("step 37 (non-finite loss)"), or None if it did not."""
    d = result.get("diverged")
    if not isinstance(d, dict):
        return None
    where = f"step {d['step']} (non-finite {d['quantity']})"
    seeds, total = d.get("seeds"), _seeds(result)
    if seeds is not None and total > 1:
        where += f" in {_plural(len(seeds), 'seed')} of {total}"
    return where


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


def _seed_note(results: dict[str, Any]) -> str:
    n = max((_seeds(r) for r in results.values()), default=1)
    if n == 1:
        return "One seed: no standard errors, so no estimator is ranked above another."
    return f"Mean ± standard error over {n} seeds."


# ------------------------------------------------------------------------ toy
def toy_section(run: RunDir, results: dict[str, Any], cfg: Any) -> tuple[str, list[str]]:
    """The toy's table and plots; returns (markdown, summary sentences)."""
    rows = []
    for label, r in results.items():
        gap = _derived(r, lambda v: _sub(v.get("optimum"), v.get("expected_reward")))
        evals_to = _derived(r, _evals_to_p_last)
        rows.append(
            [
                label,
                pm(r, "expected_reward"),
                pm(gap, "x"),
                pm(r, "p_last"),
                pm(r, "steps_to_p_last_0.9"),
                pm(evals_to, "x"),
                pm(r, "mean_grad_variance"),
                pm(r, "evals_per_step"),
                pm(r, "seconds_per_step", scale=1000),
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
        f"iterations, averaged over the run. {_seed_note(results)}",
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
        for label, r in results.items():
            phases = _phases("toy", label, r)
            series_r[label] = _mean_curve(rec, phases, "expected_reward")
            series_p[label] = _mean_curve(rec, phases, "p_last", y=lambda v: max(v, 1e-12))
            # Zero variance (exact gradients, a collapsed policy) has no place on a
            # log axis: leave a gap instead of squashing the scale.
            series_v[label] = _mean_curve(
                rec, phases, "grad_variance", y=lambda v: v if v > 0 else math.nan
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
        seeds = "" if max(map(_seeds, results.values()), default=1) == 1 else " (mean over seeds)"
        plots.curves(
            run.path / "toy_reward.png",
            series_r,
            xlabel="iteration",
            ylabel="E[f(z)]",
            title="expected reward" + seeds,
            hline=0.5 + 1 / cfg.R,
            groups=groups,
        )
        plots.curves(
            run.path / "toy_p_last.png",
            series_p,
            xlabel="iteration",
            ylabel="probability of the last category",
            title="probability of the best category" + seeds,
            logy=True,
            groups=groups,
        )
        plots.curves(
            run.path / "toy_grad_variance.png",
            series_v,
            xlabel="iteration",
            ylabel="trace of gradient covariance",
            title="gradient variance" + seeds,
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


def _sub(a: Any, b: Any) -> float | None:
    return a - b if _number(a) and _number(b) else None


def _evals_to_p_last(v: dict[str, Any]) -> float | None:
    steps, evals = v.get("steps_to_p_last_0.9"), v.get("evals_per_step")
    return steps * evals if _number(steps) and _number(evals) else None


def _toy_summary(results: dict[str, Any]) -> list[str]:
    sampled = {k: v for k, v in results.items() if k != "exact" and divergence(v) is None}
    out = []
    reached = {k: v for k, v in sampled.items() if _n(v, "steps_to_p_last_0.9") == _seeds(v)}
    if len(reached) >= 2:
        for line in (
            compare(reached, "steps_to_p_last_0.9", "number of iterations to p(last) > 0.9"),
            compare(
                {k: _derived(v, _evals_to_p_last) for k, v in reached.items()},
                "x",
                "number of f-evaluations to p(last) > 0.9",
            ),
        ):
            if line:
                out.append("Toy: " + line)
    elif sampled:
        line = compare(sampled, "p_last", "final p(last)", lower=False)
        if line:
            out.append(
                "Toy: fewer than two sampling estimators reached p(last) > 0.9 in every seed. "
                + line
            )
    return out + _divergence_lines("toy", results)


# ------------------------------------------------------------------- variance
_COLUMN = {
    "var × evals": ("variance_x_evals", 1.0),
    "MSE": ("mse", 1.0),
    "variance": ("variance", 1.0),
    "f-evals": ("n_evals", 1.0),
    "bias": ("bias", 1.0),
    "noise": ("bias_noise", 1.0),
    "SNR": ("snr", 1.0),
    "cosine": ("cosine", 1.0),
    "µs / draw": ("seconds_per_draw", 1e6),
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
    """One row per estimator, sorted by the mean of ``sort_key`` (lowest first)."""
    order = sorted(stats.items(), key=lambda kv: kv[1][sort_key])
    rows = [
        [label, *(pm(v, _COLUMN[c][0], scale=_COLUMN[c][1]) for c in columns)] for label, v in order
    ]
    return table(["estimator", *columns], rows)


def variance_section(run: RunDir, results: dict[str, Any], cfg: Any) -> tuple[str, list[str]]:
    text = [
        "## Bias and variance against the exact gradient",
        "",
        f"{cfg.draws} vectorised draws per estimator and problem, compared with the exact "
        "gradient by enumeration (`discograd.diagnostics.gradient_stats`). Estimators with state "
        f"(EMA baselines, REBAR/RELAX control variates) first train for {cfg.warmup} steps. "
        "*bias* is ‖mean − exact‖ (its Monte-Carlo floor is *noise*: an unbiased estimator's bias "
        "is of that size); *var × evals* is the variance at equal cost (averaging k draws divides "
        "the variance by k and multiplies the cost by k); *cosine* is the mean cosine between a "
        f"single draw and the exact gradient. {_seed_note(_all_estimators(results))}",
        "",
    ]
    summary: list[str] = []
    for pname, res in results.items():
        ests = res["estimators"]
        unbiased = {k: v for k, v in ests.items() if v["unbiased"] and k != "exact"}
        biased = {k: v for k, v in ests.items() if not v["unbiased"]}
        text += [f"### Problem `{pname}`: {res['description']}", ""]
        text += [
            "Unbiased estimators, sorted by variance at equal cost:",
            "",
            _stats_table(unbiased, UNBIASED_COLUMNS, "variance_x_evals"),
            "",
        ]
        if biased:
            text += [
                "Biased (relaxed / straight-through) estimators, sorted by mean squared error:",
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
        for group, key, what in (
            (unbiased, "variance_x_evals", "variance at equal cost among unbiased estimators"),
            (biased, "mse", "mean squared error among biased estimators"),
        ):
            line = compare(group, key, what)
            if line:
                summary.append(f"`{pname}`: {line}")
    return "\n".join(text), summary


def _all_estimators(results: dict[str, Any]) -> dict[str, Any]:
    return {f"{p}/{k}": v for p, res in results.items() for k, v in res["estimators"].items()}


# ------------------------------------------------------------------------ vae
def vae_section(run: RunDir, results: dict[str, Any], cfg: Any) -> tuple[str, list[str]]:
    dataset = _dataset(cfg)
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
        f"discrete −ELBO it is meant to approximate. {_seed_note(results)}",
        "",
    ]
    done = _finished(results)
    rows = [
        [
            k,
            pm(r, "test_neg_elbo", decimals=2),  # nats: two decimals, whatever the magnitude
            pm(r, "test_iw_bound", decimals=2),
            pm(r, "valid_neg_elbo", decimals=2),
            pm(r, "evals_per_step"),
            pm(r, "seconds_per_step", scale=1000),
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
        for label, r in results.items():
            phases = _phases("vae", label, r)
            train[label] = _mean_curve(rec, phases, "train_neg_elbo")
            by_time[label] = _mean_curve(
                rec, phases, "train_neg_elbo", x=lambda p: p["step"] * p["seconds_per_step"]
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
        for label, r in list(results.items())[:3]:
            text += _vae_images(run, _phases("vae", label, r)[0], label)
    text += _grad_check_table(run, results)
    summary = [
        f"VAE on {dataset}: {line}"
        for line in (
            compare(done, "test_neg_elbo", f"test −ELBO after {cfg.steps} steps", decimals=2),
            compare(done, "seconds_per_step", "time per step (ms)", scale=1000),
        )
        if line
    ]
    return "\n".join(text), summary + _divergence_lines("VAE", results)


def _grad_check_table(run: RunDir, results: dict[str, Any]) -> list[str]:
    """Encoder-gradient quality against the exact gradient during training, if measured."""
    rec = run.records()
    rows, series = [], {}
    for label, r in results.items():
        phases = _phases("vae", label, r)
        pts = [p for p in rec if p.get("phase") in phases and "grad_cosine" in p]
        if not pts:
            continue

        def mean(key: str, pts: list[dict[str, Any]] = pts) -> float:
            vals = [float(p[key]) for p in pts if _number(p.get(key))]
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
        series[label] = _mean_curve(rec, phases, "grad_cosine")
    if not rows:
        return []
    out = [
        "Encoder gradient against the exact gradient (enumeration over the latent), on the "
        "training batch, during training (means over the checks and seeds):",
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


def _vae_images(run: RunDir, phase: str, label: str, what: str = "") -> list[str]:
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
        grid,
        saved["shape"],
        run.path / name,
        rows=3,
        title=f"{label}: {what or 'test images, reconstructions, prior samples'}",
    )
    return [_img(name, f"{label} images"), ""]


# ------------------------------------------------------------------------ sbn
def sbn_section(run: RunDir, results: dict[str, Any], cfg: Any) -> tuple[str, list[str]]:
    """Structured output prediction: importance-sampled −log p(bottom | top)."""
    dataset = _dataset(cfg)
    done = _finished(results)
    any_result: dict[str, Any] = next(iter(done.values()), {})
    units = any_result.get("units", list(cfg.units))
    m = cfg.eval_samples
    text = [
        "## Structured output prediction (stochastic binary network)",
        "",
        f"Predict the bottom half of a {dataset} image from its top half through two stochastic "
        f"layers ({cfg.latent}, units {units}), trained with each estimator on "
        f"E[−log p(bottom | h)] for {cfg.steps} steps (Jang et al. 2017 §4.2). Test: "
        f"−log (1/m) Σ p(bottom | h_i), h_i ~ p(h | top), m = {m} (and m = 1). "
        "Decoder passes count every evaluation of the last layer (outer × inner calls). "
        f"Lower is better (nats). {_seed_note(results)}",
        "",
    ]
    rows = [
        [
            k,
            pm(r, "test_nll", decimals=2),
            pm(r, "test_nll_1", decimals=2),
            pm(r, "valid_nll", decimals=2),
            pm(r, "evals_per_step"),
            pm(r, "seconds_per_step", scale=1000),
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
        series = {
            label: _mean_curve(rec, _phases("sbn", label, r), "train_nll_bound")
            for label, r in results.items()
        }
        plots.curves(
            run.path / "sbn_train.png",
            series,
            xlabel="step",
            ylabel="train E[−log p(bottom | h)] (nats)",
            title="SBN training curves",
        )
        text += [_img("sbn_train.png", "SBN training curves"), ""]
        for label, r in list(results.items())[:2]:
            text += _vae_images(
                run,
                _phases("sbn", label, r)[0],
                label,
                "true digits, predicted bottom halves (mean), one sample",
            )
    summary = []
    line = compare(done, "test_nll", f"test −log-likelihood (m = {m}, nats)", decimals=2)
    if line:
        summary.append(f"Structured prediction ({cfg.latent} SBN on {dataset}): {line}")
    return "\n".join(text), summary + _divergence_lines("SBN", results)


# ------------------------------------------------------------------------ ssl
def ssl_section(
    run: RunDir,
    results: dict[str, Any],
    cfg: Any,
    timing: dict[str, Any] | None = None,
) -> tuple[str, list[str]]:
    """Semi-supervised M2: accuracy, −ELBO and the speed of each way of handling labels."""
    dataset = _dataset(cfg)
    text = [
        "## Semi-supervised classification (M2)",
        "",
        f"{dataset}, {cfg.n_labels} labelled examples, {cfg.n_classes} classes, "
        f"{cfg.steps} steps. `marginal` sums the unlabelled bound over all classes exactly "
        "(one decoder pass per class); the estimators sample the label (one pass). Test "
        "−ELBO: the unlabelled bound with labels marginalised exactly (Jang et al. 2017 §4.3; "
        f"Kingma et al. 2014). {_seed_note(results)}",
        "",
    ]
    rows = [
        [
            k,
            pm(r, "test_accuracy", scale=100, decimals=1) + " %",
            pm(r, "test_neg_elbo", decimals=2),
            pm(r, "valid_accuracy", scale=100, decimals=1) + " %",
            pm(r, "seconds_per_step", scale=1000),
            pm(r, "speedup_vs_marginal"),
        ]
        if divergence(r) is None
        else [
            k,
            f"diverged at {divergence(r)}",
            None,
            None,
            pm(r, "seconds_per_step", scale=1000),
            pm(r, "speedup_vs_marginal"),
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
            f"Speed with {cfg.timing_classes} classes (random labels, so only the cost per step "
            "means anything):",
            "",
            table(
                ["method", "ms / step", "speed-up vs marginal"],
                [
                    [k, pm(r, "seconds_per_step", scale=1000), pm(r, "speedup_vs_marginal")]
                    for k, r in timing.items()
                ],
            ),
            "",
        ]
    done = _finished(results)
    summary = [
        f"Semi-supervised M2 on {dataset}: {line}"
        for line in (
            compare(done, "test_accuracy", "test accuracy (%)", lower=False, scale=100, decimals=1),
            compare(
                done,
                "seconds_per_step",
                f"time per step with {cfg.n_classes} classes (ms)",
                scale=1000,
            ),
            compare(
                _finished(timing or {}),
                "seconds_per_step",
                f"time per step with {cfg.timing_classes} classes (ms)",
                scale=1000,
            ),
        )
        if line
    ]
    summary += _divergence_lines("semi-supervised M2", results)
    if timing:
        summary += _divergence_lines(f"timing run ({cfg.timing_classes} classes)", timing)
    return "\n".join(text), summary


# ----------------------------------------------------------- bench summary
def bench_summary(results: dict[str, Any]) -> list[str]:
    """Facts across the bench's studies (each study's own lines come from its section)."""
    return _exactness_notes(results.get("variance", {}))


def _exactness_notes(var: dict[str, Any]) -> list[str]:
    lines = []
    for pname, res in var.items():
        norm2 = max(res.get("exact_norm", 1.0) ** 2, 1e-300)
        exact_ones = [
            k
            for k, v in res["estimators"].items()
            if k != "exact" and _number(v.get("mse")) and v["mse"] / norm2 < 1e-12
        ]
        if exact_ones:
            lines.append(
                f"On `{pname}` "
                + ", ".join(f"`{k}`" for k in exact_ones)
                + " matched the exact gradient to rounding error on every draw."
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
        "## Summary (from these numbers, with their standard errors over seeds)",
        "",
    ]
    lines += [f"* {s}" for s in summary] or ["* (no results)"]
    lines += ["", *extra_top, *sections]
    path = run.path / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path
