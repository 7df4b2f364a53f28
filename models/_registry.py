"""Registry of the six architectures: names, config classes and model construction."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ._base import ModelConfig, SequenceClassifier
from .bayesian import BayesianClassifier, BayesianConfig
from .mamba import MambaClassifier, MambaConfig
from .mcdropout import MCDropoutClassifier, MCDropoutConfig
from .tft import TFTClassifier, TFTConfig
from .transformer import TransformerClassifier, TransformerConfig
from .xlstm import XLSTMClassifier, XLSTMConfig

__all__ = [
    "ARCHITECTURES",
    "CONFIG_CLASSES",
    "MODEL_CLASSES",
    "build_model",
    "config_from_dict",
    "count_parameters",
    "resolve_config",
]

_logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = ("transformer", "tft", "bayesian", "mcdropout", "mamba", "xlstm")

CONFIG_CLASSES: dict[str, type[ModelConfig]] = {
    "transformer": TransformerConfig,
    "tft": TFTConfig,
    "bayesian": BayesianConfig,
    "mcdropout": MCDropoutConfig,
    "mamba": MambaConfig,
    "xlstm": XLSTMConfig,
}

MODEL_CLASSES: dict[str, type[SequenceClassifier]] = {
    "transformer": TransformerClassifier,
    "tft": TFTClassifier,
    "bayesian": BayesianClassifier,
    "mcdropout": MCDropoutClassifier,
    "mamba": MambaClassifier,
    "xlstm": XLSTMClassifier,
}


def _check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; valid architectures are "
            f"{', '.join(ARCHITECTURES)}"
        )


def config_from_dict(architecture: str, mapping: dict[str, Any]) -> ModelConfig:
    """Build ``architecture``'s config from a mapping of its fields (missing ones default).

    Raises ValueError for an unknown architecture, an unknown field or an invalid value.
    """
    _check_architecture(architecture)
    return CONFIG_CLASSES[architecture].from_dict(mapping)


def resolve_config(
    architecture: str, config: ModelConfig | dict[str, Any] | None
) -> ModelConfig:
    """Return ``config`` as ``architecture``'s config dataclass (None gives the defaults)."""
    _check_architecture(architecture)
    config_class = CONFIG_CLASSES[architecture]

    if config is None:
        return config_class()
    if isinstance(config, dict):
        return config_class.from_dict(config)
    if not isinstance(config, config_class):
        raise ValueError(
            f"config for architecture {architecture!r} must be a {config_class.__name__}, "
            f"a dict of its fields or None, got {type(config).__name__}"
        )

    # Dataclasses can be mutated after construction; check again before building.
    config.validate()
    return config


def build_model(
    architecture: str,
    config: ModelConfig | dict[str, Any] | None = None,
    num_features: int | None = None,
    seq_len: int | None = None,
) -> SequenceClassifier:
    """Build ``architecture``'s classifier for windows [B, T, num_features].

    ``config`` is the architecture's config dataclass, a dict of its fields or None
    for the defaults. ``seq_len`` (T) may be None: no architecture here needs it.
    """
    resolved = resolve_config(architecture, config)
    if num_features is None:
        raise ValueError(
            "build_model needs num_features, the number of input features F of the windows "
            "[B, T, F]; pass num_features=dataset.num_features"
        )
    return MODEL_CLASSES[architecture](resolved, num_features, seq_len)


def count_parameters(
    architecture: str,
    config: ModelConfig | dict[str, Any] | None,
    num_features: int,
) -> int:
    """Return the number of trainable parameters of the model ``build_model`` would build.

    Both the mean and the spread of a variational weight count. The model is built on
    PyTorch's meta device, so no memory is allocated for its weights. A module that
    cannot be built there is built on the CPU instead.
    """
    try:
        with torch.device("meta"):
            model = build_model(architecture, config, num_features)
    except (NotImplementedError, RuntimeError) as error:
        _logger.debug(
            "building %s on the meta device failed (%s); counting on the CPU", architecture, error
        )
        model = build_model(architecture, config, num_features)

    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
