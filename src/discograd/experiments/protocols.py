"""The published Fashion-MNIST protocols of the binary-estimator papers, as named presets.

``discograd vae --protocol NAME`` applies ``PROTOCOLS[NAME]`` over the VAE's
defaults; a config file, flags and ``--set`` still override every value
(defaults < protocol < ``--config`` < flags < ``--set``), and ``config.json``
records the protocol's name with every resulting value (read back with
``--config``, it gives the same run).

What each preset holds is what the official code runs (``../LITERATURE``,
"Fashion-MNIST protocols as the official code runs them"):

* ``disarm`` — Dong, Mnih & Tucker 2020, ``google-research/disarm/binary``,
  ``experiment_launcher_singlelayer.py``: 200 Bernoulli latents, the linear
  model (784-200 encoder, 200-784 decoder; ``--hidden 200 200`` gives their
  nonlinear one, LeakyReLU(0.3)), Fashion-MNIST's train split as 50,000 train /
  the last 10,000 validation, dynamic binarisation, encoder input centred on
  the training mean and the decoder's output bias at its logit, Adam 1e-4 for
  encoder and decoder, the learned prior by SGD 1e-2, batch 50, the whole
  negative ELBO as the estimators' cost, 10^6 steps; train ELBO averaged over
  the training set and the validation −ELBO every 1,000 steps, the 100-sample
  test bound on the full test set every 10,000 steps and at the end, the
  encoder gradient's variance (EMA 0.999) every 1,000 steps.
* ``disarm-multisample`` — the same with the multi-sample estimators of the
  paper's §4 (VIMCO with 2 samples against local DisARM with 1 pair: the
  launcher's defaults, equal evaluations).
* ``rodeo`` — Shi et al. 2022 (``thjashin/rodeo``, README for Fashion-MNIST;
  the Double CV code, ``thjashin/double-cv``, is the same launcher): the
  nonlinear model (200-200 hidden, LeakyReLU(0.3)), Adam 3e-4, a fixed uniform
  prior (their ``prior_lr`` is 0), batch 100, K = 2 evaluations per step for
  every estimator but RELAX (3), no input centring and no output-bias
  initialisation (their ``BinaryNetwork`` has neither).
* ``rodeo-k3`` — the same at K = 3 (DisARM needs pairs: left out, ARMS with 3
  samples takes its place, as in the RODEO figure).
* ``coupled`` — Dong, Mnih & Tucker 2021, ``google-research/disarm/categorical``,
  ``experiment_launcher.py`` run as its README does (``--demean_input
  --initialize_with_bias --one_hot``): 20 categorical latents of 10 categories,
  784-512-256 encoder and mirrored decoder with LeakyReLU(0.2), the same
  Fashion-MNIST split and dynamic binarisation, centred encoder input and the
  decoder's output bias at the logit of the training mean, Adam 1e-4 for encoder
  and decoder, a learned categorical prior by SGD 1e-2, batch 200, the whole
  negative ELBO as the cost, 10^6 steps, the DisARM protocol's metrics. The
  estimators: RLOO with C samples (the launcher's default ``num_samples``), the
  ARSM family, categorical DisARM as the README runs it (stick-breaking,
  importance-weighted, logits in ascending order), CARMS, IndeCateR, the
  unordered-set estimator, Gumbel-Softmax and ReinMax (τ = 1). The relaxed two
  evaluate the same cost at their relaxed sample (see ``docs/models.md``).
  ``categorical_disarm:importance_weighted=True`` is that variant (stick-breaking
  and ascending order are its defaults). IndeCateR costs D·C = 200 evaluations of
  the decoder per image and step, about 2 s a step on one CPU thread: a GPU run,
  impractical for 50,000 steps on a CPU; ARSM and ARSM+ evaluate up to
  C(C-1)/2 + 1 = 46 swaps, about 0.2 s a step there.
* ``coupled-32x16`` — the README's example size: 32 latents of 16 categories
  (RLOO with 16 samples).

Estimators named here that this installation does not register (they arrive
with later releases) are reported when a run starts, not when the preset is
read: ``--estimators`` or ``--set estimators=...`` replaces the list.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROTOCOLS", "describe", "help_text"]

_FASHION: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "validation": 10000,
    "binarization": "dynamic",
    "kl": "estimated",
    "steps": 1_000_000,
    "log_every": 1000,
    "eval_every": 1000,
    "train_eval_every": 1000,
    "test_every": 10000,
    "grad_var_every": 1000,
    "checkpoint_every": 10000,
    "eval_samples": 100,
    "iw_examples": 10000,
}

# The binary protocols' latents and their networks' LeakyReLU slope.
_BERNOULLI: dict[str, Any] = {
    **_FASHION,
    "latent": "bernoulli",
    "n_latent": 200,
    "activation": "leaky_relu_0.3",
}

_DISARM: dict[str, Any] = {
    **_BERNOULLI,
    "hidden": [],
    "prior": "learned",
    "prior_lr": 1e-2,
    "center_input": True,
    "init_output_bias": True,
    "lr": 1e-4,
    "cv_lr": 1e-4,
    "batch_size": 50,
    "estimators": ["rloo:n_samples=2", "arm", "disarm", "relax"],
}

_RODEO: dict[str, Any] = {
    **_BERNOULLI,
    "hidden": [200, 200],
    "prior": "uniform",
    "prior_lr": None,
    "center_input": False,
    "init_output_bias": False,
    "lr": 3e-4,
    "cv_lr": 3e-4,
    "batch_size": 100,
    "estimators": [
        "rloo:n_samples=2",
        "disarm",
        "arms:n_samples=2",
        "double_cv:n_samples=2",
        "rodeo:n_samples=2",
        "relax",
    ],
}

_COUPLED: dict[str, Any] = {
    **_FASHION,
    "latent": "categorical",
    "n_latent": 20,
    "n_categories": 10,
    "hidden": [512, 256],
    "activation": "leaky_relu",
    "prior": "learned",
    "prior_lr": 1e-2,
    "center_input": True,
    "init_output_bias": True,
    "lr": 1e-4,
    "batch_size": 200,
    "estimators": [
        "rloo:n_samples=10",
        "arsm",
        "ars_plus",
        "arsm_plus",
        "categorical_disarm:importance_weighted=True",
        "carms",
        "indecater",
        "unordered_set",
        "gumbel_softmax",
        "reinmax",
    ],
}

#: protocol name -> the config values it sets (as a config file would write them)
PROTOCOLS: dict[str, dict[str, Any]] = {
    "disarm": _DISARM,
    "disarm-multisample": {
        **_DISARM,
        "estimators": ["vimco:n_samples=2", "local_disarm:n_pairs=1"],
    },
    "rodeo": _RODEO,
    "rodeo-k3": {
        **_RODEO,
        "estimators": [
            "rloo:n_samples=3",
            "arms:n_samples=3",
            "double_cv:n_samples=3",
            "rodeo:n_samples=3",
            "relax",
        ],
    },
    "coupled": _COUPLED,
    "coupled-32x16": {
        **_COUPLED,
        "n_latent": 32,
        "n_categories": 16,
        "estimators": ["rloo:n_samples=16", *_COUPLED["estimators"][1:]],
    },
}


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) if v else "none"
    return "none" if v is None else str(v)


def describe(name: str, shared: dict[str, Any] | None = None) -> str:
    """``key=value ...`` of protocol ``name`` (leaving out what ``shared`` has alike)."""
    items = PROTOCOLS[name].items()
    return " ".join(
        f"{k}={_value(v)}" for k, v in items if shared is None or shared.get(k, object()) != v
    )


def help_text() -> str:
    """The ``--protocol`` flag's help: each protocol with its values."""
    parts = [f"{_value(k)}={_value(v)}" for k, v in _FASHION.items()]
    lines = [
        "a published protocol's settings over the defaults (--config, flags and --set "
        "override any of them; config.json records them all). All protocols: "
        + " ".join(parts)
        + "."
    ]
    for name in PROTOCOLS:
        lines.append(f"{name}: {describe(name, _FASHION)}.")
    return " ".join(lines)
