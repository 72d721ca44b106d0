"""The published Fashion-MNIST protocols: presets, the model options they set, the
gradient-variance metric, exact resumption and the multi-sample hook.

Everything runs on small data made here (random images, a synthetic IDX folder):
nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent

import discograd.cli as cli
from discograd.data.idx import write_idx
from discograd.errors import ConfigError
from discograd.estimators import registry
from discograd.estimators.base import Estimate, Estimator
from discograd.experiments import RunDir
from discograd.experiments.common import ChainedOptimizer
from discograd.experiments.config import build, read_file, to_dict
from discograd.experiments.images import load_data
from discograd.experiments.protocols import PROTOCOLS
from discograd.experiments.vae import GradientVariance, VAEConfig, VAETask, build_model
from discograd.models import BernoulliVAE
from model_helpers import Interrupted, run_task, tiny_data, without_timing

# A protocol-shaped config at toy size: every option the protocols set, on 4x4 images.
SMALL = dict(
    latent="bernoulli", n_latent=3, hidden=(5,), activation="leaky_relu_0.3", batch_size=10,
    steps=12, log_every=3, eval_every=4, checkpoint_every=3, eval_samples=3, iw_examples=10,
    binarization="dynamic", kl="estimated", prior="learned", prior_lr=1e-2, center_input=True,
    init_output_bias=True, train_eval_every=4, test_every=6, grad_var_every=2,
    grad_var_decay=0.9, estimators=("disarm", "rloo:n_samples=2"),
)  # fmt: skip


def small(**changes: Any) -> VAEConfig:
    return dataclasses.replace(VAEConfig(**SMALL), **changes)  # type: ignore[arg-type]


# ------------------------------------------------------------------ presets
def test_presets_hold_the_official_settings_and_every_value_can_be_overridden():
    disarm = build(VAEConfig, {"protocol": "disarm"})
    assert (disarm.batch_size, disarm.lr, disarm.prior, disarm.prior_lr) == (
        50,
        1e-4,
        "learned",
        1e-2,
    )
    assert disarm.hidden == () and disarm.n_latent == 200 and disarm.kl == "estimated"
    assert (disarm.dataset, disarm.validation, disarm.binarization) == (
        "fashion-mnist", 10000, "dynamic",
    )  # fmt: skip
    assert disarm.center_input and disarm.init_output_bias
    assert disarm.estimators == ("rloo:n_samples=2", "arm", "disarm", "relax")
    assert (disarm.eval_samples, disarm.iw_examples, disarm.steps) == (100, 10000, 10**6)
    rodeo = build(VAEConfig, {"protocol": "rodeo"})
    assert (rodeo.batch_size, rodeo.lr, rodeo.prior, rodeo.hidden) == (
        100,
        3e-4,
        "uniform",
        (200, 200),
    )
    assert rodeo.activation == "leaky_relu_0.3" and not rodeo.center_input
    assert rodeo.estimators[-1] == "relax" and "rodeo:n_samples=2" in rodeo.estimators
    k3 = build(VAEConfig, {"protocol": "rodeo-k3"})
    assert all(s == "relax" or s.endswith("n_samples=3") for s in k3.estimators)
    multi = build(VAEConfig, {"protocol": "disarm-multisample"})
    assert multi.estimators == ("vimco:n_samples=2", "local_disarm:n_pairs=1")
    # defaults < protocol < file < flags < --set: the user's layers win
    mine = build(VAEConfig, {"protocol": "disarm", "batch_size": 7}, {"hidden": "200,200"})
    assert (mine.batch_size, mine.hidden, mine.lr) == (7, (200, 200), 1e-4)
    # without a protocol nothing changes
    assert build(VAEConfig) == VAEConfig() and VAEConfig().protocol == "none"
    with pytest.raises(ConfigError, match="protocol must be one of"):
        build(VAEConfig, {"protocol": "dismarm"})


def test_help_lists_every_protocol_with_its_values(capsys):
    with pytest.raises(SystemExit):
        cli.main(["vae", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse's wrapping
    for name in PROTOCOLS:
        assert f"{name}:" in text
    assert "batch_size=50" in text and "batch_size=100" in text and "prior_lr=0.01" in text


def write_idx_folder(folder: Path, n_train: int = 40, n_test: int = 12) -> torch.Tensor:
    """An MNIST-format folder of 4x4 images whose pixel 0 is the image's index."""
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_train + n_test, 4, 4), generator=gen, dtype=torch.uint8)
    images[:, 0, 0] = torch.arange(n_train + n_test, dtype=torch.uint8)
    labels = torch.arange(n_train + n_test, dtype=torch.uint8) % 10
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:n_train])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:n_train])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images[n_train:])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[n_train:])
    return images.reshape(len(images), -1).float() / 255


