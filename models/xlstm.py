"""xLSTM sequence classifier: a stack of mLSTM and sLSTM blocks.

Architecture: a linear input projection from F features to ``d_model``, ``num_layers``
residual blocks, a final LayerNorm, the mean over time steps and a linear head that
returns one logit per window.

Block mix: with ``slstm_every`` = k, layers k - 1, 2k - 1, ... (0-based) are sLSTM blocks
and the others mLSTM blocks. The default, k = 2 with 3 layers, gives mLSTM, sLSTM, mLSTM;
4 layers give mLSTM, sLSTM, mLSTM, sLSTM; 1 layer gives one mLSTM block. The rule is valid
for every layer count, so a search can vary ``num_layers`` and ``slstm_every``
independently (a list of sLSTM positions, as the xlstm package takes, is not).

mLSTM blocks (matrix memory) up-project to ``proj_factor * d_model`` channels and train in
their parallel form. sLSTM blocks (scalar memory, exponential gating, block-diagonal
recurrent heads) run sequentially over T and are followed by a gated feed-forward of width
``proj_factor * d_model``. ``models._xlstm_blocks`` has the equations.

Why the blocks are written here instead of taken from the ``xlstm`` package: on CPU that
package works only with its vanilla backends. Its sLSTM backend defaults to "cuda", which
compiles a CUDA extension when a block is built (sLSTMCellConfig in the package's
xlstm/blocks/slstm/cell.py), and the package pulls in extra dependencies. The blocks here are
plain PyTorch with the same cell equations and forget-gate initialisation as the package
(its "small_init" scheme), and they run unchanged on CPU and CUDA. They differ from the
package in the width of the block-diagonal query, key and value projections (one block per
head, not blocks of 4 channels).

NOTE: no fused kernel is used on either device. On CUDA the same PyTorch code runs, and
the sequential sLSTM loop launches several small kernels per time step. Expect it to be
slower there than the xlstm package's fused sLSTM kernel (not measured).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from models._base import ModelConfig, SequenceClassifier, check_input_sizes
from models._xlstm_blocks import MLSTMBlock, SLSTMBlock

__all__ = ["XLSTMClassifier", "XLSTMConfig"]


@dataclasses.dataclass
class XLSTMConfig(ModelConfig):
    """Sizes and block mix of the xLSTM classifier.

    ``proj_factor`` sets the inner width of every block (mLSTM up-projection, sLSTM
    feed-forward) as a multiple of ``d_model``. ``slstm_every`` = k makes every k-th layer
    an sLSTM block (0-based layers k - 1, 2k - 1, ...) and the others mLSTM blocks; 0 means
    mLSTM blocks only and 1 sLSTM blocks only.
    """

    architecture: ClassVar[str] = "xlstm"

    d_model: int = 128
    num_layers: int = 3
    dropout: float = 0.1
    num_heads: int = 4
    proj_factor: int = 2
    slstm_every: int = 2  # with 3 layers: mLSTM, sLSTM, mLSTM

    def validate(self) -> None:
        self._check_int_positive("d_model", "num_layers", "num_heads", "proj_factor")
        self._check_dropout()
        self._check_divisible("d_model", "num_heads")
        if isinstance(self.slstm_every, bool) or not isinstance(self.slstm_every, int):
            raise ValueError(f"xlstm.slstm_every must be an integer, got {self.slstm_every!r}")
        if self.slstm_every < 0:
            raise ValueError(
                f"xlstm.slstm_every must be 0 (no sLSTM blocks) or positive, got {self.slstm_every}"
            )

    @property
    def block_types(self) -> list[str]:
        """Block type of each layer, "mlstm" or "slstm", from input to output."""
        every = self.slstm_every
        return [
            "slstm" if every > 0 and (index + 1) % every == 0 else "mlstm"
            for index in range(self.num_layers)
        ]


class XLSTMClassifier(SequenceClassifier):
    """Binary classifier of windows [B, T, F] built from mLSTM and sLSTM blocks."""

    def __init__(
        self,
        config: XLSTMConfig | None,
        num_features: int,
        seq_len: int | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            config = XLSTMConfig()
        if not isinstance(config, XLSTMConfig):
            raise TypeError(f"config must be an XLSTMConfig or None, got {type(config).__name__}")
        check_input_sizes(config.architecture, num_features, seq_len)
        self.config = config
        self.num_features = num_features
        # seq_len is part of the common constructor. Neither block type needs a fixed length.
        self.seq_len = seq_len

        self.input_proj = nn.Linear(num_features, config.d_model)
        block_classes = {"mlstm": MLSTMBlock, "slstm": SLSTMBlock}
        self.layers = nn.ModuleList(
            block_classes[block_type](
                config.d_model, config.num_heads, config.proj_factor, config.dropout
            )
            for block_type in config.block_types
        )
        self.final_norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return one logit per window.

        Shape:
            x: (B, T, F) windows of F features. Returns (B,) logits.
        """
        self._check_windows(x)
        hidden = self.input_proj(x)  # (B, T, d_model)
        for layer in self.layers:
            hidden = layer(hidden)
        hidden = self.final_norm(hidden)

        pooled = hidden.mean(dim=1)  # (B, d_model)
        return self.head(self.dropout(pooled)).squeeze(-1)  # (B,)
