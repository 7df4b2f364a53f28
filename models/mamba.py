"""Mamba (selective state space) sequence classifier.

Architecture: a linear input projection from F features to ``d_model``, then
``num_layers`` pre-norm residual blocks ``x + dropout(mixer(rms_norm(x)))``. The mixer is
the Mamba block of Gu and Dao (2023). A final RMS norm, the mean over time steps and a
linear head return one logit per window.

The mixer has two implementations with the same parameter names, shapes and
initialisation (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``,
``out_proj``), so a state dict saved from one loads into the other:

- with CUDA available and ``mamba_ssm`` importable, ``mamba_ssm.modules.mamba_simple.Mamba``
  and its fused CUDA kernels;
- everywhere else ``MambaMixer``, the same computation in plain PyTorch with the selective
  scan of ``models._mamba_scan``.

A model built on a CUDA machine and then run on CPU still works: a ``mamba_ssm`` block that
receives a CPU tensor runs the plain PyTorch computation on its own parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import ClassVar, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from models._base import ModelConfig, SequenceClassifier, check_input_sizes
from models._mamba_scan import selective_scan_time_major

__all__ = ["MambaClassifier", "MambaConfig", "MambaMixer"]

_logger = logging.getLogger(__name__)

# Limits of mamba_ssm's CUDA kernels, enforced for both paths so that every valid config
# runs on either. causal-conv1d supports kernel widths 2 to 4, and the selective-scan
# kernel supports d_state up to 256 (MAX_DSTATE in mamba_ssm's selective_scan.cpp).
_MIN_D_CONV = 2
_MAX_D_CONV = 4
_MAX_D_STATE = 256

# mamba_ssm's defaults for the time-step initialisation, kept so that both paths start
# from the same distribution. softplus(dt_proj.bias) is log-uniform in [DT_MIN, DT_MAX].
_DT_MIN = 0.001
_DT_MAX = 0.1
_DT_INIT_FLOOR = 1e-4

_RMS_NORM_EPS = 1e-5


@dataclasses.dataclass
class MambaConfig(ModelConfig):
    """Sizes of the Mamba classifier. Each block's inner width is ``expand * d_model``."""

    architecture: ClassVar[str] = "mamba"

    d_model: int = 128
    num_layers: int = 3
    dropout: float = 0.1
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"  # "auto" = ceil(d_model / 16), mamba_ssm's rule

    def validate(self) -> None:
        self._check_int_positive("d_model", "num_layers", "d_state", "d_conv", "expand")
        self._check_dropout()
        if not _MIN_D_CONV <= self.d_conv <= _MAX_D_CONV:
            raise ValueError(
                f"mamba.d_conv must lie in [{_MIN_D_CONV}, {_MAX_D_CONV}] because mamba_ssm's "
                f"causal-conv1d kernel supports only those widths, got {self.d_conv}"
            )
        if self.d_state > _MAX_D_STATE:
            raise ValueError(
                f"mamba.d_state must be at most {_MAX_D_STATE}, the limit of mamba_ssm's "
                f"selective-scan kernel, got {self.d_state}"
            )
        if self.dt_rank != "auto":
            if isinstance(self.dt_rank, bool) or not isinstance(self.dt_rank, int):
                raise ValueError(
                    f'mamba.dt_rank must be "auto" or a positive integer, got {self.dt_rank!r}'
                )
            if self.dt_rank <= 0:
                raise ValueError(f"mamba.dt_rank must be positive, got {self.dt_rank}")

    @property
    def d_inner(self) -> int:
        """Width of the block's inner channels."""
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        """Rank of the time-step projection, with "auto" resolved."""
        if self.dt_rank == "auto":
            return math.ceil(self.d_model / 16)
        return int(self.dt_rank)


@functools.lru_cache(maxsize=1)
def _fused_mamba_class() -> type[nn.Module] | None:
    """Return mamba_ssm's ``Mamba`` class when CUDA and mamba_ssm work here, else None.

    mamba_ssm imports its compiled CUDA extension unconditionally, so the import can fail
    with an ImportError (not installed, undefined symbol), an OSError (missing CUDA library)
    or a RuntimeError (driver mismatch). The outcome is cached and logged once per process.
    """
    if not torch.cuda.is_available():
        _logger.info(
            "mamba: CUDA is not available, so the blocks use the pure PyTorch selective scan"
        )
        return None

    try:
        from mamba_ssm.modules.mamba_simple import Mamba  # type: ignore[import-not-found]
    except (ImportError, OSError, RuntimeError) as error:
        _logger.info(
            "mamba: importing mamba_ssm failed (%s: %s), so the blocks use the pure PyTorch "
            "selective scan",
            type(error).__name__,
            error,
        )
        return None

    _logger.info("mamba: the blocks use mamba_ssm's fused CUDA kernels")
    return Mamba  # type: ignore[no-any-return]


