"""Bayesian transformer: variational linear layers, KL term and sampled predict."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

import models
from models.bayesian import BayesianLinear

from .conftest import BATCH_SIZE, NUM_FEATURES


def _build(**fields: object) -> models.BayesianClassifier:
    torch.manual_seed(0)
    model = models.build_model("bayesian", fields, num_features=NUM_FEATURES)
    assert isinstance(model, models.BayesianClassifier)
    return model


def test_kl_divergence_is_positive_scalar_with_gradient() -> None:
    model = _build()

    kl = model.kl_divergence()
    kl.backward()

    assert kl.shape == ()
    assert kl.item() > 0
    assert torch.isfinite(kl)
    for name, parameter in model.named_parameters():
        if name.endswith(("_mu", "_rho")):
            assert parameter.grad is not None, name
            assert parameter.grad.abs().sum() > 0, name


def test_layer_kl_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    layer = BayesianLinear(5, 3, prior_sigma=0.3, posterior_sigma_init=0.05)
    with torch.no_grad():
        layer.weight_rho.uniform_(-4.0, 0.0)

    prior = Normal(0.0, 0.3)
    expected = kl_divergence(
        Normal(layer.weight_mu, F.softplus(layer.weight_rho)), prior
    ).sum() + kl_divergence(Normal(layer.bias_mu, F.softplus(layer.bias_rho)), prior).sum()

    assert torch.allclose(layer.kl_divergence(), expected, rtol=1e-5)


def test_posterior_sigma_starts_at_configured_value() -> None:
    layer = BayesianLinear(4, 2, prior_sigma=1.0, posterior_sigma_init=0.02)

    assert torch.allclose(F.softplus(layer.weight_rho), torch.full((2, 4), 0.02))
    assert torch.allclose(F.softplus(layer.bias_rho), torch.full((2,), 0.02))


def test_layer_sampling_by_mode() -> None:
    torch.manual_seed(0)
    layer = BayesianLinear(4, 3, prior_sigma=1.0, posterior_sigma_init=0.5)
    x = torch.randn(6, 4)

    layer.eval()
    assert torch.equal(layer(x), F.linear(x, layer.weight_mu, layer.bias_mu))

    layer.train()
    assert not torch.allclose(layer(x), layer(x))


def test_every_linear_layer_is_variational() -> None:
    model = _build()

    assert not any(type(module) is nn.Linear for module in model.modules())
    # Input projection, 4 per encoder block, head.
    variational = [m for m in model.modules() if isinstance(m, BayesianLinear)]
    assert len(variational) == 2 + 4 * model.config.num_layers


def test_count_includes_mean_and_spread() -> None:
    d_model, d_ff, num_layers = 96, 384, 2
    linear = (
        (NUM_FEATURES * d_model + d_model)
        + num_layers * (4 * d_model * d_model + 4 * d_model + 2 * d_model * d_ff + d_ff + d_model)
        + (d_model + 1)
    )
    layer_norms = num_layers * 4 * d_model + 2 * d_model

    counted = models.count_parameters("bayesian", None, NUM_FEATURES)

    assert counted == 2 * linear + layer_norms


def test_predict_deviation_positive_and_repeatable(windows: torch.Tensor) -> None:
    model = _build()

    torch.manual_seed(3)
    probability, deviation = model.predict(windows)
    torch.manual_seed(3)
    probability_again, _ = model.predict(windows)

    assert probability.shape == (BATCH_SIZE,)
    assert (deviation > 0).all()
    assert torch.equal(probability, probability_again)


def test_predict_samples_weights_without_dropout(windows: torch.Tensor) -> None:
    model = _build()
    model.train()
    seen: dict[str, set[bool]] = {"dropout": set(), "sampling": set()}

    def record(module: nn.Module, _inputs: object) -> None:
        if isinstance(module, nn.Dropout):
            seen["dropout"].add(module.training)
        if isinstance(module, BayesianLinear):
            seen["sampling"].add(module.sample_weights)

    for module in model.modules():
        module.register_forward_pre_hook(record)
    model.predict(windows)

    assert seen["dropout"] == {False}
    assert seen["sampling"] == {True}
    assert model.training
    assert not any(m.sample_weights for m in model.modules() if isinstance(m, BayesianLinear))


def test_eval_forward_uses_posterior_means(windows: torch.Tensor) -> None:
    model = _build(posterior_sigma_init=0.5)
    model.eval()

    with torch.no_grad():
        first = model(windows)
        second = model(windows)

    assert torch.equal(first, second)
