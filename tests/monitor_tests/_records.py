"""Finished trials carrying the archsweep trial record, for the figure and publishing tests.

The search engine writes this record during real training; these helpers write the same
attributes directly, so a test can set exact curves and outcomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

__all__ = ["DISTRIBUTIONS", "add_record_trial", "record_trial"]

DISTRIBUTIONS = {
    "d_model": CategoricalDistribution([8, 16, 32]),
    "num_layers": IntDistribution(1, 3),
}


def record_trial(
    train_f1: Sequence[float],
    val_f1: Sequence[float],
    *,
    state: TrialState = TrialState.COMPLETE,
    params: dict[str, Any] | None = None,
    num_parameters: int | None = 1000,
    pruned_by: str | None = None,
    prune_reason: str | None = None,
    fail_reason: str | None = None,
    first_epoch: int = 0,
    number: int = 0,
) -> FrozenTrial:
    """Build a finished trial whose record holds these curves (epochs from ``first_epoch``).

    ``number`` is the trial number; Study.add_trial replaces it with the next one.
    """
    user_attrs: dict[str, Any] = {
        "train_f1_curve": list(train_f1),
        "val_f1_curve": list(val_f1),
        "val_auprc_curve": [min(value + 0.05, 1.0) for value in val_f1],
    }
    best_index = max(range(len(val_f1)), key=lambda index: val_f1[index])
    if state == TrialState.COMPLETE:
        user_attrs["best_epoch"] = first_epoch + best_index
    if num_parameters is not None:
        user_attrs["num_parameters"] = num_parameters
    if pruned_by is not None:
        user_attrs["pruned_by"] = pruned_by
    if prune_reason is not None:
        user_attrs["prune_reason"] = prune_reason
    if fail_reason is not None:
        user_attrs["fail_reason"] = fail_reason

    trial = optuna.trial.create_trial(
        state=state,
        value=max(val_f1) if state == TrialState.COMPLETE else None,
        params=params if params is not None else {"d_model": 16, "num_layers": 2},
        distributions=DISTRIBUTIONS,
        user_attrs=user_attrs,
        intermediate_values={first_epoch + index: value for index, value in enumerate(val_f1)},
    )
    trial.number = number
    return trial


def add_record_trial(study: optuna.Study, *args: Any, **kwargs: Any) -> FrozenTrial:
    """Add a :func:`record_trial` to ``study`` and return it as stored (with its trial id)."""
    study.add_trial(record_trial(*args, **kwargs))
    return study.get_trials(deepcopy=False)[-1]
