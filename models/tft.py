"""Temporal Fusion Transformer encoder for window classification.

Follows the temporal part of Lim et al., "Temporal Fusion Transformers for
Interpretable Multi-horizon Time Series Forecasting" (2021): per-feature embeddings,
a variable selection network, an LSTM for local processing, interpretable multi-head
attention, and gated residual networks (GRN) with GLU gates and add & norm skips.

Windows here carry neither static covariates nor a forecast horizon, so this model
differs from the forecasting one. It has no static covariate encoders (the GRNs get
no context vector), no encoder/decoder split and no causal mask, so every step may
attend to the whole window. It stacks ``num_layers`` attention blocks instead of one,
and mean-pools the temporal output over time into a single logit.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._base import ModelConfig, SequenceClassifier, check_input_sizes

__all__ = [
    "GatedResidualNetwork",
    "InterpretableMultiHeadAttention",
    "TFTClassifier",
    "TFTConfig",
    "VariableSelectionNetwork",
]


@dataclasses.dataclass
class TFTConfig(ModelConfig):
    """Sizes of ``TFTClassifier``.

    ``d_model`` is the TFT hidden size (embeddings, LSTM, attention); ``d_ff`` is the
    hidden size of the position-wise GRN after each attention block.
    """

    architecture = "tft"

    d_model: int = 96
    num_heads: int = 8
    d_ff: int = 384
    num_layers: int = 2
    dropout: float = 0.1

    def validate(self) -> None:
        self._check_int_positive("d_model", "num_heads", "d_ff", "num_layers")
        self._check_divisible("d_model", "num_heads")
        self._check_dropout("dropout")


class GateAddNorm(nn.Module):
    """LayerNorm(skip + GLU(dropout(x))): the TFT gate with its residual connection.

    Shape: x [..., input_size], skip [..., output_size] -> [..., output_size].
    """

    def __init__(self, input_size: int, output_size: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.gate = nn.Linear(input_size, 2 * output_size)
        self.norm = nn.LayerNorm(output_size)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        gated = F.glu(self.gate(self.dropout(x)), dim=-1)
        return self.norm(skip + gated)


class GatedResidualNetwork(nn.Module):
    """GRN(a) = LayerNorm(skip(a) + GLU(W1 ELU(W2 a + b2) + b1)).

    ``skip`` is a linear projection when the input and output sizes differ and the
    identity otherwise. The GLU gate can close to pass the input through unchanged,
    which lets the network skip processing it does not need.

    Shape: a [..., input_size] -> [..., output_size].
    """

    def __init__(
        self, input_size: int, hidden_size: int, output_size: int, dropout: float
    ) -> None:
        super().__init__()
        self.skip: nn.Module = (
            nn.Linear(input_size, output_size) if input_size != output_size else nn.Identity()
        )
        self.fc_in = nn.Linear(input_size, hidden_size)
        self.fc_hidden = nn.Linear(hidden_size, hidden_size)
        self.gate_add_norm = GateAddNorm(hidden_size, output_size, dropout)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        hidden = self.fc_hidden(F.elu(self.fc_in(a)))
        return self.gate_add_norm(hidden, self.skip(a))


class VariableSelectionNetwork(nn.Module):
    """Per-time-step soft selection over the input features.

    Each scalar feature j is embedded as x_j * w_j + b_j (w_j, b_j in R^d_model) and
    passed through its own GRN. A GRN over the concatenated embeddings gives one
    weight per feature and time step (softmax over features). The output is the
    weighted sum of the processed embeddings.

    Shape: x [B, T, F] -> (selected [B, T, d_model], weights [B, T, F]).
    """

    def __init__(self, num_features: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.num_features = num_features
        self.embedding_weight = nn.Parameter(torch.empty(num_features, d_model))
        self.embedding_bias = nn.Parameter(torch.zeros(num_features, d_model))
        # Same scale as nn.Linear(1, d_model) per feature.
        nn.init.uniform_(self.embedding_weight, -1.0, 1.0)

        self.selection_grn = GatedResidualNetwork(
            num_features * d_model, d_model, num_features, dropout
        )
        self.feature_grns = nn.ModuleList(
            GatedResidualNetwork(d_model, d_model, d_model, dropout) for _ in range(num_features)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        embedded = x.unsqueeze(-1) * self.embedding_weight + self.embedding_bias  # [B, T, F, d]

        weights = torch.softmax(self.selection_grn(embedded.reshape(B, T, -1)), dim=-1)
        # weights: [B, T, F]

        processed = torch.stack(
            [grn(embedded[:, :, j]) for j, grn in enumerate(self.feature_grns)], dim=2
        )  # [B, T, F, d]
        selected = (weights.unsqueeze(-1) * processed).sum(dim=2)  # [B, T, d]
        return selected, weights


class InterpretableMultiHeadAttention(nn.Module):
    """Multi-head attention whose heads share one value projection and are averaged.

    Each head has its own query and key projections, but all heads attend over the
    same values and their outputs are averaged before the output projection. So the
    head-averaged attention matrix (``last_attention_weights``) describes what the
    layer does.

    Shape: x [B, T, d_model] -> [B, T, d_model].
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads

        self.query_proj = nn.Linear(d_model, d_model)  # num_heads heads of head_dim
        self.key_proj = nn.Linear(d_model, d_model)
        self.value_proj = nn.Linear(d_model, self.head_dim)  # shared by every head
        self.out_proj = nn.Linear(self.head_dim, d_model)
        self.attention_dropout = nn.Dropout(dropout)
        # Head-averaged attention of the last forward pass, [B, T, T], detached.
        self.last_attention_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        query = self.query_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.key_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.value_proj(x).unsqueeze(1)  # [B, 1, T, head_dim], broadcast over heads

        scores = query @ key.transpose(-2, -1) / math.sqrt(self.head_dim)  # [B, H, T, T]
        attention = torch.softmax(scores, dim=-1)
        self.last_attention_weights = attention.mean(dim=1).detach()

        heads = self.attention_dropout(attention) @ value  # [B, H, T, head_dim]
        return self.out_proj(heads.mean(dim=1))  # [B, T, d_model]