class MambaMixer(nn.Module):
    """Mamba block in plain PyTorch with mamba_ssm's parameter names, shapes and init.

    Parameters (E = d_inner = expand * d_model, N = d_state, R = dt_rank, W = d_conv):
    ``in_proj.weight`` (2E, d_model), ``conv1d.weight`` (E, 1, W), ``conv1d.bias`` (E,),
    ``x_proj.weight`` (R + 2N, E), ``dt_proj.weight`` (E, R), ``dt_proj.bias`` (E,),
    ``A_log`` (E, N), ``D`` (E,), ``out_proj.weight`` (d_model, E).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        # Depthwise convolution over time. The padding of d_conv - 1 and the cut to the first
        # L outputs in forward make it causal.
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=True,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        # dt_proj.weight uniform in +-dt_rank**-0.5 preserves the variance of the time step.
        dt_init_std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)

        # dt_proj.bias is the inverse softplus of a log-uniform time step in [DT_MIN, DT_MAX].
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(_DT_MAX) - math.log(_DT_MIN)) + math.log(_DT_MIN)
        ).clamp(min=_DT_INIT_FLOOR)
        inverse_softplus_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus_dt)

        # S4D-real initialisation: A[d, n] = -(n + 1), stored as log(-A) in float32.
        state_index = torch.arange(1, d_state + 1, dtype=torch.float32)
        self.A_log = nn.Parameter(torch.log(state_index).repeat(self.d_inner, 1))  # (E, N)
        self.D = nn.Parameter(torch.ones(self.d_inner))  # skip connection from u to y

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Map hidden states (B, L, d_model) to (B, L, d_model)."""
        return mixer_forward(self, hidden_states)


class MambaParameters(Protocol):
    """Parameters that ``mixer_forward`` reads, common to mamba_ssm's ``Mamba`` and ours."""

    in_proj: nn.Linear
    conv1d: nn.Conv1d
    x_proj: nn.Linear
    dt_proj: nn.Linear
    out_proj: nn.Linear
    A_log: nn.Parameter
    D: nn.Parameter


def mixer_forward(mixer: MambaParameters, hidden_states: torch.Tensor) -> torch.Tensor:
    """Run a Mamba block's computation in plain PyTorch on its parameters.

    It works on a ``MambaMixer`` and on a mamba_ssm ``Mamba`` alike because both have the
    same parameters. The steps follow mamba_ssm's non-fused path, with the selective scan
    of ``models._mamba_scan``.

    Shape:
        hidden_states: (B, L, d_model). Returns (B, L, d_model).
    """
    seq_len = hidden_states.shape[1]
    d_state = mixer.A_log.shape[1]
    dt_rank = mixer.dt_proj.weight.shape[1]

    xz = mixer.in_proj(hidden_states)  # (B, L, 2E)
    x, z = xz.chunk(2, dim=-1)  # (B, L, E) each
    x = F.silu(mixer.conv1d(x.transpose(1, 2))[..., :seq_len])  # (B, E, L), causal
    # The scan runs time-major, so one time step is one contiguous slice.
    x = x.permute(2, 0, 1).contiguous()  # (B, E, L) -> (L, B, E)
    z = z.transpose(0, 1)  # (L, B, E)

    x_dbl = mixer.x_proj(x)  # (L, B, R + 2N)
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    dt = F.linear(dt, mixer.dt_proj.weight)  # (L, B, E), bias added in the scan

    # Like mamba_ssm, take A, D and the time-step bias in float32 at least.
    ssm_dtype = torch.promote_types(mixer.A_log.dtype, torch.float32)
    A = -torch.exp(mixer.A_log.to(ssm_dtype))  # (E, N), negative so every decay is in (0, 1]
    y = selective_scan_time_major(
        x,
        dt,
        A,
        B,
        C,
        D=mixer.D.to(ssm_dtype),
        z=z,
        delta_bias=mixer.dt_proj.bias.to(ssm_dtype),
        delta_softplus=True,
    )  # (L, B, E)
    return mixer.out_proj(y.transpose(0, 1))  # (B, L, E) -> (B, L, d_model)


class _ResidualBlock(nn.Module):
    """Pre-norm residual block: x + dropout(mixer(rms_norm(x)))."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(config.d_model, eps=_RMS_NORM_EPS)
        fused_class = _fused_mamba_class()
        mixer_class = MambaMixer if fused_class is None else fused_class
        self.mixer = mixer_class(
            d_model=config.d_model,
            d_state=config.d_state,
            d_conv=config.d_conv,
            expand=config.expand,
            dt_rank=config.dt_rank,
        )
        self.uses_fused_kernels = fused_class is not None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map x (B, L, d_model) to (B, L, d_model)."""
        normed = self.norm(x)
        if self.uses_fused_kernels and not normed.is_cuda:
            mixed = mixer_forward(cast(MambaParameters, self.mixer), normed)
        else:
            mixed = self.mixer(normed)
        return x + self.dropout(mixed)


class MambaClassifier(SequenceClassifier):
    """Binary classifier of windows [B, T, F] built from Mamba blocks."""

    def __init__(
        self,
        config: MambaConfig | None,
        num_features: int,
        seq_len: int | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            config = MambaConfig()
        if not isinstance(config, MambaConfig):
            raise TypeError(f"config must be a MambaConfig or None, got {type(config).__name__}")
        check_input_sizes(config.architecture, num_features, seq_len)
        self.config = config
        self.num_features = num_features
        # seq_len is part of the common constructor. The recurrence needs no fixed length.
        self.seq_len = seq_len

        self.input_proj = nn.Linear(num_features, config.d_model)
        self.layers = nn.ModuleList(_ResidualBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.RMSNorm(config.d_model, eps=_RMS_NORM_EPS)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, 1)

    @property
    def uses_fused_kernels(self) -> bool:
        """Whether the blocks are mamba_ssm's modules with fused CUDA kernels."""
        return any(layer.uses_fused_kernels for layer in self.layers)

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
