"""Fixtures for the CLI tests: small watch runs, a tiny space and a finished study.

Every run uses the real watch data cut small: 24-step windows every 48 steps and two
training sessions, a few hundred windows per split. With a space of tiny models and
a few epochs, a trial takes about a second.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search.cli import _CliLogHandler, main

REPO_ROOT = Path(__file__).resolve().parents[2]

# The data options of every test run.
WATCH_OPTIONS = ["--data", "watch", "--window", "24", "--stride", "48", "--max-train-sessions", "2"]
NUM_FEATURES = 6
SEQ_LEN = 24

# Tiny models: one layer, 8 to 16 wide, so an epoch on the data above takes well under a second.
TINY_SPACE = """\
transformer:
  d_model: {choices: [8, 16]}
  num_heads: {choices: [1, 2]}
  d_ff_factor: 1
  num_layers: 1
  dropout: 0.0
  lr: {low: 1.0e-3, high: 5.0e-3, log: true}
tft:
  d_model: {choices: [8, 16]}
  num_heads: 1
  d_ff_factor: 1
  num_layers: 1
  dropout: 0.0
mamba:
  d_model: {choices: [8, 16]}
  num_layers: 1
  dropout: 0.0
  d_state: 4
  expand: 1
"""

# The finished study every read-only test shares.
FLOW_GROUP = "flow"
FLOW_ARCHITECTURES = ("transformer", "mamba")
FLOW_TRIALS = 2
FLOW_EPOCHS = 3


@dataclass(frozen=True)
class FinishedStudy:
    """A study group that `archsweep run` finished, with the command's outputs."""

    group: str
    storage: Path
    space: Path
    run_stdout: str
    run_stderr: str
    run_status: int


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> Iterator[None]:
    # The test machine's cores are shared, and one thread makes trainings repeatable.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _remove_cli_log_handlers() -> None:
    # main() logs to the stderr of its call; a handler left behind would write to a stream
    # that pytest has closed since.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _CliLogHandler):
            root.removeHandler(handler)


@pytest.fixture(autouse=True)
def _fresh_cli_logging() -> Iterator[None]:
    yield
    _remove_cli_log_handlers()


@pytest.fixture(scope="session")
def tiny_space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY_SPACE, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def finished_study(
    tmp_path_factory: pytest.TempPathFactory, tiny_space: Path
) -> FinishedStudy:
    """Run `archsweep run` once for the read-only tests (status, export, train, worker)."""
    folder = tmp_path_factory.mktemp("flow")
    storage = folder / "studies.journal"
    stdout_path, stderr_path = folder / "run.out", folder / "run.err"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = stdout, stderr
        try:
            status = main([
                "run", "--study", FLOW_GROUP, "--storage", str(storage),
                "--arch", ",".join(FLOW_ARCHITECTURES), "--trials", str(FLOW_TRIALS),
                "--epochs", str(FLOW_EPOCHS), "--space", str(tiny_space), *WATCH_OPTIONS,
            ])
        finally:
            sys.stdout, sys.stderr = saved
            _remove_cli_log_handlers()
    return FinishedStudy(
        group=FLOW_GROUP,
        storage=storage,
        space=tiny_space,
        run_stdout=stdout_path.read_text(),
        run_stderr=stderr_path.read_text(),
        run_status=status,
    )


def open_journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def load_study(path: Path, study_name: str) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=open_journal(path))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m search ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "search", *args],
        check=False, capture_output=True, text=True, cwd=cwd or REPO_ROOT,
        env=subprocess_env(), timeout=timeout,
    )


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def error_line(stderr: str) -> str:
    """Return the single `archsweep: error: ...` line of stderr (fails when there is not one)."""
    lines = [line for line in stderr.splitlines() if line.startswith("archsweep: error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def add_study_without_completed_trial(storage: Path, group: str, space: Path) -> None:
    """Create <group>/tft with one pruned trial (high F1 before pruning) and one failed trial."""
    from search.data import DataSpec, load_dataset
    from search.engine import prepare_studies

    spec = DataSpec("watch", window=24, stride=48, max_train_sessions=2)
    study = prepare_studies(
        group, str(storage), ["tft"], dataset=load_dataset(spec),
        settings={"max_epochs": 3}, space=space, enqueue_defaults=False,
    )["tft"]
    pruned = study.ask()
    pruned.report(0.99, 0)
    pruned.set_user_attr("pruned_by", "median")
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    failed = study.ask()
    failed.set_user_attr("fail_reason", "training loss became nan at epoch 0, batch 3")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
