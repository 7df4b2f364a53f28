"""``archsweep run`` and ``archsweep worker``: create or resume studies and run trials.

In-process runs interleave the architectures: each round runs one trial of every
architecture that still has budget, so a whole-run ``--timeout`` shares the time
between them instead of spending it all on the first. ``--workers N`` (N > 1) or
``--ray-address`` hand the trials to Ray through ``search.distributed``.

Ctrl-C (or SIGTERM) ends the running trial as FAIL with ``fail_reason``
``interrupted``. Finished trials stay as they are, and the same command resumes the
studies. The interrupted trial counts towards ``--trials`` like any failed trial
(the engine's budget rule), so a resumed run does not train it again.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search import records
from search.commands import CommandError, UsageError
from search.commands._common import (
    check_study_name,
    configure_optuna_logging,
    find_group_studies,
    format_f1,
    open_command_storage,
    parse_architectures,
    progress_stream,
    sigint_ignored,
    sigterm_as_interrupt,
)
from search.commands.status import format_summary_table, study_rows

__all__ = [
    "DEFAULT_TRIALS",
    "INTERRUPTED_REASON",
    "run_command",
    "worker_command",
]

_logger = logging.getLogger(__name__)

# Trials per architecture when neither --trials nor --timeout is given.
DEFAULT_TRIALS = 20

# The fail_reason of a trial that Ctrl-C stopped.
INTERRUPTED_REASON = "interrupted"


class _Interrupted(Exception):
    """Raised when Ctrl-C stops the run; the message names the trial that was failed."""


# ---------------------------------------------------------------------------
# Option checks


def _check_run_options(args: argparse.Namespace) -> None:
    """Raise UsageError for option values that are invalid on their own."""
    if args.trials is not None and args.trials < 1:
        raise UsageError(
            f"--trials must be a positive number of trials per architecture, got {args.trials}"
        )
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(
            f"--timeout must be a positive number of seconds for the whole run, got {args.timeout:g}"
        )
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be a positive number of epochs, got {args.epochs}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be an integer of 0 or more, got {args.seed}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be a positive number of processes, got {args.workers}")
    if args.gpus_per_trial is not None and not (
        math.isfinite(args.gpus_per_trial) and args.gpus_per_trial >= 0
    ):
        raise UsageError(
            f"--gpus-per-trial must be a number of GPUs of 0 or more (fractions share a GPU), "
            f"got {args.gpus_per_trial:g}"
        )
    if args.ray_address is not None:
        _check_ray_address(args.ray_address)
    if args.gpus_per_trial and not _is_distributed(args):
        raise UsageError(
            "--gpus-per-trial applies to Ray runs only; add --workers N (N > 1) or "
            "--ray-address, or drop it (in-process runs use the GPU when one is visible)"
        )


def _check_ray_address(address: str) -> None:
    """Raise UsageError unless ``address`` is auto, HOST:PORT or ray://HOST:PORT."""
    from search._ray_runtime import split_ray_address

    if address == "auto" or split_ray_address(address) is not None:
        return
    raise UsageError(
        f"--ray-address must be HOST:PORT (port 1-65535), ray://HOST:PORT or auto, got "
        f"{address!r}; give the head node's GCS address, such as 127.0.0.1:6380"
    )


def _is_distributed(args: argparse.Namespace) -> bool:
    return (args.workers is not None and args.workers > 1) or bool(args.ray_address)


def _check_space(space_path: str | None, architectures: list[str]) -> None:
    """Load the space file and check every configuration it allows, before any study exists."""
    from search.engine import check_space_against_models
    from search.space import load_space

    spaces = load_space(space_path)
    for architecture in architectures:
        check_space_against_models(spaces[architecture])


def _data_options_given(args: argparse.Namespace) -> bool:
    names = (
        "data", "window", "stride", "label_rule", "split", "train_sessions", "val_sessions",
        "test_sessions", "split_seed", "max_train_sessions",
    )
    return any(getattr(args, name, None) is not None for name in names)


