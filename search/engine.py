"""Studies and the worker loop behind ``archsweep run`` and ``archsweep worker``.

One Optuna study per architecture, named ``<group>/<architecture>``. ``prepare_studies``
creates the studies or resumes them after checking that the space and data have not
changed. ``open_study`` loads one study for a worker, and ``run_trials`` is one
worker's loop.

Sampler: TPE, seeded, multivariate (it models the joint density of the sizes, which
interact: a wide model wants fewer layers), with ``constant_liar`` so that parallel
workers treat each other's running trials as poor results and sample elsewhere.
Each worker's sampler seed mixes the study seed, the study name, the worker index and
the number of trials present when the worker starts. So two workers, one worker
resumed, or the studies of two architectures do not repeat the same random start-up
configurations.

Trial budget: ``n_trials`` counts every trial of the study (all workers, earlier runs
included) that is COMPLETE, PRUNED, FAIL or RUNNING, except a FAIL trial that Optuna
re-queued after its worker died (the retry counts instead). Each worker checks the
count before every new trial, so the total exceeds ``n_trials`` only when several
workers start a trial in the same instant.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search import records
from search.dashboard import PublishTrialCallback
from search.pruners import CombinedPruner, PrunerSettings, build_pruner
from search.records import StudyRecord
from search.space import ARCHITECTURES, ArchitectureSpace, SpaceError, load_space, parse_space
from search.training import TrainSettings, TrialFailed, resolve_device, train_model

__all__ = [
    "DEFAULT_WEIGHTS_TOP_K",
    "StudyMismatchError",
    "StudySummary",
    "count_budget_trials",
    "open_study",
    "prepare_studies",
    "run_trials",
    "study_data_spec",
    "study_names",
    "summarize",
]

_logger = logging.getLogger(__name__)

# Trials per study whose best-epoch weights stay on disk for `export --weights`.
DEFAULT_WEIGHTS_TOP_K = 3

# TPE samples at random until this many trials finished (Optuna's default).
DEFAULT_STARTUP_TRIALS = 10

# A study that another process creates on a journal or SQLite storage gets its
# attributes a moment after it appears, so readers wait this long for them.
_RECORD_WAIT_S = 5.0
_RECORD_POLL_S = 0.1

# Settings that may differ between runs of one study without making trials incomparable.
_PER_RUN_SETTINGS = ("device",)

# Decimal places kept of the F1, AUPRC and loss values in the trial curves.
_CURVE_DECIMALS = 6

# A parameter with more possible values than this is checked at its bounds only.
_MAX_VALUES_CHECKED = 12

_BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


class StudyMismatchError(ValueError):
    """Resuming a study with another space, data or settings than it was created with."""


@dataclasses.dataclass(frozen=True)
class StudySummary:
    """Trial counts and the best result of one study, for progress lines and ``status``."""

    study_name: str
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best_value: float | None
    best_trial: int | None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


# ---------------------------------------------------------------------------
# Study names, storage and records


def study_names(group: str, architectures: Iterable[str]) -> dict[str, str]:
    """Map each architecture to its study name ``<group>/<architecture>``."""
    _check_group(group)
    names = {}
    for architecture in architectures:
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {architecture!r}; valid architectures are "
                f"{', '.join(ARCHITECTURES)}"
            )
        names[architecture] = f"{group}/{architecture}"
    return names


def _check_group(group: str) -> None:
    if not isinstance(group, str) or not group.strip():
        raise ValueError(f"study name must be a non-empty string, got {group!r}")
    if "/" in group:
        raise ValueError(
            f"study name {group!r} must not contain '/': archsweep appends /<architecture> "
            "to it; use e.g. a dash instead"
        )


def _open_storage(storage: str | BaseStorage | None) -> BaseStorage:
    if isinstance(storage, BaseStorage):
        return storage
    from storage import open_storage

    return open_storage(storage)


def default_artifacts_dir(storage: str | BaseStorage | None) -> Path:
    """Return ``archsweep-artifacts`` beside a journal or SQLite file, else in the cwd.

    One directory serves every study of a storage, as optuna-dashboard's
    ``--artifact-dir`` expects.

    NOTE: the study records this directory as an absolute path. Workers on other
    machines need it mounted at the same path, or pass ``artifacts_dir`` to
    ``run_trials``.
    """
    directory = Path.cwd()
    location_path = _storage_file(storage)
    if location_path is not None:
        directory = Path(location_path).resolve().parent
    return directory / "archsweep-artifacts"


def _storage_file(storage: str | BaseStorage | None) -> str | None:
    if isinstance(storage, BaseStorage):
        url = getattr(storage, "url", None)
        if isinstance(url, str):
            storage = url
        else:
            backend = getattr(storage, "_backend", None)
            return getattr(backend, "_file_path", None)

    from storage import parse_storage_url, resolve_storage_url

    location = parse_storage_url(resolve_storage_url(storage))
    return location.path if location.kind in ("journal", "sqlite") else None


def _read_record(study_name: str, storage: BaseStorage) -> StudyRecord:
    deadline = time.monotonic() + _RECORD_WAIT_S
    while True:
        study_id = storage.get_study_id_from_name(study_name)
        attrs = storage.get_study_user_attrs(study_id)
        if attrs.get(records.ATTR_FORMAT) is not None or time.monotonic() >= deadline:
            break
        time.sleep(_RECORD_POLL_S)

    try:
        return StudyRecord.from_user_attrs(study_name, attrs)
    except ValueError as error:
        raise StudyMismatchError(str(error)) from None


def _sampler(
    record: StudyRecord, worker_index: int, num_trials: int
) -> optuna.samplers.BaseSampler:
    settings = record.sampler_settings
    # The study name keeps the studies of one group from sampling in lockstep.
    name_hash = zlib.crc32(record.group.encode() + b"/" + record.architecture.encode())
    seed_sequence = np.random.SeedSequence(
        [int(settings["seed"]), name_hash, worker_index, num_trials]
    )
    return optuna.samplers.TPESampler(
        seed=int(seed_sequence.generate_state(1)[0]),
        multivariate=True,
        constant_liar=True,
        n_startup_trials=int(settings.get("n_startup_trials", DEFAULT_STARTUP_TRIALS)),
    )


def _load_study(
    study_name: str, storage: BaseStorage, record: StudyRecord, worker_index: int
) -> optuna.Study:
    num_trials = len(
        storage.get_all_trials(storage.get_study_id_from_name(study_name), deepcopy=False)
    )
    return optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=_sampler(record, worker_index, num_trials),
        pruner=build_pruner(PrunerSettings.from_dict(record.pruner_settings)),
    )


def open_study(
    group: str,
    architecture: str,
    storage: str | BaseStorage | None = None,
    *,
    worker_index: int = 0,
) -> optuna.Study:
    """Load the existing study ``<group>/<architecture>`` with its recorded sampler and pruner.

    ``worker_index`` distinguishes the sampler seeds of parallel workers. Raises
    KeyError when the study does not exist and StudyMismatchError when it has no
    archsweep record.
    """
    study_name = study_names(group, [architecture])[architecture]
    backend = _open_storage(storage)
    try:
        backend.get_study_id_from_name(study_name)
    except KeyError:
        raise KeyError(
            f"study {study_name!r} not found in the storage; start it with archsweep run"
        ) from None

    record = _read_record(study_name, backend)
    return _load_study(study_name, backend, record, worker_index)


def study_data_spec(study: optuna.Study) -> Any:
    """Return the ``DataSpec`` a study recorded, for workers that load the data themselves."""
    from search.data import DataSpec

    return DataSpec.from_dict(_read_record(study.study_name, study._storage).data)


# ---------------------------------------------------------------------------
# Creating and resuming studies


def _as_space(
    space: Mapping[str, ArchitectureSpace] | str | Path | None,
) -> dict[str, ArchitectureSpace] | None:
    if space is None:
        return None
    if isinstance(space, (str, Path)):
        return load_space(space)
    return dict(space)


def _as_settings(settings: TrainSettings | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if settings is None:
        return None
    if isinstance(settings, TrainSettings):
        return settings.to_dict()
    TrainSettings.from_dict(dict(settings))  # validates the given fields
    return dict(settings)


def _data_record(dataset: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    data = dataset.to_record()  # spec fields plus num_features, seq_len and fingerprint
    split = {
        name: sorted({str(session) for session in getattr(dataset, name).session})
        for name in ("train", "val", "test")
    }
    return data, split


def _changed_keys(recorded: Mapping[str, Any], given: Mapping[str, Any], prefix: str) -> list[str]:
    changes = []
    for key in sorted(set(recorded) | set(given)):
        if key in _PER_RUN_SETTINGS:
            continue
        if key not in given:
            changes.append(f"{prefix}{key} (removed)")
        elif key not in recorded:
            changes.append(f"{prefix}{key} (added: {given[key]!r})")
        elif recorded[key] != given[key]:
            changes.append(f"{prefix}{key} ({recorded[key]!r} -> {given[key]!r})")
    return changes


def _check_resume(
    study_name: str,
    group: str,
    record: StudyRecord,
    *,
    space: ArchitectureSpace | None,
    data: dict[str, Any] | None,
    settings: dict[str, Any] | None,
    pruner_settings: dict[str, Any] | None,
) -> None:
    changes: list[str] = []
    if space is not None:
        recorded_space = parse_space({record.architecture: record.space}, source=study_name)
        changes += _changed_keys(
            recorded_space[record.architecture].to_dict(), space.to_dict(), "space."
        )
    if data is not None:
        recorded = {key: value for key, value in record.data.items() if key in data}
        changes += _changed_keys(recorded, data, "data.")
    if settings is not None:
        recorded = {key: value for key, value in record.train_settings.items() if key in settings}
        changes += _changed_keys(recorded, settings, "training.")
    if pruner_settings is not None:
        changes += _changed_keys(record.pruner_settings, pruner_settings, "pruner.")

    if changes:
        raise StudyMismatchError(
            f"study {study_name!r} was created with other settings; changed: "
            f"{'; '.join(changes)}. Resume it without these options (the study's own are "
            f"used) or start a new study, e.g. --study {group}-2"
        )


def _default_params(
    architecture: str, space: ArchitectureSpace, settings: TrainSettings
) -> dict[str, Any]:
    """Return the architecture's default config as values of the searched keys.

    Returns an empty mapping when the space does not contain the default (a partial
    configuration would not be the configuration in use).
    """
    import models

    config = models.CONFIG_CLASSES[architecture]()
    defaults: dict[str, Any] = {}
    for key in space.searched_keys():
        if key == "d_ff_factor":
            d_ff, d_model = getattr(config, "d_ff", None), getattr(config, "d_model", None)
            if d_ff is None or not d_model or d_ff % d_model:
                return {}
            value: Any = d_ff // d_model
        elif key in ("lr", "weight_decay"):
            value = getattr(settings, key)
        elif hasattr(config, key):
            value = getattr(config, key)
        else:
            return {}

        spec = space.params[key]
        possible = spec.possible_values()
        if possible is not None:
            if not any(math.isclose(value, option) for option in possible):
                return {}
        elif not spec.bounds()[0] <= value <= spec.bounds()[1]:
            return {}
        defaults[key] = value
    return defaults


def _check_available(architecture: str) -> None:
    import models

    if architecture not in models.CONFIG_CLASSES:
        available = ", ".join(name for name in ARCHITECTURES if name in models.CONFIG_CLASSES)
        raise ValueError(
            f"architecture {architecture!r} is not available in this installation; "
            f"available: {available}"
        )


def check_space_against_models(space: ArchitectureSpace) -> None:
    """Build a config for every corner of the space; raise SpaceError naming the first invalid one.

    Together with the divisibility check of ``parse_space`` this makes every sampled
    configuration valid, including pairs with config defaults the space leaves out.
    """
    import itertools

    import models

    _check_available(space.architecture)

    keys = space.searched_keys() + [k for k, s in space.params.items() if s.kind == "fixed"]
    value_lists = []
    for key in keys:
        spec = space.params[key]
        possible = spec.possible_values()
        if possible is None or len(possible) > _MAX_VALUES_CHECKED:
            possible = list(spec.bounds())
        value_lists.append(possible)

    for combination in itertools.product(*value_lists):
        fields = space.model_fields(dict(zip(keys, combination, strict=True)))
        try:
            models.config_from_dict(space.architecture, fields)
        except ValueError as error:
            raise SpaceError(
                f"{space.architecture}: the space contains an invalid configuration {fields}: "
                f"{error}; narrow the ranges so every combination is valid"
            ) from None


def prepare_studies(
    group: str,
    storage: str | BaseStorage | None,
    architectures: Sequence[str],
    data_spec: Any = None,
    settings: TrainSettings | Mapping[str, Any] | None = None,
    space: Mapping[str, ArchitectureSpace] | str | Path | None = None,
    *,
    dataset: Any = None,
    pruner_settings: PrunerSettings | None = None,
    seed: int | None = None,
    artifacts_dir: str | Path | None = None,
    weights_top_k: int = DEFAULT_WEIGHTS_TOP_K,
    enqueue_defaults: bool = True,
    worker_index: int = 0,
) -> dict[str, optuna.Study]:
    """Create or resume the study of each architecture and return them by architecture.

    A new study records the space, data (spec, split, fingerprint), training, pruner
    and sampler settings. Creating one needs ``data_spec`` or ``dataset`` (a loaded
    ``search.data.Dataset``, which spares loading it again). With
    ``enqueue_defaults`` its first trial is the architecture's default config, when
    the space contains it.

    Resuming compares the arguments with what the study recorded and raises
    StudyMismatchError naming the changed keys. An argument left None is taken from
    the study. ``settings`` may be a partial mapping of TrainSettings fields (e.g.
    only those the user set). ``space`` is a space mapping, a space file or None
    (the shipped default for new studies).
    """
    names = study_names(group, architectures)
    backend = _open_storage(storage)
    given_space = _as_space(space)
    given_settings = _as_settings(settings)
    given_pruner = pruner_settings.to_dict() if pruner_settings is not None else None
    if weights_top_k < 0:
        raise ValueError(f"weights_top_k must be >= 0, got {weights_top_k}")

    if dataset is None and data_spec is not None:
        from search.data import load_dataset

        dataset = load_dataset(data_spec)
    data, data_split = _data_record(dataset) if dataset is not None else (None, None)

    spaces = load_space()
    spaces.update(given_space or {})

    studies = {}
    for architecture, study_name in names.items():
        arch_space = spaces[architecture]
        check_space_against_models(arch_space)
        new_settings = TrainSettings.from_dict(given_settings or {})

        if data is None:
            record = None
        else:
            record = StudyRecord(
                group=group,
                architecture=architecture,
                space=arch_space.to_dict(),
                data=data,
                data_split=data_split or {},
                train_settings=new_settings.to_dict(),
                pruner_settings=(pruner_settings or PrunerSettings()).to_dict(),
                sampler_settings={
                    "name": "tpe",
                    "seed": new_settings.seed if seed is None else seed,
                    "n_startup_trials": DEFAULT_STARTUP_TRIALS,
                },
                artifacts_dir=str(Path(artifacts_dir or default_artifacts_dir(storage)).resolve()),
                weights_top_k=weights_top_k,
            )
        studies[architecture] = _create_or_resume(
            study_name,
            group,
            backend,
            record,
            space=arch_space if given_space is not None else None,
            data=data,
            settings=given_settings,
            pruner_settings=given_pruner,
            enqueue_defaults=enqueue_defaults,
            worker_index=worker_index,
        )
    return studies


def _create_or_resume(
    study_name: str,
    group: str,
    storage: BaseStorage,
    new_record: StudyRecord | None,
    *,
    space: ArchitectureSpace | None,
    data: dict[str, Any] | None,
    settings: dict[str, Any] | None,
    pruner_settings: dict[str, Any] | None,
    enqueue_defaults: bool,
    worker_index: int,
) -> optuna.Study:
    from storage import create_studies

    created = False
    if new_record is not None:
        created = create_studies(
            storage, [study_name], user_attrs={study_name: new_record.to_user_attrs()}
        )[study_name]
    else:
        try:
            storage.get_study_id_from_name(study_name)
        except KeyError:
            raise ValueError(
                f"study {study_name!r} does not exist yet, and creating it needs the data; "
                "pass data_spec or dataset"
            ) from None

    record = _read_record(study_name, storage)
    if created:
        _logger.info("Created study %s", study_name)
    else:
        _check_resume(
            study_name,
            group,
            record,
            space=space,
            data=data,
            settings=settings,
            pruner_settings=pruner_settings,
        )
        _logger.info("Resuming study %s", study_name)

    study = _load_study(study_name, storage, record, worker_index)
    if created and enqueue_defaults:
        arch_space = parse_space({record.architecture: record.space}, source=study_name)[
            record.architecture
        ]
        defaults = _default_params(
            record.architecture, arch_space, TrainSettings.from_dict(record.train_settings)
        )
        if defaults:
            study.enqueue_trial(
                defaults, user_attrs={"enqueued": "default config"}, skip_if_exists=True
            )
    return study


# ---------------------------------------------------------------------------
# The objective


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(value), _CURVE_DECIMALS) for value in values]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Objective:
    """Sample a configuration, train it (or reuse an identical trial) and record the trial."""

    def __init__(
        self,
        study: optuna.Study,
        record: StudyRecord,
        dataset: Any,
        settings: TrainSettings,
        artifacts_dir: str | Path | None,
    ) -> None:
        self.study = study
        self.record = record
        self.dataset = dataset
        self.settings = settings
        self.space = parse_space({record.architecture: record.space}, source=study.study_name)[
            record.architecture
        ]
        self.top_k = int(record.weights_top_k)
        self.store = records.artifact_store(study, artifacts_dir) if self.top_k > 0 else None
        self.num_trained = 0

    def __call__(self, trial: optuna.Trial) -> float:
        values = self.space.sample(trial)
        context = f"study {self.study.study_name} trial {trial.number}"

        duplicate = self._find_duplicate(trial)
        if duplicate is not None:
            return self._reuse(trial, duplicate, context)

        import models

        config = models.config_from_dict(self.record.architecture, self.space.model_fields(values))
        settings = dataclasses.replace(self.settings, **self.space.training_overrides(values))
        trial.set_user_attr(records.TRIAL_MODEL_CONFIG, config.to_dict())

        _logger.info("%s: training %s with %s", context, self.record.architecture, values)
        self.num_trained += 1
        try:
            result = train_model(
                self.record.architecture,
                config,
                self.dataset,
                settings,
                epoch_callback=lambda epoch, partial: self._after_epoch(trial, epoch, partial),
                log_context=context,
            )
        except TrialFailed as error:
            trial.set_user_attr(records.TRIAL_FAIL_REASON, error.reason)
            raise
        except RuntimeError as error:
            # Device errors (CUDA launch failures, driver errors) end this trial only.
            device = resolve_device(settings.device)
            reason = f"runtime error on {device}: {_first_line(error)}"
            _logger.exception("%s failed: %s", context, reason)
            trial.set_user_attr(records.TRIAL_FAIL_REASON, reason)
            raise TrialFailed(reason) from error
        finally:
            if resolve_device(settings.device).type == "cuda":
                import torch

                torch.cuda.empty_cache()

        trial.set_user_attr(records.TRIAL_BEST_EPOCH, result.best_epoch)
        trial.set_user_attr(records.TRIAL_STOPPED_EARLY, result.stopped_early)
        self._keep_weights(trial, result, context)
        return float(result.best_val_f1)

    def _after_epoch(self, trial: optuna.Trial, epoch: int, result: Any) -> None:
        # Attributes first: the underfit pruner reads train_f1_curve at should_prune.
        trial.set_user_attr(records.TRIAL_TRAIN_F1_CURVE, _rounded(result.train_f1_curve))
        trial.set_user_attr(records.TRIAL_VAL_F1_CURVE, _rounded(result.val_f1_curve))
        trial.set_user_attr(records.TRIAL_VAL_AUPRC_CURVE, _rounded(result.val_auprc_curve))
        trial.set_user_attr(records.TRIAL_TRAIN_AUPRC_CURVE, _rounded(result.train_auprc_curve))
        trial.set_user_attr(records.TRIAL_TRAIN_LOSS_CURVE, _rounded(result.train_loss_curve))
        trial.set_user_attr(records.TRIAL_NUM_PARAMETERS, result.num_parameters)
        trial.set_user_attr(records.TRIAL_BEST_EPOCH, result.best_epoch)

        trial.report(result.val_f1_curve[-1], epoch)
        if not trial.should_prune():
            return

        pruned_by, reason = self._prune_reason(trial)
        trial.set_user_attr(records.TRIAL_PRUNED_BY, pruned_by)
        trial.set_user_attr(records.TRIAL_PRUNE_REASON, reason)
        _logger.info(
            "study %s trial %d pruned at epoch %d: %s",
            self.study.study_name,
            trial.number,
            epoch,
            reason,
        )
        raise optuna.TrialPruned(reason)

    def _prune_reason(self, trial: optuna.Trial) -> tuple[str, str]:
        pruner = self.study.pruner
        if isinstance(pruner, CombinedPruner):
            decision = pruner.explain(self.study, trial)
            if decision is not None:
                return decision.pruned_by, decision.reason
        name = type(pruner).__name__.removesuffix("Pruner").lower()
        return name, f"{name}: pruned the trial"

    def _find_duplicate(self, trial: optuna.Trial) -> FrozenTrial | None:
        params = trial.params
        candidates = self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)
        )
        for other in candidates:
            if other.number != trial.number and other.params == params:
                return other
        return None

    def _reuse(self, trial: optuna.Trial, other: FrozenTrial, context: str) -> float:
        original = int(other.user_attrs.get(records.TRIAL_DUPLICATE_OF, other.number))
        trial.set_user_attr(records.TRIAL_DUPLICATE_OF, original)

        if other.state is TrialState.RUNNING:
            reason = (
                f"duplicate: same configuration as trial {other.number}, which is still "
                "running; its result will stand for both"
            )
            trial.set_user_attr(records.TRIAL_DUPLICATE_ACTION, "pruned")
            trial.set_user_attr(records.TRIAL_PRUNED_BY, "duplicate")
            trial.set_user_attr(records.TRIAL_PRUNE_REASON, reason)
            _logger.info("%s: %s", context, reason)
            raise optuna.TrialPruned(reason)

        for key in records.REUSED_TRIAL_ATTRS:
            if key in other.user_attrs:
                trial.set_user_attr(key, other.user_attrs[key])
        artifact_id = other.user_attrs.get(records.TRIAL_WEIGHTS_ARTIFACT_ID)
        if artifact_id:
            # Lists the shared weights file under this trial too (optuna-dashboard shows it).
            key = f"artifacts:{artifact_id}"
            meta = other.system_attrs.get(key)
            if meta is not None:
                trial.storage.set_trial_system_attr(trial._trial_id, key, meta)
        for step, value in sorted(other.intermediate_values.items()):
            trial.report(value, step)

        trial.set_user_attr(records.TRIAL_DUPLICATE_ACTION, "reused")
        _logger.info(
            "%s: same configuration as trial %d; reusing its result %.4f without training",
            context,
            other.number,
            other.value,
        )
        assert other.value is not None  # a COMPLETE single-objective trial has a value
        return float(other.value)

    def _keep_weights(self, trial: optuna.Trial, result: Any, context: str) -> None:
        if self.store is None or result.best_state is None:
            return

        # Trials that reused another's result share its artifact, so count artifacts.
        value_by_artifact = {
            t.user_attrs[records.TRIAL_WEIGHTS_ARTIFACT_ID]: t.value
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and t.user_attrs.get(records.TRIAL_WEIGHTS_ARTIFACT_ID)
        }
        kept_values = sorted(value_by_artifact.values(), reverse=True)
        if len(kept_values) >= self.top_k and result.best_val_f1 <= kept_values[self.top_k - 1]:
            _logger.debug(
                "%s: val F1 below the top %d trials; weights not kept", context, self.top_k
            )
            return

        from safetensors.torch import save_file

        tensors = {name: tensor.contiguous() for name, tensor in result.best_state.items()}
        metadata = {
            "study": self.study.study_name,
            "trial": str(trial.number),
            "architecture": self.record.architecture,
            "best_epoch": str(result.best_epoch),
        }
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(
                directory, f"{self.record.architecture}-trial{trial.number}.safetensors"
            )
            save_file(tensors, path, metadata=metadata)
            artifact_id = upload_artifact(
                artifact_store=self.store, file_path=path, study_or_trial=trial
            )
        trial.set_user_attr(records.TRIAL_WEIGHTS_ARTIFACT_ID, artifact_id)
        _logger.debug("%s: kept best-epoch weights as artifact %s", context, artifact_id)


# ---------------------------------------------------------------------------
# The worker loop


def count_budget_trials(study: optuna.Study) -> int:
    """Count the trials that use up the study's trial budget (see the module docstring)."""
    trials = study.get_trials(deepcopy=False)
    retried = {
        t.system_attrs.get("failed_trial") for t in trials if "failed_trial" in t.system_attrs
    }
    return sum(
        1
        for t in trials
        if t.state in _BUDGET_STATES and not (t.state is TrialState.FAIL and t.number in retried)
    )


