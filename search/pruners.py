"""Pruners of a study: the underfit rule and Optuna's pruners on validation F1.

Both read the trial record that the objective writes every epoch. The intermediate
value at step e is the validation F1 after epoch e (epochs count from 0). The user
attribute ``train_f1_curve`` lists the F1 on a fixed sample of training windows.
``CombinedPruner`` consults the underfit rule first, then the Optuna pruner, and keeps
which of them stopped each trial and why, for the ``pruned_by`` and
``prune_reason`` attributes.

Statistical caveat for every default below: F1 at threshold 0.5 on a few hundred
windows moves by several points (0.02 to 0.05) from one epoch to the next without
any real change in the model, so each rule looks at several epochs before it acts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "OPTUNA_PRUNERS",
    "CombinedPruner",
    "PruneDecision",
    "PrunerSettings",
    "UnderfitPruner",
    "build_pruner",
]

_logger = logging.getLogger(__name__)

TRAIN_F1_CURVE_ATTR = "train_f1_curve"

# Names accepted for the Optuna pruner; the name is also the ``pruned_by`` value.
OPTUNA_PRUNERS: tuple[str, ...] = (
    "median",
    "percentile",
    "successive_halving",
    "hyperband",
    "none",
)


@dataclasses.dataclass(frozen=True)
class PruneDecision:
    """The rule that stopped a trial (``underfit`` or an Optuna pruner's name) and its reason."""

    pruned_by: str
    reason: str


# Options of the wrong type raise ValueError too, so callers catch one class for bad options.
def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")  # noqa: TRY004
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1) (an F1 difference), got {value}")


class UnderfitPruner(BasePruner):
    """Prune a trial whose model underfits: validation F1 above training F1 while training stalls.

    At epoch e (from ``warmup_epochs`` on) the rule holds when both
    - val F1[e] > train F1[e] + ``margin``, and
    - train F1 is flat: the best train F1 of the last ``stagnation_window`` epochs
      (e - window + 1 .. e) beats the best before them by at most ``min_delta``.
    The trial is pruned when the rule has held for ``underfit_patience`` consecutive
    epochs. A model that fits its training windows no better than unseen ones, and no
    longer improves on them, lacks capacity or learning rate. More epochs will not fix that.

    Defaults: ``margin`` 0.02 and ``min_delta`` 0.02 are at or below the epoch-to-epoch
    noise of F1 on a few hundred windows, so a single epoch proves nothing. The 5-epoch
    window and 3 consecutive epochs make a chance gap unlikely to prune. A
    model still gaining less than ``min_delta`` per window counts as flat: at that pace
    the epoch cap ends training before it catches up. With much smaller evaluation
    samples, raise ``margin`` or ``underfit_patience``.

    Train F1 is read from the trial's user attribute ``train_f1_curve`` (a list indexed
    by epoch), which the objective must set before ``trial.report``; validation F1 from
    the intermediate values. A trial without the attribute is never pruned by this rule.
    """

    def __init__(
        self,
        *,
        margin: float = 0.02,
        min_delta: float = 0.02,
        stagnation_window: int = 5,
        underfit_patience: int = 3,
        warmup_epochs: int = 5,
    ) -> None:
        _check_fraction("margin", margin)
        _check_fraction("min_delta", min_delta)
        _check_int("stagnation_window", stagnation_window, 1)
        _check_int("underfit_patience", underfit_patience, 1)
        _check_int("warmup_epochs", warmup_epochs, 0)

        self.margin = float(margin)
        self.min_delta = float(min_delta)
        self.stagnation_window = stagnation_window
        self.underfit_patience = underfit_patience
        self.warmup_epochs = warmup_epochs

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        return self.explain(study, trial) is not None

    def explain(self, study: Study, trial: FrozenTrial) -> str | None:
        """Return the prune reason when the rule prunes ``trial`` at its last step, else None."""
        step = trial.last_step
        if step is None:
            return None

        train_curve = trial.user_attrs.get(TRAIN_F1_CURVE_ATTR)
        if not isinstance(train_curve, list):
            return None

        val_values = trial.intermediate_values
        for offset in range(self.underfit_patience):
            if not self._holds_at(step - offset, train_curve, val_values):
                return None

        val_f1 = val_values[step]
        train_f1 = train_curve[step]
        return (
            f"underfit: val F1 {val_f1:.3f} > train F1 {train_f1:.3f} and train F1 flat for "
            f"{self.stagnation_window} epochs, for {self.underfit_patience} consecutive epochs "
            f"up to epoch {step}"
        )

    def _holds_at(self, epoch: int, train_curve: list[float], val_values: dict[int, float]) -> bool:
        if epoch < self.warmup_epochs or epoch >= len(train_curve) or epoch not in val_values:
            return False

        # Stagnation compares the window with at least one epoch before it.
        window_start = epoch - self.stagnation_window + 1
        if window_start < 1:
            return False

        val_f1 = val_values[epoch]
        train_f1 = train_curve[epoch]
        if not (math.isfinite(val_f1) and math.isfinite(train_f1)):
            return False
        if val_f1 <= train_f1 + self.margin:
            return False

        best_before = max(train_curve[:window_start])
        best_in_window = max(train_curve[window_start : epoch + 1])
        return best_in_window - best_before <= self.min_delta


