"""Fixtures for the model tests: one CPU thread, registered architectures, a watch subset."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

import models
from search.data import DataSpec, load_dataset

# Architectures whose modules are present; the parametrised tests cover each of them.
REGISTERED = [name for name in models.ARCHITECTURES if name in models.CONFIG_CLASSES]

BATCH_SIZE = 4
SEQ_LEN = 50  # the watch data set's default window
NUM_FEATURES = 6

CAPACITY_WINDOWS = 256
CAPACITY_SESSIONS = 2


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> Iterator[None]:
    # The test machine's cores are shared; one thread keeps timings stable.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def windows() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(BATCH_SIZE, SEQ_LEN, NUM_FEATURES, generator=generator)


@pytest.fixture(scope="session")
def watch_subset() -> tuple[torch.Tensor, torch.Tensor]:
    """Return (X [256, 50, 6], y [256] float) drawn from the first two train sessions of watch."""
    dataset = load_dataset(DataSpec("watch"))
    train = dataset.train
    sessions = sorted(set(train.session.tolist()))[:CAPACITY_SESSIONS]
    candidates = np.flatnonzero(np.isin(train.session, sessions))
    if len(candidates) < CAPACITY_WINDOWS:
        raise RuntimeError(
            f"watch train sessions {sessions} have {len(candidates)} windows, "
            f"need at least {CAPACITY_WINDOWS}"
        )

    chosen = np.sort(np.random.default_rng(0).choice(candidates, CAPACITY_WINDOWS, replace=False))
    X = torch.from_numpy(train.X[chosen])
    y = torch.from_numpy(train.y[chosen]).float()
    return X, y