def test_validation_is_the_last_n_training_images_and_the_test_set_is_t10k(tmp_path):
    pixels = write_idx_folder(tmp_path / "idx")
    data = load_data(VAEConfig(dataset=str(tmp_path / "idx"), validation=15))
    assert (len(data.train), len(data.valid), len(data.test)) == (25, 15, 12)
    assert torch.equal(data.train, pixels[:25]) and torch.equal(data.valid, pixels[25:40])
    assert torch.equal(data.test, pixels[40:])
    with pytest.raises(ConfigError, match="validation=40"):
        load_data(VAEConfig(dataset=str(tmp_path / "idx"), validation=40))


def test_a_protocol_run_records_its_config_and_is_accepted_back(tmp_path):
    write_idx_folder(tmp_path / "idx")
    tiny = [
        "vae", "--protocol", "disarm", "--dataset", str(tmp_path / "idx"), "--validation", "10",
        "--n-latent", "3", "--batch-size", "10", "--steps", "4", "--estimators", "disarm",
        "--set", "eval_every=2", "--set", "train_eval_every=2", "--set", "test_every=2",
        "--set", "grad_var_every=2", "--set", "iw_examples=5", "--set", "eval_samples=3",
        "--set", "log_every=2", "--set", "checkpoint_every=2", "--quiet",
    ]  # fmt: skip
    assert cli.main([*tiny, "--out", str(tmp_path / "a")]) == 0
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["protocol"] == "disarm" and saved["prior_lr"] == 0.01 and saved["lr"] == 1e-4
    assert saved["batch_size"] == 10 and saved["n_latent"] == 3  # the flags won
    for key in ("train_set_neg_elbo", "test_iw_bound", "grad_var"):  # the protocols' curves
        assert (tmp_path / "a" / f"vae_{key}.png").stat().st_size > 0
    values = read_file(tmp_path / "a" / "config.json")
    values.pop("command")
    cfg = build(VAEConfig, values)
    assert to_dict(cfg) == {k: v for k, v in saved.items() if k != "command"}
    # The file as --config gives the same run (the same records, timing aside).
    argv = ["vae", "--config", str(tmp_path / "a" / "config.json"), "--quiet"]
    assert cli.main([*argv, "--out", str(tmp_path / "b")]) == 0
    a, b = (without_timing(RunDir(tmp_path / d, saved).records()) for d in ("a", "b"))
    assert a == b and any("grad_var" in r for r in a) and any("test_iw_bound" in r for r in a)


# ------------------------------------------------------------------- model
def test_centred_input_and_output_bias_from_the_training_mean():
    torch.manual_seed(0)
    mean = torch.tensor([0.0, 0.0005, 0.3, 0.9995, 1.0, 0.5])
    plain = build_model(small(hidden=(), center_input=False, init_output_bias=False), 6)
    torch.manual_seed(0)
    model = build_model(small(hidden=()), 6, mean)
    x = torch.rand(4, 6)
    # same weights; the encoder sees x - mean
    assert torch.allclose(model.posterior(x).base_dist.logits, plain.encoder(x - mean))
    p = mean.clamp(0.001, 0.999)
    assert torch.allclose(model.decoder[-1].bias, torch.log(p / (1 - p)))
    assert float(model.decoder[-1].bias[0].detach()) == pytest.approx(
        math.log(0.001 / 0.999), rel=1e-6
    )
    only_bias = build_model(small(hidden=(), center_input=False), 6, mean)
    assert only_bias.input_mean is None
    with pytest.raises(ValueError, match="training mean"):
        build_model(small(), 6)


def test_the_task_centres_on_the_mean_of_the_training_images(tmp_path):
    data = tiny_data()
    seen = {}

    class Spy(VAETask):
        def setup(self, config, data, ctx, estimator):
            state = super().setup(config, data, ctx, estimator)
            seen["mean"] = state.model.input_mean.clone()
            seen["bias"] = state.model.decoder[-1].bias.detach().clone()
            return state

    run_task(Spy(), small(steps=1, estimators=("disarm",)), tmp_path, data=data)
    # dynamic binarisation: the grey levels, the mean of every draw
    assert torch.allclose(seen["mean"], data.train.mean(0))
    p = data.train.mean(0).clamp(0.001, 0.999)
    assert torch.allclose(seen["bias"], torch.log(p) - torch.log1p(-p), atol=1e-6)


