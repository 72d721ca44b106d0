"""The top-k feature-selection section: test accuracy with the k learned pixels, per method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from discograd.experiments.runner import RunDir
from discograd.report import markdown as md
from discograd.report.markdown import Results, Section, divergence

__all__ = ["section"]

PLOT = "topk_accuracy.png"


def section(run: RunDir, results: Results, cfg: Any) -> Section:
    """Test accuracy (top-k of the learned logits) of each method for each k."""
    dataset = md.dataset_name(cfg)
    keys = [f"test_accuracy_k{k}" for k in cfg.ks]
    text = [
        "## Learning to select k pixels (top-k)",
        "",
        f"{dataset}: a selector with logits over the pixels and a linear softmax classifier "
        f"on the masked image, trained jointly for {cfg.steps} steps (batch {cfg.batch_size}, "
        f"Adam at {cfg.lr}); the mask is drawn by the method during training "
        f"(`relaxed_subset` and `st_topk` at temperature {cfg.temperature}) and is the top-k "
        f"of the logits at test time (Xie & Ermon 2019 style). {md.seed_note(results)}",
        "",
    ]
    done = md.finished(results)
    cols = {key: md.column(done, key, scale=100, decimals=1) for key in keys}
    rows = [
        [k, *(cols[key][k] + " %" for key in keys)]
        if divergence(r) is None
        else [k, f"diverged at {divergence(r)}", *([None] * (len(keys) - 1))]
        for k, r in results.items()
    ]
    header = ["method", *(f"test accuracy, k = {k}" for k in cfg.ks)]
    text += [md.table(header, rows), ""]
    if md._plots_available():
        _plot(run.path / PLOT, done, cfg.ks)
        text += md.img(
            PLOT,
            "top-k test accuracy against k",
            "Points: mean over seeds; bars: ± one standard error.",
        )
    else:
        text += [md.PLOTS_SKIPPED, ""]
    summary = [
        f"Top-k pixel selection on {dataset}, k = {k}: {line}"
        for k, key in zip(cfg.ks, keys, strict=True)
        if (line := md.compare(done, key, "test accuracy (%)", lower=False, scale=100, decimals=1))
    ]
    summary += md.divergence_lines("top-k selection", results)
    return Section("\n".join(text), summary)


def _plot(path: Path, results: Results, ks: tuple[int, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    xs = sorted(ks)
    for i, (label, r) in enumerate(results.items()):
        mean = [100 * float(r.get(f"test_accuracy_k{k}") or float("nan")) for k in xs]
        se = [100 * float(md.se_of(r, f"test_accuracy_k{k}") or 0.0) for k in xs]
        # a small offset per method keeps overlapping error bars readable
        shift = [x * (1 + 0.03 * (i - (len(results) - 1) / 2)) for x in xs]
        ax.errorbar(shift, mean, yerr=se, marker="o", capsize=3, label=label, color=f"C{i % 10}")
    ax.set_xscale("log")
    ax.minorticks_off()  # only the configured k are labelled
    ax.set_xticks(xs)
    ax.set_xticklabels([str(k) for k in xs])
    ax.set_xlabel("k (pixels kept)")
    ax.set_ylabel("test accuracy (%), top-k mask")
    ax.set_title("Learning to select k pixels: mean ± s.e. over seeds")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
