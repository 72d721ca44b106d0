"""Estimators by name."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical

from discograd import estimators as E
from discograd.baselines import EMA
from discograd.estimators.registry import ESTIMATORS, canonical, make, parse_spec


def test_every_name_builds_its_class():
    for name, cls_name in ESTIMATORS.items():
        est = make(name)
        assert type(est).__name__ == cls_name
    assert isinstance(make("reinforce_ema:decay=0.5").baseline, EMA)
    assert make("rloo:n_samples=7").n_samples == 7
    assert make("GUMBEL-SOFTMAX:tau=0.3").tau == pytest.approx(0.3)


def test_parse_and_canonical():
    assert parse_spec("rebar:eta=1.5,tau=0.25,learn=false") == (
        "rebar",
        {"eta": 1.5, "tau": 0.25, "learn": False},
    )
    assert canonical("gumbel_rao: tau=0.5 , n_samples=10") == "gumbel_rao:n_samples=10,tau=0.5"
    assert canonical("arsm") == "arsm"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("nope", "unknown estimator 'nope'"),
        ("rloo:n_samples", "use key=value"),
        ("rloo:k=3", "unknown hyper-parameter 'k' for rloo; it takes: n_samples"),
        ("rloo:n_samples=1", "n_samples"),
        ("gumbel_softmax:tau=-1", "tau"),
        ("reinmax:tau=0.5", "tau"),
        ("", "non-empty"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        make(spec)


def test_made_estimators_run():
    theta = torch.zeros(4, requires_grad=True)
    for name in ("rloo:n_samples=3", "arsm", "gumbel_softmax:tau=0.5"):
        out = make(name)(lambda z: z[..., -1], Categorical(logits=theta))
        assert out.loss.shape == ()
    assert E.Exact is type(make("exact"))