def test_the_learned_prior_trains_by_its_own_sgd_and_a_uniform_prior_not_at_all(tmp_path):
    seen: dict[str, Any] = {}

    class Spy(VAETask):
        def optimizer(self, config, params):
            seen["opt"] = opt = super().optimizer(config, params)
            return opt

        def step(self, state, step, ctx):
            seen["before"] = state.model.prior_logits.detach().clone()
            seen["enc_before"] = state.model.encoder[0].weight.detach().clone()
            result = super().step(state, step, ctx)

            def grab() -> None:
                grad = state.model.prior_logits.grad
                seen["grad"] = None if grad is None else grad.clone()

            return dataclasses.replace(result, after_backward=grab)

        def finish(self, state, ctx):
            seen["after"] = state.model.prior_logits.detach().clone()
            seen["enc_after"] = state.model.encoder[0].weight.detach().clone()
            return super().finish(state, ctx)

    cfg = small(steps=1, estimators=("disarm",), prior_lr=0.5, lr=1e-3)
    run_task(Spy(), cfg, tmp_path / "a", data=tiny_data())
    opt = seen["opt"]
    assert isinstance(opt, ChainedOptimizer)
    adam, sgd = opt.parts
    assert isinstance(adam, torch.optim.Adam) and isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["lr"] == 0.5 and adam.param_groups[0]["lr"] == 1e-3
    # the prior gets a gradient through the cost (the full ELBO) and one plain SGD step
    assert seen["grad"].abs().sum() > 0
    assert torch.allclose(seen["after"], seen["before"] - 0.5 * seen["grad"])
    # Adam's first step moves each weight by about lr (sign of its gradient)
    moved = (seen["enc_after"] - seen["enc_before"]).abs()
    assert moved.max() <= 1e-3 * 1.001 and moved.max() > 0.5e-3
    # no prior_lr: one Adam for everything; a uniform prior is no parameter at all
    run_task(Spy(), dataclasses.replace(cfg, prior_lr=None), tmp_path / "b", data=tiny_data())
    assert isinstance(seen["opt"], torch.optim.Adam)
    run_task(Spy(), dataclasses.replace(cfg, prior="uniform"), tmp_path / "c", data=tiny_data())
    assert isinstance(seen["opt"], torch.optim.Adam)
    assert torch.equal(seen["after"], torch.zeros(3))


def exact_grads(model: BernoulliVAE, x: torch.Tensor, kl: str) -> tuple[float, list[torch.Tensor]]:
    from discograd.estimators import Exact

    model.zero_grad()
    obj = model.objective(x, Exact(), kl=kl)  # type: ignore[arg-type]
    obj.loss.backward()
    return float(obj.neg_elbo.mean()), [p.grad.clone() for p in model.parameters()]


def test_the_full_elbo_as_the_cost_has_the_value_and_gradient_of_the_analytic_kl_one():
    # Enumerating z (Exact), f = log q - log p(x, z) must give the -ELBO of the analytic
    # KL and the same gradient for every parameter: encoder (log q's pathwise part, left
    # out, has mean zero), decoder and the learned prior (pathwise through f).
    torch.manual_seed(1)
    model = BernoulliVAE(6, 4, (5,), "leaky_relu_0.3", "learned").double()
    with torch.no_grad():
        model.prior_logits.normal_()
    x = (torch.rand(7, 6, dtype=torch.float64) < 0.5).double()
    value_a, grads_a = exact_grads(model, x, "analytic")
    value_e, grads_e = exact_grads(model, x, "estimated")
    assert value_e == pytest.approx(value_a, rel=1e-12)
    for a, e in zip(grads_a, grads_e, strict=True):
        assert torch.allclose(a, e, rtol=1e-10, atol=1e-12)
    assert grads_e[-1].abs().sum() > 0  # the prior's logits


