"""Training of one model configuration: the objective's inner loop.

``train_model`` trains a classifier with AdamW on the training split. After every
epoch it scores the model with the same procedure on a fixed sample of training
windows and on the validation split: F1 at threshold 0.5 and AUPRC of
``model.predict``, so stochastic models are scored by their predictive mean on both
sides. It keeps the weights of the epoch with the best validation F1 and stops early
after ``patience`` epochs without improvement. The test split is never read here.

Epochs count from 0: ``val_f1_curve[e]`` is the validation F1 after epoch e.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score
from torch import nn

if TYPE_CHECKING:
    from models import ModelConfig, SequenceClassifier
    from search.data import Dataset, SplitArrays

__all__ = [
    "EpochCallback",
    "TrainResult",
    "TrainSettings",
    "TrialFailed",
    "evaluate",
    "resolve_device",
    "train_model",
]

_logger = logging.getLogger(__name__)

# Probability at or above which a window is predicted positive.
DECISION_THRESHOLD = 0.5

# Text of the RuntimeError that PyTorch's CPU allocator raises when memory runs out.
_CPU_OOM_TEXT = "can't allocate memory"


class TrialFailed(RuntimeError):
    """Training cannot go on (non-finite loss, out of memory); ``reason`` is one sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class TrainSettings:
    """Optimiser, stopping and evaluation settings of every trial in a study.

    ``train_eval_windows`` caps the fixed sample of training windows scored each
    epoch. The sample is also no larger than the validation split, so both F1 values
    carry about the same sampling noise. ``kl_weight`` scales the KL term of
    ``bayesian`` models, which is divided by the number of training windows (the
    per-window share of the ELBO's KL) and ramped up linearly over the first
    ``kl_anneal_epochs`` epochs (factor (e + 1) / kl_anneal_epochs at epoch e, then 1)
    so the posterior first fits the data before the prior pulls on it.
    ``eval_samples`` is the number of stochastic passes behind each per-epoch score of
    the sampling models (``bayesian``, ``mcdropout``); their own ``num_samples`` (20 by
    default) still serves ``predict`` outside training. Scoring every epoch with 20
    passes over the validation and train-sample windows costs about five times the
    epoch's training on CPU; 5 passes keep the sampling error of a mean probability
    near 0.45 standard deviations of one pass, small against epoch-to-epoch F1 noise.
    ``device`` is ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or
    ``cuda:N``.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-6
    label_smoothing: float = 0.0
    max_epochs: int = 70
    patience: int = 16
    batch_size: int = 64
    seed: int = 0
    train_eval_windows: int = 1024
    eval_batch_size: int = 256
    eval_samples: int = 5
    kl_weight: float = 1.0
    kl_anneal_epochs: int = 10
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting, its rule and its value."""
        for name in (
            "max_epochs",
            "patience",
            "batch_size",
            "train_eval_windows",
            "eval_batch_size",
            "eval_samples",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        _check_int("kl_anneal_epochs", self.kl_anneal_epochs, minimum=0)

        _check_number("lr", self.lr)
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("weight_decay", "kl_weight"):
            _check_number(name, getattr(self, name))
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        _check_number("label_smoothing", self.label_smoothing)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")

        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        ):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> TrainSettings:
        """Build settings from ``to_dict`` output; unknown keys raise ValueError."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {', '.join(unknown)}; valid settings are "
                f"{', '.join(sorted(known))}"
            )
        return cls(**mapping)


# A setting of the wrong type raises ValueError too, so callers catch one class.
def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


@dataclasses.dataclass
class TrainResult:
    """Curves (indexed by epoch), the best epoch and its weights, of one training run.

    ``best_state`` is a CPU copy of the state dict after ``best_epoch``; it is None
    until the first epoch ends.
    """

    train_f1_curve: list[float] = dataclasses.field(default_factory=list)
    val_f1_curve: list[float] = dataclasses.field(default_factory=list)
    val_auprc_curve: list[float] = dataclasses.field(default_factory=list)
    train_auprc_curve: list[float] = dataclasses.field(default_factory=list)
    train_loss_curve: list[float] = dataclasses.field(default_factory=list)
    best_epoch: int = -1
    best_val_f1: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    num_parameters: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def num_epochs(self) -> int:
        return len(self.val_f1_curve)


# Called after every epoch with the epoch number and the result so far; an exception
# it raises (for example optuna.TrialPruned) stops training and propagates.
EpochCallback = Callable[[int, TrainResult], None]


def resolve_device(device: str) -> torch.device:
    """Turn ``auto`` into ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


