"""Tests of the command line frame: parser errors, help speed and the wired commands."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from search.cli import EXIT_OK, EXIT_USAGE, main

from .conftest import FinishedStudy, add_study_without_completed_trial, error_line, run_cli


def test_unknown_option_is_one_line(capsys):
    status = main(["status", "--study", "x", "--colour"])
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_USAGE
    assert "unrecognized arguments: --colour" in line
    assert "--help" in line


def test_missing_required_option(capsys):
    status = main(["export", "--study", "x"])
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_USAGE
    assert "--out" in line


def test_help_lists_every_command():
    result = run_cli("--help")
    run_help = run_cli("run", "--help")

    assert result.returncode == EXIT_OK
    assert run_help.returncode == EXIT_OK
    for command in ("run", "worker", "status", "export", "train", "capacity", "dashboard", "report"):
        assert command in result.stdout
    assert "--gpus-per-trial" in run_help.stdout


def test_cli_module_imports_no_heavy_package():
    import subprocess
    import sys

    from .conftest import REPO_ROOT, subprocess_env

    script = (
        "import sys\n"
        "from search.cli import build_parser\n"
        "build_parser()\n"
        "heavy = [name for name in ('torch', 'optuna', 'ray', 'sqlalchemy', 'plotly') if name in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=subprocess_env(),
        capture_output=True, text=True, timeout=60, check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_status_table(finished_study: FinishedStudy, capsys):
    status = main(["status", "--study", finished_study.group, "--storage", str(finished_study.storage)])
    out = capsys.readouterr().out

    assert status == EXIT_OK
    header = next(line for line in out.splitlines() if line.startswith("architecture"))
    assert header.split()[:6] == ["architecture", "trials", "complete", "pruned", "failed", "running"]
    assert "pruned by" in header
    for architecture in ("transformer", "mamba"):
        assert any(line.startswith(f"  {architecture}: trial ") for line in out.splitlines())


def test_status_counts_pruners_and_failures(tmp_path: Path, tiny_space: Path, capsys):
    storage = tmp_path / "studies.journal"
    add_study_without_completed_trial(storage, "stopped", tiny_space)

    status = main(["status", "--study", "stopped", "--storage", str(storage)])
    out = capsys.readouterr().out

    assert status == EXIT_OK
    row = next(line for line in out.splitlines() if line.startswith("tft"))
    assert row.split()[1:7] == ["2", "0", "1", "1", "0", "-"]
    assert row.endswith("median 1")
    assert "tft: no completed trial yet" in out
    assert "tft: training loss became nan 1" in out


def test_report_command_writes_html(finished_study: FinishedStudy, tmp_path: Path, capsys):
    out = tmp_path / "report.html"
    previous = os.umask(0o022)
    try:
        status = main([
            "report", "--study", finished_study.group, "--storage", str(finished_study.storage),
            "--out", str(out),
        ])
    finally:
        os.umask(previous)

    assert status == EXIT_OK, capsys.readouterr().err
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_dashboard_command_rejects_bad_port(tmp_path: Path, capsys):
    status = main(["dashboard", "--storage", str(tmp_path / "s.journal"), "--port", "70000"])

    assert status == EXIT_USAGE
    assert "--port must lie in 1..65535" in capsys.readouterr().err
