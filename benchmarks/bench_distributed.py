"""Service overhead per trial and trial throughput of run_distributed on PostgreSQL.

For each worker count (default 1, 2, 4, 8) the benchmark runs ``run_distributed`` on one
study in a fresh PostgreSQL database. Its objective sleeps ``--trial-s`` seconds in
``--steps`` steps and reports an intermediate value after each step, as a training loop does
per epoch. Sleeping uses no CPU, so the figures measure the service (storage, heartbeats,
quota, Ray scheduling), not training.

Per trial:
- in-trial overhead: the trial's wall time as Optuna records it (datetime_start to
  datetime_complete) minus the time the objective slept. It covers study.ask, the
  intermediate-value and attribute writes, the heartbeat thread and study.tell.
- scheduling latency: the gap between a worker's trial ending and its next trial
  starting: stale-trial check, trial counts, the quota actor and the engine's set-up.
- overhead share: (in-trial overhead + scheduling latency) / (trial wall time + scheduling
  latency), using means.

Per run: trials per hour in the steady state (trials / (last end - first start)) and over
the whole run including Ray worker start-up. The scaling efficiency is the steady-state
throughput with W workers / (W * throughput with 1 worker).

Usage:
    python benchmarks/bench_distributed.py OUT.json [--workers 1,2,4,8] [--trials-per-worker 8]
        [--trial-s 0.5] [--steps 5] [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna

# Run as a script from the repository root or from benchmarks/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search._ray_runtime import init_ray
from search._ray_worker import ATTR_WORKER
from search.data import DataSpec
from search.distributed import run_distributed
from storage import close_storage, open_storage

_logger = logging.getLogger("bench_distributed")

SLEPT_ATTR = "slept_s"


@dataclasses.dataclass(frozen=True)
class SleepObjective:
    """Sleep ``trial_s`` seconds in ``steps`` steps, reporting a value after each step.

    It is defined in the script, so Ray pickles it by value and workers need not import it.
    """

    trial_s: float
    steps: int

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        slept = 0.0
        for step in range(self.steps):
            started = time.perf_counter()
            time.sleep(self.trial_s / self.steps)
            slept += time.perf_counter() - started
            trial.report(x * (step + 1) / self.steps, step)
        trial.set_user_attr(SLEPT_ATTR, slept)
        return x


def _admin_connection(admin_url: str) -> Any:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    return psycopg.connect(
        host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username or "postgres",
        password=url.password, dbname=url.database or "postgres", autocommit=True,
    )


def _create_database(admin_url: str) -> tuple[str, str]:
    from sqlalchemy.engine import make_url

    name = f"archsweep_bench_{uuid.uuid4().hex[:12]}"
    with _admin_connection(admin_url) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    return name, url.render_as_string(hide_password=False)


def _drop_database(admin_url: str, name: str) -> None:
    with _admin_connection(admin_url) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _seconds(later: datetime.datetime, earlier: datetime.datetime) -> float:
    return (later - earlier).total_seconds()


def _start_end(trial: optuna.trial.FrozenTrial) -> tuple[datetime.datetime, datetime.datetime]:
    """Return the trial's start and end as Optuna recorded them (local time, microseconds)."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        raise ValueError(f"trial {trial.number} has not finished ({trial.state.name})")
    return trial.datetime_start, trial.datetime_complete


