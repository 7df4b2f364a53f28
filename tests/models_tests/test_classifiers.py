"""Behaviour every registered classifier shares, at its default size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models

from .conftest import BATCH_SIZE, NUM_FEATURES, REGISTERED, SEQ_LEN

# Architectures whose predict averages several stochastic passes.
STOCHASTIC = ("bayesian", "mcdropout")
# Architectures whose forward validates the window shape through SequenceClassifier.
SHAPE_CHECKED = [name for name in ("transformer", "tft", "bayesian", "mcdropout")
                 if name in REGISTERED]


def _build(architecture: str, seed: int = 0) -> models.SequenceClassifier:
    torch.manual_seed(seed)
    return models.build_model(architecture, num_features=NUM_FEATURES, seq_len=SEQ_LEN)


@pytest.mark.parametrize("architecture", REGISTERED)
def test_forward_returns_one_logit_per_window(architecture: str, windows: torch.Tensor) -> None:
    model = _build(architecture)

    logits = model(windows)

    assert logits.shape == (BATCH_SIZE,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("architecture", REGISTERED)
def test_forward_accepts_other_window_length(architecture: str) -> None:
    model = _build(architecture)
    model.eval()

    logits = model(torch.randn(3, 17, NUM_FEATURES))

    assert logits.shape == (3,)


@pytest.mark.parametrize("architecture", SHAPE_CHECKED)
def test_forward_rejects_wrong_feature_count(architecture: str) -> None:
    model = _build(architecture)

    with pytest.raises(ValueError, match=f"built for {NUM_FEATURES} features"):
        model(torch.randn(2, SEQ_LEN, NUM_FEATURES + 1))


@pytest.mark.parametrize("architecture", REGISTERED)
def test_backward_gives_finite_gradient_everywhere(
    architecture: str, windows: torch.Tensor
) -> None:
    model = _build(architecture)
    model.train()
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])

    loss = F.binary_cross_entropy_with_logits(model(windows), labels)
    loss.backward()

    gradient_total = 0.0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        gradient_total += parameter.grad.abs().sum().item()
    assert gradient_total > 0


@pytest.mark.parametrize("architecture", REGISTERED)
def test_seeded_build_and_forward_repeat(architecture: str, windows: torch.Tensor) -> None:
    first, second = _build(architecture, seed=3), _build(architecture, seed=3)
    first.train()
    second.train()

    torch.manual_seed(11)
    first_logits = first(windows)
    torch.manual_seed(11)
    second_logits = second(windows)

    assert torch.equal(first_logits, second_logits)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("architecture", REGISTERED)
def test_different_seeds_give_different_weights(architecture: str) -> None:
    first, second = _build(architecture, seed=1), _build(architecture, seed=2)

    differing = [
        name
        for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items())
        if not torch.equal(a, b)
    ]

    assert differing


@pytest.mark.parametrize("architecture", REGISTERED)
def test_eval_forward_is_deterministic(architecture: str, windows: torch.Tensor) -> None:
    model = _build(architecture)
    model.eval()

    with torch.no_grad():
        first = model(windows)
        second = model(windows)

    assert torch.equal(first, second)


@pytest.mark.parametrize("architecture", REGISTERED)
def test_predict_returns_probability_and_deviation(
    architecture: str, windows: torch.Tensor
) -> None:
    model = _build(architecture)
    model.train()

    torch.manual_seed(5)
    probability, deviation = model.predict(windows)
    torch.manual_seed(5)
    probability_again, deviation_again = model.predict(windows)

    assert probability.shape == (BATCH_SIZE,)
    assert deviation.shape == (BATCH_SIZE,)
    assert ((probability >= 0) & (probability <= 1)).all()
    assert (deviation >= 0).all()
    assert torch.equal(probability, probability_again)
    assert torch.equal(deviation, deviation_again)
    assert not probability.requires_grad
    assert model.training, "predict must restore train mode"


@pytest.mark.parametrize("architecture", REGISTERED)
def test_predict_deviation_matches_stochasticity(
    architecture: str, windows: torch.Tensor
) -> None:
    model = _build(architecture)

    _, deviation = model.predict(windows)

    if architecture in STOCHASTIC:
        assert (deviation > 0).all()
    else:
        assert (deviation == 0).all()


@pytest.mark.parametrize("architecture", REGISTERED)
def test_config_dict_round_trip(architecture: str) -> None:
    config = models.CONFIG_CLASSES[architecture]()

    mapping = config.to_dict()
    rebuilt = models.config_from_dict(architecture, mapping)

    assert rebuilt == config
    assert type(rebuilt) is type(config)
    assert all(value is None or isinstance(value, (int, float, str, bool)) for value in mapping.values())


@pytest.mark.parametrize("architecture", REGISTERED)
def test_model_keeps_its_config(architecture: str) -> None:
    model = _build(architecture)

    assert model.config == models.CONFIG_CLASSES[architecture]()
    assert model.config.architecture == architecture


@pytest.mark.parametrize("architecture", REGISTERED)
def test_count_parameters_matches_module(architecture: str) -> None:
    model = _build(architecture)
    actual = sum(p.numel() for p in model.parameters() if p.requires_grad)

    counted = models.count_parameters(architecture, None, NUM_FEATURES)

    assert counted == actual
    assert counted > 0


@pytest.mark.parametrize("architecture", REGISTERED)
def test_count_parameters_grows_with_features(architecture: str) -> None:
    few = models.count_parameters(architecture, None, 2)
    many = models.count_parameters(architecture, None, 12)

    assert many > few
