"""``archsweep train --preset`` and ``archsweep capacity``: single trainings outside a study.

``train`` retrains a preset's configuration from scratch with its seed and scores it
on the validation and the test split. No other command reads test windows.

``capacity`` is the tiny-overfit check: an architecture at its default size trains
on two sessions and is scored on one held-out session. A model that cannot reach
CAPACITY_TRAIN_F1 on windows it trains on lacks capacity (or its training is
broken), whatever the search later finds. The command exits with status 0 either
way and prints its verdict on the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from search.commands import CommandError, UsageError
from search.commands._common import parse_architectures, progress_stream

__all__ = [
    "CAPACITY_HELDOUT_SESSIONS",
    "CAPACITY_MAX_EPOCHS",
    "CAPACITY_TRAIN_F1",
    "CAPACITY_TRAIN_SESSIONS",
    "REPRODUCE_TOLERANCE",
    "capacity_command",
    "train_command",
]

_logger = logging.getLogger(__name__)

# A retrained preset whose validation F1 differs from the recorded one by more than this
# gets a warning. On one CPU with the same seed and data the retraining repeats the trial
# exactly (the CLI tests check this). Another thread count, CPU or GPU changes float sums,
# and F1 on a few hundred windows moves by 0.02 to 0.05 between neighbouring epochs.
REPRODUCE_TOLERANCE = 0.02

# The capacity check passes when train F1 reaches this; F1 counts the positive class only,
# so 0.95 leaves about one window in twenty of the minority class wrong.
CAPACITY_TRAIN_F1 = 0.95
# Epoch budget of the capacity check. Two watch subjects give about 600 to 1,000 windows
# (10 to 16 batches of 64), so this allows 300 to 480 optimiser steps.
CAPACITY_MAX_EPOCHS = 30
CAPACITY_TRAIN_SESSIONS = 2
CAPACITY_HELDOUT_SESSIONS = 1


def _verbosity(args: argparse.Namespace) -> int:
    return int(getattr(args, "verbose", 0) - getattr(args, "quiet", 0))


def _epoch_printer(enabled: bool, heldout_name: str) -> Any:
    def print_epoch(epoch: int, result: Any) -> None:
        if enabled:
            print(
                f"epoch {epoch}: loss {result.train_loss_curve[-1]:.4f}, train F1 "
                f"{result.train_f1_curve[-1]:.4f}, {heldout_name} F1 {result.val_f1_curve[-1]:.4f}",
                file=progress_stream(),
                flush=True,
            )

    return print_epoch


# ---------------------------------------------------------------------------
# train --preset


def _check_feature_count(preset: dict[str, Any], dataset: Any, preset_path: Path) -> None:
    expected = preset["data"]["num_features"]
    if dataset.num_features != expected:
        raise CommandError(
            f"preset {preset_path} was trained on {expected} features but the data "
            f"{dataset.spec.name} has {dataset.num_features} "
            f"({', '.join(dataset.feature_names)}); use the preset's data or data with the "
            "same features"
        )


def _load_preset_data(args: argparse.Namespace, preset: dict[str, Any], path: Path) -> Any:
    from search.data import DataError, data_spec_from_args, load_dataset
    from search.presets import preset_data_spec

    try:
        spec = preset_data_spec(preset)
    except DataError as error:
        raise CommandError(f"preset {path}: invalid data section: {error}") from None
    spec = data_spec_from_args(args, base=spec)
    dataset = load_dataset(spec)
    _check_feature_count(preset, dataset, path)

    recorded = preset["data"].get("fingerprint")
    if recorded and recorded != dataset.fingerprint:
        _logger.warning(
            "the data differs from the data preset %s was trained on (fingerprint %s, "
            "preset %s): windows, labels or the split changed, so the metrics will not "
            "match the preset's",
            path, dataset.fingerprint[:12], str(recorded)[:12],
        )
    return dataset


def train_command(args: argparse.Namespace) -> int:
    """Run ``archsweep train --preset FILE``; returns the exit status."""
    import models
    from search.cli import EXIT_OK
    from search.presets import preset_train_settings
    from search.training import evaluate, resolve_device, train_model

    path = Path(args.preset)
    preset = models.load_preset(path)
    architecture = preset["architecture"]
    try:
        settings = preset_train_settings(preset)
    except ValueError as error:
        raise models.PresetError(f"{path}: invalid training section: {error}") from None
    dataset = _load_preset_data(args, preset, path)

    _logger.info(
        "retraining %s from %s with seed %d for up to %d epochs",
        architecture, path, settings.seed, settings.max_epochs,
    )
    result = train_model(
        architecture, preset["model"], dataset, settings,
        epoch_callback=_epoch_printer(_verbosity(args) >= 0, "val"),
        log_context=f"train {path.name}",
    )

    # Score the best epoch's weights on the device they were trained on, with the
    # model's own predict (config.num_samples passes for mcdropout and bayesian).
    device = resolve_device(settings.device)
    model = models.build_model(
        architecture, preset["model"], num_features=dataset.num_features, seq_len=dataset.seq_len
    )
    assert result.best_state is not None  # train_model runs at least one epoch
    model.load_state_dict(result.best_state)
    model.to(device).eval()
    val_scores = evaluate(model, dataset.val, settings.eval_batch_size, device=device)
    test_scores = evaluate(model, dataset.test, settings.eval_batch_size, device=device)

    recorded = preset.get("metrics", {}).get("val_f1")
    print(_train_report(path, preset, dataset, result, val_scores, test_scores, recorded))
    # The preset's val F1 is the best epoch's score during its trial, so the retraining's
    # best-epoch score is what reproduces it. Scoring the best weights again with
    # num_samples passes gives mcdropout and bayesian a slightly different figure.
    if recorded is not None and abs(result.best_val_f1 - recorded) > REPRODUCE_TOLERANCE:
        _logger.warning(
            "val F1 %.4f differs from the preset's %.4f by more than %.2f; check the "
            "fingerprint warning above, the device and the library versions",
            result.best_val_f1, recorded, REPRODUCE_TOLERANCE,
        )
    return EXIT_OK


def _train_report(
    path: Path,
    preset: dict[str, Any],
    dataset: Any,
    result: Any,
    val_scores: dict[str, float],
    test_scores: dict[str, float],
    recorded_val_f1: float | None,
) -> str:
    source = preset.get("source", {})
    origin = ""
    if source.get("study") is not None:
        origin = f" (study {source['study']} trial {source.get('trial')})"
    recorded_epoch = preset.get("training", {}).get("best_epoch")
    same_data = preset["data"].get("fingerprint") == dataset.fingerprint

    val_line = f"val     F1 {result.best_val_f1:.4f} at the best epoch"
    if recorded_val_f1 is not None:
        difference = result.best_val_f1 - recorded_val_f1
        val_line += f" (preset {recorded_val_f1:.4f}, difference {difference:+.4f})"
    val_line += (
        f"; best weights scored again: F1 {val_scores['f1']:.4f}, AUPRC {val_scores['auprc']:.4f}"
    )
    lines = [
        f"preset  {path}{origin}",
        (
            f"data    {dataset.spec.name}, fingerprint {dataset.fingerprint[:12]} "
            f"({'same as' if same_data else 'differs from'} the preset's)"
        ),
        f"model   {preset['architecture']}, {result.num_parameters:,} parameters",
        f"epochs  {result.num_epochs} trained, best epoch {result.best_epoch}"
        + (f" (preset {recorded_epoch})" if recorded_epoch is not None else ""),
        val_line,
        f"test    F1 {test_scores['f1']:.4f}, AUPRC {test_scores['auprc']:.4f}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# capacity


def _subset(split_arrays: Any, sessions: list[str]) -> Any:
    from search.data import SplitArrays

    mask = np.isin(split_arrays.session.astype(str), sessions)
    return SplitArrays(
        X=split_arrays.X[mask], y=split_arrays.y[mask], session=split_arrays.session[mask]
    )


def _sessions_with_positives(split_arrays: Any) -> tuple[list[str], list[str]]:
    """Return the split's sessions with a positive window and those without, each sorted."""
    sessions = sorted({str(session) for session in split_arrays.session})
    labels = split_arrays.y
    session_ids = split_arrays.session.astype(str)
    with_positive = [s for s in sessions if labels[session_ids == s].any()]
    return with_positive, [s for s in sessions if s not in with_positive]


