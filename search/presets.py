"""Writing presets: the best completed trial of a study as a reusable YAML file.

A preset is a YAML file of format ``archsweep-preset/1``, which ``models.load_preset``
and ``models.from_preset`` read. It records what rebuilding and retraining one model
needs: its config, the training settings of its trial, the data spec with the split
and fingerprint, its metrics and its source. ``archsweep export`` writes one per
architecture, and ``archsweep train --preset`` retrains from one.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from search import records

__all__ = [
    "PRESET_SUFFIX",
    "WEIGHTS_SUFFIX",
    "best_complete_trial",
    "build_preset",
    "preset_data_spec",
    "preset_train_settings",
    "write_preset",
]

_logger = logging.getLogger(__name__)

PRESET_SUFFIX = ".yaml"
WEIGHTS_SUFFIX = ".safetensors"

# Training settings that differ per machine, not per configuration, stay out of presets.
_PER_MACHINE_SETTINGS = ("device",)


def best_complete_trial(study: optuna.Study) -> FrozenTrial | None:
    """Return the COMPLETE trial with the highest value (the lowest number on ties), or None.

    Pruned and failed trials never qualify, whatever their intermediate values.
    """
    best = None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.value is None:
            continue
        if best is None or trial.value > (best.value or -math.inf):
            best = trial
    return best


def _trial_values(record: Any, trial: FrozenTrial) -> dict[str, Any]:
    """Return every space key of ``trial``: its sampled params plus the space's fixed values."""
    from search.space import parse_space

    space = parse_space({record.architecture: record.space}, source=f"study {record.group}")
    arch_space = space[record.architecture]
    values = {
        name: spec.value for name, spec in arch_space.params.items() if spec.kind == "fixed"
    }
    values.update(trial.params)
    return values


def _trial_training(record: Any, trial: FrozenTrial) -> dict[str, Any]:
    """Return the trial's training settings: the study's, with the trial's sampled rates."""
    from search.space import parse_space
    from search.training import TrainSettings

    space = parse_space({record.architecture: record.space}, source=f"study {record.group}")
    overrides = space[record.architecture].training_overrides(_trial_values(record, trial))
    settings = dataclasses.replace(TrainSettings.from_dict(record.train_settings), **overrides)
    training = {
        key: value for key, value in settings.to_dict().items() if key not in _PER_MACHINE_SETTINGS
    }
    training["best_epoch"] = int(trial.user_attrs.get(records.TRIAL_BEST_EPOCH, 0))
    return training


def _model_fields(record: Any, trial: FrozenTrial) -> dict[str, Any]:
    """Return the config fields the trial trained, as the architecture's full config."""
    import models
    from search.space import parse_space

    recorded = trial.user_attrs.get(records.TRIAL_MODEL_CONFIG)
    if isinstance(recorded, dict):
        fields = recorded
    else:
        # Trials record their config; rebuild it from the params for one that did not.
        space = parse_space({record.architecture: record.space}, source=f"study {record.group}")
        fields = space[record.architecture].model_fields(_trial_values(record, trial))
    return models.config_from_dict(record.architecture, dict(fields)).to_dict()


def _curve_value(trial: FrozenTrial, name: str, epoch: int) -> float | None:
    curve = trial.user_attrs.get(name)
    if isinstance(curve, list) and 0 <= epoch < len(curve):
        return float(curve[epoch])
    return None


