"""Tests of `archsweep run` and `archsweep worker`: runs, resumes, Ctrl-C and bad input."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main
from search.data import DataSpec, load_dataset
from search.engine import prepare_studies

from .conftest import (
    FLOW_ARCHITECTURES,
    FLOW_TRIALS,
    REPO_ROOT,
    WATCH_OPTIONS,
    FinishedStudy,
    error_line,
    load_study,
    open_journal,
    subprocess_env,
)

WATCH_SPEC = DataSpec("watch", window=24, stride=48, max_train_sessions=2)


def _study_names(storage: Path) -> list[str]:
    if not storage.exists():
        return []
    return sorted(study.study_name for study in open_journal(storage).get_all_studies())


def _run_args(storage: Path, *extra: str, group: str = "bad") -> list[str]:
    return ["run", "--study", group, "--storage", str(storage), "--epochs", "2", *extra]


# A finished run (shared fixture).

def test_run_finishes_every_trial(finished_study: FinishedStudy):
    assert finished_study.run_status == EXIT_OK, finished_study.run_stderr
    for architecture in FLOW_ARCHITECTURES:
        study = load_study(finished_study.storage, f"{finished_study.group}/{architecture}")
        states = [trial.state for trial in study.trials]
        assert len(states) == FLOW_TRIALS
        assert TrialState.RUNNING not in states
        assert all(state in (TrialState.COMPLETE, TrialState.PRUNED) for state in states)


def test_run_prints_progress_and_summary(finished_study: FinishedStudy):
    progress = [line for line in finished_study.run_stderr.splitlines() if "] " in line and " trial " in line]
    summary = finished_study.run_stdout.splitlines()

    # One progress line per finished trial, on stderr.
    assert len(progress) == FLOW_TRIALS * len(FLOW_ARCHITECTURES)
    assert all("best val F1" in line for line in progress)
    # The summary table on stdout names every architecture with its trial count.
    assert summary[0].startswith(f"study {finished_study.group} in ")
    for architecture in FLOW_ARCHITECTURES:
        row = next(line for line in summary if line.startswith(architecture))
        assert row.split()[1] == str(FLOW_TRIALS)


def test_run_interleaves_architectures(finished_study: FinishedStudy):
    progress = [line for line in finished_study.run_stderr.splitlines() if "] " in line and " trial " in line]
    order = [line.split("] ", 1)[1].split()[0] for line in progress]

    assert order[: len(FLOW_ARCHITECTURES)] == list(FLOW_ARCHITECTURES)


def test_run_again_resumes_without_new_trials(finished_study: FinishedStudy, capsys):
    status = main([
        "run", "--study", finished_study.group, "--storage", str(finished_study.storage),
        "--arch", ",".join(FLOW_ARCHITECTURES), "--trials", str(FLOW_TRIALS),
    ])
    captured = capsys.readouterr()

    assert status == EXIT_OK, captured.err
    assert "0 trials started" in captured.out
    for architecture in FLOW_ARCHITECTURES:
        study = load_study(finished_study.storage, f"{finished_study.group}/{architecture}")
        assert len(study.trials) == FLOW_TRIALS


def test_worker_after_finished_run_runs_nothing(finished_study: FinishedStudy, capsys):
    status = main([
        "worker", "--study", finished_study.group, "--storage", str(finished_study.storage),
        "--arch", "transformer",
    ])
    captured = capsys.readouterr()

    assert status == EXIT_OK, captured.err
    assert "transformer" in captured.out
    study = load_study(finished_study.storage, f"{finished_study.group}/transformer")
    assert len(study.trials) == FLOW_TRIALS


def test_run_timeout_stops_new_trials(tmp_path: Path, tiny_space: Path, capsys):
    storage = tmp_path / "studies.journal"
    started = time.monotonic()
    status = main([
        "run", "--study", "timed", "--storage", str(storage), "--arch", "transformer",
        "--trials", "500", "--timeout", "2", "--epochs", "2", "--space", str(tiny_space),
        *WATCH_OPTIONS,
    ])
    seconds = time.monotonic() - started
    trials = load_study(storage, "timed/transformer").trials

    assert status == EXIT_OK, capsys.readouterr().err
    assert 1 <= len(trials) < 500
    assert seconds < 60  # the last trial started before the timeout and ran 2 epochs


def test_run_with_ray_workers(tmp_path: Path, tiny_space: Path, capsys):
    storage = tmp_path / "studies.journal"
    status = main([
        "run", "--study", "ray", "--storage", str(storage), "--arch", "transformer,mamba",
        "--trials", "2", "--epochs", "2", "--workers", "2", "--space", str(tiny_space),
        *WATCH_OPTIONS,
    ])
    captured = capsys.readouterr()

    assert status == EXIT_OK, captured.err
    assert "with 2 Ray workers" in captured.out
    for architecture in ("transformer", "mamba"):
        trials = load_study(storage, f"ray/{architecture}").trials
        assert len(trials) == 2
        assert all(trial.state is not TrialState.RUNNING for trial in trials)


# Ctrl-C.

def _wait_for_running_trial(storage: Path, study_name: str, timeout_s: float) -> int:
    """Wait until a trial of the study is RUNNING with at least one epoch reported."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if storage.exists() and study_name in _study_names(storage):
            for trial in load_study(storage, study_name).trials:
                if trial.state is TrialState.RUNNING and trial.intermediate_values:
                    return trial.number
        time.sleep(0.2)
    raise AssertionError(f"no trial of {study_name} was running within {timeout_s} s")


