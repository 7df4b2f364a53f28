"""open_storage on SQLite, journal files and a real PostgreSQL server.

The PostgreSQL tests use the ``postgres_database`` and ``postgres_cluster_factory`` fixtures
of tests/conftest.py; workers are separate processes running _storage_worker.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.orm
import sqlalchemy.pool
from optuna.storages import JournalStorage
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

import storage
from storage import (
    RetryingRDBStorage,
    StorageError,
    close_storage,
    create_studies,
    ensure_storage_ready,
    open_storage,
)
from storage._rdb import is_transient_database_error
from tests._postgres import PrivateCluster, create_database

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
WORKER_SCRIPT = Path(__file__).with_name("_storage_worker.py")
PASSWORD = "hunter2-Secret"

# Seconds a worker process may take from its start to its last trial on 2 busy cores.
WORKER_TIMEOUT_S = 90


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    trial.set_user_attr("square", x * x)
    return -(x * x)


def _start_worker(*arguments: str, stderr_path: Path) -> subprocess.Popen[bytes]:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT))
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), *arguments],
            cwd=REPOSITORY_ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


@contextlib.contextmanager
def _killed_on_exit(workers: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """Kill the workers still running when the block ends, so a failed test leaves none."""
    try:
        yield
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _wait_for(condition: Callable[[], bool], timeout: float, description: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        time.sleep(0.1)


def _with_login(url: str, *, username: str | None = None, password: str | None = None) -> str:
    parsed = make_url(url)
    if username is not None:
        parsed = parsed.set(username=username)
    return parsed.set(password=password).render_as_string(hide_password=False)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}"
    elif request.param == "journal":
        yield str(tmp_path / "studies.journal")
    else:
        yield request.getfixturevalue("postgres_database")


# Round trips on every backend.


def test_open_storage_round_trip(storage_url: str) -> None:
    opened = open_storage(storage_url)
    study = optuna.create_study(
        study_name="group/transformer", storage=opened, direction="maximize"
    )
    study.set_user_attr("data", {"name": "watch", "window": 64})
    study.optimize(_objective, n_trials=3)
    close_storage(opened)

    reopened = open_storage(storage_url)
    loaded = optuna.load_study(study_name="group/transformer", storage=reopened)
    trials = loaded.get_trials()

    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 3
    assert [trial.number for trial in trials] == [0, 1, 2]
    assert all(trial.user_attrs["square"] == trial.params["x"] ** 2 for trial in trials)
    assert loaded.user_attrs["data"] == {"name": "watch", "window": 64}
    assert loaded.best_value == max(trial.params["x"] ** 2 * -1 for trial in trials)
    close_storage(reopened)


def test_open_storage_uses_env_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(storage.STORAGE_ENV_VAR, raising=False)

    opened = open_storage(None)
    optuna.create_study(study_name="default", storage=opened)

    assert isinstance(opened, JournalStorage)
    assert (tmp_path / "archsweep.journal").stat().st_size > 0


def test_open_storage_rdb_is_retrying_and_masked(postgres_database: str) -> None:
    url_with_password = _with_login(postgres_database, password=PASSWORD)

    opened = open_storage(url_with_password, heartbeat_interval=7, failed_trial_max_retry=1)

    assert isinstance(opened, RetryingRDBStorage)
    assert PASSWORD not in repr(opened)
    pool = opened.engine.pool
    assert isinstance(pool, sqlalchemy.pool.QueuePool)
    assert pool.size() == storage.POOL_SIZE
    assert pool._max_overflow == storage.MAX_OVERFLOW
    assert pool._pre_ping
    assert opened.get_heartbeat_interval() == 7
    assert opened.grace_period == 7 * storage.DEFAULT_GRACE_PERIOD_FACTOR
    assert isinstance(
        opened.get_heartbeat_stale_trial_callback(),
        optuna.storages.RetryHeartbeatStaleTrialCallback,
    )
    close_storage(opened)


def test_open_storage_logs_masked_url(
    postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    url_with_password = _with_login(postgres_database, password=PASSWORD)

    with caplog.at_level(logging.INFO, logger="storage"):
        close_storage(open_storage(url_with_password))

    assert "Opened postgresql storage postgresql+psycopg://postgres:***@" in caplog.text
    assert PASSWORD not in caplog.text


def test_open_storage_reports_old_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    close_storage(open_storage(url))
    with sqlite3.connect(tmp_path / "old.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'v3.0.0.a'")

    with pytest.raises(StorageError, match="optuna storage upgrade --storage"):
        open_storage(url)


# Connection failures: fast, one line, naming host, port and database, never the password.


def test_open_storage_unreachable_fails_fast() -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://sweeper:{PASSWORD}@127.0.0.1:{port}/studies"

    started = time.monotonic()
    with pytest.raises(StorageError) as raised:
        open_storage(url, connect_timeout=2)
    elapsed = time.monotonic() - started

    message = str(raised.value)
    assert elapsed < 5
    assert f"127.0.0.1:{port}" in message
    assert "database 'studies'" in message
    assert "Connection refused" in message
    assert PASSWORD not in message
    assert "\n" not in message


def test_open_storage_missing_database(postgres_url: str) -> None:
    # The server trusts local logins, so the password below is ignored by it; it is there to
    # check that the message does not show it.
    missing = make_url(postgres_url).set(database="archsweep_no_such_database")
    url = _with_login(missing.render_as_string(hide_password=False), password=PASSWORD)

    with pytest.raises(StorageError) as raised:
        open_storage(url)

    message = str(raised.value)
    assert 'database "archsweep_no_such_database" does not exist' in message
    assert "createdb" in message
    assert PASSWORD not in message


def test_open_storage_missing_role(postgres_url: str) -> None:
    url = _with_login(postgres_url, username="archsweep_no_such_role", password=PASSWORD)

    with pytest.raises(StorageError) as raised:
        open_storage(url)

    message = str(raised.value)
    assert 'role "archsweep_no_such_role" does not exist' in message
    assert PASSWORD not in message


def test_open_storage_wrong_password(
    postgres_cluster_factory: Callable[..., PrivateCluster],
) -> None:
    cluster = postgres_cluster_factory(password=PASSWORD)
    wrong = cluster.url().replace(PASSWORD, "not-the-password")

    with pytest.raises(StorageError) as raised:
        open_storage(wrong)

    message = str(raised.value)
    assert "password authentication failed" in message
    assert f"127.0.0.1:{cluster.port}" in message
    assert "not-the-password" not in message
    close_storage(open_storage(cluster.url()))


# Concurrent first start on an empty PostgreSQL database.


def test_concurrent_first_start_creates_one_schema(postgres_database: str, tmp_path: Path) -> None:
    num_workers = 8
    trials_per_worker = 2
    workers = [
        _start_worker(
            "optimize",
            "--storage", postgres_database,
            "--study", "race/transformer",
            "--trials", str(trials_per_worker),
            stderr_path=tmp_path / f"worker{index}.log",
        )
        for index in range(num_workers)
    ]  # fmt: skip

    with _killed_on_exit(workers):
        return_codes = [worker.wait(timeout=WORKER_TIMEOUT_S) for worker in workers]

    logs = {index: (tmp_path / f"worker{index}.log").read_text() for index in range(num_workers)}
    failed = {index: logs[index][-2000:] for index, code in enumerate(return_codes) if code}
    assert not failed, f"workers failed: {failed}"

    opened = open_storage(postgres_database)
    trials = optuna.load_study(study_name="race/transformer", storage=opened).get_trials()
    numbers = sorted(trial.number for trial in trials)
    assert numbers == list(range(num_workers * trials_per_worker))
    assert all(trial.state == TrialState.COMPLETE for trial in trials)
    assert len(optuna.get_all_study_names(opened)) == 1
    close_storage(opened)


def test_create_studies_concurrent_sets_creator_attrs(postgres_database: str) -> None:
    ensure_storage_ready(postgres_database)
    names = ["race/transformer", "race/mamba"]
    results: dict[int, dict[str, bool]] = {}

    def create(worker: int) -> None:
        results[worker] = create_studies(
            postgres_database,
            names,
            user_attrs={name: {"creator": worker} for name in names},
        )

    threads = [threading.Thread(target=create, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(results) == 4
    opened = open_storage(postgres_database)
    for name in names:
        creators = [worker for worker, created in results.items() if created[name]]
        assert len(creators) == 1, f"{name} created by {creators}"
        study = optuna.load_study(study_name=name, storage=opened)
        assert study.user_attrs == {"creator": creators[0]}
    close_storage(opened)


def test_create_studies_keeps_existing(tmp_path: Path) -> None:
    url = str(tmp_path / "studies.journal")

    first = create_studies(url, ["g/a"], user_attrs={"g/a": {"round": 1}})
    second = create_studies(url, ["g/a", "g/b"], user_attrs={"g/a": {"round": 2}})

    assert first == {"g/a": True}
    assert second == {"g/a": False, "g/b": True}
    opened = open_storage(url)
    assert optuna.load_study(study_name="g/a", storage=opened).user_attrs == {"round": 1}


def test_create_studies_existing_appends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "studies.journal"
    create_studies(str(path), ["g/a"])
    size = path.stat().st_size

    assert create_studies(str(path), ["g/a"]) == {"g/a": False}
    assert path.stat().st_size == size


# Heartbeat: a killed worker's trial turns FAIL and is retried once.


def test_heartbeat_fails_and_retries_killed_trial(postgres_database: str, tmp_path: Path) -> None:
    heartbeat_s, grace_s = 1, 2
    study_name = "heartbeat/transformer"

    heartbeats = sqlalchemy.text(
        "SELECT count(*) FROM trial_heartbeats JOIN trials USING (trial_id) "
        "WHERE trials.number = :number"
    )

    def heartbeat_recorded(trial_number: int) -> bool:
        with engine.connect() as connection:
            return bool(connection.execute(heartbeats, {"number": trial_number}).scalar())

    def run_and_kill(index: int) -> int:
        marker = tmp_path / f"marker{index}"
        worker = _start_worker(
            "hang",
            "--storage", postgres_database,
            "--study", study_name,
            "--heartbeat", str(heartbeat_s),
            "--grace", str(grace_s),
            "--marker", str(marker),
            stderr_path=tmp_path / f"hang{index}.log",
        )  # fmt: skip
        try:
            _wait_for(
                lambda: marker.exists() or worker.poll() is not None,
                WORKER_TIMEOUT_S,
                "the worker to start its trial",
            )
            assert worker.poll() is None, (tmp_path / f"hang{index}.log").read_text()[-2000:]
            # Optuna never fails a trial that has no heartbeat row, so kill only after the
            # heartbeat thread has written one.
            _wait_for(
                lambda: heartbeat_recorded(int(marker.read_text())),
                WORKER_TIMEOUT_S,
                "the first heartbeat",
            )
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        # The last heartbeat is at most heartbeat_s old at the kill; wait out the grace period.
        time.sleep(grace_s + heartbeat_s + 0.5)
        return int(marker.read_text())

    # The first worker dies in trial 0; the second finds it stale, fails it, picks up its
    # retry (trial 1) and dies too. Trial 1 has used up its one retry.
    engine = sqlalchemy.create_engine(postgres_database, poolclass=sqlalchemy.pool.NullPool)
    assert run_and_kill(0) == 0
    assert run_and_kill(1) == 1
    engine.dispose()

    opened = open_storage(postgres_database, heartbeat_interval=heartbeat_s, grace_period=grace_s)
    study = optuna.load_study(study_name=study_name, storage=opened)
    study.optimize(_objective, n_trials=1)
    trials = study.get_trials()

    assert [trial.state for trial in trials] == [
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert trials[1].params == trials[0].params
    assert trials[1].system_attrs["failed_trial"] == 0
    assert "failed_trial" not in trials[2].system_attrs
    close_storage(opened)


# Reconnecting after the server goes away.


def test_storage_call_survives_short_outage(
    postgres_cluster_factory: Callable[..., PrivateCluster], caplog: pytest.LogCaptureFixture
) -> None:
    cluster = postgres_cluster_factory(password=PASSWORD)
    url = create_database(cluster.url(), "outage")
    opened = open_storage(url, heartbeat_interval=0)
    study = optuna.create_study(study_name="outage/transformer", storage=opened)
    study.optimize(_objective, n_trials=1)

    cluster.stop()
    restarter = threading.Timer(1.5, cluster.start)
    restarter.start()
    try:
        with caplog.at_level(logging.WARNING, logger="storage"):
            study.optimize(_objective, n_trials=1)
    finally:
        # Let the timer start the server before teardown deletes the cluster.
        restarter.join()

    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert "retry 1 of" in caplog.text
    assert f"127.0.0.1:{cluster.port}" in caplog.text
    assert PASSWORD not in caplog.text
    close_storage(opened)


def test_storage_call_gives_up_after_retries(
    postgres_cluster_factory: Callable[..., PrivateCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = postgres_cluster_factory()
    url = create_database(cluster.url(), "gone")
    opened = open_storage(url, heartbeat_interval=0)
    study = optuna.create_study(study_name="gone/transformer", storage=opened)
    # Shrink the retry budget of about 28 s to about 0.2 s.
    monkeypatch.setattr("storage._rdb.MAX_TRANSIENT_RETRIES", 2)
    monkeypatch.setattr("storage._rdb.RETRY_INITIAL_DELAY_S", 0.1)

    cluster.stop()
    with pytest.raises(StorageError) as raised:
        study.optimize(_objective, n_trials=1)

    message = str(raised.value)
    assert "failed 3 times" in message
    assert f"127.0.0.1:{cluster.port}" in message
    assert "database 'gone'" in message
    close_storage(opened)


def test_transient_error_includes_pending_rollback(postgres_database: str) -> None:
    # Optuna's _get_trials queries again in the same session after an OperationalError; on a
    # lost connection that second query raises PendingRollbackError, which must be retried.
    engine = sqlalchemy.create_engine(postgres_database, poolclass=sqlalchemy.pool.NullPool)
    admin = sqlalchemy.create_engine(postgres_database, poolclass=sqlalchemy.pool.NullPool)
    select_one = sqlalchemy.text("SELECT 1")

    with sqlalchemy.orm.Session(engine) as session:
        backend_pid = session.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
        with admin.connect() as connection:
            connection.execute(
                sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid}
            )
        with pytest.raises(sqlalchemy.exc.OperationalError) as lost:
            session.execute(select_one)
        try:
            raise lost.value
        except sqlalchemy.exc.OperationalError:
            with pytest.raises(sqlalchemy.exc.PendingRollbackError) as pending:
                session.execute(select_one)

    assert is_transient_database_error(lost.value)
    assert is_transient_database_error(pending.value)
    assert not is_transient_database_error(sqlalchemy.exc.PendingRollbackError("no context"))
    engine.dispose()
    admin.dispose()


def test_workers_continue_after_server_restart(
    postgres_cluster_factory: Callable[..., PrivateCluster], tmp_path: Path
) -> None:
    cluster = postgres_cluster_factory(password=PASSWORD)
    url = create_database(cluster.url(), "restart")
    study_name = "restart/transformer"
    num_workers, trials_per_worker = 2, 30
    close_storage(open_storage(url))  # schema first, so the count query below has its table
    records = [tmp_path / f"completed{index}" for index in range(num_workers)]

    workers = [
        _start_worker(
            "optimize",
            "--storage", url,
            "--study", study_name,
            "--trials", str(trials_per_worker),
            "--sleep", "0.1",
            "--heartbeat", "1",
            "--grace", "20",
            "--record", str(records[index]),
            stderr_path=tmp_path / f"worker{index}.log",
        )
        for index in range(num_workers)
    ]  # fmt: skip

    def completed_in_records() -> int:
        return sum(len(path.read_text().split()) for path in records if path.exists())

    with _killed_on_exit(workers):
        _wait_for(lambda: completed_in_records() >= 4, WORKER_TIMEOUT_S, "the first trials")
        cluster.restart(down_seconds=2.0)
        return_codes = [worker.wait(timeout=WORKER_TIMEOUT_S) for worker in workers]

    logs = [(tmp_path / f"worker{index}.log").read_text() for index in range(num_workers)]
    assert return_codes == [0] * num_workers, [log[-2000:] for log in logs]
    assert any("retry 1 of" in log for log in logs), "no worker saw the restart"
    assert all(PASSWORD not in log for log in logs)

    opened = open_storage(url)
    trials = optuna.load_study(study_name=study_name, storage=opened).get_trials()
    states = {trial.number: trial.state for trial in trials}
    recorded = [int(number) for path in records for number in path.read_text().split()]
    assert len(recorded) == num_workers * trials_per_worker
    assert all(states[number] == TrialState.COMPLETE for number in recorded)
    assert sum(state == TrialState.COMPLETE for state in states.values()) == len(recorded)
    assert TrialState.RUNNING not in states.values()
    close_storage(opened)