def build_preset(
    study: optuna.Study,
    trial: FrozenTrial,
    *,
    storage_label: str | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """Build the preset mapping of ``trial``, a COMPLETE trial of an archsweep study.

    ``storage_label`` is recorded under ``source.storage`` and must already be masked
    (``storage.mask_url``). ``weights`` is the file name of the weights beside the preset.
    Raises ValueError for a trial that is not COMPLETE or a study without an
    archsweep record.
    """
    from search.records import StudyRecord, archsweep_version
    from search.training import DECISION_THRESHOLD

    if trial.state is not TrialState.COMPLETE or trial.value is None:
        raise ValueError(
            f"study {study.study_name} trial {trial.number} is {trial.state.name}; presets "
            "are written from COMPLETE trials only"
        )
    record = StudyRecord.from_study(study)
    training = _trial_training(record, trial)
    best_epoch = training["best_epoch"]

    source: dict[str, Any] = {
        "study": study.study_name,
        "trial": trial.number,
        "archsweep_version": archsweep_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if storage_label is not None:
        source["storage"] = storage_label

    preset: dict[str, Any] = {
        "format": "archsweep-preset/1",
        "architecture": record.architecture,
        "model": _model_fields(record, trial),
        "training": training,
        "data": dict(record.data),
        "metrics": {
            "val_f1": float(trial.value),
            "train_f1": _curve_value(trial, records.TRIAL_TRAIN_F1_CURVE, best_epoch),
            "val_auprc": _curve_value(trial, records.TRIAL_VAL_AUPRC_CURVE, best_epoch),
            "threshold": DECISION_THRESHOLD,
        },
        "num_parameters": int(trial.user_attrs.get(records.TRIAL_NUM_PARAMETERS, 0)),
        "source": source,
    }
    if weights is not None:
        preset["weights"] = weights
    return preset


def default_file_mode() -> int:
    """Return the mode a new file gets from open(): 0o666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_atomically(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary file in its folder, so readers never see half of it.

    mkstemp creates the temporary file with mode 0600; the result gets the mode that
    open() would give a new file, so presets stay readable where other files are.
    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_preset(
    preset: dict[str, Any],
    out_dir: str | Path,
    *,
    weights_source: str | Path | None = None,
    forbidden_text: str | None = None,
) -> Path:
    """Write ``<out_dir>/<architecture>.yaml`` (and the weights beside it); return the path.

    ``weights_source`` is copied to ``<architecture>.safetensors`` and the preset names
    it. Without it, an older ``<architecture>.safetensors`` in ``out_dir`` is removed, so
    no weights file lies beside a preset that does not name it. ``forbidden_text`` (a
    storage password) must not appear in the file: ValueError otherwise, before anything
    is written.
    """
    out = Path(out_dir)
    architecture = preset["architecture"]
    path = out / f"{architecture}{PRESET_SUFFIX}"

    content = dict(preset)
    if weights_source is not None:
        content["weights"] = f"{architecture}{WEIGHTS_SUFFIX}"
    text = yaml.safe_dump(content, sort_keys=False, default_flow_style=False)
    if forbidden_text and forbidden_text in text:
        raise ValueError(
            f"the {architecture} preset would contain the storage password; it was not written"
        )

    out.mkdir(parents=True, exist_ok=True)
    if weights_source is not None:
        weights_path = out / content["weights"]
        _write_atomically(weights_path, lambda target: shutil.copyfile(weights_source, target))
    _write_atomically(path, lambda target: target.write_text(text, encoding="utf-8"))
    if weights_source is None:
        stale = out / f"{architecture}{WEIGHTS_SUFFIX}"
        if stale.is_file():
            stale.unlink()
            _logger.info("removed %s: the new preset names no weights", stale)
    _logger.info("wrote preset %s", path)
    return path


def preset_train_settings(preset: dict[str, Any]) -> Any:
    """Return the TrainSettings a preset's ``training`` section describes.

    ``best_epoch`` is a result, not a setting, and is left out. Raises ValueError for
    an unknown or invalid setting.
    """
    from search.training import TrainSettings

    training = {key: value for key, value in preset.get("training", {}).items() if key != "best_epoch"}
    return TrainSettings.from_dict(training)


def preset_data_spec(preset: dict[str, Any]) -> Any:
    """Return the DataSpec a preset's ``data`` section describes (recorded-only keys skipped)."""
    from search.data import DataSpec

    return DataSpec.from_dict(dict(preset["data"]))
