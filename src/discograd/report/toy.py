"""The toy's section: final numbers per estimator, curves against iterations and f-evaluations."""

from __future__ import annotations

from typing import Any

from discograd.experiments.runner import RunDir
from discograd.report import markdown as md
from discograd.report.curves import Records, curve
from discograd.report.markdown import Results, Section, derived, divergence, pm
from discograd.report.timing import fmt_timing, step_timing

__all__ = ["section"]

#: numbers of a toy result that make two estimators' runs the same run
SAME_RUN = ("expected_reward", "p_last", "mean_grad_variance")


def _sub(a: Any, b: Any) -> float | None:
    return a - b if md.number(a) and md.number(b) else None


def _evals_to_p_last(v: dict[str, Any]) -> float | None:
    steps, evals = v.get("steps_to_p_last_0.9"), v.get("evals_per_step")
    return steps * evals if md.number(steps) and md.number(evals) else None


def section(run: RunDir, results: Results, cfg: Any) -> Section:
    """The toy's table and plots, and its summary lines."""
    if getattr(cfg, "problem", "arsm") != "arsm":
        return _binary_section(run, results, cfg)
    rows = []
    for label, r in results.items():
        gap = derived(r, lambda v: _sub(v.get("optimum"), v.get("expected_reward")))
        evals_to = derived(r, _evals_to_p_last)
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
                fmt_timing(step_timing(r), scale=1000),
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
        "iterations, averaged over the run. Steps to p(last) > 0.9: the first recorded "
        f"iteration (every {cfg.eval_every}) where it was; a mean over fewer seeds than the run "
        f"had says how many reached it. ms / step: median [interquartile range] of timed "
        f"windows of the run, all seeds pooled. {md.seed_note(results)}",
        "",
        md.table(
            [
                "estimator",
                "final E[f]",
                "gap to optimum",
                "p(last)",
                "steps to p(last) > 0.9",
                "f-evaluations to p(last) > 0.9",
                "mean grad. variance",
                "f-evals / step",
                "ms / step",
                "diverged",
            ],
            rows,
        ),
        "",
        *md.identical_line(results, SAME_RUN, "final E[f], p(last) and gradient variance"),
    ]
    if md.identical(results, SAME_RUN):
        text.append("")
    if md._plots_available():
        text += _plots(run, results, cfg)
    else:
        text += [md.PLOTS_SKIPPED, ""]
    return Section("\n".join(text), _summary(results))


def _plots(run: RunDir, results: Results, cfg: Any) -> list[str]:
    from discograd.report import plots

    rec = Records(run)
    groups = {
        "unbiased estimators and the exact gradient": [
            k for k in results if md.is_unbiased(k) or md.is_exact(k)
        ],
        "biased estimators (relaxed, straight-through)": [
            k for k in results if not (md.is_unbiased(k) or md.is_exact(k))
        ],
    }

    def evals(r: dict[str, Any]) -> float | None:
        return r.get("evals")

    def columns(key: str) -> list[plots.Column]:
        by_step, by_evals = {}, {}
        for label, r in results.items():
            ph = md.phases("toy", label, r)
            by_step[label] = curve(rec, ph, key)
            by_evals[label] = curve(rec, ph, key, x=evals)
        return [("iteration", by_step), ("f-evaluations (cumulative, log scale)", by_evals)]

    plots.curves(
        run.path / "toy_reward.png",
        columns("expected_reward"),
        ylabel="E[f(z)]",
        title="Expected reward",
        groups=groups,
        logx=(False, True),
        hline=(0.5 + 1 / cfg.R, "optimum"),
    )
    plots.curves(
        run.path / "toy_p_last.png",
        columns("p_last"),
        ylabel="p(last category)",
        title="Probability of the best (last) category",
        groups=groups,
        logx=(False, True),
        logy=True,
    )
    variance = {
        label: curve(rec, md.phases("toy", label, r), "grad_variance")
        for label, r in results.items()
    }
    plots.curves(
        run.path / "toy_grad_variance.png",
        [("iteration", variance)],
        ylabel="trace of gradient covariance",
        title=f"Gradient variance ({cfg.var_draws} draws every {cfg.var_every} iterations)",
        groups=groups,
        logy=True,
    )
    band = "Lines: mean over seeds; bands: min–max across seeds."
    return [
        *md.img("toy_reward.png", "expected reward vs iteration and f-evaluations", band),
        *md.img("toy_p_last.png", "probability of the last category", band),
        *md.img(
            "toy_grad_variance.png",
            "gradient variance vs iteration",
            band + " Zero variance is marked on the bottom edge.",
        ),
    ]


