"""Publishing trials to optuna-dashboard: notes, study figures and the Optuna callback."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
from optuna_dashboard._note import get_note_from_system_attrs, save_note_with_version

from search import dashboard
from storage import close_storage, open_storage

from ._records import add_record_trial

ARCHSWEEP_GRAPH_IDS = {
    dashboard.GRAPH_ID_F1_CURVES,
    dashboard.GRAPH_ID_TRAIN_VS_VAL,
    dashboard.GRAPH_ID_F1_VS_PARAMETERS,
}
UNDERFIT_REASON = (
    "underfit: val F1 0.350 > train F1 0.200 and train F1 flat for 5 epochs, "
    "for 3 consecutive epochs up to epoch 7"
)


@pytest.fixture(params=["journal", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseStorage]:
    if request.param == "journal":
        url = str(tmp_path / "studies.journal")
    else:
        url = request.getfixturevalue("postgres_database")
    opened = open_storage(url, heartbeat_interval=0)
    try:
        yield opened
    finally:
        close_storage(opened)


def _study(storage: BaseStorage, name: str = "bots/transformer") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=storage, direction="maximize")


def _note(study: optuna.Study, trial_id: int | None) -> str:
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    return get_note_from_system_attrs(system_attrs, trial_id)["body"]


def _graphs(study: optuna.Study) -> dict[str, str]:
    return get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))


def test_publish_trial_note_gives_prune_reason(storage: BaseStorage) -> None:
    study = _study(storage)
    trial = add_record_trial(
        study,
        [0.2, 0.21, 0.2],
        [0.3, 0.35, 0.33],
        state=TrialState.PRUNED,
        pruned_by="underfit",
        prune_reason=UNDERFIT_REASON,
        num_parameters=4321,
    )

    dashboard.publish_trial(study, trial)

    note = _note(study, trial._trial_id)
    assert note.startswith(f"{dashboard.TRIAL_NOTE_HEADING}0 (pruned: underfit)")
    assert UNDERFIT_REASON in note
    assert "| best epoch | 1 |" in note
    assert "| parameters | 4,321 |" in note
    assert "| 1 (best) | 0.210 | 0.350 | 0.400 |" in note
    assert set(_graphs(study)) == ARCHSWEEP_GRAPH_IDS


def test_publish_trial_keeps_user_note(storage: BaseStorage) -> None:
    study = _study(storage)
    trial = add_record_trial(study, [0.5, 0.6], [0.4, 0.5])
    user_note = "Looks like the learning rate is too low."
    save_note_with_version(storage, study._study_id, trial._trial_id, 1, user_note)

    dashboard.publish_trial(study, trial)

    assert _note(study, trial._trial_id) == user_note


def test_publish_trial_rejects_running_trial(storage: BaseStorage) -> None:
    study = _study(storage)
    trial = study.ask()

    with pytest.raises(ValueError, match="finished trial"):
        dashboard.publish_trial(study, trial)


def test_publish_study_writes_only_changes(storage: BaseStorage) -> None:
    study = _study(storage)
    add_record_trial(study, [0.5, 0.6], [0.4, 0.5])
    add_record_trial(study, [0.1], [0.1], state=TrialState.FAIL, fail_reason="loss became nan")

    # Two trial notes, three figures and the study note.
    assert dashboard.publish_study(study) == 6
    assert dashboard.publish_study(study) == 0

    assert set(_graphs(study)) == ARCHSWEEP_GRAPH_IDS
    assert "loss became nan" in _note(study, study.trials[1]._trial_id)
    study_note = _note(study, None)
    assert study_note.startswith(f"{dashboard.STUDY_NOTE_HEADING}bots/transformer")
    assert "| failed | 1 |" in study_note

    add_record_trial(study, [0.8, 0.9], [0.7, 0.75])
    # The new trial's note, the three figures and the study note change.
    assert dashboard.publish_study(study) == 5
    assert "trial 2 (complete)" in _graphs(study)[dashboard.GRAPH_ID_F1_CURVES]


def test_publish_study_ignores_foreign_study(storage: BaseStorage) -> None:
    study = _study(storage, name="not-archsweep")
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)

    assert dashboard.publish_study(study) == 0
    assert _graphs(study) == {}


def test_publish_all_studies_covers_every_study(storage: BaseStorage) -> None:
    first = _study(storage, "bots/transformer")
    second = _study(storage, "bots/mcdropout")
    add_record_trial(first, [0.5], [0.4])
    add_record_trial(second, [0.6], [0.5])

    assert dashboard.publish_all_studies(storage) == 10

    assert set(_graphs(first)) == ARCHSWEEP_GRAPH_IDS
    assert set(_graphs(second)) == ARCHSWEEP_GRAPH_IDS


def _objective(trial: optuna.Trial) -> float:
    num_layers = trial.suggest_int("num_layers", 1, 3)
    train_f1 = [0.3 * num_layers, 0.3 * num_layers + 0.05]
    val_f1 = [0.25 * num_layers, 0.25 * num_layers + 0.02]
    trial.set_user_attr("train_f1_curve", train_f1)
    trial.set_user_attr("val_f1_curve", val_f1)
    trial.set_user_attr("num_parameters", 100 * num_layers)
    for epoch, value in enumerate(val_f1):
        trial.report(value, epoch)
    trial.set_user_attr("best_epoch", 1)
    return val_f1[-1]


def test_callback_notes_every_trial(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "studies.journal"))
    study = _study(storage)
    # A long interval: the figures are written after the first trial only.
    callback = dashboard.PublishTrialCallback(min_interval_s=3600.0)

    study.optimize(_objective, n_trials=3, callbacks=[callback])

    for trial in study.trials:
        assert _note(study, trial._trial_id).startswith(
            f"{dashboard.TRIAL_NOTE_HEADING}{trial.number} (complete)"
        )
    curves = _graphs(study)[dashboard.GRAPH_ID_F1_CURVES]
    assert "trial 0 (complete)" in curves
    assert "trial 2 (complete)" not in curves


def test_callback_rejects_negative_interval() -> None:
    with pytest.raises(ValueError, match="min_interval_s"):
        dashboard.PublishTrialCallback(min_interval_s=-1.0)


def _dashboard_args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {"storage": None, "host": "127.0.0.1", "port": 8080}
    values.update(overrides)
    return argparse.Namespace(**values)


def test_run_dashboard_rejects_invalid_port(tmp_path: Path) -> None:
    args = _dashboard_args(storage=str(tmp_path / "studies.journal"), port=70000)

    assert dashboard.run_dashboard(args) == 2


def test_run_dashboard_rejects_invalid_storage(caplog: pytest.LogCaptureFixture) -> None:
    args = _dashboard_args(storage="postgres://user:secret@127.0.0.1/db")

    assert dashboard.run_dashboard(args) == 2
    assert "postgres" in caplog.text
    assert "secret" not in caplog.text
