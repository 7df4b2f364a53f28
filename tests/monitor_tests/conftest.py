"""Fixtures for the monitoring tests: a small study group from real training.

``trained_group`` runs the search engine for real on the built-in ``watch`` data set: two
architectures, two trials each, three epochs of tiny models on two training sessions,
with the dashboard callback attached as ``archsweep run`` attaches it. The dashboard and
report tests read the journal file it leaves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch

from search.dashboard import PublishTrialCallback
from search.data import DataSpec, load_dataset
from search.engine import prepare_studies, run_trials
from search.space import parse_space
from search.training import TrainSettings
from storage import close_storage, open_storage

GROUP = "monitor-test"
ARCHITECTURES = ("transformer", "mcdropout")
TRIALS_PER_ARCHITECTURE = 2

# Tiny models: the tests look at what the monitoring shows, not at what the models learn.
_TINY_SPACE = {
    "d_model": {"low": 8, "high": 24, "step": 8},
    "num_heads": 1,
    "d_ff_factor": 1,
    "num_layers": 1,
    "dropout": {"low": 0.0, "high": 0.2, "step": 0.05},
}
_SETTINGS = TrainSettings(max_epochs=3, patience=3, train_eval_windows=128, device="cpu")


@dataclasses.dataclass(frozen=True)
class TrainedGroup:
    """A study group in a journal file and what the tests expect to find in it."""

    storage_path: Path
    group: str
    architectures: tuple[str, ...]

    def study_name(self, architecture: str) -> str:
        return f"{self.group}/{architecture}"

    def trials(self, architecture: str) -> list[optuna.trial.FrozenTrial]:
        storage = open_storage(str(self.storage_path), heartbeat_interval=0)
        try:
            study = optuna.load_study(study_name=self.study_name(architecture), storage=storage)
            return study.trials
        finally:
            close_storage(storage)


@pytest.fixture(scope="session")
def trained_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedGroup]:
    directory = tmp_path_factory.mktemp("monitor")
    storage_path = directory / "studies.journal"
    dataset = load_dataset(DataSpec("watch", max_train_sessions=2))
    space = parse_space({architecture: _TINY_SPACE for architecture in ARCHITECTURES})

    # The test machine's cores are shared; one thread keeps training time predictable.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        studies = prepare_studies(
            GROUP,
            str(storage_path),
            ARCHITECTURES,
            dataset=dataset,
            settings=_SETTINGS,
            space=space,
            artifacts_dir=directory / "artifacts",
            weights_top_k=1,
            enqueue_defaults=False,
        )
        for study in studies.values():
            run_trials(
                study,
                dataset,
                n_trials=TRIALS_PER_ARCHITECTURE,
                callbacks=[PublishTrialCallback(min_interval_s=0.0)],
            )
    finally:
        torch.set_num_threads(previous_threads)

    yield TrainedGroup(storage_path=storage_path, group=GROUP, architectures=ARCHITECTURES)
