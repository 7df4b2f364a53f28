"""One worker of a distributed run: the loop that picks a study, runs one trial, and repeats.

The same loop runs inside each Ray task of ``run_distributed`` and in ``archsweep worker``
(``run_worker``). Workers share nothing but the Optuna storage and, in a Ray run, a
``TrialQuota`` actor:

- Before every trial a worker fails the stale trials of its studies (heartbeats), counts
  each study's trials and claims a trial from the quota. The quota grants the study with
  the fewest trials below its trial budget. Ties go to a different study for each worker
  index, so workers that start together spread over the architectures.
- The worker runs one trial of that study through ``search.engine.run_trials`` (or a
  caller's objective, for tests and benchmarks), with the study's own sampler and pruners.
- When every budget is used up, a worker still waits while trials are RUNNING and
  heartbeats are on. A trial whose worker died is failed after the grace period and queued
  again (``RetryHeartbeatStaleTrialCallback``), and a live worker has to run the retry.

The trial budget follows ``search.engine.count_budget_trials``: COMPLETE, PRUNED, FAIL and
RUNNING trials count, except a FAIL trial that was queued again (its retry counts instead).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "ATTR_RUN_BUDGET",
    "ATTR_WORKER",
    "INTERRUPTED_FAIL_REASON",
    "StorageQuota",
    "StudySnapshot",
    "TrialQuota",
    "WorkerOptions",
    "WorkerReport",
    "heartbeats_enabled",
    "log_stale_trials",
    "run_worker_loop",
    "study_name",
    "take_snapshot",
]

_logger = logging.getLogger(__name__)

# Study user attribute that ``run_distributed`` writes for workers joining from other nodes:
# {"n_trials": budget per study or None, "deadline": Unix time or None, "started": ISO 8601}.
ATTR_RUN_BUDGET = "run_budget"
# Trial user attribute naming the worker that ran the trial: index, node, pid, device, GPU IDs.
ATTR_WORKER = "worker"
# The ``fail_reason`` of a trial whose worker was cancelled (Ctrl-C in the driver).
INTERRUPTED_FAIL_REASON = "interrupted"
_FAIL_REASON_ATTR = "fail_reason"  # search.records.TRIAL_FAIL_REASON, without importing torch

# Optuna's RetryHeartbeatStaleTrialCallback marks each retry with this system attribute,
# holding the number of the original trial.
_RETRY_MARK = "failed_trial"

_BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def study_name(group: str, architecture: str) -> str:
    """Return the study name ``<group>/<architecture>``, as ``search.engine.study_names`` does.

    Workers with a caller's objective use this instead of the engine, whose import loads torch.
    """
    return f"{group}/{architecture}"


@dataclasses.dataclass(frozen=True)
class StudySnapshot:
    """A worker's count of one study's trials, taken before it claims a trial."""

    budget_used: int  # trials that count against the budget (module docstring)
    running: int
    running_with_heartbeat: int  # RUNNING trials of workers that record heartbeats
    waiting: int
    retries: int  # trials that Optuna queued again after their worker died


def heartbeat_interval(storage: Any) -> int | None:
    """Return the heartbeat interval in seconds of an opened storage, None without heartbeats."""
    get_interval = getattr(storage, "get_heartbeat_interval", None)
    return get_interval() if callable(get_interval) else None


def heartbeats_enabled(storage: Any) -> bool:
    """Tell whether ``storage`` records heartbeats (an RDB storage opened with an interval)."""
    return heartbeat_interval(storage) is not None


def log_stale_trials(storage: Any) -> None:
    """Make the heartbeat failure of a trial whose worker died show up in this process's log.

    Optuna fails such trials quietly in ``fail_stale_trials`` and then calls the storage's
    stale-trial callback (the retry) for each; this wraps that callback with a warning.
    """
    if not heartbeats_enabled(storage) or not hasattr(storage, "heartbeat_stale_trial_callback"):
        return
    callback = storage.get_heartbeat_stale_trial_callback()
    if isinstance(callback, _LoggingStaleTrialCallback):
        return
    storage.heartbeat_stale_trial_callback = _LoggingStaleTrialCallback(callback, storage)


class _LoggingStaleTrialCallback:
    def __init__(self, callback: Callable[[optuna.Study, FrozenTrial], None] | None, storage: Any) -> None:
        self.callback = callback
        self.grace_period = getattr(storage, "grace_period", None)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        _logger.warning(
            "study %s trial %d set to FAIL: no heartbeat for %s s, so its worker (%s) is gone; "
            "Optuna queues it again unless it was retried before",
            study.study_name, trial.number, self.grace_period,
            trial.user_attrs.get(ATTR_WORKER, "unknown worker"),
        )
        if self.callback is not None:
            self.callback(study, trial)


def take_snapshot(study: optuna.Study, *, fail_stale: bool = True) -> StudySnapshot:
    """Fail the study's stale trials (when heartbeats are on) and count its trials."""
    if fail_stale:
        with warnings.catch_warnings():
            # The heartbeat API is experimental in Optuna 5.1, and archsweep uses it on purpose.
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    trials = study.get_trials(deepcopy=False)
    retried_numbers = {t.system_attrs[_RETRY_MARK] for t in trials if _RETRY_MARK in t.system_attrs}
    budget_used = sum(
        1
        for t in trials
        if t.state in _BUDGET_STATES and not (t.state is TrialState.FAIL and t.number in retried_numbers)
    )
    return StudySnapshot(
        budget_used=budget_used,
        running=sum(1 for t in trials if t.state is TrialState.RUNNING),
        running_with_heartbeat=sum(
            1
            for t in trials
            if t.state is TrialState.RUNNING and t.user_attrs.get(ATTR_WORKER, {}).get("heartbeat_s")
        ),
        waiting=sum(1 for t in trials if t.state is TrialState.WAITING),
        retries=sum(1 for t in trials if _RETRY_MARK in t.system_attrs),
    )


