"""Shared pieces of the six classifiers: config validation and the predict protocol."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["ModelConfig", "SequenceClassifier", "check_input_sizes"]


@dataclasses.dataclass
class ModelConfig:
    """Base of the per-architecture config dataclasses.

    Subclasses declare their fields and override ``validate``; construction calls it,
    so an invalid config never exists.
    """

    architecture: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, the rule and the value of the first bad field."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> ModelConfig:
        """Build a config from a plain mapping, rejecting fields the config does not have.

        Fields missing from the mapping take their defaults.
        """
        if not isinstance(mapping, dict):
            raise ValueError(
                f"{cls.architecture} config must be a mapping of field names to values, "
                f"got {type(mapping).__name__}"
            )
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.architecture} config field(s) {', '.join(unknown)}; "
                f"valid fields are {', '.join(sorted(known))}"
            )
        return cls(**mapping)

    # Validation helpers shared by every architecture. Each raises ValueError that names
    # the field, the rule and the value received.

    def _check_int_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"{self.architecture}.{name} must be an integer, got {value!r}"
                )
            if value <= 0:
                raise ValueError(f"{self.architecture}.{name} must be positive, got {value}")

    def _check_number_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{self.architecture}.{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"{self.architecture}.{name} must be a positive finite number, got {value}"
                )

    def _check_dropout(self, name: str = "dropout") -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.architecture}.{name} must be a number, got {value!r}")
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{self.architecture}.{name} must lie in [0, 1), got {value}")

    def _check_divisible(self, numerator: str, denominator: str) -> None:
        top = getattr(self, numerator)
        bottom = getattr(self, denominator)
        if top % bottom != 0:
            raise ValueError(
                f"{self.architecture}.{numerator} ({top}) must be divisible by "
                f"{self.architecture}.{denominator} ({bottom})"
            )


def check_input_sizes(architecture: str, num_features: Any, seq_len: Any) -> None:
    """Raise ValueError unless ``num_features`` is a positive int and ``seq_len`` is None or one."""
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
        raise ValueError(
            f"{architecture}: num_features must be a positive integer (the F of windows "
            f"[N, T, F]), got {num_features!r}"
        )
    if seq_len is None:
        return
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(
            f"{architecture}: seq_len must be None or a positive integer (the T of windows "
            f"[N, T, F]), got {seq_len!r}"
        )


class SequenceClassifier(nn.Module):
    """Base of every classifier: ``forward`` maps windows [B, T, F] to logits [B].

    ``predict`` returns the predictive mean probability and its standard deviation.
    Deterministic models make one pass in eval mode and report zero deviation;
    stochastic ones override ``predict`` or ``_prepare_sampling`` (see
    ``_predict_by_sampling``).
    """

    config: ModelConfig
    num_features: int
    seq_len: int | None

    def _check_windows(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is [B, T, F] with the model's F."""
        if x.dim() != 3:
            raise ValueError(
                f"{self.config.architecture} expects windows of shape [B, T, F], "
                f"got a tensor of shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.num_features:
            raise ValueError(
                f"{self.config.architecture} was built for {self.num_features} features, "
                f"got windows with {x.shape[-1]} (shape {tuple(x.shape)})"
            )

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, num_samples: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the probability [B] of one deterministic pass and a zero deviation [B].

        ``num_samples`` is accepted for the sampling models' sake and ignored here.
        """
        was_training = self.training
        self.eval()
        try:
            probability = torch.sigmoid(self(x))
        finally:
            self.train(was_training)
        return probability, torch.zeros_like(probability)

    @torch.no_grad()
    def _predict_by_sampling(
        self, x: torch.Tensor, num_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mean and standard deviation of ``num_samples`` stochastic passes.

        The model is put in eval mode, then ``_prepare_sampling`` switches on its
        sources of randomness; the previous modes are restored afterwards. The passes
        draw from torch's global generator, so a fixed ``torch.manual_seed`` before the
        call gives the same result on the same device.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        modes = {module: module.training for module in self.modules()}
        self.eval()
        self._prepare_sampling()
        try:
            samples = torch.stack([torch.sigmoid(self(x)) for _ in range(num_samples)])
            # samples: [S, B]
        finally:
            for module, mode in modes.items():
                module.training = mode
            self._finish_sampling()

        # Population deviation (correction=0), so a single sample gives 0 and not NaN.
        return samples.mean(dim=0), samples.std(dim=0, correction=0)

    def _prepare_sampling(self) -> None:
        """Switch on the randomness used by ``_predict_by_sampling`` (model in eval mode)."""

    def _finish_sampling(self) -> None:
        """Undo what ``_prepare_sampling`` changed other than the train/eval modes."""
