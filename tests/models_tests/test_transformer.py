"""The transformer classifier: structure, closed-form size and position dependence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models._layers import sinusoidal_positions

from .conftest import NUM_FEATURES


def _closed_form_parameters(
    d_model: int, num_heads: int, d_ff: int, num_layers: int, num_features: int
) -> int:
    """Count TransformerClassifier's parameters by hand (num_heads does not change it)."""
    input_projection = num_features * d_model + d_model
    attention = (3 * d_model * d_model + 3 * d_model) + (d_model * d_model + d_model)
    feed_forward = (d_model * d_ff + d_ff) + (d_ff * d_model + d_model)
    layer_norms = 2 * (2 * d_model)
    encoder_layer = attention + feed_forward + layer_norms
    final_norm = 2 * d_model
    head = d_model + 1
    return input_projection + num_layers * encoder_layer + final_norm + head


@pytest.mark.parametrize(
    "sizes",
    [
        {},  # the defaults: 128, 8, 512, 3
        {"d_model": 64, "num_heads": 4, "d_ff": 96, "num_layers": 1},
        {"d_model": 48, "num_heads": 3, "d_ff": 200, "num_layers": 5},
    ],
)
@pytest.mark.parametrize("num_features", [1, NUM_FEATURES, 40])
def test_count_parameters_matches_closed_form(sizes: dict[str, int], num_features: int) -> None:
    config = models.TransformerConfig(**sizes)

    counted = models.count_parameters("transformer", config, num_features)

    assert counted == _closed_form_parameters(
        config.d_model, config.num_heads, config.d_ff, config.num_layers, num_features
    )


def test_default_size_is_596097_parameters() -> None:
    # 6 * 128 + 128 + 3 * (4 * 128^2 + 2 * 128 * 512 + 9 * 128 + 512) + 2 * 128 + 129
    assert models.count_parameters("transformer", None, NUM_FEATURES) == 596_097


def test_uses_batch_first_transformer_encoder() -> None:
    model = models.build_model("transformer", num_features=NUM_FEATURES)

    encoders = [m for m in model.modules() if isinstance(m, nn.TransformerEncoder)]
    layers = [m for m in model.modules() if isinstance(m, nn.TransformerEncoderLayer)]

    assert len(encoders) == 1
    assert len(layers) == model.config.num_layers
    assert all(layer.self_attn.batch_first for layer in layers)


def test_output_depends_on_time_order() -> None:
    # Without position codes a mean-pooled encoder is invariant to permuting time.
    torch.manual_seed(0)
    model = models.build_model("transformer", num_features=NUM_FEATURES).eval()
    x = torch.randn(2, 30, NUM_FEATURES)

    with torch.no_grad():
        forward = model(x)
        reversed_in_time = model(x.flip(1))

    assert not torch.allclose(forward, reversed_in_time)


def test_sinusoidal_positions_shape_and_values() -> None:
    codes = sinusoidal_positions(7, 5, device=torch.device("cpu"), dtype=torch.float32)

    assert codes.shape == (7, 5)
    assert torch.allclose(codes[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
    assert torch.allclose(codes[3, 0], torch.sin(torch.tensor(3.0)))
    assert torch.allclose(codes[3, 1], torch.cos(torch.tensor(3.0)))
