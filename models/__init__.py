"""Binary sequence classifiers over windows [B, T, F], one logit per window.

Public surface: the architecture names, their config dataclasses, model construction,
parameter counting and loading models from preset files.
"""

from __future__ import annotations

from ._base import ModelConfig, SequenceClassifier
from ._preset import PRESET_FORMAT, PresetError, from_preset, load_preset, validate_preset
from ._registry import (
    ARCHITECTURES,
    CONFIG_CLASSES,
    MODEL_CLASSES,
    build_model,
    config_from_dict,
    count_parameters,
)
from .bayesian import BayesianClassifier, BayesianConfig, BayesianLinear
from .mamba import MambaClassifier, MambaConfig
from .mcdropout import MCDropoutClassifier, MCDropoutConfig
from .tft import TFTClassifier, TFTConfig
from .transformer import TransformerClassifier, TransformerConfig
from .xlstm import XLSTMClassifier, XLSTMConfig

__all__ = [
    "ARCHITECTURES",
    "CONFIG_CLASSES",
    "MODEL_CLASSES",
    "PRESET_FORMAT",
    "BayesianClassifier",
    "BayesianConfig",
    "BayesianLinear",
    "MCDropoutClassifier",
    "MCDropoutConfig",
    "MambaClassifier",
    "MambaConfig",
    "ModelConfig",
    "PresetError",
    "SequenceClassifier",
    "TFTClassifier",
    "TFTConfig",
    "TransformerClassifier",
    "TransformerConfig",
    "XLSTMClassifier",
    "XLSTMConfig",
    "build_model",
    "config_from_dict",
    "count_parameters",
    "from_preset",
    "load_preset",
    "validate_preset",
]
