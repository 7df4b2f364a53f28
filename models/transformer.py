"""Transformer encoder classifier: projected features, sinusoidal positions, mean pooling."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ._base import ModelConfig, SequenceClassifier, check_input_sizes
from ._layers import sinusoidal_positions

__all__ = ["TransformerClassifier", "TransformerConfig"]


@dataclasses.dataclass
class TransformerConfig(ModelConfig):
    """Sizes of ``TransformerClassifier``."""

    architecture = "transformer"

    d_model: int = 128
    num_heads: int = 8
    d_ff: int = 512
    num_layers: int = 3
    dropout: float = 0.1

    def validate(self) -> None:
        self._check_int_positive("d_model", "num_heads", "d_ff", "num_layers")
        self._check_divisible("d_model", "num_heads")
        self._check_dropout("dropout")


class TransformerClassifier(SequenceClassifier):
    """Pre-norm ``nn.TransformerEncoder`` over windows, mean-pooled to one logit.

    Each time step's features are projected linearly to ``d_model`` and summed with
    sinusoidal position codes, so any window length works and ``seq_len`` is only
    recorded. A final LayerNorm follows the encoder (pre-norm layers leave their
    output unnormalised), then the mean over time feeds a linear head.

    Shape: x [B, T, F] -> logits [B].
    """

    config: TransformerConfig

    def __init__(
        self, config: TransformerConfig, num_features: int, seq_len: int | None = None
    ) -> None:
        super().__init__()
        check_input_sizes(config.architecture, num_features, seq_len)
        self.config = config
        self.num_features = num_features
        self.seq_len = seq_len

        self.input_proj = nn.Linear(num_features, config.d_model)
        self.input_dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=config.d_model,
            nhead=config.num_heads,
            dim_feedforward=config.d_ff,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # The nested-tensor fast path only applies to padded batches with post-norm
        # layers; switching it off avoids a warning with norm_first=True.
        self.encoder = nn.TransformerEncoder(
            layer,
            num_layers=config.num_layers,
            norm=nn.LayerNorm(config.d_model),
            enable_nested_tensor=False,
        )
        self.head = nn.Linear(config.d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map windows x [B, T, F] to logits [B]."""
        self._check_windows(x)
        T = x.shape[1]

        hidden = self.input_proj(x)  # [B, T, d_model]
        hidden = hidden + sinusoidal_positions(
            T, self.config.d_model, device=x.device, dtype=hidden.dtype
        )
        hidden = self.encoder(self.input_dropout(hidden))  # [B, T, d_model]

        pooled = hidden.mean(dim=1)  # [B, d_model]
        return self.head(pooled).squeeze(-1)  # [B]