def _pick_sessions(dataset: Any) -> tuple[list[str], list[str]]:
    """Pick the capacity check's training sessions (from train) and held-out session (from val).

    Sessions with positive windows come first, in sorted order, so the choice is fixed
    for a data set and both sides can have an F1.
    """
    with_positive, without = _sessions_with_positives(dataset.train)
    train_sessions = (with_positive + without)[:CAPACITY_TRAIN_SESSIONS]
    if not with_positive:
        raise CommandError(
            f"the train split of {dataset.spec.name} has no positive window, so the capacity "
            "check has nothing to memorise; choose another split (--split-seed)"
        )
    if len(train_sessions) < CAPACITY_TRAIN_SESSIONS:
        raise CommandError(
            f"the train split of {dataset.spec.name} has {len(train_sessions)} session; the "
            f"capacity check trains on {CAPACITY_TRAIN_SESSIONS}. Give train more sessions "
            "(--split, or drop --max-train-sessions)"
        )

    heldout_with, heldout_without = _sessions_with_positives(dataset.val)
    if not heldout_with:
        raise CommandError(
            f"the validation split of {dataset.spec.name} has no positive window; choose "
            "another split (--split-seed)"
        )
    return train_sessions, (heldout_with + heldout_without)[:CAPACITY_HELDOUT_SESSIONS]


