"""Ctrl-C in the driver of run_distributed: a driver process with its own local Ray instance.

The test sends SIGINT to the driver's whole process group, as a terminal does on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.distributed import INTERRUPTED_FAIL_REASON
from storage import close_storage, open_storage

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
WORKER_SCRIPT = Path(__file__).with_name("_worker_script.py")
# Seconds for the driver to start Ray and its workers on 2 busy cores, and to stop them.
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60


def _trials(storage_url: str) -> list[FrozenTrial]:
    storage = open_storage(storage_url, heartbeat_interval=0)
    try:
        studies = optuna.get_all_study_names(storage)
        if "interrupt/transformer" not in studies:
            return []
        return optuna.load_study(study_name="interrupt/transformer", storage=storage).get_trials()
    finally:
        close_storage(storage)


def test_driver_ctrl_c_fails_running_trials(postgres_database: str, tmp_path: Path) -> None:
    log_path = tmp_path / "driver.log"
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT))
    with log_path.open("wb") as log:
        driver = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), "driver", "--storage", postgres_database,
             "--study", "interrupt", "--trials", "6", "--workers", "2"],
            cwd=REPOSITORY_ROOT, env=environment, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        trials: list[FrozenTrial] = []
        while time.monotonic() < deadline:
            trials = _trials(postgres_database)
            running = [t for t in trials if t.state is TrialState.RUNNING]
            complete = [t for t in trials if t.state is TrialState.COMPLETE]
            if len(running) == 2 and len(complete) == 2:
                break
            time.sleep(0.3)
        else:
            raise TimeoutError(f"no two running trials within {START_TIMEOUT_S} s: {log_path.read_text()[-3000:]}")

        time.sleep(0.5)  # the workers are inside their slow trials now
        os.killpg(driver.pid, signal.SIGINT)
        status = driver.wait(timeout=STOP_TIMEOUT_S)
        output = driver.stdout.read().decode() if driver.stdout else ""
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()

    assert status == 130, log_path.read_text()[-3000:]
    assert "interrupted" in output
    after = {t.number: t for t in _trials(postgres_database)}
    assert len(after) == 4
    for trial in trials:
        if trial.state is TrialState.RUNNING:
            assert after[trial.number].state is TrialState.FAIL
            assert after[trial.number].user_attrs["fail_reason"] == INTERRUPTED_FAIL_REASON
        else:
            assert after[trial.number].state is TrialState.COMPLETE
            assert after[trial.number].value == trial.value
            assert after[trial.number].datetime_complete == trial.datetime_complete