@torch.no_grad()
def _predict_probabilities(
    model: SequenceClassifier,
    X: np.ndarray,
    batch_size: int,
    device: torch.device,
    num_samples: int | None,
) -> np.ndarray:
    probabilities = []
    for start in range(0, len(X), batch_size):
        batch = torch.as_tensor(X[start : start + batch_size], dtype=torch.float32, device=device)
        mean_probability, _ = model.predict(batch, num_samples=num_samples)  # [B] each
        probabilities.append(mean_probability.float().cpu().numpy())
    if not probabilities:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(probabilities)


def _scores(y: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    predicted = (probability >= DECISION_THRESHOLD).astype(np.int64)
    f1 = float(f1_score(y, predicted, zero_division=0))
    # Average precision is undefined without a positive window; 0.0 keeps curves numeric.
    auprc = float(average_precision_score(y, probability)) if y.any() else 0.0
    return {"f1": f1, "auprc": auprc}


def evaluate(
    model: SequenceClassifier,
    split_arrays: SplitArrays,
    batch_size: int = 256,
    *,
    device: torch.device | str | None = None,
    indices: np.ndarray | None = None,
    num_samples: int | None = None,
) -> dict[str, float]:
    """Score ``model.predict`` on a split (or the windows at ``indices`` of it).

    ``num_samples`` sets the stochastic passes of a sampling model (None: its
    ``config.num_samples``); deterministic models ignore it.

    Returns ``f1`` at threshold 0.5 (0.0 when nothing is predicted positive) and
    ``auprc`` (sklearn's average precision; 0.0 for a split without positives).
    """
    if device is None:
        device = next(model.parameters()).device
    X = split_arrays.X if indices is None else split_arrays.X[indices]
    y = split_arrays.y if indices is None else split_arrays.y[indices]

    probability = _predict_probabilities(model, X, batch_size, torch.device(device), num_samples)
    return _scores(np.asarray(y), probability)


def _train_eval_indices(num_train: int, num_val: int, cap: int, seed: int) -> np.ndarray:
    size = min(num_train, num_val, cap)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size=size, replace=False))


def _check_split(name: str, split_arrays: SplitArrays) -> None:
    if len(split_arrays.y) == 0:
        raise ValueError(f"the {name} split has no windows; give it more sessions")
    if not np.any(split_arrays.y == 1):
        raise ValueError(
            f"the {name} split has no positive window, so F1 is undefined; "
            "choose another split (--split-seed or session lists)"
        )


def _kl_factor(settings: TrainSettings, epoch: int) -> float:
    if settings.kl_anneal_epochs == 0:
        return settings.kl_weight
    return settings.kl_weight * min(1.0, (epoch + 1) / settings.kl_anneal_epochs)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()
    }


