"""train_model and evaluate on small real windows of the watch data set."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

import models
from search.data import Dataset, DataSpec, SplitArrays, load_dataset
from search.training import (
    TrainResult,
    TrainSettings,
    TrialFailed,
    evaluate,
    train_model,
)

TINY_TRANSFORMER = {"d_model": 16, "num_heads": 2, "d_ff": 32, "num_layers": 1, "dropout": 0.1}


def _every(split: SplitArrays, step: int) -> SplitArrays:
    return SplitArrays(X=split.X[::step], y=split.y[::step], session=split.session[::step])


@functools.lru_cache(maxsize=1)
def _small_watch() -> Dataset:
    """A few hundred real windows per split: one train session, every 4th val window."""
    torch.set_num_threads(1)
    dataset = load_dataset(DataSpec("watch", max_train_sessions=1))
    return dataclasses.replace(dataset, val=_every(dataset.val, 4), test=_every(dataset.test, 4))


def _settings(**overrides: object) -> TrainSettings:
    values: dict = {"max_epochs": 3, "patience": 10, "seed": 0, "device": "cpu"}
    values.update(overrides)
    return TrainSettings(**values)


def test_train_model_curves_and_best_epoch() -> None:
    dataset = _small_watch()

    result = train_model("transformer", TINY_TRANSFORMER, dataset, _settings(max_epochs=4))

    assert result.num_epochs == 4
    for curve in (
        result.train_f1_curve,
        result.val_f1_curve,
        result.val_auprc_curve,
        result.train_auprc_curve,
        result.train_loss_curve,
    ):
        assert len(curve) == 4
        assert all(math.isfinite(value) for value in curve)
    assert result.best_epoch == int(np.argmax(result.val_f1_curve))
    assert result.best_val_f1 == max(result.val_f1_curve)
    assert result.num_parameters == models.count_parameters("transformer", TINY_TRANSFORMER, 6)
    assert not result.stopped_early


def test_train_model_best_state_reproduces_val_f1() -> None:
    dataset = _small_watch()
    result = train_model("transformer", TINY_TRANSFORMER, dataset, _settings(max_epochs=4))

    model = models.build_model("transformer", TINY_TRANSFORMER, num_features=dataset.num_features)
    assert result.best_state is not None
    model.load_state_dict(result.best_state)

    assert evaluate(model, dataset.val)["f1"] == pytest.approx(result.best_val_f1)


def test_train_model_same_seed_same_curves() -> None:
    dataset = _small_watch()

    first = train_model("transformer", TINY_TRANSFORMER, dataset, _settings(seed=3))
    second = train_model("transformer", TINY_TRANSFORMER, dataset, _settings(seed=3))
    other = train_model("transformer", TINY_TRANSFORMER, dataset, _settings(seed=4))

    assert first.train_loss_curve == second.train_loss_curve
    assert first.val_f1_curve == second.val_f1_curve
    assert first.train_loss_curve != other.train_loss_curve


def test_train_model_early_stopping_after_patience() -> None:
    dataset = _small_watch()

    # lr 1e-7 leaves the model as initialised, so val F1 never improves after epoch 0.
    result = train_model(
        "transformer", TINY_TRANSFORMER, dataset, _settings(lr=1e-7, max_epochs=20, patience=2)
    )

    assert result.stopped_early
    assert result.num_epochs - 1 - result.best_epoch == 2
    assert result.num_epochs < 20


def test_train_model_epoch_callback_sees_each_epoch_and_can_stop() -> None:
    dataset = _small_watch()
    seen: list[tuple[int, int]] = []

    class Stop(Exception):
        pass

    def callback(epoch: int, partial: TrainResult) -> None:
        seen.append((epoch, len(partial.val_f1_curve)))
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train_model("transformer", TINY_TRANSFORMER, dataset, _settings(), epoch_callback=callback)

    assert seen == [(0, 1), (1, 2)]


def test_train_model_non_finite_loss_raises_trial_failed() -> None:
    dataset = _small_watch()

    with pytest.raises(TrialFailed) as raised:
        train_model("transformer", TINY_TRANSFORMER, dataset, _settings(lr=1e12, max_epochs=5))

    assert "training loss became" in raised.value.reason
    assert "lower the learning rate" in raised.value.reason


def test_train_model_out_of_memory_raises_trial_failed() -> None:
    dataset = _small_watch()
    # A feed-forward layer of 2**40 units needs terabytes for its weights.
    huge = dict(TINY_TRANSFORMER, d_ff=2**40)

    with pytest.raises(TrialFailed) as raised:
        train_model("transformer", huge, dataset, _settings())

    assert raised.value.reason.startswith("out of memory on cpu at epoch 0")


def test_train_model_never_reads_test_split() -> None:
    dataset = _small_watch()
    poisoned = dataclasses.replace(
        dataset,
        test=SplitArrays(
            X=np.full_like(dataset.test.X, np.nan), y=dataset.test.y, session=dataset.test.session
        ),
    )

    clean = train_model("transformer", TINY_TRANSFORMER, dataset, _settings(max_epochs=2))
    result = train_model("transformer", TINY_TRANSFORMER, poisoned, _settings(max_epochs=2))

    assert result.val_f1_curve == clean.val_f1_curve


def test_train_model_val_without_positives_raises() -> None:
    dataset = _small_watch()
    negatives = dataset.val.y == 0
    no_positive_val = dataclasses.replace(
        dataset,
        val=SplitArrays(
            X=dataset.val.X[negatives],
            y=dataset.val.y[negatives],
            session=dataset.val.session[negatives],
        ),
    )

    with pytest.raises(ValueError, match="val split has no positive window"):
        train_model("transformer", TINY_TRANSFORMER, no_positive_val, _settings())


def test_train_model_bayesian_with_kl_term() -> None:
    dataset = _small_watch()
    config = {"d_model": 16, "num_heads": 2, "d_ff": 32, "num_layers": 1, "num_samples": 3}

    result = train_model("bayesian", config, dataset, _settings(max_epochs=2, kl_anneal_epochs=2))

    assert result.num_epochs == 2
    assert all(math.isfinite(value) for value in result.train_loss_curve)
    assert result.train_loss_curve[0] > 0


TINY_CONFIGS = {
    "transformer": TINY_TRANSFORMER,
    "tft": {"d_model": 16, "num_heads": 2, "d_ff": 32, "num_layers": 1},
    "bayesian": {"d_model": 16, "num_heads": 2, "d_ff": 32, "num_layers": 1, "num_samples": 2},
    "mcdropout": {"d_model": 16, "num_heads": 2, "d_ff": 32, "num_layers": 1, "num_samples": 2},
    "mamba": {"d_model": 16, "num_layers": 1, "d_state": 4, "expand": 1},
    "xlstm": {"d_model": 16, "num_layers": 2, "num_heads": 2, "proj_factor": 1},
}


@pytest.mark.parametrize("architecture", sorted(TINY_CONFIGS))
def test_train_model_every_architecture(architecture: str) -> None:
    dataset = _small_watch()

    result = train_model(architecture, TINY_CONFIGS[architecture], dataset, _settings(max_epochs=1))

    assert result.num_epochs == 1
    assert math.isfinite(result.train_loss_curve[0])
    assert 0.0 <= result.val_f1_curve[0] <= 1.0
    assert result.best_state is not None


def test_train_model_scores_sampling_models_with_eval_samples() -> None:
    """Per-epoch scores of mcdropout make eval_samples passes, not config.num_samples."""
    dataset = _small_watch()
    config = {**TINY_TRANSFORMER, "num_samples": 20}
    passes = []
    original_predict = models.MCDropoutClassifier.predict

    def counting_predict(self, x, num_samples=None):  # type: ignore[no-untyped-def]
        passes.append(num_samples)
        return original_predict(self, x, num_samples)

    models.MCDropoutClassifier.predict = counting_predict  # type: ignore[method-assign]
    try:
        result = train_model("mcdropout", config, dataset, _settings(max_epochs=1, eval_samples=3))
    finally:
        models.MCDropoutClassifier.predict = original_predict  # type: ignore[method-assign]

    assert passes and set(passes) == {3}

    model = models.build_model("mcdropout", config, num_features=dataset.num_features)
    assert result.best_state is not None
    model.load_state_dict(result.best_state)
    torch.manual_seed(0)
    first = evaluate(model, dataset.val, num_samples=3)
    torch.manual_seed(0)
    assert evaluate(model, dataset.val, num_samples=3) == first


def test_evaluate_matches_sklearn_on_predict() -> None:
    dataset = _small_watch()
    torch.manual_seed(0)
    model = models.build_model("transformer", TINY_TRANSFORMER, num_features=dataset.num_features)

    scores = evaluate(model, dataset.val, batch_size=37)

    probability, _ = model.predict(torch.as_tensor(dataset.val.X))
    probability = probability.numpy()
    assert scores["f1"] == pytest.approx(
        f1_score(dataset.val.y, probability >= 0.5, zero_division=0)
    )
    assert scores["auprc"] == pytest.approx(average_precision_score(dataset.val.y, probability))


def test_evaluate_no_predicted_positive_gives_zero_f1() -> None:
    dataset = _small_watch()
    model = models.build_model("transformer", TINY_TRANSFORMER, num_features=dataset.num_features)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-10.0)  # every probability ~ 4.5e-5

    scores = evaluate(model, dataset.val)

    assert scores["f1"] == 0.0
    assert 0.0 < scores["auprc"] <= 1.0


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("lr", 0.0, "lr must be positive"),
        ("weight_decay", -1.0, "weight_decay must be >= 0"),
        ("label_smoothing", 1.0, "label_smoothing must lie in [0, 1)"),
        ("max_epochs", 0, "max_epochs must be >= 1"),
        ("patience", 2.5, "patience must be an integer"),
        ("batch_size", True, "batch_size must be an integer"),
        ("eval_samples", 0, "eval_samples must be >= 1"),
        ("device", "tpu", "device must be auto, cpu, cuda or cuda:N"),
        ("lr", float("nan"), "lr must be a finite number"),
    ],
)
def test_train_settings_invalid_raises(field: str, value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        TrainSettings(**{field: value})

    assert fragment in str(raised.value)


def test_train_settings_defaults_and_round_trip() -> None:
    settings = TrainSettings()

    assert (settings.lr, settings.weight_decay, settings.label_smoothing) == (1e-3, 1e-6, 0.0)
    assert (settings.max_epochs, settings.patience) == (70, 16)
    assert settings.device == "auto"
    assert TrainSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainSettings.from_dict({"epochs": 3})
