"""run_distributed on a real local Ray instance and real storages (PostgreSQL, journal files).

Most trials here run a trivial objective through the same worker tasks, quota and storage
code as real trials. One test trains tiny models through the engine end to end. Heartbeats
beat every second with a 3-second grace period, so failure handling takes seconds.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import psycopg
import pytest
from optuna.trial import FrozenTrial, TrialState

from search._ray_runtime import RESERVED_PORTS, gcs_port
from search.data import DataSpec
from search.distributed import ATTR_WORKER, DistributedSummary, run_distributed
from search.space import parse_space
from search.training import TrainSettings
from storage import close_storage, open_storage
from tests._postgres import PostgresUnavailable, PrivateCluster, create_database
from tests.distributed_tests._objectives import (
    ENDED_AT,
    STARTED_AT,
    BarrierObjective,
    FailingFirstObjective,
    StepObjective,
)

pytestmark = pytest.mark.usefixtures("ray_cluster")

HEARTBEAT: dict[str, Any] = {"heartbeat_interval": 1, "grace_period": 3, "poll_interval": 0.5}
QUICK = StepObjective(steps=2, step_s=0.1)


def _trials(storage_url: str, group: str, architecture: str) -> list[FrozenTrial]:
    storage = open_storage(storage_url, heartbeat_interval=0)
    try:
        study = optuna.load_study(study_name=f"{group}/{architecture}", storage=storage)
        return study.get_trials()
    finally:
        close_storage(storage)


def _run(
    group: str,
    storage_url: str,
    data_spec: DataSpec,
    *,
    architectures: tuple[str, ...] = ("transformer",),
    objective: Callable[[optuna.Trial], float] | None = QUICK,
    **options: Any,
) -> DistributedSummary:
    arguments = {"gpus_per_trial": 0, "enqueue_defaults": False, **HEARTBEAT, **options}
    return run_distributed(
        group, storage_url, list(architectures), data_spec, objective=objective, **arguments
    )


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Return the largest number of intervals that contain one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = highest = 0
    for _, change in events:
        running += change
        highest = max(highest, running)
    return highest


def test_init_ray_gcs_port_avoids_redis() -> None:
    import ray

    port = gcs_port()

    assert port != 6379
    assert port not in RESERVED_PORTS
    assert ray.cluster_resources()["GPU"] == 2


def test_gpu_packing_four_trials_per_gpu(postgres_database: str, small_watch: DataSpec) -> None:
    # Ten one-CPU workers fit the declared CPUs, but two GPUs at 0.25 each hold eight.
    summary = _run(
        "packing", postgres_database, small_watch,
        n_trials=10, workers=10, gpus_per_trial=0.25,
        objective=BarrierObjective(started_trials=8, hold_s=1.5, timeout_s=90),
    )

    assert summary.ok, summary.worker_errors
    trials = _trials(postgres_database, "packing", "transformer")
    assert len(trials) == 10
    assert all(trial.state is TrialState.COMPLETE for trial in trials)

    intervals_by_gpu: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for trial in trials:
        worker = trial.user_attrs[ATTR_WORKER]
        assert len(worker["gpu_ids"]) == 1
        assert worker["device"] == "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES to the one GPU
        interval = (trial.user_attrs[STARTED_AT], trial.user_attrs[ENDED_AT])
        intervals_by_gpu[worker["gpu_ids"][0]].append(interval)

    all_intervals = [interval for intervals in intervals_by_gpu.values() for interval in intervals]
    assert _max_overlap(all_intervals) == 8
    assert len(intervals_by_gpu) == 2
    for intervals in intervals_by_gpu.values():
        assert _max_overlap(intervals) <= 4


def test_eight_workers_empty_postgres(postgres_database: str, small_watch: DataSpec) -> None:
    summary = _run(
        "eight", postgres_database, small_watch,
        architectures=("transformer", "tft"), n_trials=6, workers=8,
    )

    assert summary.ok, summary.worker_errors
    assert sorted(report.worker_index for report in summary.workers) == list(range(8))
    assert {report.stop_reason for report in summary.workers} == {"trial budgets used up"}
    for architecture in ("transformer", "tft"):
        trials = _trials(postgres_database, "eight", architecture)
        assert sorted(trial.number for trial in trials) == list(range(6))
        assert len({trial._trial_id for trial in trials}) == 6
        assert all(trial.state is TrialState.COMPLETE for trial in trials)
    ran = sorted(trial for report in summary.workers for trial in report.trials)
    assert len(ran) == 12
    assert len(set(ran)) == 12


def test_resume_one_worker_with_four(postgres_database: str, small_watch: DataSpec) -> None:
    first = _run("resume", postgres_database, small_watch, n_trials=3, workers=1)
    assert first.ok, first.worker_errors
    before = {t.number: (t.params, t.value, t.datetime_complete) for t in _trials(postgres_database, "resume", "transformer")}
    assert len(before) == 3

    second = _run("resume", postgres_database, small_watch, n_trials=8, workers=4)

    assert second.ok, second.worker_errors
    assert len(second.workers) == 4
    trials = _trials(postgres_database, "resume", "transformer")
    assert sorted(trial.number for trial in trials) == list(range(8))
    assert all(trial.state is TrialState.COMPLETE for trial in trials)
    after = {t.number: (t.params, t.value, t.datetime_complete) for t in trials}
    for number, record in before.items():
        assert after[number] == record
    assert sum(len(report.trials) for report in second.workers) == 5


def test_journal_store_two_workers(tmp_path: Path, small_watch: DataSpec) -> None:
    journal = str(tmp_path / "runs.journal")

    summary = _run(
        "journal", journal, small_watch,
        architectures=("transformer", "tft"), n_trials=3, workers=2,
        heartbeat_interval=None, grace_period=None,  # journal files have no heartbeats
    )

    assert summary.ok, summary.worker_errors
    assert len({report.pid for report in summary.workers}) == 2
    for architecture in ("transformer", "tft"):
        trials = _trials(journal, "journal", architecture)
        assert sorted(trial.number for trial in trials) == [0, 1, 2]
        assert all(trial.state is TrialState.COMPLETE for trial in trials)


def test_worker_error_reported_others_continue(postgres_database: str, small_watch: DataSpec) -> None:
    summary = _run(
        "error", postgres_database, small_watch, n_trials=4, workers=2,
        objective=FailingFirstObjective("objective bug in trial 0"),
    )

    assert not summary.ok
    assert list(summary.worker_errors.values()) == ["ValueError: objective bug in trial 0"]
    assert len(summary.workers) == 1
    trials = {trial.number: trial for trial in _trials(postgres_database, "error", "transformer")}
    assert sorted(trials) == [0, 1, 2, 3]
    assert trials[0].state is TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"] == "ValueError: objective bug in trial 0"
    assert all(trials[number].state is TrialState.COMPLETE for number in (1, 2, 3))


def _restart_when_complete(
    cluster: PrivateCluster,
    database: str,
    complete: int,
    snapshot: dict[int, float],
    errors: list[BaseException],
) -> None:
    """Wait until ``complete`` trials are COMPLETE, note them, then restart the server."""
    conninfo = f"host={cluster.host} port={cluster.port} user={cluster.user} dbname={database}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(conninfo) as connection:
                    rows = connection.execute(
                        "SELECT t.number, v.value FROM trials t JOIN trial_values v "
                        "ON v.trial_id = t.trial_id WHERE t.state = 'COMPLETE'"
                    ).fetchall()
            except psycopg.errors.UndefinedTable:  # the driver has not created the schema yet
                rows = []
            if len(rows) >= complete:
                snapshot.update({number: value for number, value in rows})
                cluster.restart(down_seconds=2.0)
                return
            time.sleep(0.2)
        raise TimeoutError(f"fewer than {complete} trials completed within 120 s")
    except (TimeoutError, psycopg.Error, PostgresUnavailable) as error:  # the test reports it
        errors.append(error)


def test_postgres_restart_workers_continue(
    postgres_cluster_factory: Callable[..., PrivateCluster], small_watch: DataSpec
) -> None:
    cluster = postgres_cluster_factory()
    storage_url = create_database(cluster.url(), "restart")
    snapshot: dict[int, float] = {}
    errors: list[BaseException] = []
    restarter = threading.Thread(
        target=_restart_when_complete, args=(cluster, "restart", 3, snapshot, errors), daemon=True
    )
    restarter.start()

    summary = _run(
        "restart", storage_url, small_watch,
        n_trials=12, workers=2, objective=StepObjective(steps=5, step_s=0.2),
    )
    restarter.join(timeout=60)

    assert not errors, errors
    assert len(snapshot) >= 3
    assert summary.ok, summary.worker_errors
    trials = {trial.number: trial for trial in _trials(storage_url, "restart", "transformer")}
    assert sorted(trials) == list(range(12))
    assert all(trial.state is TrialState.COMPLETE for trial in trials.values())
    for number, value in snapshot.items():
        assert trials[number].value == value
    completed_at = [trials[number].datetime_complete for number in snapshot]
    started_at = [trial.datetime_start for trial in trials.values()]
    assert None not in completed_at
    assert None not in started_at
    restarted_at = max(completed_at)  # type: ignore[type-var]
    assert any(start > restarted_at for start in started_at)  # type: ignore[operator]


def _tiny_space() -> dict:
    attention = {
        "d_model": {"choices": [16]},
        "num_heads": {"choices": [1, 2]},
        "d_ff_factor": {"choices": [1]},
        "num_layers": 1,
        "dropout": 0.1,
        "lr": {"low": 1.0e-3, "high": 3.0e-3, "log": True},
    }
    return parse_space({"transformer": attention, "tft": attention})


def test_run_distributed_watch_end_to_end(postgres_database: str, small_watch: DataSpec) -> None:
    settings = TrainSettings(max_epochs=2, patience=2, batch_size=64, train_eval_windows=128, device="cpu")

    summary = run_distributed(
        "e2e", postgres_database, ["transformer", "tft"], small_watch, settings, _tiny_space(),
        n_trials=2, workers=2, gpus_per_trial=0, enqueue_defaults=False, weights_top_k=0,
        **HEARTBEAT,
    )

    assert summary.ok, summary.worker_errors
    for architecture in ("transformer", "tft"):
        trials = _trials(postgres_database, "e2e", architecture)
        assert len(trials) == 2
        for trial in trials:
            assert trial.state is TrialState.COMPLETE
            assert trial.value is not None
            assert 0.0 <= trial.value <= 1.0
            assert len(trial.user_attrs["val_f1_curve"]) == 2
            assert trial.intermediate_values.keys() == {0, 1}
            assert trial.user_attrs[ATTR_WORKER]["device"] == "cpu"
        assert summary.studies[architecture].complete == 2
        assert summary.studies[architecture].best_value == max(trial.values[0] for trial in trials)