def _preferred(candidates: Sequence[tuple[int, str]], worker_index: int, order: Sequence[str]) -> str:
    """Pick the candidate with the fewest trials, breaking ties by a per-worker rotation."""
    positions = {architecture: position for position, architecture in enumerate(order)}
    return min(
        candidates,
        key=lambda item: (item[0], (positions[item[1]] - worker_index) % len(order)),
    )[1]


class TrialQuota:
    """Grants trials to the workers of one Ray run, so that together they never exceed a budget.

    Counting the storage alone lets workers that start in the same instant all see room for
    one more trial. The quota instead keeps a ledger per study: the trials counted when the
    run started, plus the trials it granted, minus the retries that appeared since. A retry
    needs a run of its own, because the trial failed by its heartbeat no longer counts.
    A worker has at most one grant and returns it with ``release``. ``claim`` also ends the
    previous grant of a worker whose task Ray restarted.

    NOTE: trials started by ``archsweep worker`` processes outside the run are not in the
    ledger, so such workers can push a study past its budget.
    """

    def __init__(
        self,
        budgets: Mapping[str, int | None],
        snapshots: Mapping[str, StudySnapshot],
    ) -> None:
        self._order = list(budgets)
        self._budgets = dict(budgets)
        self._used_at_start = {arch: snapshots[arch].budget_used for arch in self._order}
        self._retries_at_start = {arch: snapshots[arch].retries for arch in self._order}
        self._retries_seen = dict(self._retries_at_start)
        self._granted = dict.fromkeys(self._order, 0)
        self._outstanding: dict[int, str] = {}

    def used(self, architecture: str) -> int:
        """Return the trials of ``architecture`` that count against its budget, by the ledger."""
        new_retries = self._retries_seen[architecture] - self._retries_at_start[architecture]
        return self._used_at_start[architecture] + self._granted[architecture] - new_retries

    def observe(self, snapshots: Mapping[str, StudySnapshot]) -> None:
        """Take note of retries that the storage shows (retry counts only grow)."""
        for architecture, snapshot in snapshots.items():
            if architecture in self._retries_seen:
                self._retries_seen[architecture] = max(
                    self._retries_seen[architecture], snapshot.retries
                )

    def claim(self, worker_index: int, snapshots: Mapping[str, StudySnapshot]) -> str | None:
        """Grant ``worker_index`` one trial of the study furthest behind, or None when all are done."""
        self.release(worker_index, ran_trial=True)
        self.observe(snapshots)

        candidates = []
        for architecture in self._order:
            used = self.used(architecture)
            budget = self._budgets[architecture]
            if budget is None or used < budget:
                candidates.append((used, architecture))
        if not candidates:
            return None

        architecture = _preferred(candidates, worker_index, self._order)
        self._granted[architecture] += 1
        self._outstanding[worker_index] = architecture
        return architecture

    def release(self, worker_index: int, ran_trial: bool) -> None:
        """End the worker's grant. A grant that started no trial goes back to the budget."""
        architecture = self._outstanding.pop(worker_index, None)
        if architecture is not None and not ran_trial:
            self._granted[architecture] -= 1

    def progress(self) -> dict[str, int]:
        """Return the ledger's count per architecture (for tests and logs)."""
        return {architecture: self.used(architecture) for architecture in self._order}


