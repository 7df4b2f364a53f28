"""Layers shared by the attention-based classifiers (transformer, bayesian, mcdropout, tft)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EncoderBlock", "LinearFactory", "sinusoidal_positions"]

# Builds a linear layer from (in_features, out_features); lets the same block use
# nn.Linear or a variational linear layer.
LinearFactory = Callable[[int, int], nn.Module]

# Base of the geometric progression of wavelengths in sinusoidal position codes
# (the value from "Attention Is All You Need").
_POSITION_WAVELENGTH_BASE = 10_000.0


def sinusoidal_positions(
    seq_len: int, d_model: int, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Return sinusoidal position codes of shape [seq_len, d_model].

    Computed per call, so any window length works without a maximum; an odd
    ``d_model`` gets one more sine than cosine column.
    """
    position = torch.arange(seq_len, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(
        torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
        * (-math.log(_POSITION_WAVELENGTH_BASE) / d_model)
    )
    angles = position * frequency  # [T, ceil(d/2)]
    codes = torch.zeros(seq_len, d_model, device=device, dtype=torch.float32)
    codes[:, 0::2] = torch.sin(angles)
    codes[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return codes.to(dtype)


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder layer built from a pluggable linear layer.

    Same structure and parameter count as ``nn.TransformerEncoderLayer`` with
    ``norm_first=True`` and GELU: LayerNorm, self-attention, dropout, residual;
    LayerNorm, feed-forward, dropout, residual. Every dropout, including the one on
    the attention weights, is an ``nn.Dropout`` module, so switching only those
    modules to train mode gives Monte Carlo dropout. (``nn.TransformerEncoderLayer``
    keeps attention dropout inside ``nn.MultiheadAttention`` and may take a fused
    inference path that skips dropout entirely.)

    Shape: x [B, T, d_model] -> [B, T, d_model].
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float,
        linear: LinearFactory = nn.Linear,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads

        self.norm1 = nn.LayerNorm(d_model)
        self.qkv_proj = linear(d_model, 3 * d_model)
        self.out_proj = linear(d_model, d_model)
        self.attention_dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)

        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = linear(d_model, d_ff)
        self.linear2 = linear(d_ff, d_model)
        self.ff_dropout = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _self_attention(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv_proj(x).view(B, T, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, head_dim]

        # The dropout probability follows the module's mode, not the block's, so that
        # Monte Carlo dropout can switch it on alone.
        dropout_p = self.attention_dropout.p if self.attention_dropout.training else 0.0
        attended = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)
        attended = attended.transpose(1, 2).reshape(B, T, D)  # [B, T, d_model]
        return self.out_proj(attended)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout1(self._self_attention(self.norm1(x)))
        hidden = self.ff_dropout(F.gelu(self.linear1(self.norm2(x))))
        return x + self.dropout2(self.linear2(hidden))