def summarize(study: optuna.Study) -> StudySummary:
    """Count the study's trials by state and find its best COMPLETE trial."""
    counts = {state: 0 for state in TrialState}
    best_value: float | None = None
    best_trial: int | None = None
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
        value = trial.value if trial.state is TrialState.COMPLETE else None
        if value is not None and (best_value is None or value > best_value):
            best_value, best_trial = value, trial.number

    return StudySummary(
        study_name=study.study_name,
        complete=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL],
        running=counts[TrialState.RUNNING],
        waiting=counts[TrialState.WAITING],
        best_value=best_value,
        best_trial=best_trial,
    )


class _WeightsCleanup:
    """After each trial, delete weights of trials outside the study's top ``top_k``."""

    def __init__(self, store: Any, top_k: int) -> None:
        self.store = store
        self.top_k = top_k
        self.removed: set[str] = set()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        finished = study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        )
        ranked = sorted(
            (t for t in finished if t.state is TrialState.COMPLETE and t.value is not None),
            key=lambda t: (-float(t.value), t.number),  # type: ignore[arg-type]
        )
        keep: set[str] = set()
        for candidate in ranked:
            artifact_id = candidate.user_attrs.get(records.TRIAL_WEIGHTS_ARTIFACT_ID)
            if artifact_id and len(keep) < self.top_k:
                keep.add(artifact_id)

        for other in finished:
            artifact_id = other.user_attrs.get(records.TRIAL_WEIGHTS_ARTIFACT_ID)
            if not artifact_id or artifact_id in keep or artifact_id in self.removed:
                continue
            try:
                self.store.remove(artifact_id)
                _logger.debug(
                    "study %s trial %d: removed weights %s (outside the top %d)",
                    study.study_name,
                    other.number,
                    artifact_id,
                    self.top_k,
                )
            except ArtifactNotFound:
                pass  # another worker removed it first
            self.removed.add(artifact_id)