def test_one_sample_full_elbo_is_log_q_minus_log_joint():
    torch.manual_seed(2)
    model = BernoulliVAE(6, 4, (), "leaky_relu_0.3", "learned")
    x = (torch.rand(5, 6) < 0.5).float()
    got = model.neg_elbo(x, torch.Generator().manual_seed(3), kl="estimated")
    gen = torch.Generator().manual_seed(3)
    q = model.posterior(x)
    z = (torch.rand(q.base_dist.probs.shape, generator=gen) < q.base_dist.probs).float()
    logits = model.decoder(z)
    log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    log_pz = Independent(Bernoulli(logits=model.prior_logits), 1).log_prob(z)
    assert torch.allclose(got, q.log_prob(z) - log_pz - log_px, atol=1e-5)


# ------------------------------------------------------- gradient variance
def test_gradient_variance_matches_a_hand_computation(tmp_path):
    grads: list[torch.Tensor] = []

    class Spy(VAETask):
        def step(self, state, step, ctx):
            result = super().step(state, step, ctx)
            update = result.after_backward

            def record() -> None:
                enc = [p.grad.reshape(-1) for p in state.model.encoder.parameters()]
                grads.append(torch.cat(enc).double())
                update()

            return dataclasses.replace(result, after_backward=record)

    cfg = small(estimators=("disarm",))
    run_task(Spy(), cfg, tmp_path, data=tiny_data())
    logged = {
        r["step"]: r["grad_var"]
        for r in RunDir(tmp_path, dataclasses.asdict(cfg)).records("vae/disarm/seed0")
        if "grad_var" in r
    }
    assert sorted(logged) == [0, 2, 4, 6, 8, 10, 12]
    m = s = torch.zeros_like(grads[0])
    for step in range(cfg.steps + 1):
        if step in logged:  # logged before the step: the EMAs of the steps before it
            assert logged[step] == pytest.approx(float((s - m * m).mean()), rel=1e-5, abs=1e-12)
        if step < cfg.steps:
            g = grads[step]
            m, s = 0.9 * m + 0.1 * g, 0.9 * s + 0.1 * g * g
    assert logged[12] > 0


def test_gradient_variance_state_round_trips():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = GradientVariance([p], 0.5)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    ema.update()
    copy = GradientVariance([p], 0.5)
    copy.load_state_dict(ema.state_dict())
    p.grad = torch.tensor([3.0, 2.0, 1.0])
    ema.update()
    copy.update()
    assert copy.value() == ema.value()
    # m = (0.5*1+... ) by hand: m = 0.25*[1,2,3] + 0.5*[3,2,1], s likewise with squares
    g1, g2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])
    m, s = 0.25 * g1 + 0.5 * g2, 0.25 * g1**2 + 0.5 * g2**2
    assert ema.value() == pytest.approx(float((s - m * m).mean()))


# ------------------------------------------------------------------ resume
def test_a_protocol_run_resumed_at_every_checkpoint_logs_what_an_uninterrupted_one_does(tmp_path):
    cfg = small()
    data = tiny_data()
    straight = run_task(VAETask(), cfg, tmp_path / "a", data=data)
    stops = 0
    while True:
        try:
            resumed = run_task(VAETask(), cfg, tmp_path / "b", data=data, interrupt_at=3)
            break
        except Interrupted:
            stops += 1
            assert stops < 20
    assert stops >= 3
    assert without_timing(straight) == without_timing(resumed)
    a, b = (without_timing(RunDir(tmp_path / d, dataclasses.asdict(cfg)).records()) for d in "ab")
    assert a == b
    keys = {k for r in a for k in r}
    assert {"grad_var", "train_set_neg_elbo", "test_iw_bound", "valid_neg_elbo"} <= keys


