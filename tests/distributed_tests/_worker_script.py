"""A process for the distributed tests: ``run_worker`` or ``run_distributed`` with a test objective.

Run with the repository root as working directory and on PYTHONPATH:

- ``python tests/distributed_tests/_worker_script.py worker --storage URL --study GROUP``
  joins the group's studies (run_worker) with a StepObjective of ``--steps`` steps.
- ``python tests/distributed_tests/_worker_script.py driver --storage URL --study GROUP``
  runs run_distributed with a SlowAfterObjective and exits 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from search.data import DataSpec
from search.distributed import DistributedInterrupted, run_distributed, run_worker
from tests.distributed_tests._objectives import SlowAfterObjective, StepObjective


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("worker", "driver"))
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-s", type=float, default=0.1)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    heartbeat: dict[str, Any] = {"heartbeat_interval": 1, "grace_period": 3, "poll_interval": 0.5}

    if args.mode == "worker":
        report = run_worker(
            args.study, args.storage, objective=StepObjective(args.steps, args.step_s), **heartbeat
        )
        print(report.trials)
        return 0

    try:
        run_distributed(
            args.study, args.storage, ["transformer"], DataSpec("watch", max_train_sessions=1),
            n_trials=args.trials, workers=args.workers, gpus_per_trial=0, num_cpus=args.workers,
            object_store_memory=100 * 1024**2, enqueue_defaults=False,
            objective=SlowAfterObjective(quick_trials=2), **heartbeat,
        )
    except DistributedInterrupted as interrupted:
        print(interrupted.summary.describe())
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