class _AttentionBlock(nn.Module):
    """Interpretable attention, gate + add & norm, then a position-wise GRN."""

    def __init__(self, config: TFTConfig) -> None:
        super().__init__()
        self.attention = InterpretableMultiHeadAttention(
            config.d_model, config.num_heads, config.dropout
        )
        self.attention_gate = GateAddNorm(config.d_model, config.d_model, config.dropout)
        self.feed_forward = GatedResidualNetwork(
            config.d_model, config.d_ff, config.d_model, config.dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = self.attention_gate(self.attention(x), skip=x)
        return self.feed_forward(attended)


class TFTClassifier(SequenceClassifier):
    """Temporal Fusion Transformer encoder with a mean-pooled classification head.

    Pipeline, all [B, T, d_model] after the first step:
    1. variable selection;
    2. LSTM, then gate + add & norm onto the selected inputs;
    3. a position-wise enrichment GRN;
    4. ``num_layers`` attention blocks;
    5. a final gate + add & norm that skips back to the output of step 2;
    6. mean over time and a linear head.
    The LSTM supplies the order of the time steps, so no position codes are added.

    After each forward pass ``last_variable_weights`` contains the variable selection
    weights [B, T, F] (detached; non-negative, summing to 1 over F).

    Shape: x [B, T, F] -> logits [B].
    """

    config: TFTConfig

    def __init__(self, config: TFTConfig, num_features: int, seq_len: int | None = None) -> None:
        super().__init__()
        check_input_sizes(config.architecture, num_features, seq_len)
        self.config = config
        self.num_features = num_features
        self.seq_len = seq_len

        d_model = config.d_model
        self.variable_selection = VariableSelectionNetwork(num_features, d_model, config.dropout)
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True)
        self.lstm_gate = GateAddNorm(d_model, d_model, config.dropout)
        self.enrichment = GatedResidualNetwork(d_model, d_model, d_model, config.dropout)
        self.attention_blocks = nn.ModuleList(
            _AttentionBlock(config) for _ in range(config.num_layers)
        )
        self.output_gate = GateAddNorm(d_model, d_model, config.dropout)
        self.head = nn.Linear(d_model, 1)

        self.last_variable_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map windows x [B, T, F] to logits [B]."""
        self._check_windows(x)

        selected, weights = self.variable_selection(x)  # [B, T, d], [B, T, F]
        self.last_variable_weights = weights.detach()

        lstm_output, _ = self.lstm(selected)  # [B, T, d]
        temporal = self.lstm_gate(lstm_output, skip=selected)

        hidden = self.enrichment(temporal)
        for block in self.attention_blocks:
            hidden = block(hidden)  # [B, T, d]
        hidden = self.output_gate(hidden, skip=temporal)

        pooled = hidden.mean(dim=1)  # [B, d]
        return self.head(pooled).squeeze(-1)  # [B]

    @torch.no_grad()
    def variable_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Return the variable selection weights [B, T, F] for windows x [B, T, F] (eval mode)."""
        self._check_windows(x)
        was_training = self.training
        self.eval()
        try:
            _, weights = self.variable_selection(x)
        finally:
            self.train(was_training)
        return weights