def test_run_sigint_fails_running_trial_and_resumes(tmp_path: Path, tiny_space: Path):
    storage = tmp_path / "sigint.journal"
    study_name = "sigint/transformer"
    # Enough epochs that the interrupted trial is still training when SIGINT arrives.
    command = [
        "run", "--study", "sigint", "--storage", str(storage), "--arch", "transformer",
        "--trials", "3", "--epochs", "40", "--space", str(tiny_space), *WATCH_OPTIONS,
    ]
    assert main([*command[:8], "1", *command[9:]]) == EXIT_OK  # one finished trial first
    finished_before = load_study(storage, study_name).trials[0]

    process = subprocess.Popen(
        [sys.executable, "-m", "search", *command], cwd=REPO_ROOT, env=subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        interrupted_number = _wait_for_running_trial(storage, study_name, timeout_s=120)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "archsweep: interrupted:" in stderr
    assert "Traceback" not in stderr
    assert "transformer" in stdout  # the summary still goes to stdout
    trials = {trial.number: trial for trial in load_study(storage, study_name).trials}
    assert all(trial.state is not TrialState.RUNNING for trial in trials.values())
    interrupted = trials[interrupted_number]
    assert interrupted.state is TrialState.FAIL
    assert interrupted.user_attrs["fail_reason"] == "interrupted"
    # The finished trial is untouched.
    kept = trials[finished_before.number]
    assert kept.state is finished_before.state
    assert kept.value == finished_before.value
    assert kept.user_attrs == finished_before.user_attrs

    # The same command resumes and uses the rest of the budget.
    resumed = subprocess.run(
        [sys.executable, "-m", "search", *command], cwd=REPO_ROOT, env=subprocess_env(),
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert resumed.returncode == EXIT_OK, resumed.stderr
    final = load_study(storage, study_name).trials
    assert len(final) == 3
    assert all(trial.state is not TrialState.RUNNING for trial in final)
    assert sum(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in final) == 2


# Bad input: usage errors (exit 2), nothing stored.

@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--arch", "transformer,lstm"], ["unknown architecture 'lstm'", "transformer, tft"]),
        (["--arch", "transformer,"], ["empty name"]),
        (["--trials", "0"], ["--trials must be a positive number", "got 0"]),
        (["--trials", "-3"], ["--trials must be a positive number", "got -3"]),
        (["--timeout", "-5"], ["--timeout must be a positive number of seconds", "got -5"]),
        (["--timeout", "0"], ["--timeout must be a positive number of seconds"]),
        (["--epochs", "0"], ["--epochs must be a positive number"]),
        (["--workers", "0"], ["--workers must be a positive number"]),
        (["--gpus-per-trial", "0.5"], ["--gpus-per-trial applies to Ray runs only"]),
        (["--study", "a/b"], ["--study 'a/b' must not contain '/'", "--study a-b"]),
    ],
)
def test_run_rejects_bad_option(tmp_path: Path, capsys, extra: list[str], fragments: list[str]):
    storage = tmp_path / "studies.journal"
    status = main([*_run_args(storage, *WATCH_OPTIONS), *extra])
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_USAGE
    for fragment in fragments:
        assert fragment in line
    assert not storage.exists()


def test_run_rejects_non_integer_trials(tmp_path: Path, capsys):
    status = main(_run_args(tmp_path / "s.journal", "--trials", "many"))
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_USAGE
    assert "--trials" in line
    assert "'many'" in line


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgres://user@127.0.0.1:5432/db", "SQLAlchemy has no 'postgres' dialect"),
        ("mongodb://127.0.0.1:27017/db", "unsupported storage URL"),
        ("sqlite:///:memory:", "in-memory SQLite database is not shared"),
        ("postgresql:/127.0.0.1/db", "a URL needs '://'"),
        ("postgresql+psycopg://user:hunter22@127.0.0.1:5432", "name the database"),
    ],
)
def test_run_rejects_bad_storage_url(tmp_path: Path, capsys, monkeypatch, url: str, fragment: str):
    monkeypatch.chdir(tmp_path)
    status = main(["run", "--study", "bad", "--storage", url, *WATCH_OPTIONS])
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_USAGE
    assert fragment in line
    assert "hunter22" not in line
    assert list(tmp_path.iterdir()) == []