def train_model(
    architecture: str,
    config: ModelConfig | dict[str, Any] | None,
    dataset: Dataset,
    settings: TrainSettings | None = None,
    *,
    epoch_callback: EpochCallback | None = None,
    log_context: str = "",
) -> TrainResult:
    """Train ``architecture`` with ``config`` on ``dataset.train``, scoring every epoch.

    The loss is BCE with logits, ``pos_weight`` = negatives / positives of the
    training split and targets smoothed towards 0.5 by ``label_smoothing``; models
    with ``kl_divergence()`` add their KL term as ``TrainSettings`` describes.
    Runs are reproducible per ``settings.seed`` on one device (Python, NumPy and
    torch seeds, and a seeded batch order).

    Raises TrialFailed when the loss becomes NaN or infinite or the device runs out
    of memory, and ValueError when the train or validation split has no positive
    window. ``log_context`` (e.g. study and trial ids) prefixes the log lines.
    """
    import models  # deferred so that importing search stays light

    settings = settings or TrainSettings()
    device = resolve_device(settings.device)
    prefix = f"{log_context}: " if log_context else ""

    _check_split("train", dataset.train)
    _check_split("val", dataset.val)

    _seed_everything(settings.seed)
    result = TrainResult()
    model: SequenceClassifier | None = None
    try:
        model = models.build_model(
            architecture, config, num_features=dataset.num_features, seq_len=dataset.seq_len
        )
        result.num_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        _fit(model, dataset, settings, device, result, epoch_callback, prefix)
    except RuntimeError as error:
        # torch.OutOfMemoryError (a RuntimeError) on GPUs; a plain RuntimeError from
        # the CPU allocator.
        if not isinstance(error, torch.OutOfMemoryError) and _CPU_OOM_TEXT not in str(error):
            raise
        model = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        reason = f"out of memory on {device} at epoch {result.num_epochs}: {_first_line(error)}"
        _logger.error("%s%s", prefix, reason)
        raise TrialFailed(reason) from error

    return result


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _fit(
    model: SequenceClassifier,
    dataset: Dataset,
    settings: TrainSettings,
    device: torch.device,
    result: TrainResult,
    epoch_callback: EpochCallback | None,
    prefix: str,
) -> None:
    started = time.perf_counter()
    model.to(device)

    X_train = torch.as_tensor(dataset.train.X, dtype=torch.float32, device=device)
    y_train = torch.as_tensor(dataset.train.y, dtype=torch.float32, device=device)
    num_train = len(y_train)
    num_positive = float(y_train.sum().item())
    pos_weight = torch.tensor((num_train - num_positive) / num_positive, device=device)

    train_eval_indices = _train_eval_indices(
        num_train, len(dataset.val.y), settings.train_eval_windows, settings.seed
    )
    kl_divergence = getattr(model, "kl_divergence", None)  # bayesian only

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    loss_function = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    # Batch order comes from its own generator, so it depends on the seed alone.
    order_generator = torch.Generator().manual_seed(settings.seed)

    for epoch in range(settings.max_epochs):
        model.train()
        order = torch.randperm(num_train, generator=order_generator).to(device)
        loss_sum = 0.0
        for start in range(0, num_train, settings.batch_size):
            batch = order[start : start + settings.batch_size]
            logits = model(X_train[batch])  # [B]
            targets = (
                y_train[batch] * (1.0 - settings.label_smoothing) + 0.5 * settings.label_smoothing
            )
            loss = loss_function(logits, targets)
            if kl_divergence is not None:
                loss = loss + _kl_factor(settings, epoch) * kl_divergence() / num_train

            loss_value = float(loss.item())
            if not math.isfinite(loss_value):
                reason = (
                    f"training loss became {loss_value} at epoch {epoch}, batch "
                    f"{start // settings.batch_size}; lower the learning rate (lr {settings.lr:g})"
                )
                _logger.warning("%s%s", prefix, reason)
                raise TrialFailed(reason)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss_value * len(batch)

        train_scores = evaluate(
            model,
            dataset.train,
            settings.eval_batch_size,
            device=device,
            indices=train_eval_indices,
            num_samples=settings.eval_samples,
        )
        val_scores = evaluate(
            model,
            dataset.val,
            settings.eval_batch_size,
            device=device,
            num_samples=settings.eval_samples,
        )

        result.train_loss_curve.append(loss_sum / num_train)
        result.train_f1_curve.append(train_scores["f1"])
        result.train_auprc_curve.append(train_scores["auprc"])
        result.val_f1_curve.append(val_scores["f1"])
        result.val_auprc_curve.append(val_scores["auprc"])
        if val_scores["f1"] > result.best_val_f1:
            result.best_val_f1 = val_scores["f1"]
            result.best_epoch = epoch
            result.best_state = _copy_state(model)
        result.seconds = time.perf_counter() - started

        _logger.debug(
            "%sepoch %d: loss %.4f, train F1 %.3f, val F1 %.3f, val AUPRC %.3f",
            prefix,
            epoch,
            result.train_loss_curve[-1],
            train_scores["f1"],
            val_scores["f1"],
            val_scores["auprc"],
        )
        if epoch_callback is not None:
            epoch_callback(epoch, result)

        if epoch - result.best_epoch >= settings.patience:
            result.stopped_early = True
            _logger.info(
                "%sstopped early after epoch %d: no better val F1 for %d epochs",
                prefix,
                epoch,
                settings.patience,
            )
            break