class StorageQuota:
    """Grants trials by counting the storage alone: the quota of ``archsweep worker``.

    NOTE: workers that count in the same instant can each start a trial, so a study can end
    up to (workers - 1) trials past its budget, as ``search.engine.run_trials`` documents.
    """

    def __init__(self, budgets: Mapping[str, int | None]) -> None:
        self._order = list(budgets)
        self._budgets = dict(budgets)

    def claim(self, worker_index: int, snapshots: Mapping[str, StudySnapshot]) -> str | None:
        candidates = []
        for architecture in self._order:
            used = snapshots[architecture].budget_used
            budget = self._budgets[architecture]
            if budget is None or used < budget:
                candidates.append((used, architecture))
        if not candidates:
            return None
        return _preferred(candidates, worker_index, self._order)

    def release(self, worker_index: int, ran_trial: bool) -> None:
        return None


class Quota(Protocol):
    def claim(self, worker_index: int, snapshots: Mapping[str, StudySnapshot]) -> str | None: ...

    def release(self, worker_index: int, ran_trial: bool) -> None: ...


class ActorQuota:
    """Calls a ``TrialQuota`` Ray actor from a worker."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def claim(self, worker_index: int, snapshots: Mapping[str, StudySnapshot]) -> str | None:
        import ray

        return ray.get(self._actor.claim.remote(worker_index, dict(snapshots)))

    def release(self, worker_index: int, ran_trial: bool) -> None:
        import ray

        ray.get(self._actor.release.remote(worker_index, ran_trial))


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """Everything a worker needs besides its index: it travels to Ray tasks by pickling.

    ``budgets`` maps each architecture to its trial budget (None: no limit); ``deadline`` is
    a Unix time after which no trial starts. ``objective`` replaces the engine's objective
    (tests and benchmarks); it must be picklable, like a module-level function.
    """

    group: str
    storage_url: str
    budgets: Mapping[str, int | None]
    deadline: float | None = None
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    failed_trial_max_retry: int = 1
    poll_interval: float = 5.0
    log_level: int = logging.INFO
    objective: Callable[[optuna.Trial], float] | None = None

    @property
    def architectures(self) -> list[str]:
        return list(self.budgets)


@dataclasses.dataclass
class WorkerReport:
    """Record of one worker's run: its trials as (study name, trial number, final state)."""

    worker_index: int
    node: str
    pid: int
    device: str | None
    trials: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    stop_reason: str = ""
    seconds: float = 0.0