def _summary(results: Results) -> list[str]:
    """Rankings among the estimators that sample (the exact gradient is the reference)."""
    sampled = {k: v for k, v in md.finished(results).items() if not md.is_exact(k)}
    out = []
    reached = {
        k: v for k, v in sampled.items() if md.n_of(v, "steps_to_p_last_0.9") == md.seeds_of(v)
    }
    if len(reached) >= 2:
        for line in (
            md.compare(reached, "steps_to_p_last_0.9", "number of iterations to p(last) > 0.9"),
            md.compare(
                {k: derived(v, _evals_to_p_last) for k, v in reached.items()},
                "x",
                "number of f-evaluations to p(last) > 0.9",
            ),
        ):
            if line:
                out.append("Toy: " + line)
    else:
        line = md.compare(sampled, "p_last", "final p(last)", lower=False)
        if line:
            out.append(
                "Toy: fewer than two sampling estimators reached p(last) > 0.9 in every seed. "
                + line
            )
    return out + md.divergence_lines("toy", results)


def _binary_section(run: RunDir, results: Results, cfg: Any) -> Section:
    """A binary toy (``--problem rebar`` / ``relax``): expected loss, p and gradient variance."""
    rows = []
    for label, r in results.items():
        gap = derived(r, lambda v: _sub(v.get("expected_loss"), v.get("optimum")))
        rows.append(
            [
                label,
                pm(r, "expected_loss"),
                pm(gap, "x"),
                pm(r, "p"),
                pm(r, "mean_grad_variance"),
                pm(r, "evals_per_step"),
                fmt_timing(step_timing(r), scale=1000),
                divergence(r) or "no",
            ]
        )
    text = [
        f"## The binary toy ({cfg.problem})",
        "",
        f"Minimise E[Σ_i (b_i − t)²], t = {cfg.t:g}, {cfg.n_vars} binary variable(s) "
        f"b_i ~ Bernoulli(σ(θ_i)), from θ = 0 with gradient descent (step {cfg.lr:g}) for "
        f"{cfg.steps} iterations. The exact gradient is σ(θ)(1 − σ(θ))(1 − 2t) (the `exact` "
        f"entry). Gradient variance: trace of the covariance of {cfg.var_draws} draws every "
        f"{cfg.var_every} iterations, averaged over the run. {md.seed_note(results)}",
        "",
        md.table(
            [
                "estimator",
                "final E[f]",
                "gap to optimum",
                "p = σ(θ)",
                "mean grad. variance",
                "f-evals / step",
                "ms / step",
                "diverged",
            ],
            rows,
        ),
        "",
    ]
    if md._plots_available():
        from discograd.report import plots

        rec = Records(run)
        loss = {
            label: curve(rec, md.phases("toy", label, r), "expected_loss")
            for label, r in results.items()
        }
        variance = {
            label: curve(rec, md.phases("toy", label, r), "grad_variance")
            for label, r in results.items()
        }
        plots.curves(
            run.path / "toy_loss.png", [("iteration", loss)], ylabel="E[f]", title="Expected loss"
        )
        plots.curves(
            run.path / "toy_grad_variance.png",
            [("iteration", variance)],
            ylabel="trace of gradient covariance",
            title="Gradient variance",
            logy=True,
        )
        band = "Lines: mean over seeds; bands: min–max across seeds."
        text += [
            *md.img("toy_loss.png", "expected loss vs iteration", band),
            *md.img("toy_grad_variance.png", "gradient variance vs iteration", band),
        ]
    else:
        text += [md.PLOTS_SKIPPED, ""]
    sampled = {k: v for k, v in md.finished(results).items() if not md.is_exact(k)}
    line = md.compare(sampled, "mean_grad_variance", "mean gradient variance")
    summary = [f"Toy ({cfg.problem}): {line}"] if line else []
    return Section("\n".join(text), summary + md.divergence_lines("toy", results))
