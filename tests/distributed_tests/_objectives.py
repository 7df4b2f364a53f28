"""Trial functions for the distributed tests.

They live in a module, not in the test files, so that Ray workers and worker subprocesses
import them by name (``tests.distributed_tests._objectives``) when they unpickle them.
"""

from __future__ import annotations

import dataclasses
import time

import optuna
from optuna.trial import TrialState

# Trial user attributes with the Unix time a trial's objective started and ended.
STARTED_AT = "started_at"
ENDED_AT = "ended_at"


@dataclasses.dataclass(frozen=True)
class StepObjective:
    """Sample ``x``, report it at ``steps`` steps of ``step_s`` seconds each, return it.

    Each step writes to the storage, like an epoch of a real trial does. Sleeping in short
    steps keeps the trial interruptible: Ray delivers a cancellation between bytecodes.
    """

    steps: int = 3
    step_s: float = 0.1

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr(STARTED_AT, time.time())
        for step in range(self.steps):
            time.sleep(self.step_s)
            trial.report(x * (step + 1) / self.steps, step)
        trial.set_user_attr(ENDED_AT, time.time())
        return x


@dataclasses.dataclass(frozen=True)
class BarrierObjective:
    """Wait until ``started_trials`` trials of the study have started, then hold ``hold_s``.

    Trials that run at the same time therefore overlap for at least ``hold_s`` seconds, which
    makes the number of trials Ray runs at once visible in their start and end times.
    """

    started_trials: int
    hold_s: float = 1.0
    timeout_s: float = 60.0

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(STARTED_AT, time.time())
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            started = trial.study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)
            )
            if len(started) >= self.started_trials:
                break
            time.sleep(0.2)
        time.sleep(self.hold_s)
        trial.set_user_attr(ENDED_AT, time.time())
        return 0.0


@dataclasses.dataclass(frozen=True)
class SlowAfterObjective:
    """Finish the first ``quick_trials`` trials at once; later trials run for ``slow_s`` seconds."""

    quick_trials: int = 2
    slow_s: float = 120.0

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number >= self.quick_trials:
            deadline = time.monotonic() + self.slow_s
            while time.monotonic() < deadline:
                time.sleep(0.1)
        return x


@dataclasses.dataclass(frozen=True)
class FailingFirstObjective:
    """Raise ValueError in trial 0 (a bug in the objective); later trials return ``x``."""

    message: str = "objective bug in trial 0"

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 0:
            raise ValueError(self.message)
        return x
