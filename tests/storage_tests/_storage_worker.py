"""A worker process for the storage tests: opens a storage and runs trivial trials.

Run as ``python tests/storage_tests/_storage_worker.py MODE ...`` with the repository root on
PYTHONPATH. Modes:

- ``optimize``: create or load the study, run ``--trials`` trials, and append the number of
  each completed trial to ``--record``.
- ``hang``: start one trial, write its number to ``--marker``, then sleep until killed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import optuna

from storage import open_storage


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("optimize", "hang"))
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per trial")
    parser.add_argument("--heartbeat", type=int, default=0, help="seconds; 0 turns it off")
    parser.add_argument("--grace", type=int, default=None)
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--marker", type=Path, default=None)
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    storage = open_storage(args.storage, heartbeat_interval=args.heartbeat, grace_period=args.grace)
    study = optuna.create_study(
        study_name=args.study, storage=storage, direction="maximize", load_if_exists=True
    )

    if args.mode == "hang":
        study.optimize(lambda trial: _hang(trial, args.marker), n_trials=1)
        return 1  # not reached: the test kills this process

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if args.record is not None and trial.state == optuna.trial.TrialState.COMPLETE:
            with args.record.open("a") as file:
                file.write(f"{trial.number}\n")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        time.sleep(args.sleep)
        return x

    study.optimize(objective, n_trials=args.trials, callbacks=[record])
    return 0


def _hang(trial: optuna.Trial, marker: Path) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    # Write then rename, so the test never reads a half-written marker.
    partial = marker.with_suffix(".partial")
    partial.write_text(str(trial.number))
    partial.replace(marker)
    time.sleep(600)
    return x


if __name__ == "__main__":
    sys.exit(main())
