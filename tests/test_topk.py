"""The top-k feature-selection task: exact k-hot masks, the ST top-k backward, CLI run, resume."""

from __future__ import annotations

import json

import pytest
import torch

import discograd.cli as cli
from discograd.errors import ConfigError
from discograd.experiments.topk import (
    TOPK_METHODS,
    Selector,
    TopKConfig,
    TopKTask,
    st_topk_mask,
    top_k_mask,
)
from model_helpers import (
    assert_kill_per_phase_resumes_exactly,
    run_task,
    tiny_data,
)


def small_cfg(**kw) -> TopKConfig:
    base = dict(
        ks=(2, 5),
        batch_size=12,
        masks=4,
        steps=8,
        lr=0.05,
        log_every=2,
        eval_every=4,
        checkpoint_every=3,
    )
    base.update(kw)
    return TopKConfig(**base)


def _khot_check(z: torch.Tensor, k: int) -> None:
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    assert (z.detach().sum(-1) == k).all()


@pytest.mark.parametrize("method", TOPK_METHODS)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_training_masks_are_exactly_k_hot_for_the_hard_methods(method, k):
    """Every mask the classifier sees is k-hot (relaxed_subset: sums to k, in [0, k])."""
    D, n = 16, 6
    torch.manual_seed(0)
    sel = Selector(D, 3)
    with torch.no_grad():
        sel.theta.copy_(torch.randn(D))
        sel.theta[0] = 5.0  # a dominant item must not be picked twice
    seen: list[torch.Tensor] = []
    ce = sel.ce

    def spy(x, y, z):
        seen.append(z)
        return ce(x, y, z)

    sel.ce = spy  # type: ignore[method-assign]
    state = type("S", (), {"method": method})()
    cfg = type("C", (), {"masks": n, "temperature": 0.5})()
    ctx = type("Ctx", (), {"config": cfg, "stream": lambda self, name: gen})()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(n * 2, D), torch.arange(n * 2) % 3
    loss = TopKTask()._loss(state, sel, k, x, y, ctx)  # type: ignore[arg-type]
    assert loss.shape == (n,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert sel.theta.grad is not None and torch.isfinite(sel.theta.grad).all()
    [z] = seen
    assert z.shape == (n, D)
    if method == "relaxed_subset":
        torch.testing.assert_close(z.detach().sum(-1), torch.full((n,), float(k)))
        assert (z.detach() >= 0).all()
    else:
        _khot_check(z, k)
    _khot_check(top_k_mask(sel.theta.detach(), k), k)


def test_st_topk_backward_is_the_jacobian_of_k_softmax():
    D, k, n, tau = 9, 3, 5, 0.7
    theta = torch.randn(D, dtype=torch.float64, requires_grad=True)
    z = st_topk_mask(theta, k, n, tau, torch.Generator().manual_seed(2))
    _khot_check(z, k)
    w = torch.randn(n, D, dtype=torch.float64)
    (g,) = torch.autograd.grad((z * w).sum(), theta)
    theta2 = theta.detach().clone().requires_grad_(True)
    soft = k * torch.softmax(theta2 / tau, -1)
    (g_ref,) = torch.autograd.grad((soft * w.sum(0)).sum(), theta2)
    torch.testing.assert_close(g, g_ref)


def test_top_k_mask_keeps_the_largest_logits():
    theta = torch.tensor([0.1, 3.0, -2.0, 2.5, 0.0])
    assert top_k_mask(theta, 2).tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_run_topk_and_resume_equivalence(tmp_path):
    data = tiny_data()
    cfg = small_cfg()
    res_full = run_task(TopKTask(), cfg, tmp_path / "full", data=data)
    assert list(res_full) == list(TOPK_METHODS)
    for summary in res_full.values():
        for k in cfg.ks:
            assert 0.0 <= summary[f"test_accuracy_k{k}"] <= 1.0
            assert len(summary[f"pixels_k{k}"]) == k
    # kill every phase once, right after its checkpoint at step 6
    assert_kill_per_phase_resumes_exactly(
        TopKTask, cfg, tmp_path, data, res_full, phases=len(cfg.methods), interrupt_at=6
    )


def test_topk_cli_writes_results_and_the_plot(tmp_path, capsys):
    out = tmp_path / "topk"
    rc = cli.main(
        [
            "topk", "--steps", "4", "--ks", "3", "8", "--batch-size", "20", "--masks", "4",
            "--eval-every", "2", "--log-every", "2", "--checkpoint-every", "2", "--seeds", "2",
            "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    for name in ("config.json", "metrics.jsonl", "results.json", "report.md", "topk_accuracy.png"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())["topk"]
    assert set(res) == set(TOPK_METHODS)
    assert res["simple"]["n"]["test_accuracy_k8"] == 2
    assert res["simple"]["se"]["test_accuracy_k8"] is not None
    report = (out / "report.md").read_text()
    assert "Learning to select k pixels" in report and "topk_accuracy.png" in report
    printed = capsys.readouterr().out
    assert "topk results" in printed and "test_accuracy_k3" in printed


@pytest.mark.parametrize(
    ("field", "value"),
    [("ks", ()), ("ks", (0,)), ("ks", (3, 3)), ("masks", 7), ("methods", ("arm",)),
     ("methods", ()), ("temperature", 0.0)],
)  # fmt: skip
def test_bad_config_is_a_config_error(field, value):
    with pytest.raises(ConfigError, match=field):
        small_cfg(**{field: value}).validate()


def test_k_larger_than_the_pixels_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="k=17"):
        run_task(TopKTask(), small_cfg(ks=(17,)), tmp_path, data=tiny_data())


def test_help_has_an_example_and_every_flag_its_default(capsys):
    import argparse

    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    p = sub.choices["topk"]
    settings = p.get_default("config_flags")
    assert {"seeds", "ks", "methods", "masks", "temperature"} <= set(settings)
    for action in p._actions:
        if action.dest in settings:
            assert action.help and "(default: " in action.help, action.option_strings
    with pytest.raises(SystemExit) as exc:
        cli.main(["topk", "--help"])
    assert exc.value.code == 0 and "example:" in capsys.readouterr().out
