"""The Temporal Fusion Transformer classifier's components."""

from __future__ import annotations

import torch
from torch import nn

import models
from models.tft import GatedResidualNetwork, InterpretableMultiHeadAttention

from .conftest import BATCH_SIZE, NUM_FEATURES, SEQ_LEN


def _build() -> models.TFTClassifier:
    torch.manual_seed(0)
    model = models.build_model("tft", num_features=NUM_FEATURES)
    assert isinstance(model, models.TFTClassifier)
    return model


def test_variable_weights_form_distribution_per_step(windows: torch.Tensor) -> None:
    model = _build()

    model(windows)
    weights = model.last_variable_weights

    assert weights is not None
    assert weights.shape == (BATCH_SIZE, SEQ_LEN, NUM_FEATURES)
    assert (weights >= 0).all()
    assert torch.allclose(weights.sum(dim=-1), torch.ones(BATCH_SIZE, SEQ_LEN), atol=1e-5)


def test_variable_weights_vary_with_input() -> None:
    model = _build()

    weights = model.variable_weights(torch.randn(2, SEQ_LEN, NUM_FEATURES) * 3)

    assert weights.shape == (2, SEQ_LEN, NUM_FEATURES)
    assert weights.std() > 0
    assert model.training, "variable_weights must restore train mode"


def test_contains_lstm_and_interpretable_attention() -> None:
    model = _build()

    lstms = [m for m in model.modules() if isinstance(m, nn.LSTM)]
    attentions = [m for m in model.modules() if isinstance(m, InterpretableMultiHeadAttention)]

    assert len(lstms) == 1
    assert lstms[0].batch_first
    assert len(attentions) == model.config.num_layers
    assert any(isinstance(m, GatedResidualNetwork) for m in model.modules())


def test_attention_heads_share_value_projection() -> None:
    attention = InterpretableMultiHeadAttention(d_model=32, num_heads=4, dropout=0.0)

    assert attention.value_proj.out_features == 32 // 4
    assert attention.query_proj.out_features == 32
    assert attention.out_proj.in_features == 32 // 4


def test_attention_weights_are_row_stochastic() -> None:
    attention = InterpretableMultiHeadAttention(d_model=32, num_heads=4, dropout=0.0)

    output = attention(torch.randn(3, 9, 32))
    weights = attention.last_attention_weights

    assert output.shape == (3, 9, 32)
    assert weights is not None
    assert weights.shape == (3, 9, 9)
    assert (weights >= 0).all()
    assert torch.allclose(weights.sum(dim=-1), torch.ones(3, 9), atol=1e-5)


def test_grn_skip_projects_only_when_sizes_differ() -> None:
    same = GatedResidualNetwork(16, 8, 16, dropout=0.0)
    different = GatedResidualNetwork(16, 8, 4, dropout=0.0)

    assert isinstance(same.skip, nn.Identity)
    assert isinstance(different.skip, nn.Linear)
    assert different(torch.randn(2, 16)).shape == (2, 4)


def test_grn_output_is_layer_normalised() -> None:
    grn = GatedResidualNetwork(16, 8, 16, dropout=0.0)

    output = grn(torch.randn(5, 16) * 10 + 3)

    assert torch.allclose(output.mean(dim=-1), torch.zeros(5), atol=1e-5)
