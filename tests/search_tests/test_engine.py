"""Studies, the objective and the worker loop, on journal files and small real watch data."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import load_file

import models
from search.data import Dataset, DataSpec, SplitArrays, load_dataset
from search.engine import (
    StudyMismatchError,
    count_budget_trials,
    open_study,
    prepare_studies,
    run_trials,
    study_data_spec,
    study_names,
    summarize,
)
from search.pruners import CombinedPruner
from search.records import StudyRecord, weights_file
from search.space import parse_space
from search.training import evaluate

# Two-epoch trials of one-layer transformers with 16 or 32 units keep each trial ~1 s.
TINY_SPACE = {
    "transformer": {
        "d_model": {"choices": [16, 32]},
        "num_heads": 2,
        "d_ff_factor": 2,
        "num_layers": 1,
        "dropout": {"low": 0.0, "high": 0.2, "step": 0.05},
        "lr": {"choices": [0.001, 0.003, 1.0e12]},
    }
}
TINY_SETTINGS = {"max_epochs": 2, "patience": 5, "device": "cpu"}
TRAINING_LOG = "training transformer with"


def _every(split: SplitArrays, step: int) -> SplitArrays:
    return SplitArrays(X=split.X[::step], y=split.y[::step], session=split.session[::step])


@functools.lru_cache(maxsize=1)
def _small_watch() -> Dataset:
    """A few hundred real windows per split: one train session, every 4th val window."""
    torch.set_num_threads(1)
    dataset = load_dataset(DataSpec("watch", max_train_sessions=1))
    return dataclasses.replace(dataset, val=_every(dataset.val, 4), test=_every(dataset.test, 4))


def _tiny_study(tmp_path: Path, group: str = "tiny", **kwargs: object) -> optuna.Study:
    return prepare_studies(
        group,
        str(tmp_path / "studies.journal"),
        ["transformer"],
        dataset=_small_watch(),
        settings=kwargs.pop("settings", TINY_SETTINGS),
        space=parse_space(TINY_SPACE),
        **kwargs,
    )["transformer"]


def _params(d_model: int = 16, dropout: float = 0.1, lr: float = 0.001) -> dict:
    return {"d_model": d_model, "dropout": dropout, "lr": lr}


def _training_runs(caplog: pytest.LogCaptureFixture) -> int:
    return sum(TRAINING_LOG in record.getMessage() for record in caplog.records)


def test_study_names_group_and_architecture() -> None:
    assert study_names("bot-activity", ["transformer", "tft"]) == {
        "transformer": "bot-activity/transformer",
        "tft": "bot-activity/tft",
    }


@pytest.mark.parametrize(
    ("group", "fragment"), [("a/b", "must not contain '/'"), ("", "non-empty")]
)
def test_study_names_invalid_group_raises(group: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        study_names(group, ["transformer"])


def test_study_names_unknown_architecture_raises() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'lstm'"):
        study_names("g", ["lstm"])


def test_prepare_studies_records_metadata(tmp_path: Path) -> None:
    dataset = _small_watch()

    studies = prepare_studies(
        "meta",
        str(tmp_path / "s.journal"),
        ["transformer", "tft"],
        dataset=dataset,
        settings={"max_epochs": 7},
    )

    assert set(studies) == {"transformer", "tft"}
    study = studies["transformer"]
    assert study.study_name == "meta/transformer"
    record = StudyRecord.from_study(study)
    assert record.architecture == "transformer"
    assert record.space["d_model"] == {"low": 32, "high": 256, "step": 32}
    assert record.data["name"] == "watch"
    assert record.data["max_train_sessions"] == 1
    assert record.data["fingerprint"] == dataset.fingerprint
    assert record.data["num_features"] == 6
    assert record.data_split["train"] == sorted(set(dataset.train.session))
    assert record.data_split["test"] == sorted(set(dataset.test.session))
    assert record.train_settings["max_epochs"] == 7
    assert record.train_settings["lr"] == 1e-3
    assert record.pruner_settings["optuna_pruner"] == "median"
    assert record.archsweep_version
    assert Path(record.artifacts_dir) == (tmp_path / "archsweep-artifacts").resolve()


def test_study_data_spec_reloads_same_data(tmp_path: Path) -> None:
    study = prepare_studies(
        "spec",
        str(tmp_path / "s.journal"),
        ["transformer"],
        data_spec=DataSpec("watch", max_train_sessions=1),
    )["transformer"]

    spec = study_data_spec(study)

    assert spec == DataSpec("watch", max_train_sessions=1)
    assert load_dataset(spec).fingerprint == StudyRecord.from_study(study).data["fingerprint"]


def test_prepare_studies_enqueues_default_config(tmp_path: Path) -> None:
    study = prepare_studies(
        "defaults", str(tmp_path / "s.journal"), ["transformer"], dataset=_small_watch()
    )["transformer"]

    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1
    params = waiting[0].system_attrs["fixed_params"]
    assert params == {
        "d_model": 128,
        "num_heads": 8,
        "d_ff_factor": 4,
        "num_layers": 3,
        "dropout": 0.1,
        "lr": 1e-3,
    }


def test_prepare_studies_resume_same_settings(tmp_path: Path) -> None:
    first = _tiny_study(tmp_path)

    again = _tiny_study(tmp_path)
    bare = prepare_studies("tiny", str(tmp_path / "studies.journal"), ["transformer"])[
        "transformer"
    ]

    assert again.study_name == first.study_name == bare.study_name
    assert isinstance(bare.pruner, CombinedPruner)


def test_prepare_studies_resume_other_space_raises(tmp_path: Path) -> None:
    _tiny_study(tmp_path)
    other = {"transformer": dict(TINY_SPACE["transformer"], d_model={"choices": [16, 64]})}

    with pytest.raises(StudyMismatchError) as raised:
        prepare_studies(
            "tiny",
            str(tmp_path / "studies.journal"),
            ["transformer"],
            dataset=_small_watch(),
            space=parse_space(other),
        )

    message = str(raised.value)
    assert "tiny/transformer" in message
    assert "space.d_model" in message
    assert "--study tiny-2" in message


def test_prepare_studies_resume_other_data_raises(tmp_path: Path) -> None:
    _tiny_study(tmp_path)

    with pytest.raises(StudyMismatchError) as raised:
        prepare_studies(
            "tiny",
            str(tmp_path / "studies.journal"),
            ["transformer"],
            data_spec=DataSpec("watch", max_train_sessions=2),
        )

    message = str(raised.value)
    assert "data.max_train_sessions (1 -> 2)" in message
    assert "data.fingerprint" in message


def test_prepare_studies_resume_other_settings_raises(tmp_path: Path) -> None:
    _tiny_study(tmp_path)

    with pytest.raises(StudyMismatchError, match=r"training.max_epochs \(2 -> 9\)"):
        prepare_studies(
            "tiny", str(tmp_path / "studies.journal"), ["transformer"], settings={"max_epochs": 9}
        )


def test_prepare_studies_new_study_without_data_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass data_spec or dataset"):
        prepare_studies("nodata", str(tmp_path / "s.journal"), ["transformer"])


def test_run_trials_records_trial_attributes(tmp_path: Path) -> None:
    study = _tiny_study(tmp_path)
    study.enqueue_trial(_params(16))
    study.enqueue_trial(_params(32, dropout=0.0))

    summary = run_trials(study, _small_watch(), n_trials=2)

    assert summary.complete == 2
    for trial in study.get_trials():
        assert trial.state is optuna.trial.TrialState.COMPLETE
        assert len(trial.user_attrs["train_f1_curve"]) == 2
        assert len(trial.user_attrs["val_f1_curve"]) == 2
        assert len(trial.user_attrs["val_auprc_curve"]) == 2
        assert trial.intermediate_values[1] == pytest.approx(trial.user_attrs["val_f1_curve"][1])
        assert trial.value == pytest.approx(max(trial.user_attrs["val_f1_curve"]))
        assert trial.user_attrs["val_f1_curve"][trial.user_attrs["best_epoch"]] == pytest.approx(
            trial.value
        )
        assert trial.user_attrs["num_parameters"] == models.count_parameters(
            "transformer", trial.user_attrs["model_config"], 6
        )


def test_run_trials_duplicate_config_trained_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = _tiny_study(tmp_path)
    study.enqueue_trial(_params(16))
    study.enqueue_trial(_params(16))
    caplog.set_level(logging.INFO, logger="search.engine")

    run_trials(study, _small_watch(), n_trials=2)

    first, second = study.get_trials()
    assert _training_runs(caplog) == 1
    assert second.state is optuna.trial.TrialState.COMPLETE
    assert second.user_attrs["duplicate_of"] == 0
    assert second.user_attrs["duplicate_action"] == "reused"
    assert second.value == first.value
    assert second.user_attrs["val_f1_curve"] == first.user_attrs["val_f1_curve"]
    assert second.intermediate_values == first.intermediate_values


def test_run_trials_duplicate_of_running_trial_pruned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = _tiny_study(tmp_path)
    study.enqueue_trial(_params(16))
    running = study.ask()  # takes the enqueued configuration and stays RUNNING
    parse_space(TINY_SPACE)["transformer"].sample(running)
    study.enqueue_trial(_params(16))
    caplog.set_level(logging.INFO, logger="search.engine")

    run_trials(study, _small_watch(), n_trials=2)

    duplicate = study.get_trials()[1]
    assert _training_runs(caplog) == 0
    assert duplicate.state is optuna.trial.TrialState.PRUNED
    assert duplicate.user_attrs["duplicate_of"] == running.number
    assert duplicate.user_attrs["duplicate_action"] == "pruned"
    assert duplicate.user_attrs["pruned_by"] == "duplicate"
    assert "still running" in duplicate.user_attrs["prune_reason"]
    study.tell(running, state=optuna.trial.TrialState.FAIL)


def test_run_trials_failed_trials_recorded_and_worker_continues(tmp_path: Path) -> None:
    study = _tiny_study(tmp_path)
    study.enqueue_trial(_params(16, lr=1.0e12))  # the loss becomes non-finite
    study.enqueue_trial(_params(32))

    summary = run_trials(study, _small_watch(), n_trials=2)

    failed, complete = study.get_trials()
    assert (summary.failed, summary.complete) == (1, 1)
    assert failed.state is optuna.trial.TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith("training loss became")
    assert complete.state is optuna.trial.TrialState.COMPLETE


def test_run_trials_out_of_memory_fails_only_that_trial(tmp_path: Path) -> None:
    space = {"transformer": dict(TINY_SPACE["transformer"], d_ff_factor={"choices": [2, 2**36]})}
    study = prepare_studies(
        "oom",
        str(tmp_path / "s.journal"),
        ["transformer"],
        dataset=_small_watch(),
        settings=TINY_SETTINGS,
        space=parse_space(space),
    )["transformer"]
    study.enqueue_trial(dict(_params(32), d_ff_factor=2**36))  # 2**41 units: terabytes
    study.enqueue_trial(dict(_params(32), d_ff_factor=2))

    run_trials(study, _small_watch(), n_trials=2)

    oom, complete = study.get_trials()
    assert oom.state is optuna.trial.TrialState.FAIL
    assert oom.user_attrs["fail_reason"].startswith("out of memory on cpu")
    assert complete.state is optuna.trial.TrialState.COMPLETE


def test_run_trials_budget_counts_study_total(tmp_path: Path) -> None:
    study = _tiny_study(tmp_path)
    dataset = _small_watch()

    run_trials(study, dataset, n_trials=2)
    assert count_budget_trials(study) == 2

    run_trials(study, dataset, n_trials=2)
    assert len(study.get_trials()) == 2

    worker = open_study("tiny", "transformer", str(tmp_path / "studies.journal"), worker_index=1)
    run_trials(worker, dataset, n_trials=3)
    assert len(study.get_trials()) == 3


def test_run_trials_keeps_weights_of_top_trials_only(tmp_path: Path) -> None:
    study = _tiny_study(tmp_path, weights_top_k=1)
    for d_model, dropout in ((16, 0.0), (32, 0.0), (16, 0.2)):
        study.enqueue_trial(_params(d_model, dropout=dropout))
    dataset = _small_watch()

    run_trials(study, dataset, n_trials=3)

    best = study.best_trial
    artifacts = list((tmp_path / "archsweep-artifacts").iterdir())
    assert len(artifacts) == 1
    path = weights_file(study, best)
    assert path is not None and path.name == best.user_attrs["weights_artifact_id"]
    others = [t for t in study.get_trials() if t.number != best.number]
    assert all(weights_file(study, t) is None for t in others)

    model = models.build_model("transformer", best.user_attrs["model_config"], num_features=6)
    model.load_state_dict(load_file(path))
    assert evaluate(model, dataset.val)["f1"] == pytest.approx(best.value)


def test_run_trials_other_dataset_raises(tmp_path: Path) -> None:
    study = _tiny_study(tmp_path)
    other = dataclasses.replace(_small_watch(), fingerprint="0" * 64)

    with pytest.raises(StudyMismatchError, match="fingerprint"):
        run_trials(study, other, n_trials=1)
    assert study.get_trials() == []


def test_open_study_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="not found"):
        open_study("absent", "transformer", str(tmp_path / "s.journal"))


def test_summarize_counts_states(tmp_path: Path) -> None:
    study = _tiny_study(tmp_path)
    study.enqueue_trial(_params(16, lr=1.0e12))
    study.enqueue_trial(_params(16))

    run_trials(study, _small_watch(), n_trials=2)
    summary = summarize(study)

    assert (summary.complete, summary.failed, summary.pruned, summary.running) == (1, 1, 0, 0)
    assert summary.best_trial == 1
    assert summary.best_value == study.best_value
    assert summary.finished == 2
