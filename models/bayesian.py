"""Bayesian transformer: every linear layer has a Gaussian posterior over its weights.

Each weight w has a variational posterior N(mu, sigma^2) with sigma = softplus(rho),
trained by the reparameterisation trick (w = mu + sigma * eps, eps ~ N(0, 1); Blundell
et al., "Weight Uncertainty in Neural Networks", 2015) against a N(0, prior_sigma^2)
prior. ``kl_divergence()`` returns the closed-form KL(posterior || prior) summed over
every variational weight and bias; the trainer adds it to the loss with its own weight
and annealing.

When weights are sampled:
- train mode: one weight sample per forward pass, shared by the whole batch;
- eval mode: ``forward`` uses the posterior means, so it is deterministic;
- ``predict``: ``num_samples`` passes, each with its own weight sample and dropout
  off, returning the mean and standard deviation of the probabilities.

The variational layer is written here rather than taken from bayesian-torch. That
package depends on tensorboard and on torchvision, whose install replaces a CPU-only
torch with a CUDA build of several GB, while the layer itself is a few lines.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._base import ModelConfig, SequenceClassifier, check_input_sizes
from ._layers import EncoderBlock, sinusoidal_positions

__all__ = ["BayesianClassifier", "BayesianConfig", "BayesianLinear"]


@dataclasses.dataclass
class BayesianConfig(ModelConfig):
    """Sizes, prior and posterior initialisation of ``BayesianClassifier``."""

    architecture = "bayesian"

    d_model: int = 96
    num_heads: int = 8
    d_ff: int = 384
    num_layers: int = 2
    dropout: float = 0.05
    # Weight samples averaged by predict; the Monte Carlo error of the mean
    # probability is about std / sqrt(num_samples).
    num_samples: int = 20
    # Standard deviation of the zero-mean Gaussian prior on every weight and bias. It
    # matches the initial weight scale of a layer of width 96 (nn.Linear's init bound
    # is 1 / sqrt(96) ~ 0.1), so the KL term does not pull the spreads far past the
    # size of the weights themselves.
    prior_sigma: float = 0.1
    # Initial posterior standard deviation of every weight. Small, so training starts
    # close to a deterministic transformer and the KL term widens what it can.
    posterior_sigma_init: float = 0.01

    def validate(self) -> None:
        self._check_int_positive("d_model", "num_heads", "d_ff", "num_layers", "num_samples")
        self._check_divisible("d_model", "num_heads")
        self._check_dropout("dropout")
        self._check_number_positive("prior_sigma", "posterior_sigma_init")


# Above this, softplus(rho) equals rho to float precision (and expm1 would overflow
# far above it).
_SOFTPLUS_LINEAR_FROM = 20.0


def _inverse_softplus(value: float) -> float:
    # softplus(rho) = log(1 + exp(rho)); for small sigma, expm1 keeps the precision.
    if value > _SOFTPLUS_LINEAR_FROM:
        return value
    return math.log(math.expm1(value))


class BayesianLinear(nn.Module):
    """Linear layer with a factorised Gaussian posterior over its weight and bias.

    The layer samples ``weight`` and ``bias`` when the module is in train mode or
    ``sample_weights`` is True, and uses the posterior means otherwise. Both the
    means and the spreads (``*_rho``) are trainable parameters.

    Shape: x [..., in_features] -> [..., out_features].
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        prior_sigma: float,
        posterior_sigma_init: float,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.prior_sigma = prior_sigma
        self.sample_weights = False

        rho_init = _inverse_softplus(posterior_sigma_init)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_rho = nn.Parameter(torch.full((out_features, in_features), rho_init))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_rho = nn.Parameter(torch.full((out_features,), rho_init))

        # Means start as nn.Linear's weights do.
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.bias_mu, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.sample_weights):
            return F.linear(x, self.weight_mu, self.bias_mu)

        weight_sigma = F.softplus(self.weight_rho)
        bias_sigma = F.softplus(self.bias_rho)
        weight = self.weight_mu + weight_sigma * torch.randn_like(weight_sigma)
        bias = self.bias_mu + bias_sigma * torch.randn_like(bias_sigma)
        return F.linear(x, weight, bias)

    def kl_divergence(self) -> torch.Tensor:
        """Return KL(N(mu, sigma^2) || N(0, prior_sigma^2)) summed over weight and bias."""
        return self._gaussian_kl(self.weight_mu, self.weight_rho) + self._gaussian_kl(
            self.bias_mu, self.bias_rho
        )

    def _gaussian_kl(self, mu: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        sigma = F.softplus(rho)
        prior_variance = self.prior_sigma**2
        return (
            math.log(self.prior_sigma)
            - torch.log(sigma)
            + (sigma**2 + mu**2) / (2.0 * prior_variance)
            - 0.5
        ).sum()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"prior_sigma={self.prior_sigma}"
        )


class BayesianClassifier(SequenceClassifier):
    """Pre-norm transformer encoder with variational linear layers, mean-pooled to one logit.

    Same layout as ``TransformerClassifier``; the input projection, the attention
    and feed-forward projections and the head are ``BayesianLinear``. LayerNorm
    parameters are point estimates.

    Shape: x [B, T, F] -> logits [B].
    """

    config: BayesianConfig

    def __init__(
        self, config: BayesianConfig, num_features: int, seq_len: int | None = None
    ) -> None:
        super().__init__()
        check_input_sizes(config.architecture, num_features, seq_len)
        self.config = config
        self.num_features = num_features
        self.seq_len = seq_len

        def linear(in_features: int, out_features: int) -> BayesianLinear:
            return BayesianLinear(
                in_features,
                out_features,
                prior_sigma=config.prior_sigma,
                posterior_sigma_init=config.posterior_sigma_init,
            )

        self.input_proj = linear(num_features, config.d_model)
        self.input_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            EncoderBlock(config.d_model, config.num_heads, config.d_ff, config.dropout, linear)
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)
        self.head = linear(config.d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map windows x [B, T, F] to logits [B]."""
        self._check_windows(x)
        T = x.shape[1]

        hidden = self.input_proj(x)  # [B, T, d_model]
        hidden = hidden + sinusoidal_positions(
            T, self.config.d_model, device=x.device, dtype=hidden.dtype
        )
        hidden = self.input_dropout(hidden)
        for layer in self.layers:
            hidden = layer(hidden)  # [B, T, d_model]

        pooled = self.norm(hidden).mean(dim=1)  # [B, d_model]
        return self.head(pooled).squeeze(-1)  # [B]

    def kl_divergence(self) -> torch.Tensor:
        """Return the KL divergence of every variational layer from its prior, summed (scalar)."""
        layers = [module for module in self.modules() if isinstance(module, BayesianLinear)]
        return torch.stack([layer.kl_divergence() for layer in layers]).sum()

    def predict(
        self, x: torch.Tensor, num_samples: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mean probability [B] and its standard deviation [B] over weight samples.

        ``num_samples`` overrides ``config.num_samples`` for this call.
        """
        count = self.config.num_samples if num_samples is None else num_samples
        return self._predict_by_sampling(x, count)

    def _prepare_sampling(self) -> None:
        for module in self.modules():
            if isinstance(module, BayesianLinear):
                module.sample_weights = True

    def _finish_sampling(self) -> None:
        for module in self.modules():
            if isinstance(module, BayesianLinear):
                module.sample_weights = False