# ------------------------------------------------------------ multi-sample
class KSampleReinforce(Estimator):
    """REINFORCE on the K-sample bound L = log (1/K) sum_k w(z_k), K independent samples.

    Surrogate: -(L + stop(L) * sum_k log q(z_k)); its gradient is -(dL + L d sum log q),
    unbiased for -d E[L]. A deliberately plain multi-sample estimator for the hook.
    """

    supports = frozenset({"bernoulli"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False
    multi_sample = True

    def __init__(self, n_samples: int = 3, *, generator: torch.Generator | None = None) -> None:
        super().__init__(generator=generator)
        self.n_samples = n_samples

    def forward(self, log_weight, q, *, generator=None):  # type: ignore[override]
        probs = q.base_dist.probs.detach()
        u = torch.rand((self.n_samples, *probs.shape), generator=generator, dtype=probs.dtype)
        z = (u < probs).to(probs.dtype)
        bound = torch.logsumexp(log_weight(z), 0) - math.log(self.n_samples)
        score = q.log_prob(z).sum(0)
        loss = -(bound + bound.detach() * (score - score.detach()))
        return Estimate(loss, -bound.detach(), float(self.n_samples))


@pytest.fixture
def ksample():
    registry.register("test_ksample_reinforce")(KSampleReinforce)
    yield "test_ksample_reinforce"
    registry.unregister("test_ksample_reinforce")


def test_vae_trains_a_multi_sample_estimator_on_the_k_sample_bound(tmp_path, ksample):
    cfg = small(estimators=(f"{ksample}:n_samples=3", f"{ksample}:n_samples=2"))
    res = run_task(VAETask(), cfg, tmp_path, data=tiny_data())
    assert res[f"{ksample}:n_samples=3"]["evals_per_step"] == 3
    records = RunDir(tmp_path, dataclasses.asdict(cfg)).records(f"vae/{ksample}:n_samples=3/seed0")
    assert all(r["train_neg_elbo"] > 0 for r in records if "train_neg_elbo" in r)
    with pytest.raises(ConfigError, match="needs kl='estimated'"):
        dataclasses.replace(cfg, kl="analytic").validate()
    with pytest.raises(ConfigError, match="run them apart"):  # one objective per run
        dataclasses.replace(cfg, estimators=(f"{ksample}:n_samples=3", "disarm")).validate()


def test_the_multi_sample_hook_gives_an_unbiased_gradient_of_the_k_sample_bound(ksample):
    torch.manual_seed(4)
    model = BernoulliVAE(4, 2, (), "leaky_relu_0.3", "learned").double()
    with torch.no_grad():
        model.prior_logits.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    params = list(model.parameters())

    # Exact gradient of -E[log (w1 + w2)/2] over all 4 x 4 pairs of z, written out.
    zs = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    a = model.encoder(x)[0]
    log_q = (zs * F.logsigmoid(a) + (1 - zs) * F.logsigmoid(-a)).sum(-1)
    pr = model.prior_logits
    log_p = (zs * F.logsigmoid(pr) + (1 - zs) * F.logsigmoid(-pr)).sum(-1)
    log_px = -F.binary_cross_entropy_with_logits(
        model.decoder(zs), x.expand(4, -1), reduction="none"
    ).sum(-1)
    log_w = log_px + log_p - log_q
    pair = torch.logaddexp(log_w[:, None], log_w[None, :]) - math.log(2)
    weight = (log_q[:, None] + log_q[None, :]).exp()
    exact = torch.autograd.grad(-(weight * pair).sum(), params)
    exact_flat = torch.cat([g.reshape(-1) for g in exact])

    est = registry.make(f"{ksample}:n_samples=2")
    gen = torch.Generator().manual_seed(5)
    chunks = []
    for _ in range(30):
        xs = x.expand(4000, -1)
        obj = model.objective(xs, est, kl="estimated", generator=gen)
        grads = torch.autograd.grad(obj.loss, params)
        chunks.append(torch.cat([g.reshape(-1) for g in grads]))
    draws = torch.stack(chunks)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    fixed = se == 0  # weights of the input pixel that is 0: no gradient at all
    assert fixed.any() and torch.equal(exact_flat[fixed], torch.zeros_like(exact_flat[fixed]))
    z = (mean - exact_flat)[~fixed] / se[~fixed]
    print("z of the multi-sample hook's gradient:", [round(float(v), 2) for v in z])
    assert z.abs().max() < 4.5, z
    # the value is the negative 2-sample bound: its mean is -E[L]
    values = model.objective(x.expand(40000, -1), est, kl="estimated", generator=gen).neg_elbo
    expected = float((weight * -pair).sum().detach())
    assert float(values.mean()) == pytest.approx(expected, rel=2e-3)


# ------------------------------------------------------------------ coupled
def test_the_coupled_presets_hold_the_official_categorical_settings():
    cfg = build(VAEConfig, {"protocol": "coupled"})
    cfg.validate()
    assert (cfg.latent, cfg.n_latent, cfg.n_categories) == ("categorical", 20, 10)
    assert (cfg.hidden, cfg.activation) == ((512, 256), "leaky_relu")  # LeakyReLU(0.2)
    assert (cfg.dataset, cfg.validation, cfg.binarization) == ("fashion-mnist", 10000, "dynamic")
    assert (cfg.lr, cfg.prior, cfg.prior_lr, cfg.batch_size) == (1e-4, "learned", 1e-2, 200)
    assert cfg.kl == "estimated" and cfg.center_input and cfg.init_output_bias
    assert (cfg.eval_samples, cfg.iw_examples, cfg.steps) == (100, 10000, 10**6)
    assert cfg.train_eval_every == 1000 and cfg.grad_var_every == 1000
    assert cfg.estimators == (
        "rloo:n_samples=10", "arsm", "ars_plus", "arsm_plus",
        "categorical_disarm:importance_weighted=True", "carms", "indecater",
        "unordered_set", "gumbel_softmax", "reinmax",
    )  # fmt: skip
    # categorical DisARM as the README runs it: stick-breaking, importance-weighted, ascending
    disarm = registry.make(cfg.estimators[4])
    assert (disarm.encoding, disarm.importance_weighted, disarm.order) == (
        "stick_breaking", True, "ascending",
    )  # fmt: skip
    big = build(VAEConfig, {"protocol": "coupled-32x16"})
    big.validate()
    assert (big.n_latent, big.n_categories) == (32, 16)
    assert big.estimators[0] == "rloo:n_samples=16" and big.estimators[1:] == cfg.estimators[1:]
    # every value can be overridden; the Bernoulli protocols keep their latents
    mine = build(VAEConfig, {"protocol": "coupled", "batch_size": 7}, {"estimators": "rloo"})
    assert (mine.batch_size, mine.estimators, mine.lr) == (7, ("rloo",), 1e-4)
    assert build(VAEConfig, {"protocol": "disarm"}).latent == "bernoulli"


COUPLED_SMALL = dict(
    SMALL, latent="categorical", n_latent=3, n_categories=4, hidden=(6, 5),
    activation="leaky_relu", steps=3, log_every=1, eval_every=3, checkpoint_every=3,
    train_eval_every=3, test_every=3, grad_var_every=1, batch_size=5,
)  # fmt: skip


@pytest.mark.parametrize("spec", PROTOCOLS["coupled"]["estimators"])
def test_every_coupled_estimator_trains_the_categorical_model_a_few_steps(tmp_path, spec):
    cfg = dataclasses.replace(VAEConfig(**COUPLED_SMALL), estimators=(spec,))
    cfg.validate()
    res = run_task(VAETask(), cfg, tmp_path, data=tiny_data())[spec]
    assert math.isfinite(res["test_iw_bound"]) and math.isfinite(res["test_neg_elbo"])
    records = RunDir(tmp_path, dataclasses.asdict(cfg)).records(f"vae/{spec}/seed0")
    steps = [r for r in records if "train_neg_elbo" in r]
    assert len(steps) == 3 and all(math.isfinite(r["train_neg_elbo"]) for r in steps)
    variances = [r["grad_var"] for r in records if "grad_var" in r]
    assert len(variances) == 4 and all(math.isfinite(v) for v in variances)
    assert variances[-1] > 0  # the encoder got a gradient


def test_the_categorical_prior_trains_by_its_own_sgd(tmp_path):
    seen: dict[str, Any] = {}

    class Spy(VAETask):
        def optimizer(self, config, params):
            seen["opt"] = opt = super().optimizer(config, params)
            return opt

        def step(self, state, step, ctx):
            seen["before"] = state.model.prior_logits.detach().clone()
            result = super().step(state, step, ctx)

            def grab() -> None:
                seen["grad"] = state.model.prior_logits.grad.clone()

            return dataclasses.replace(result, after_backward=grab)

        def finish(self, state, ctx):
            seen["after"] = state.model.prior_logits.detach().clone()
            return super().finish(state, ctx)

    cfg = dataclasses.replace(
        VAEConfig(**COUPLED_SMALL), steps=1, estimators=("rloo:n_samples=4",), prior_lr=0.5
    )
    run_task(Spy(), cfg, tmp_path, data=tiny_data())
    adam, sgd = seen["opt"].parts
    assert isinstance(adam, torch.optim.Adam) and isinstance(sgd, torch.optim.SGD)
    assert seen["before"].shape == (3, 4) and seen["grad"].abs().sum() > 0
    assert torch.allclose(seen["after"], seen["before"] - 0.5 * seen["grad"])
    # softmax logits: a gradient of log p(z) sums to zero over the categories
    assert torch.allclose(seen["grad"].sum(-1), torch.zeros(3), atol=1e-6)


def test_the_categorical_full_elbo_cost_has_the_analytic_kl_gradient():
    from discograd.models import CategoricalVAE

    torch.manual_seed(3)
    model = CategoricalVAE(6, 2, 3, (5,), "leaky_relu", "learned").double()
    with torch.no_grad():
        model.prior_logits.normal_()
    x = (torch.rand(4, 6, dtype=torch.float64) < 0.5).double()
    value_a, grads_a = exact_grads(model, x, "analytic")  # type: ignore[arg-type]
    value_e, grads_e = exact_grads(model, x, "estimated")  # type: ignore[arg-type]
    assert value_e == pytest.approx(value_a, rel=1e-12)
    for a, e in zip(grads_a, grads_e, strict=True):
        assert torch.allclose(a, e, rtol=1e-10, atol=1e-12)
    assert grads_e[-1].abs().sum() > 0  # the prior's logits


def test_relaxed_estimators_evaluate_the_full_elbo_at_their_relaxed_sample():
    # kl="estimated" hands a relaxed estimator the cost whose log q and log p are the
    # discrete ones at the relaxed point (sum_k z_k log pi_k): ReinMax's forward sample
    # is one-hot, so its value is the discrete -ELBO of that sample, and the encoder's
    # gradient through log q (logits detached) is the relaxed one of E_q[log q].
    from discograd.estimators import GumbelSoftmax, ReinMax
    from discograd.models import CategoricalVAE

    torch.manual_seed(5)
    model = CategoricalVAE(6, 2, 3, (5,), "leaky_relu", "learned")
    x = (torch.rand(4, 6) < 0.5).float()
    seen = {}

    def spy(est):
        inner = est.forward

        def forward(f, q, *, generator=None):
            def g(z):
                seen["z"] = z.detach()
                return f(z)

            return inner(g, q, generator=generator)

        est.forward = forward
        return est

    out = model.objective(x, spy(ReinMax()), kl="estimated", generator=torch.Generator())
    z = seen["z"]
    assert torch.equal(z.sum(-1), torch.ones(4, 2)) and set(z.unique().tolist()) <= {0.0, 1.0}
    q, p = model.posterior(x), model.prior()
    expected = q.log_prob(z) - p.log_prob(z) - model.log_likelihood(x, z)
    assert torch.allclose(out.neg_elbo, expected, atol=1e-5)
    out = model.objective(x, spy(GumbelSoftmax()), kl="estimated", generator=torch.Generator())
    z = seen["z"]
    assert ((z > 0) & (z < 1)).all()  # a relaxed point, where log q is linear in z
    log_pi = torch.log_softmax(q.base_dist.logits, -1)
    log_prior = torch.log_softmax(model.prior_logits, -1)
    expected = ((log_pi - log_prior) * z).sum((-1, -2)) - model.log_likelihood(x, z)
    assert torch.allclose(out.neg_elbo, expected.detach(), atol=1e-5)
    out.loss.backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0


def test_the_coupled_example_sweeps_the_protocol_with_three_seeds_for_50000_steps():
    from discograd.experiments.sweep import expand, load_sweep

    path = Path(__file__).resolve().parents[1] / "examples" / "protocol-coupled.toml"
    cells = expand(load_sweep(path))
    assert len(cells) == 3 * len(PROTOCOLS["coupled"]["estimators"])
    assert {c.estimator for c in cells} == set(PROTOCOLS["coupled"]["estimators"])
    assert {c.seed for c in cells} == {0, 1, 2}
    for cell in cells:
        cfg = cell.config
        assert cfg["protocol"] == "coupled" and cfg["steps"] == 50000
        assert (cfg["n_latent"], cfg["n_categories"], cfg["batch_size"]) == (20, 10, 200)


@pytest.mark.parametrize(
    "name", ["protocol-disarm", "protocol-disarm-multisample", "protocol-rodeo", "protocol-coupled"]
)
def test_each_protocol_example_sweeps_its_protocols_estimators_over_three_seeds(name):
    from discograd.experiments.sweep import expand, load_sweep

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.toml"
    cells = expand(load_sweep(path))
    protocol = name.removeprefix("protocol-")
    assert {c.config["protocol"] for c in cells} == {protocol}
    assert sorted({c.estimator for c in cells}) == sorted(PROTOCOLS[protocol]["estimators"])
    assert {c.seed for c in cells} == {0, 1, 2}
    assert len(cells) == 3 * len(PROTOCOLS[protocol]["estimators"])
