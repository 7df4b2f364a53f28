"""What a study and its trials record: attribute names and the study record.

A study's user attributes store everything that a worker, ``status`` or ``export``
needs besides the storage. That is the search space, the data spec with its split
and fingerprint, the training, pruner and sampler settings, the archsweep version
and the directory of the trial weights. ``StudyRecord`` reads and writes that set.

Trial user attributes (per epoch, so a killed trial keeps its curves):
``train_f1_curve``, ``val_f1_curve``, ``val_auprc_curve``, ``train_auprc_curve``,
``train_loss_curve`` (lists indexed by epoch, from 0), ``num_parameters``,
``best_epoch``, ``model_config``; at the end ``stopped_early`` and
``weights_artifact_id`` (when the weights are kept); on a stopped trial
``pruned_by`` with ``prune_reason``, or ``fail_reason``; on a repeated
configuration ``duplicate_of`` (the trial that was trained) and
``duplicate_action`` (``reused`` or ``pruned``).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

__all__ = [
    "STUDY_FORMAT",
    "StudyRecord",
    "archsweep_version",
    "artifact_store",
    "weights_file",
]

_logger = logging.getLogger(__name__)

STUDY_FORMAT = "archsweep-study/1"

# Study user attribute names.
ATTR_FORMAT = "archsweep_format"
ATTR_GROUP = "group"
ATTR_ARCHITECTURE = "architecture"
ATTR_VERSION = "archsweep_version"
ATTR_CREATED = "created"
ATTR_SPACE = "space"
ATTR_DATA = "data"
ATTR_DATA_SPLIT = "data_split"
ATTR_TRAIN_SETTINGS = "train_settings"
ATTR_PRUNER_SETTINGS = "pruner_settings"
ATTR_SAMPLER_SETTINGS = "sampler_settings"
ATTR_ARTIFACTS_DIR = "artifacts_dir"
ATTR_WEIGHTS_TOP_K = "weights_top_k"

# Trial user attribute names (the CONTRACTS trial record plus archsweep's extras).
TRIAL_TRAIN_F1_CURVE = "train_f1_curve"
TRIAL_VAL_F1_CURVE = "val_f1_curve"
TRIAL_VAL_AUPRC_CURVE = "val_auprc_curve"
TRIAL_TRAIN_AUPRC_CURVE = "train_auprc_curve"
TRIAL_TRAIN_LOSS_CURVE = "train_loss_curve"
TRIAL_NUM_PARAMETERS = "num_parameters"
TRIAL_BEST_EPOCH = "best_epoch"
TRIAL_MODEL_CONFIG = "model_config"
TRIAL_STOPPED_EARLY = "stopped_early"
TRIAL_WEIGHTS_ARTIFACT_ID = "weights_artifact_id"
TRIAL_PRUNED_BY = "pruned_by"
TRIAL_PRUNE_REASON = "prune_reason"
TRIAL_FAIL_REASON = "fail_reason"
TRIAL_DUPLICATE_OF = "duplicate_of"
TRIAL_DUPLICATE_ACTION = "duplicate_action"

# Attributes copied from a finished trial to a trial that repeats its configuration.
REUSED_TRIAL_ATTRS = (
    TRIAL_TRAIN_F1_CURVE,
    TRIAL_VAL_F1_CURVE,
    TRIAL_VAL_AUPRC_CURVE,
    TRIAL_TRAIN_AUPRC_CURVE,
    TRIAL_TRAIN_LOSS_CURVE,
    TRIAL_NUM_PARAMETERS,
    TRIAL_BEST_EPOCH,
    TRIAL_MODEL_CONFIG,
    TRIAL_STOPPED_EARLY,
    TRIAL_WEIGHTS_ARTIFACT_ID,
)


def archsweep_version() -> str:
    """Return the installed archsweep version, or the source tree's when not installed."""
    try:
        return metadata.version("archsweep")
    except metadata.PackageNotFoundError:
        import search

        return str(getattr(search, "__version__", "0+unknown"))