def _build_optuna_pruner(name: str, options: dict[str, Any]) -> BasePruner | None:
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(**options)
        if name == "percentile":
            return optuna.pruners.PercentilePruner(**options)
        if name == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(**options)
    except TypeError as error:
        raise ValueError(f"invalid option for the {name} pruner: {error}") from error
    return None


def _best_so_far(trial: FrozenTrial, step: int) -> float:
    values = [value for s, value in trial.intermediate_values.items() if s <= step]
    finite = [value for value in values if math.isfinite(value)]
    return max(finite) if finite else math.nan


class CombinedPruner(BasePruner):
    """Prune when the underfit rule or an Optuna pruner on validation F1 decides to.

    The default Optuna pruner is ``MedianPruner`` with 5 startup trials and 10 warmup
    epochs: it compares the trial's best validation F1 so far with the median of the
    completed trials at the same epoch, so one noisy epoch does not stop a trial, and
    it needs no budget up front. Hyperband and successive halving assume many cheap
    trials and stop most of them after a few epochs. Noisy F1 and transformers that
    warm up slowly make those early stops unreliable, so they are available by name only.

    ``explain(study, trial)`` returns the last decision made for a trial in this
    process (by trial number; one pruner instance serves one study) as a
    ``PruneDecision``; the objective turns it into ``pruned_by`` and ``prune_reason``.

    NOTE: wrapped in this class, ``HyperbandPruner`` still prunes within its brackets,
    but Optuna's samplers no longer restrict themselves to the trial's bracket (they
    do that only when the study's pruner is a ``HyperbandPruner`` itself).
    """

    def __init__(
        self,
        underfit: UnderfitPruner | None,
        optuna_pruner: BasePruner | None,
        optuna_pruner_name: str = "median",
    ) -> None:
        if underfit is not None and not isinstance(underfit, UnderfitPruner):
            raise ValueError(f"underfit must be an UnderfitPruner or None, got {underfit!r}")
        if optuna_pruner is not None and not isinstance(optuna_pruner, BasePruner):
            raise ValueError(
                f"optuna_pruner must be an Optuna pruner or None, got {optuna_pruner!r}"
            )

        self.underfit = underfit
        self.optuna_pruner = optuna_pruner
        self.optuna_pruner_name = optuna_pruner_name
        self._decisions: dict[int, PruneDecision] = {}

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        decision = self._decide(study, trial)
        if decision is None:
            self._decisions.pop(trial.number, None)
            return False

        self._decisions[trial.number] = decision
        return True

    def explain(self, study: Study, trial: FrozenTrial | optuna.Trial) -> PruneDecision | None:
        """Return the decision of the last ``prune`` call on ``trial`` that pruned it."""
        return self._decisions.get(trial.number)

    def _decide(self, study: Study, trial: FrozenTrial) -> PruneDecision | None:
        if self.underfit is not None:
            reason = self.underfit.explain(study, trial)
            if reason is not None:
                return PruneDecision("underfit", reason)

        if self.optuna_pruner is None or not self.optuna_pruner.prune(study, trial):
            return None
        return PruneDecision(self.optuna_pruner_name, self._optuna_reason(study, trial))

    def _optuna_reason(self, study: Study, trial: FrozenTrial) -> str:
        step = trial.last_step
        assert step is not None  # Optuna pruners never prune a trial without reports
        best = _best_so_far(trial, step)
        name = self.optuna_pruner_name

        if isinstance(self.optuna_pruner, optuna.pruners.PercentilePruner):
            # MedianPruner is a PercentilePruner at 50. Optuna compares the best value
            # so far with the percentile of completed trials' values at this step.
            percentile = float(getattr(self.optuna_pruner, "_percentile", 50.0))
            completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            at_step = [
                t.intermediate_values[step] for t in completed if step in t.intermediate_values
            ]
            if at_step:
                threshold = float(np.nanpercentile(at_step, 100.0 - percentile))
                cut = "median" if percentile == 50.0 else f"cut that keeps the top {percentile:g}%"
                return (
                    f"{name}: best val F1 so far {best:.3f} is below {threshold:.3f}, the "
                    f"{cut} of {len(at_step)} completed trials at epoch {step}"
                )

        return (
            f"{name}: best val F1 so far {best:.3f} at epoch {step} ranks below the trials it keeps"
        )