def measure(storage_url: str, workers: int, trials_per_worker: int, trial_s: float, steps: int) -> dict[str, Any]:
    """Run one distributed run and return its overhead and throughput figures."""
    group = f"bench{workers}"
    n_trials = workers * trials_per_worker
    started_at = datetime.datetime.now()
    started = time.monotonic()
    summary = run_distributed(
        group, storage_url, ["transformer"], DataSpec("watch", max_train_sessions=1),
        n_trials=n_trials, workers=workers, gpus_per_trial=0, enqueue_defaults=False,
        heartbeat_interval=1, grace_period=5, poll_interval=2.0,
        objective=SleepObjective(trial_s, steps),
    )
    run_s = time.monotonic() - started
    if not summary.ok:
        raise RuntimeError(f"workers failed: {summary.worker_errors}")

    storage = open_storage(storage_url, heartbeat_interval=0)
    try:
        trials = optuna.load_study(study_name=f"{group}/transformer", storage=storage).get_trials()
    finally:
        close_storage(storage)

    times = {t.number: _start_end(t) for t in trials}
    wall = [_seconds(times[t.number][1], times[t.number][0]) for t in trials]
    in_trial = [w - t.user_attrs[SLEPT_ATTR] for w, t in zip(wall, trials, strict=True)]

    gaps: list[float] = []
    first_start: list[float] = []
    by_worker: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        by_worker.setdefault(trial.user_attrs[ATTR_WORKER]["index"], []).append(trial)
    for worker_trials in by_worker.values():
        worker_trials.sort(key=lambda t: times[t.number][0])
        first_start.append(_seconds(times[worker_trials[0].number][0], started_at))
        gaps.extend(
            _seconds(times[later.number][0], times[earlier.number][1])
            for earlier, later in itertools.pairwise(worker_trials)
        )

    steady_s = _seconds(
        max(end for _, end in times.values()), min(start for start, _ in times.values())
    )
    mean_wall = statistics.fmean(wall)
    mean_in_trial = statistics.fmean(in_trial)
    mean_gap = statistics.fmean(gaps) if gaps else 0.0
    return {
        "workers": workers,
        "trials": len(trials),
        "trial_sleep_s": trial_s,
        "trial_wall_s_mean": mean_wall,
        "in_trial_overhead_s_mean": mean_in_trial,
        "in_trial_overhead_s_p95": _percentile(in_trial, 95),
        "scheduling_latency_s_mean": mean_gap,
        "scheduling_latency_s_p95": _percentile(gaps, 95) if gaps else 0.0,
        "overhead_share": (mean_in_trial + mean_gap) / (mean_wall + mean_gap),
        "worker_start_latency_s_mean": statistics.fmean(first_start),
        "trials_per_hour_steady": len(trials) / steady_s * 3600,
        "trials_per_hour_with_startup": len(trials) / run_s * 3600,
        "run_s": run_s,
    }


def _percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSON file to write")
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts, comma separated")
    parser.add_argument("--trials-per-worker", type=int, default=8)
    parser.add_argument("--trial-s", type=float, default=0.5, help="seconds each trial sleeps")
    parser.add_argument("--steps", type=int, default=5, help="intermediate values per trial")
    parser.add_argument(
        "--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a login that may create databases; each run gets its own, dropped afterwards",
    )
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _logger.setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker_counts = [int(value) for value in args.workers.split(",")]

    init_ray(num_cpus=max(worker_counts), object_store_memory=100 * 1024**2)
    runs = []
    for workers in worker_counts:
        name, storage_url = _create_database(args.postgres)
        try:
            runs.append(measure(storage_url, workers, args.trials_per_worker, args.trial_s, args.steps))
        finally:
            _drop_database(args.postgres, name)
        _logger.info("workers %d: %s", workers, json.dumps(runs[-1]))

    single = next((run for run in runs if run["workers"] == 1), None)
    for run in runs:
        if single is not None:
            run["scaling_efficiency"] = run["trials_per_hour_steady"] / (
                run["workers"] * single["trials_per_hour_steady"]
            )

    result = {
        "benchmark": "bench_distributed",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "optuna": optuna.__version__,
            "ray": __import__("ray").__version__,
        },
        "settings": {
            "trials_per_worker": args.trials_per_worker,
            "trial_s": args.trial_s,
            "steps": args.steps,
            "storage": "PostgreSQL at " + args.postgres.split("@")[-1].rsplit("/", 1)[0],
        },
        "runs": runs,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