def test_run_without_data_for_new_study(tmp_path: Path, capsys):
    storage = tmp_path / "studies.journal"
    status = main(_run_args(storage))
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_USAGE
    assert "no data given" in line
    assert _study_names(storage) == []


# Bad space files: run-time errors (exit 1), nothing stored.

@pytest.mark.parametrize(
    ("space", "fragments"),
    [
        ("transformer:\n  num_layers: {low: 4, high: 2}\n", ["low (4", "greater than high (2", "swap"]),
        ("transformer:\n  dropout: {low: 0.0, high: 1.0}\n", ["dropout must lie in [0, 1)"]),
        ("mamba:\n  dropout: 1.5\n", ["dropout must lie in [0, 1)", "1.5"]),
        ("transformer:\n  num_heads: {choices: []}\n", ["choices must be a non-empty list"]),
        ("transformer:\n  d_modle: {low: 32, high: 64, step: 32}\n", ["unknown key 'd_modle'"]),
        ("lstm:\n  d_model: 32\n", ["unknown architecture 'lstm'"]),
    ],
)
def test_run_rejects_bad_space(tmp_path: Path, capsys, space: str, fragments: list[str]):
    space_path = tmp_path / "space.yaml"
    space_path.write_text(space, encoding="utf-8")
    storage = tmp_path / "studies.journal"

    status = main(_run_args(storage, "--space", str(space_path), *WATCH_OPTIONS))
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_FAILURE
    assert str(space_path) in line
    for fragment in fragments:
        assert fragment in line
    assert not storage.exists()


def test_run_rejects_changed_settings_before_creating(tmp_path: Path, capsys, tiny_space: Path):
    storage = tmp_path / "studies.journal"
    prepare_studies(
        "resume", str(storage), ["transformer"], dataset=load_dataset(WATCH_SPEC),
        settings={"max_epochs": 2}, space=tiny_space,
    )

    status = main([
        "run", "--study", "resume", "--storage", str(storage), "--arch", "transformer,mamba",
        "--epochs", "5", "--space", str(tiny_space), *WATCH_OPTIONS,
    ])
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_FAILURE
    assert "max_epochs (2 -> 5)" in line
    # The check ran before the missing study was created.
    assert _study_names(storage) == ["resume/transformer"]
    assert load_study(storage, "resume/transformer").trials == []


@pytest.mark.parametrize("address", ["", "127.0.0.1", "127.0.0.1:notaport", ":6380", "h:99999"])
def test_run_malformed_ray_address_is_usage_error(tmp_path: Path, capsys, address: str):
    storage = tmp_path / "studies.journal"

    status = main(_run_args(storage, "--arch", "transformer", "--ray-address", address, *WATCH_OPTIONS))
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_USAGE
    assert "--ray-address must be HOST:PORT" in line
    assert not storage.exists()


def test_run_dead_ray_address_creates_no_study(tmp_path: Path, capsys):
    import socket

    # A port that was just free on 127.0.0.1 has no listener on it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    storage = tmp_path / "studies.journal"

    status = main(_run_args(
        storage, "--arch", "transformer", "--ray-address", f"127.0.0.1:{port}", *WATCH_OPTIONS,
    ))
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_FAILURE
    assert f"127.0.0.1:{port}" in line
    assert _study_names(storage) == []


# Commands on a study that does not exist.

@pytest.mark.parametrize("command", ["status", "worker", "export"])
def test_command_on_missing_study_lists_existing(
    finished_study: FinishedStudy, tmp_path: Path, capsys, command: str
):
    extra = ["--out", str(tmp_path / "presets")] if command == "export" else []
    status = main([command, "--study", "nope", "--storage", str(finished_study.storage), *extra])
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_FAILURE
    assert "no study 'nope'" in line
    assert f"{finished_study.group} (mamba, transformer)" in line
    assert not (tmp_path / "presets").exists()


@pytest.mark.parametrize("command", ["status", "worker", "export", "report"])
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_command_on_missing_storage_file_creates_nothing(
    tmp_path: Path, capsys, command: str, kind: str
):
    path = tmp_path / ("absent.journal" if kind == "journal" else "absent.db")
    value = str(path) if kind == "journal" else f"sqlite:///{path}"
    extra = {"export": ["--out", str(tmp_path / "presets")], "report": ["--out", str(tmp_path / "r.html")]}
    status = main([command, "--study", "nope", "--storage", value, *extra.get(command, [])])
    err = capsys.readouterr().err

    assert status == EXIT_FAILURE
    assert f"{path} does not exist" in err
    assert "Traceback" not in err
    assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
