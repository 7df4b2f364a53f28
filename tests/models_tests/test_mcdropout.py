"""Monte Carlo dropout: stochastic predict with only dropout switched on."""

from __future__ import annotations

import torch
from torch import nn

import models

from .conftest import BATCH_SIZE, NUM_FEATURES


def _build(**fields: object) -> models.MCDropoutClassifier:
    torch.manual_seed(0)
    model = models.build_model("mcdropout", fields, num_features=NUM_FEATURES)
    assert isinstance(model, models.MCDropoutClassifier)
    return model


def test_predict_deviation_positive_per_window(windows: torch.Tensor) -> None:
    model = _build()

    probability, deviation = model.predict(windows)

    assert probability.shape == (BATCH_SIZE,)
    assert (deviation > 0).all()


def test_predict_repeats_under_same_seed(windows: torch.Tensor) -> None:
    model = _build()

    torch.manual_seed(42)
    first = model.predict(windows)
    torch.manual_seed(42)
    second = model.predict(windows)

    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


def test_predict_differs_across_seeds(windows: torch.Tensor) -> None:
    model = _build()

    torch.manual_seed(1)
    first, _ = model.predict(windows)
    torch.manual_seed(2)
    second, _ = model.predict(windows)

    assert not torch.equal(first, second)


def test_predict_switches_on_dropout_only(windows: torch.Tensor) -> None:
    model = _build()
    model.eval()
    modes: dict[str, set[bool]] = {"dropout": set(), "other": set()}

    def record(module: nn.Module, _inputs: object) -> None:
        kind = "dropout" if isinstance(module, nn.Dropout) else "other"
        modes[kind].add(module.training)

    for module in model.modules():
        module.register_forward_pre_hook(record)
    model.predict(windows)

    assert modes["dropout"] == {True}
    assert modes["other"] == {False}


def test_predict_restores_modes(windows: torch.Tensor) -> None:
    model = _build()

    model.eval()
    model.predict(windows)
    assert not any(module.training for module in model.modules())

    model.train()
    model.predict(windows)
    assert all(module.training for module in model.modules())


def test_predict_makes_num_samples_passes(windows: torch.Tensor) -> None:
    model = _build(num_samples=7)
    passes = []
    model.register_forward_hook(lambda *_: passes.append(1))

    model.predict(windows)

    assert len(passes) == 7


def test_zero_dropout_predict_is_deterministic(windows: torch.Tensor) -> None:
    model = _build(dropout=0.0)
    model.eval()

    probability, deviation = model.predict(windows)
    with torch.no_grad():
        expected = torch.sigmoid(model(windows))

    assert torch.equal(deviation, torch.zeros(BATCH_SIZE))
    assert torch.allclose(probability, expected, atol=1e-6)


def test_count_matches_transformer_with_same_sizes() -> None:
    # Same layout as the transformer (blocks mirror nn.TransformerEncoderLayer).
    sizes = {"d_model": 64, "num_heads": 4, "d_ff": 128, "num_layers": 2, "dropout": 0.2}

    mcdropout = models.count_parameters("mcdropout", sizes, NUM_FEATURES)
    transformer = models.count_parameters("transformer", sizes, NUM_FEATURES)

    assert mcdropout == transformer


def test_predict_num_samples_overrides_config(windows: torch.Tensor) -> None:
    model = _build(num_samples=20)
    calls = []
    model.register_forward_pre_hook(lambda module, inputs: calls.append(1))

    model.predict(windows, num_samples=3)
    assert len(calls) == 3
    model.predict(windows)
    assert len(calls) == 3 + 20


def test_predict_rejects_non_positive_num_samples(windows: torch.Tensor) -> None:
    model = _build()
    for bad in (0, -1, 2.0, True):
        try:
            model.predict(windows, num_samples=bad)  # type: ignore[arg-type]
        except ValueError as error:
            assert "num_samples" in str(error)
        else:
            raise AssertionError(f"num_samples={bad!r} was accepted")