def _settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Return the training settings the user set, as TrainSettings fields."""
    settings: dict[str, Any] = {}
    if args.epochs is not None:
        settings["max_epochs"] = args.epochs
    if args.seed is not None:
        settings["seed"] = args.seed
    return settings


# ---------------------------------------------------------------------------
# Studies


def _existing_architectures(storage: BaseStorage, group: str) -> list[str]:
    from search.commands._common import split_study_name

    names = []
    for frozen in storage.get_all_studies():
        parts = split_study_name(frozen.study_name)
        if parts is not None and parts[0] == group:
            names.append(parts[1])
    return names


def _recorded_data_spec(storage: BaseStorage, group: str, architectures: list[str]) -> Any:
    """Return the data spec a study of the group recorded (the first that has one), or None."""
    from search.data import DataSpec
    from search.records import StudyRecord

    for architecture in architectures:
        study_name = f"{group}/{architecture}"
        study_id = storage.get_study_id_from_name(study_name)
        attrs = storage.get_study_user_attrs(study_id)
        try:
            record = StudyRecord.from_user_attrs(study_name, attrs)
        except (KeyError, ValueError):
            continue
        return DataSpec.from_dict(record.data)
    return None


def _load_run_data(
    args: argparse.Namespace, storage: BaseStorage, architectures: list[str]
) -> tuple[Any, list[str]]:
    """Load the run's data and name the selected architectures whose study exists.

    Without data options a resumed group keeps the data its studies recorded; data
    options given on resume override single fields of that spec.
    """
    from search.data import data_spec_from_args, load_dataset

    existing_in_group = _existing_architectures(storage, args.study)
    existing = [name for name in architectures if name in existing_in_group]
    base_spec = _recorded_data_spec(storage, args.study, existing or existing_in_group)

    if base_spec is None or _data_options_given(args):
        data_spec = data_spec_from_args(args, base=base_spec)
    else:
        data_spec = base_spec
    return load_dataset(data_spec), existing


def _check_existing_studies(
    args: argparse.Namespace, storage: BaseStorage, existing: list[str], dataset: Any
) -> None:
    """Compare the studies that exist with the options; StudyMismatchError names a change.

    Runs before any missing study is created, so a mismatch changes nothing stored.
    """
    from search import engine

    if existing:
        engine.prepare_studies(
            args.study, storage, existing, dataset=dataset,
            settings=_settings_from_args(args) or None, space=args.space,
        )


def _prepare(
    args: argparse.Namespace,
    storage: BaseStorage,
    storage_label: str,
    architectures: list[str],
) -> tuple[dict[str, optuna.Study], Any]:
    """Load the data, check the studies that exist and create the missing ones."""
    from search import engine

    dataset, existing = _load_run_data(args, storage, architectures)
    _check_existing_studies(args, storage, existing, dataset)
    studies = engine.prepare_studies(
        args.study, storage, architectures, dataset=dataset,
        settings=_settings_from_args(args) or None, space=args.space,
    )
    created = [name for name in architectures if name not in existing]
    for names, verb in ((created, "Created"), (existing, "Resuming")):
        if names:
            _logger.info(
                "%s studies %s in %s", verb, ", ".join(f"{args.study}/{a}" for a in names),
                storage_label,
            )
    return studies, dataset


class _InterruptAwareStudy(optuna.Study):
    """A study whose objective records Ctrl-C on the running trial before Optuna fails it.

    Optuna sets a trial to FAIL when the objective raises KeyboardInterrupt and then
    re-raises it. A finished trial takes no more attributes, so ``fail_reason`` has
    to be written while the trial is still running, inside the objective.
    """

    def __init__(self, study: optuna.Study) -> None:
        super().__init__(
            study_name=study.study_name,
            storage=study._storage,
            sampler=study.sampler,
            pruner=study.pruner,
        )
        self.current_trial_id: int | None = None

    def optimize(self, func: Callable[[optuna.Trial], Any], *args: Any, **kwargs: Any) -> None:
        def objective(trial: optuna.Trial) -> Any:
            self.current_trial_id = trial._trial_id
            try:
                return func(trial)
            except KeyboardInterrupt:
                with sigint_ignored():
                    trial.set_user_attr(records.TRIAL_FAIL_REASON, INTERRUPTED_REASON)
                raise
            except Exception as error:
                if not _raised_by_interrupt(error):
                    raise
                with sigint_ignored():
                    trial.set_user_attr(records.TRIAL_FAIL_REASON, INTERRUPTED_REASON)
                raise KeyboardInterrupt from error

        super().optimize(objective, *args, **kwargs)


def _fail_interrupted_trial(study: _InterruptAwareStudy) -> int | None:
    """Make sure the trial Ctrl-C stopped is FAIL with its reason; return its number.

    A Ctrl-C between the objective's return and Optuna's update of the trial leaves
    it RUNNING; it is set to FAIL here.
    """
    if study.current_trial_id is None:
        return None
    storage = study._storage
    trial = storage.get_trial(study.current_trial_id)
    if trial.state is TrialState.RUNNING:
        storage.set_trial_user_attr(trial._trial_id, records.TRIAL_FAIL_REASON, INTERRUPTED_REASON)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        _logger.info("study %s trial %d: set to FAIL after Ctrl-C", study.study_name, trial.number)
        return trial.number
    if trial.state is TrialState.FAIL and trial.user_attrs.get(records.TRIAL_FAIL_REASON) == INTERRUPTED_REASON:
        return trial.number
    return None


# ---------------------------------------------------------------------------
# Progress


class _Progress:
    """Print one line per finished trial on stderr: outcome, counts and best value."""

    def __init__(self, architecture: str, budget: int | None, enabled: bool) -> None:
        self.architecture = architecture
        self.budget = budget
        self.enabled = enabled
        self.started = time.monotonic()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self.enabled:
            return
        from search.engine import summarize

        summary = summarize(study)
        outcome = self._outcome(trial)
        done = summary.complete + summary.pruned + summary.failed
        budget = "" if self.budget is None else f"/{self.budget}"
        elapsed = _format_duration(time.monotonic() - self.started)
        print(
            f"[{elapsed}] {self.architecture} trial {trial.number}: {outcome} | "
            f"{done}{budget} done ({summary.complete} complete, {summary.pruned} pruned, "
            f"{summary.failed} failed), best val F1 {format_f1(summary.best_value)}",
            file=progress_stream(),
            flush=True,
        )

    @staticmethod
    def _outcome(trial: FrozenTrial) -> str:
        attrs = trial.user_attrs
        epochs = len(attrs.get(records.TRIAL_VAL_F1_CURVE, []))
        if trial.state is TrialState.COMPLETE:
            return f"complete, val F1 {format_f1(trial.value)} after {epochs} epochs"
        if trial.state is TrialState.PRUNED:
            return f"pruned by {attrs.get(records.TRIAL_PRUNED_BY, 'pruner')} after {epochs} epochs"
        if trial.state is TrialState.FAIL:
            return f"failed: {attrs.get(records.TRIAL_FAIL_REASON, 'see the log')}"
        return trial.state.name.lower()


def _format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


# ---------------------------------------------------------------------------
# The in-process loop


def _run_interleaved(
    studies: dict[str, _InterruptAwareStudy],
    dataset: Any,
    budget: int | None,
    deadline: float | None,
    show_progress: bool,
) -> int:
    """Run one trial per architecture per round until every budget or the time is used.

    Returns the number of trials started. Raises _Interrupted after Ctrl-C.
    """
    from search.engine import count_budget_trials, run_trials

    progress = {
        name: _Progress(name, budget, show_progress) for name in studies
    }
    pending = list(studies)
    started = 0
    current: _InterruptAwareStudy | None = None
    try:
        while pending:
            for architecture in list(pending):
                study = studies[architecture]
                used = count_budget_trials(study)
                if budget is not None and used >= budget:
                    pending.remove(architecture)
                    continue
                remaining_s = None if deadline is None else deadline - time.monotonic()
                if remaining_s is not None and remaining_s <= 0:
                    _logger.info("--timeout reached; no new trials start")
                    return started

                current = study
                run_trials(study, dataset, n_trials=used + 1, timeout=remaining_s,
                           callbacks=[progress[architecture]], log_level=logging.DEBUG)
                current = None
                started += 1
    except KeyboardInterrupt:
        with sigint_ignored():
            raise _Interrupted(_interrupted_message(current)) from None
    except Exception as error:
        if not _raised_by_interrupt(error):
            raise
        with sigint_ignored():
            raise _Interrupted(_interrupted_message(current)) from None
    return started


def _raised_by_interrupt(error: BaseException) -> bool:
    """Tell whether ``error`` was raised while a KeyboardInterrupt was being handled.

    A Ctrl-C inside the cleanup of Optuna's journal file lock (optuna 5.1) makes the
    cleanup run twice, and the second run raises FileNotFoundError in place of the
    KeyboardInterrupt. Such an error is an interruption, not a failure of the trial.
    """
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__context__
    return False


def _interrupted_message(study: _InterruptAwareStudy | None) -> str:
    trial_number = _fail_interrupted_trial(study) if study is not None else None
    if trial_number is None:
        stopped = "no trial was running"
    else:
        stopped = f"trial {trial_number} of {study.study_name} ended FAIL (interrupted)"  # type: ignore[union-attr]
    return (
        f"interrupted: {stopped}; finished trials are kept. Run the same command again "
        "to resume the studies"
    )


def run_command(args: argparse.Namespace) -> int:
    """Run ``archsweep run``; returns the exit status."""
    from search.cli import EXIT_INTERRUPTED, EXIT_OK
    from search.data import data_spec_from_args
    from search.distributed import record_run_budget
    from storage import parse_storage_url, resolve_storage_url

    started = time.monotonic()
    check_study_name(args.study)
    architectures = parse_architectures(args.arch)
    _check_run_options(args)
    parse_storage_url(resolve_storage_url(args.storage))
    _check_space(args.space, architectures)
    if args.data is not None:
        data_spec_from_args(args)  # invalid data options fail before the storage is opened

    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    configure_optuna_logging(verbosity)

    budget = args.trials
    if budget is None and args.timeout is None:
        budget = DEFAULT_TRIALS
    if _is_distributed(args):
        return _run_distributed(args, architectures, budget)
    deadline = None if args.timeout is None else started + args.timeout

    storage, storage_label = open_command_storage(args.storage, runs_trials=True)
    prepared, dataset = _prepare(args, storage, storage_label, architectures)
    # Workers that join with `archsweep worker` read the budget and deadline from here.
    record_run_budget(
        storage, args.study, architectures, budget,
        None if args.timeout is None else time.time() + args.timeout,
    )
    studies = {name: _InterruptAwareStudy(study) for name, study in prepared.items()}

    status = EXIT_OK
    try:
        with sigterm_as_interrupt():
            num_trials = _run_interleaved(studies, dataset, budget, deadline, verbosity >= 0)
        interrupted = None
    except _Interrupted as interruption:
        num_trials = None
        interrupted = str(interruption)
        status = EXIT_INTERRUPTED

    with sigint_ignored():
        elapsed = time.monotonic() - started
        ran = "" if num_trials is None else f", {num_trials} trials started"
        print(
            f"study {args.study} in {storage_label}: run took {_format_duration(elapsed)}{ran}"
        )
        print(format_summary_table(study_rows(studies)))
        if interrupted is not None:
            print(f"archsweep: {interrupted}", file=sys.stderr)
    return status


def _run_distributed(
    args: argparse.Namespace, architectures: list[str], budget: int | None
) -> int:
    """Hand the trials to Ray workers through ``search.distributed.run_distributed``.

    The data is loaded and the existing studies are checked here first, so a bad
    option changes nothing stored. ``run_distributed`` then creates the missing
    studies and starts the workers.
    """
    from search import distributed
    from search.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
    from storage import close_storage

    storage, storage_label = open_command_storage(args.storage, runs_trials=False)
    try:
        dataset, existing = _load_run_data(args, storage, architectures)
        _check_existing_studies(args, storage, existing, dataset)
    finally:
        close_storage(storage)

    workers = args.workers or 1
    interrupted = False
    try:
        summary = distributed.run_distributed(
            args.study, args.storage, architectures,
            settings=_settings_from_args(args) or None, space=args.space, dataset=dataset,
            n_trials=budget, timeout=args.timeout, workers=workers,
            gpus_per_trial=args.gpus_per_trial, ray_address=args.ray_address,
        )
    except distributed.DistributedInterrupted as interruption:
        summary = interruption.summary
        interrupted = True
    except ConnectionError as error:
        raise CommandError(
            f"could not join the Ray cluster at {args.ray_address}: {error}; check the "
            "address (HOST:PORT of the head node) and that the cluster runs"
        ) from None

    with sigint_ignored():
        storage, storage_label = open_command_storage(args.storage, runs_trials=False)
        try:
            studies = find_group_studies(storage, args.study, storage_label, architectures)
            print(
                f"study {args.study} in {storage_label}: run took "
                f"{_format_duration(summary.seconds)} with {workers} Ray workers"
            )
            print(format_summary_table(study_rows(studies)))
        finally:
            close_storage(storage)

    if interrupted:
        print(
            "archsweep: interrupted: the workers' running trials ended FAIL (interrupted); "
            "finished trials are kept. Run the same command again to resume the studies",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if summary.worker_errors:
        errors = "; ".join(
            f"worker {index}: {line}" for index, line in sorted(summary.worker_errors.items())
        )
        print(f"archsweep: error: {len(summary.worker_errors)} Ray workers failed: {errors}",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def worker_command(args: argparse.Namespace) -> int:
    """Run ``archsweep worker``: join existing studies and run trials until their budget is used.

    The data, space and settings come from each study's record, the trial budget and
    deadline from the run that started the studies (``search.distributed.run_worker``).
    """
    from search import distributed
    from search.cli import EXIT_INTERRUPTED, EXIT_OK
    from storage import close_storage, parse_storage_url, resolve_storage_url

    check_study_name(args.study)
    selected = None if args.arch in (None, "all") else parse_architectures(args.arch)
    parse_storage_url(resolve_storage_url(args.storage))
    configure_optuna_logging(getattr(args, "verbose", 0) - getattr(args, "quiet", 0))

    storage, storage_label = open_command_storage(args.storage, runs_trials=False, existing=True)
    try:
        architectures = list(find_group_studies(storage, args.study, storage_label, selected))
    finally:
        close_storage(storage)

    interrupted = False
    started = time.monotonic()
    try:
        report = distributed.run_worker(args.study, args.storage, architectures)
    except KeyboardInterrupt:
        interrupted = True
        report = None
    except ValueError as error:
        raise CommandError(str(error)) from None

    with sigint_ignored():
        storage, storage_label = open_command_storage(args.storage, runs_trials=False)
        try:
            studies = find_group_studies(storage, args.study, storage_label, architectures)
            ran = "" if report is None else f", {len(report.trials)} trials ({report.stop_reason})"
            print(
                f"worker on study {args.study} in {storage_label}: "
                f"{_format_duration(time.monotonic() - started)}{ran}"
            )
            print(format_summary_table(study_rows(studies)))
        finally:
            close_storage(storage)
    if interrupted:
        print(
            "archsweep: interrupted: the running trial ended FAIL (interrupted); finished "
            "trials are kept",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return EXIT_OK