class _Memorised(Exception):
    """Raised from the epoch callback to end the capacity check once train F1 is reached."""


def capacity_command(args: argparse.Namespace) -> int:
    """Run ``archsweep capacity``; returns the exit status (0 whether or not it passes)."""
    import models
    from search.cli import EXIT_OK
    from search.data import data_spec_from_args, load_dataset
    from search.training import TrainResult, TrainSettings, train_model

    architectures = parse_architectures(args.arch)
    if len(architectures) != 1 or args.arch in (None, "all"):
        raise UsageError(
            f"capacity checks one architecture; pass --arch with one of "
            f"{', '.join(models.ARCHITECTURES)}, got {args.arch!r}"
        )
    architecture = architectures[0]
    dataset = load_dataset(data_spec_from_args(args))
    train_sessions, heldout_sessions = _pick_sessions(dataset)
    check_data = dataclasses.replace(
        dataset,
        train=_subset(dataset.train, train_sessions),
        val=_subset(dataset.val, heldout_sessions),
        test=_subset(dataset.val, heldout_sessions),
    )

    settings = TrainSettings(max_epochs=CAPACITY_MAX_EPOCHS, patience=CAPACITY_MAX_EPOCHS)
    steps_per_epoch = math.ceil(check_data.train.num_windows / settings.batch_size)
    print(
        f"capacity check of {architecture} at its default size on {dataset.spec.name}: "
        f"train sessions {', '.join(train_sessions)} ({check_data.train.num_windows} windows, "
        f"{check_data.train.num_positives} positive), held-out session "
        f"{', '.join(heldout_sessions)} ({check_data.val.num_windows} windows, "
        f"{check_data.val.num_positives} positive), up to {CAPACITY_MAX_EPOCHS} epochs "
        f"({CAPACITY_MAX_EPOCHS * steps_per_epoch} steps)"
    )

    progress = _epoch_printer(_verbosity(args) >= 0, "held-out")
    latest: list[TrainResult] = []

    def after_epoch(epoch: int, result: TrainResult) -> None:
        latest[:] = [result]
        progress(epoch, result)
        if result.train_f1_curve[-1] >= CAPACITY_TRAIN_F1:
            raise _Memorised()

    try:
        train_model(architecture, None, check_data, settings, epoch_callback=after_epoch,
                    log_context=f"capacity {architecture}")
    except _Memorised:
        pass
    result = latest[0]

    train_f1 = result.train_f1_curve[-1]
    heldout_f1 = result.val_f1_curve[-1]
    epochs = result.num_epochs
    num_parameters = models.count_parameters(architecture, None, dataset.num_features)
    passed = train_f1 >= CAPACITY_TRAIN_F1
    print(f"parameters   {num_parameters:,}")
    print(f"epochs       {epochs} ({epochs * steps_per_epoch} steps)")
    print(f"train F1     {train_f1:.4f} (threshold {CAPACITY_TRAIN_F1})")
    print(f"held-out F1  {heldout_f1:.4f}")
    if passed:
        print(
            f"verdict: pass: {architecture} memorises its training windows "
            f"(train F1 {train_f1:.4f} >= {CAPACITY_TRAIN_F1} after {epochs} epochs)"
        )
    else:
        print(
            f"verdict: fail: {architecture} does not memorise its training windows "
            f"(train F1 {train_f1:.4f} < {CAPACITY_TRAIN_F1} after {epochs} epochs)"
        )
    return EXIT_OK
