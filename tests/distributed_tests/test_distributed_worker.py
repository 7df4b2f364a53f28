"""run_worker (``archsweep worker``) as separate processes on a real PostgreSQL database.

The workers run _worker_script.py with a trivial objective of short storage-writing steps;
heartbeats beat every second with a 3-second grace period.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from search.data import DataSpec
from search.distributed import ATTR_WORKER, record_run_budget, run_worker
from search.engine import prepare_studies
from storage import close_storage, open_storage

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
WORKER_SCRIPT = Path(__file__).with_name("_worker_script.py")
HEARTBEAT_INTERVAL_S = 1
GRACE_PERIOD_S = 3
# Seconds a worker process may need, from its start to its last trial, on 2 busy cores.
WORKER_TIMEOUT_S = 120


def _prepare(storage_url: str, group: str, data_spec: DataSpec, n_trials: int | None) -> None:
    storage = open_storage(storage_url, heartbeat_interval=0)
    try:
        prepare_studies(group, storage, ["transformer"], data_spec, enqueue_defaults=False)
        if n_trials is not None:
            record_run_budget(storage, group, ["transformer"], n_trials, deadline=None)
    finally:
        close_storage(storage)


def _trials(storage_url: str, group: str) -> list[FrozenTrial]:
    storage = open_storage(storage_url, heartbeat_interval=0)
    try:
        return optuna.load_study(study_name=f"{group}/transformer", storage=storage).get_trials()
    finally:
        close_storage(storage)


@contextlib.contextmanager
def _workers(storage_url: str, group: str, count: int, log_dir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT))
    processes = []
    try:
        for index in range(count):
            with (log_dir / f"worker{index}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER_SCRIPT), "worker", "--storage", storage_url,
                         "--study", group, "--steps", "10", "--step-s", "0.1"],
                        cwd=REPOSITORY_ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=log,
                    )
                )
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _wait_for_running_trial(storage_url: str, group: str, pid: int) -> FrozenTrial:
    """Wait until the worker with ``pid`` is mid-trial, after at least one trial completed."""
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while time.monotonic() < deadline:
        trials = _trials(storage_url, group)
        completed = [t for t in trials if t.state is TrialState.COMPLETE]
        for trial in trials:
            if (
                trial.state is TrialState.RUNNING
                and completed
                and trial.user_attrs.get(ATTR_WORKER, {}).get("pid") == pid
                and trial.intermediate_values  # the objective has taken a step
            ):
                return trial
        time.sleep(0.2)
    raise TimeoutError(f"worker pid {pid} ran no trial within {WORKER_TIMEOUT_S} s")


def test_worker_sigkill_trial_failed_and_retried(
    postgres_database: str, small_watch: DataSpec, tmp_path: Path
) -> None:
    _prepare(postgres_database, "sigkill", small_watch, n_trials=6)

    with _workers(postgres_database, "sigkill", 2, tmp_path) as (victim, survivor):
        killed = _wait_for_running_trial(postgres_database, "sigkill", victim.pid)
        completed_before = {
            t.number: (t.params, t.value, t.datetime_complete)
            for t in _trials(postgres_database, "sigkill")
            if t.state is TrialState.COMPLETE
        }
        victim.kill()
        killed_at = datetime.datetime.now()
        victim.wait()

        survivor_status = survivor.wait(timeout=WORKER_TIMEOUT_S)

    assert survivor_status == 0, (tmp_path / "worker1.log").read_text()[-3000:]
    trials = {trial.number: trial for trial in _trials(postgres_database, "sigkill")}

    failed = trials[killed.number]
    assert failed.state is TrialState.FAIL
    assert failed.datetime_complete is not None
    failed_after_s = (failed.datetime_complete - killed_at).total_seconds()
    # The last heartbeat came before the kill, so the trial is stale one grace period after
    # the kill at the latest. The survivor looks for stale trials before each of its ~1 s
    # trials. A starved heartbeat thread can beat last well before the kill, so the lower
    # bound is only the kill itself.
    assert failed_after_s >= 0, failed_after_s
    assert failed_after_s <= GRACE_PERIOD_S + 5, failed_after_s

    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    assert retries[0].state is TrialState.COMPLETE
    assert retries[0].params == failed.params

    assert not [t for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number, record in completed_before.items():
        assert (trials[number].params, trials[number].value, trials[number].datetime_complete) == record
    # Budget: six trials that count; the killed one is replaced by its retry.
    assert sum(1 for t in trials.values() if t.state is TrialState.COMPLETE) == 6


def test_run_worker_without_budget_rejected(postgres_database: str, small_watch: DataSpec) -> None:
    _prepare(postgres_database, "nobudget", small_watch, n_trials=None)

    with pytest.raises(ValueError, match="no trial budget"):
        run_worker("nobudget", postgres_database, heartbeat_interval=0)


def test_run_worker_missing_study_rejected(postgres_database: str, small_watch: DataSpec) -> None:
    _prepare(postgres_database, "present", small_watch, n_trials=2)

    with pytest.raises(ValueError, match="no study of 'absent'"):
        run_worker("absent", postgres_database, heartbeat_interval=0)
    with pytest.raises(ValueError, match="'present/tft' does not exist"):
        run_worker("present", postgres_database, ["tft"], heartbeat_interval=0)


def test_run_worker_joins_in_process(postgres_database: str, small_watch: DataSpec) -> None:
    from tests.distributed_tests._objectives import StepObjective

    _prepare(postgres_database, "inproc", small_watch, n_trials=3)

    report = run_worker(
        "inproc", postgres_database, heartbeat_interval=HEARTBEAT_INTERVAL_S,
        grace_period=GRACE_PERIOD_S, poll_interval=0.5, objective=StepObjective(steps=1, step_s=0.0),
    )

    assert report.stop_reason == "trial budgets used up"
    assert [number for _, number, _ in report.trials] == [0, 1, 2]
    trials = _trials(postgres_database, "inproc")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].user_attrs[ATTR_WORKER]["pid"] == os.getpid()


def test_run_worker_ignores_unwatched_running_trial(postgres_database: str, small_watch: DataSpec) -> None:
    from tests.distributed_tests._objectives import StepObjective

    _prepare(postgres_database, "leftover", small_watch, n_trials=2)
    storage = open_storage(postgres_database, heartbeat_interval=0)
    try:
        # A trial left RUNNING by a process without heartbeats: nothing will ever end it.
        optuna.load_study(study_name="leftover/transformer", storage=storage).ask()
    finally:
        close_storage(storage)

    started = time.monotonic()
    report = run_worker(
        "leftover", postgres_database, timeout=60, heartbeat_interval=HEARTBEAT_INTERVAL_S,
        grace_period=GRACE_PERIOD_S, poll_interval=0.5, objective=StepObjective(steps=1, step_s=0.0),
    )

    assert report.stop_reason == "trial budgets used up"
    assert time.monotonic() - started < 30
    assert len(report.trials) == 1