@dataclasses.dataclass(frozen=True)
class PrunerSettings:
    """Settings of a study's pruners, stored with the study so every worker builds the same.

    ``optuna_pruner`` is one of ``OPTUNA_PRUNERS``; ``optuna_options`` are keyword
    arguments of that Optuna class (None gives the defaults documented on
    ``CombinedPruner``). ``underfit`` False switches the underfit rule off.
    """

    optuna_pruner: str = "median"
    optuna_options: dict[str, Any] | None = None
    underfit: bool = True
    margin: float = 0.02
    min_delta: float = 0.02
    stagnation_window: int = 5
    underfit_patience: int = 3
    warmup_epochs: int = 5

    def __post_init__(self) -> None:
        if self.optuna_pruner not in OPTUNA_PRUNERS:
            raise ValueError(
                f"optuna_pruner must be one of {', '.join(OPTUNA_PRUNERS)}, got "
                f"{self.optuna_pruner!r} (wilcoxon is left out: it compares per-instance "
                "losses, not epochs)"
            )
        if self.optuna_options is not None and not isinstance(self.optuna_options, dict):
            raise ValueError(f"optuna_options must be a mapping, got {self.optuna_options!r}")
        # Build once so bad values fail here, with the pruner's own message.
        build_pruner(self)

    def resolved_optuna_options(self) -> dict[str, Any]:
        """Return the Optuna pruner's keyword arguments with archsweep's defaults filled in."""
        if self.optuna_options is not None:
            return dict(self.optuna_options)
        if self.optuna_pruner == "median":
            return {"n_startup_trials": 5, "n_warmup_steps": 10}
        if self.optuna_pruner == "percentile":
            return {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 10}
        return {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> PrunerSettings:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(
                f"unknown pruner setting(s) {', '.join(unknown)}; valid settings are "
                f"{', '.join(sorted(known))}"
            )
        return cls(**mapping)


def build_pruner(settings: PrunerSettings | None = None) -> CombinedPruner:
    """Build the study pruner that ``settings`` describe (None gives the defaults)."""
    settings = settings or PrunerSettings()

    underfit = None
    if settings.underfit:
        underfit = UnderfitPruner(
            margin=settings.margin,
            min_delta=settings.min_delta,
            stagnation_window=settings.stagnation_window,
            underfit_patience=settings.underfit_patience,
            warmup_epochs=settings.warmup_epochs,
        )

    optuna_pruner = _build_optuna_pruner(settings.optuna_pruner, settings.resolved_optuna_options())
    return CombinedPruner(underfit, optuna_pruner, settings.optuna_pruner)