class _TrialBudget:
    """Stop this worker once the study's budget trials reach ``n_trials``."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if count_budget_trials(study) >= self.n_trials:
            study.stop()


def run_trials(
    study: optuna.Study,
    dataset: Any,
    n_trials: int | None = None,
    timeout: float | None = None,
    *,
    callbacks: Iterable[Callable[[optuna.Study, FrozenTrial], None]] = (),
    device: str | None = None,
    artifacts_dir: str | Path | None = None,
    worker_index: int = 0,
    log_level: int = logging.INFO,
) -> StudySummary:
    """Run trials of ``study`` on ``dataset`` until the study has ``n_trials`` or time runs out.

    This is one worker's loop; several may run on one study at once. ``n_trials`` is
    the study's total (see the module docstring), None for no limit. ``timeout`` in
    seconds stops starting new trials; a running trial finishes. ``callbacks`` are
    Optuna trial callbacks, called after every trial (for progress lines). A trial
    that fails (non-finite loss, out of memory, device error) is recorded as FAIL
    with its ``fail_reason`` and the worker goes on. ``device`` overrides the study's
    training device for this worker. ``log_level`` is the level of the lines that
    announce the worker's start and stop. A caller that runs one trial per call passes
    DEBUG, so those lines stay out of its progress output.

    Raises StudyMismatchError when ``dataset`` is not the data the study recorded.
    """
    if n_trials is not None and (isinstance(n_trials, bool) or n_trials < 1):
        raise ValueError(f"n_trials must be a positive integer or None, got {n_trials!r}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")

    record = _read_record(study.study_name, study._storage)
    if dataset.fingerprint != record.data.get("fingerprint"):
        raise StudyMismatchError(
            f"study {study.study_name!r} was run on data with fingerprint "
            f"{str(record.data.get('fingerprint'))[:12]}, but this dataset's is "
            f"{dataset.fingerprint[:12]}; load it with the study's data spec"
        )
    if not isinstance(study.pruner, CombinedPruner):
        study = _load_study(study.study_name, study._storage, record, worker_index)

    settings = TrainSettings.from_dict(record.train_settings)
    if device is not None:
        settings = dataclasses.replace(settings, device=device)
        settings.validate()
    objective = _Objective(study, record, dataset, settings, artifacts_dir)

    trial_callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = []
    if objective.store is not None:
        trial_callbacks.append(_WeightsCleanup(objective.store, objective.top_k))
    remaining = None
    if n_trials is not None:
        remaining = n_trials - count_budget_trials(study)
        if remaining <= 0:
            _logger.info(
                "study %s already has %d trials; nothing to run", study.study_name, n_trials
            )
            return summarize(study)
        trial_callbacks.append(_TrialBudget(n_trials))
    # Every worker path (run, worker, Ray) publishes finished trials to optuna-dashboard,
    # so their curves and prune reasons show there without a separate step.
    trial_callbacks.append(PublishTrialCallback())
    trial_callbacks.extend(callbacks)

    _logger.log(
        log_level,
        "study %s: worker %d starts (%s trials left, timeout %s)",
        study.study_name,
        worker_index,
        "unlimited" if remaining is None else remaining,
        "none" if timeout is None else f"{timeout:g} s",
    )
    study.optimize(
        objective,
        n_trials=remaining,
        timeout=timeout,
        catch=(TrialFailed,),
        callbacks=trial_callbacks,
        gc_after_trial=True,
    )

    summary = summarize(study)
    _logger.log(
        log_level,
        "study %s: worker %d stops; %d complete, %d pruned, %d failed, best val F1 %s",
        study.study_name,
        worker_index,
        summary.complete,
        summary.pruned,
        summary.failed,
        "none" if summary.best_value is None else f"{summary.best_value:.4f}",
    )
    return summary