class _WorkerStudy(optuna.Study):
    """An Optuna study whose objective records the worker on each trial and its interruption.

    The wrapper sets the ``worker`` user attribute when a trial starts. When the trial is
    interrupted (KeyboardInterrupt from Ctrl-C or from Ray cancelling the task) or raises an
    unexpected error, it sets ``fail_reason`` before Optuna records the trial as FAIL,
    because Optuna accepts no attributes on a finished trial.
    """

    def __init__(self, study: optuna.Study, worker: dict[str, Any]) -> None:
        super().__init__(study.study_name, study._storage, study.sampler, study.pruner)
        self.worker = worker
        self.current_trial: int | None = None
        self.trials_started = 0

    def optimize(self, func: Callable[[optuna.Trial], Any], *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().optimize(self._guarded(func), *args, **kwargs)

    def _guarded(self, func: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
        def objective(trial: optuna.Trial) -> Any:
            self.current_trial = trial.number
            self.trials_started += 1
            trial.set_user_attr(ATTR_WORKER, self.worker)
            _logger.info(
                "worker %d: study %s trial %d (trial_id %d) starts",
                self.worker["index"], self.study_name, trial.number, trial._trial_id,
            )
            try:
                return func(trial)
            except KeyboardInterrupt:
                _logger.warning(
                    "worker %d: study %s trial %d interrupted; recording it as FAIL",
                    self.worker["index"], self.study_name, trial.number,
                )
                _set_fail_reason(trial, INTERRUPTED_FAIL_REASON)
                raise
            except optuna.TrialPruned:
                raise
            except Exception as error:
                _set_fail_reason(trial, _one_line(error), keep_existing=True)
                raise

        return objective


def _set_fail_reason(trial: optuna.Trial, reason: str, *, keep_existing: bool = False) -> None:
    """Record ``reason`` on a trial that is about to end FAIL (the engine's reason wins)."""
    try:
        if keep_existing and _FAIL_REASON_ATTR in trial.user_attrs:
            return
        trial.set_user_attr(_FAIL_REASON_ATTR, reason)
    except (optuna.exceptions.StorageInternalError, RuntimeError) as error:
        # StorageError is a RuntimeError. The trial still ends FAIL, only without its reason.
        _logger.warning("could not record fail_reason of trial %d: %s", trial.number, error)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _StopAfterOneTrial:
    """Optuna callback: note the finished trial and stop ``optimize`` after it."""

    def __init__(self) -> None:
        self.trial: FrozenTrial | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.trial = trial
        study.stop()


def _worker_info(
    worker_index: int, device: str | None, gpu_ids: Sequence[Any], heartbeat_s: int | None
) -> dict[str, Any]:
    return {
        "index": worker_index,
        "node": socket.gethostname(),
        "pid": os.getpid(),
        "device": device or "study default",
        "gpu_ids": [str(gpu_id) for gpu_id in gpu_ids],
        "heartbeat_s": heartbeat_s,
    }


def _open_studies(
    options: WorkerOptions, storage: Any, worker_index: int, worker: dict[str, Any]
) -> dict[str, _WorkerStudy]:
    studies = {}
    for architecture in options.architectures:
        if options.objective is None:
            from search.engine import open_study

            study = open_study(options.group, architecture, storage, worker_index=worker_index)
        else:
            study = optuna.load_study(
                study_name=study_name(options.group, architecture), storage=storage
            )
        studies[architecture] = _WorkerStudy(study, worker)
    return studies


class _DatasetCache:
    """Loads each study's data once per worker, from the data spec the study recorded."""

    def __init__(self) -> None:
        self._datasets: dict[Any, Any] = {}

    def get(self, study: optuna.Study) -> Any:
        from search.data import DataSpec, load_dataset
        from search.records import StudyRecord

        spec = DataSpec.from_dict(dict(StudyRecord.from_study(study).data))
        if spec not in self._datasets:
            _logger.info("loading data %s for study %s", spec.name, study.study_name)
            self._datasets[spec] = load_dataset(spec)
        return self._datasets[spec]


def _run_one_trial(
    options: WorkerOptions,
    study: _WorkerStudy,
    datasets: _DatasetCache,
    device: str | None,
    worker_index: int,
) -> FrozenTrial | None:
    stopper = _StopAfterOneTrial()
    if options.objective is None:
        from search._ray_runtime import select_cuda_device
        from search.engine import run_trials

        select_cuda_device(device)
        run_trials(
            study,
            datasets.get(study),
            n_trials=None,
            timeout=None,
            callbacks=[stopper],
            device=device,
            worker_index=worker_index,
        )
    else:
        study.optimize(options.objective, n_trials=1, callbacks=[stopper])
    return stopper.trial


def _should_wait(heartbeats: bool, snapshots: Mapping[str, StudySnapshot]) -> bool:
    """Tell whether an idle worker should stay for retries of trials that may still die.

    Only trials whose workers record heartbeats count: each of them either finishes or is
    failed after the grace period. A RUNNING trial left by a worker without heartbeats
    would never end, and waiting for it would keep this worker forever.
    """
    return heartbeats and any(snapshot.running_with_heartbeat > 0 for snapshot in snapshots.values())


def run_worker_loop(
    options: WorkerOptions,
    worker_index: int,
    quota: Quota,
    *,
    device: str | None = None,
    gpu_ids: Sequence[Any] = (),
) -> WorkerReport:
    """Run trials of the studies in ``options`` until the quota has none left or time is up.

    ``device`` overrides the studies' training device (a Ray worker's GPU). Raises what a
    trial or the storage raised that the engine does not catch, after logging it with the
    worker, study and trial; KeyboardInterrupt ends the running trial as FAIL with
    ``fail_reason`` "interrupted" and is raised again.
    """
    from storage import close_storage, open_storage

    started = time.monotonic()
    storage = open_storage(
        options.storage_url,
        heartbeat_interval=options.heartbeat_interval,
        grace_period=options.grace_period,
        failed_trial_max_retry=options.failed_trial_max_retry,
    )
    heartbeats = heartbeats_enabled(storage)
    log_stale_trials(storage)
    worker = _worker_info(worker_index, device, gpu_ids, heartbeat_interval(storage))
    report = WorkerReport(worker_index, worker["node"], worker["pid"], device)
    study: _WorkerStudy | None = None
    try:
        studies = _open_studies(options, storage, worker_index, worker)
        datasets = _DatasetCache()
        _logger.info(
            "worker %d started on %s (pid %d, device %s): studies %s",
            worker_index, worker["node"], worker["pid"], worker["device"],
            ", ".join(s.study_name for s in studies.values()),
        )

        while True:
            if options.deadline is not None and time.time() >= options.deadline:
                report.stop_reason = "timeout"
                break

            snapshots = {arch: take_snapshot(s, fail_stale=heartbeats) for arch, s in studies.items()}
            architecture = quota.claim(worker_index, snapshots)
            if architecture is None:
                if _should_wait(heartbeats, snapshots):
                    time.sleep(options.poll_interval)
                    continue
                report.stop_reason = "trial budgets used up"
                break

            study = studies[architecture]
            trials_before = study.trials_started
            try:
                finished = _run_one_trial(options, study, datasets, device, worker_index)
            finally:
                quota.release(worker_index, ran_trial=study.trials_started > trials_before)
            if finished is not None:
                report.trials.append((study.study_name, finished.number, finished.state.name))
            study = None

    except KeyboardInterrupt:
        report.stop_reason = "interrupted"
        _logger.warning("worker %d interrupted%s", worker_index, _where(study))
        raise
    except Exception as error:
        report.stop_reason = "error"
        _logger.error("worker %d failed%s: %s", worker_index, _where(study), _one_line(error))
        raise
    finally:
        report.seconds = time.monotonic() - started
        close_storage(storage)

    _logger.info(
        "worker %d stopped (%s) after %d trials in %.1f s",
        worker_index, report.stop_reason, len(report.trials), report.seconds,
    )
    return report


def _where(study: _WorkerStudy | None) -> str:
    if study is None:
        return ""
    if study.current_trial is None:
        return f" in study {study.study_name}"
    return f" in study {study.study_name} trial {study.current_trial}"


def ray_worker_task(options: WorkerOptions, worker_index: int, quota_actor: Any, gpus_per_trial: float) -> WorkerReport:
    """Run the worker loop as one Ray task of ``run_distributed``, on the GPU Ray assigned."""
    import ray

    from search._ray_runtime import configure_worker_logging, worker_device

    configure_worker_logging(options.log_level)
    device = worker_device(gpus_per_trial)
    return run_worker_loop(
        options,
        worker_index,
        ActorQuota(quota_actor),
        device=device,
        gpu_ids=ray.get_gpu_ids(),
    )