@dataclasses.dataclass
class StudyRecord:
    """The archsweep metadata of one study, as stored in its user attributes.

    ``data`` is the data spec (``DataSpec.to_dict()``) plus ``num_features``,
    ``seq_len`` and ``fingerprint``; ``data_split`` lists the sessions of each split.
    """

    group: str
    architecture: str
    space: dict[str, Any]
    data: dict[str, Any]
    data_split: dict[str, list[str]]
    train_settings: dict[str, Any]
    pruner_settings: dict[str, Any]
    sampler_settings: dict[str, Any]
    artifacts_dir: str
    weights_top_k: int
    archsweep_version: str = dataclasses.field(default_factory=archsweep_version)
    created: str = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )

    def to_user_attrs(self) -> dict[str, Any]:
        """Return the study user attributes that store this record."""
        return {
            ATTR_FORMAT: STUDY_FORMAT,
            ATTR_GROUP: self.group,
            ATTR_ARCHITECTURE: self.architecture,
            ATTR_VERSION: self.archsweep_version,
            ATTR_CREATED: self.created,
            ATTR_SPACE: self.space,
            ATTR_DATA: self.data,
            ATTR_DATA_SPLIT: self.data_split,
            ATTR_TRAIN_SETTINGS: self.train_settings,
            ATTR_PRUNER_SETTINGS: self.pruner_settings,
            ATTR_SAMPLER_SETTINGS: self.sampler_settings,
            ATTR_ARTIFACTS_DIR: self.artifacts_dir,
            ATTR_WEIGHTS_TOP_K: self.weights_top_k,
        }

    @classmethod
    def from_user_attrs(cls, study_name: str, attrs: dict[str, Any]) -> StudyRecord:
        """Read a record back; raises ValueError when the study was not made by archsweep."""
        if attrs.get(ATTR_FORMAT) != STUDY_FORMAT:
            raise ValueError(
                f"study {study_name!r} has no archsweep record ({ATTR_FORMAT} is "
                f"{attrs.get(ATTR_FORMAT)!r}, expected {STUDY_FORMAT!r}); it was not created "
                "by archsweep run, so choose another --study name"
            )
        return cls(
            group=attrs[ATTR_GROUP],
            architecture=attrs[ATTR_ARCHITECTURE],
            space=attrs[ATTR_SPACE],
            data=attrs[ATTR_DATA],
            data_split=attrs[ATTR_DATA_SPLIT],
            train_settings=attrs[ATTR_TRAIN_SETTINGS],
            pruner_settings=attrs[ATTR_PRUNER_SETTINGS],
            sampler_settings=attrs[ATTR_SAMPLER_SETTINGS],
            artifacts_dir=attrs[ATTR_ARTIFACTS_DIR],
            weights_top_k=attrs[ATTR_WEIGHTS_TOP_K],
            archsweep_version=attrs[ATTR_VERSION],
            created=attrs[ATTR_CREATED],
        )

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudyRecord:
        return cls.from_user_attrs(study.study_name, study.user_attrs)


def artifact_store(
    study: optuna.Study, artifacts_dir: str | Path | None = None
) -> FileSystemArtifactStore:
    """Return the artifact store that keeps the study's trial weights.

    ``artifacts_dir`` overrides the directory the study recorded (for a worker that
    mounts the same files elsewhere). The directory is created when missing.
    """
    directory = Path(artifacts_dir or StudyRecord.from_study(study).artifacts_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(directory)


def weights_file(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, artifacts_dir: str | Path | None = None
) -> Path | None:
    """Return the safetensors file of ``trial``'s best-epoch weights, or None when not kept.

    Only the top trials of a study keep their weights, so a trial that fell out of
    them returns None although it still names its ``weights_artifact_id``.
    """
    artifact_id = trial.user_attrs.get(TRIAL_WEIGHTS_ARTIFACT_ID)
    if not artifact_id:
        return None

    store = artifact_store(study, artifacts_dir)
    try:
        with store.open_reader(artifact_id):
            pass
    except ArtifactNotFound:
        _logger.info(
            "study %s trial %d: weights %s were removed (not among the top trials)",
            study.study_name,
            trial.number,
            artifact_id,
        )
        return None
    return Path(artifacts_dir or StudyRecord.from_study(study).artifacts_dir) / artifact_id
