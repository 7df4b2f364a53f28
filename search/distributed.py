"""Distributed trials: many workers on one set of studies, as Ray tasks or separate processes.

``run_distributed`` is ``archsweep run --workers N``. The driver creates the schema and the
studies once (``search.engine.prepare_studies``), then starts N Ray tasks, each running the
worker loop of ``search._ray_worker`` against the shared Optuna storage: Optuna's
distributed-by-storage model, with the studies' own TPE sampler, pruners and heartbeats.
Ray Tune is not used, because its Optuna integration replaces the pruner and records
trials that its scheduler stopped as COMPLETE.

- Resources: each worker task reserves ``cpus_per_trial`` CPUs and ``gpus_per_trial``
  GPUs. A fraction packs several trials on one GPU (0.25 packs four). A worker with a GPU
  trains on it, and one without a GPU trains on the CPU.
- Spreading: before each trial a worker requests from a ``TrialQuota`` actor the study with the
  fewest trials below its budget, so the workers share the architectures and the run ends
  with exactly ``n_trials`` trials per study.
- Progress: the driver polls the storage every ``poll_interval`` seconds, fails trials whose
  heartbeat stopped (Optuna queues each once more) and logs trials done, pruned and failed
  and the best validation F1 per architecture.
- Ctrl-C in the driver cancels the workers: each running trial ends FAIL with
  ``fail_reason`` "interrupted". Workers that do not stop within ``CANCEL_GRACE_S`` seconds
  are killed, and their trials are failed by the heartbeat later.

``run_worker`` is ``archsweep worker``: the same loop in this process, joining studies that
a ``run`` created, with the data spec and settings the studies recorded and the trial
budget and deadline the run recorded in the ``run_budget`` study attribute.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import socket
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna

from search._ray_worker import (
    ATTR_RUN_BUDGET,
    ATTR_WORKER,
    INTERRUPTED_FAIL_REASON,
    StorageQuota,
    StudySnapshot,
    TrialQuota,
    WorkerOptions,
    WorkerReport,
    heartbeats_enabled,
    log_stale_trials,
    ray_worker_task,
    run_worker_loop,
    study_name,
    take_snapshot,
)

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from search.engine import StudySummary

__all__ = [
    "ATTR_RUN_BUDGET",
    "ATTR_WORKER",
    "CANCEL_GRACE_S",
    "DEFAULT_POLL_INTERVAL_S",
    "INTERRUPTED_FAIL_REASON",
    "DistributedInterrupted",
    "DistributedSummary",
    "WorkerReport",
    "record_run_budget",
    "run_distributed",
    "run_worker",
]

_logger = logging.getLogger(__name__)

# Seconds between the driver's looks at the storage (progress, stale trials). Each look reads
# every trial of every study, so shorter intervals load the database for little gain.
DEFAULT_POLL_INTERVAL_S = 5.0

# Seconds cancelled workers get to record their running trial as FAIL before they are killed.
CANCEL_GRACE_S = 15.0

# Ray restarts a worker task whose process died (killed for memory, node lost) this many
# times, and the restarted loop continues. Errors raised by a trial are not retried.
WORKER_TASK_MAX_RETRIES = 2


class DistributedInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a distributed run. ``summary`` is the state after the workers stopped."""

    def __init__(self, summary: DistributedSummary) -> None:
        super().__init__("interrupted")
        self.summary = summary


@dataclasses.dataclass
class DistributedSummary:
    """The outcome of ``run_distributed``: each study's trial counts and each worker's report.

    ``worker_errors`` maps a worker index to the one-line error that stopped it.
    """

    studies: dict[str, StudySummary]
    workers: list[WorkerReport]
    worker_errors: dict[int, str]
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no worker failed and the run was not interrupted."""
        return not self.worker_errors and not self.interrupted

    def describe(self) -> str:
        """Return a table of trials per architecture and the best validation F1, for stdout."""
        header = f"{'architecture':<14}{'complete':>9}{'pruned':>8}{'failed':>8}{'running':>9}{'best val F1':>13}{'best trial':>12}"
        lines = [header]
        for architecture, summary in self.studies.items():
            best = "-" if summary.best_value is None else f"{summary.best_value:.4f}"
            best_trial = "-" if summary.best_trial is None else str(summary.best_trial)
            lines.append(
                f"{architecture:<14}{summary.complete:>9}{summary.pruned:>8}{summary.failed:>8}"
                f"{summary.running:>9}{best:>13}{best_trial:>12}"
            )
        status = "interrupted" if self.interrupted else "finished"
        lines.append(
            f"{status} in {self.seconds:.1f} s with {len(self.workers) + len(self.worker_errors)} "
            f"workers; {len(self.worker_errors)} failed"
        )
        return "\n".join(lines)


def _progress_line(studies: Mapping[str, StudySummary]) -> str:
    parts = []
    for architecture, summary in studies.items():
        best = "none" if summary.best_value is None else f"{summary.best_value:.4f}"
        parts.append(
            f"{architecture}: {summary.complete} done, {summary.pruned} pruned, "
            f"{summary.failed} failed, {summary.running} running, best val F1 {best}"
        )
    return "; ".join(parts)


# ---------------------------------------------------------------------------
# Checks and storage helpers


def _check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_positive_number(name: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _shared_storage_url(storage_url: str | None, *, local_cluster: bool) -> str:
    """Resolve the storage value and make a file path absolute, so every worker opens the same file."""
    from storage import parse_storage_url, resolve_storage_url

    resolved = resolve_storage_url(storage_url)
    location = parse_storage_url(resolved)
    if location.kind not in ("journal", "sqlite"):
        return resolved

    if not local_cluster:
        _logger.warning(
            "storage %s is a file: workers on other nodes open the same path, which works only "
            "where every node mounts it (PostgreSQL needs no shared file system)",
            location.masked_url,
        )
    assert location.path is not None
    absolute = os.path.abspath(location.path)
    return absolute if location.kind == "journal" else f"sqlite:///{absolute}"


def _open_driver_storage(
    storage_url: str,
    heartbeat_interval: int | None,
    grace_period: int | None,
    failed_trial_max_retry: int,
) -> BaseStorage:
    from storage import open_storage

    storage = open_storage(
        storage_url,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        failed_trial_max_retry=failed_trial_max_retry,
    )
    log_stale_trials(storage)
    return storage


def record_run_budget(
    storage: BaseStorage,
    group: str,
    architectures: Sequence[str],
    n_trials: int | None,
    deadline: float | None,
) -> None:
    """Store the run's trial budget and deadline (Unix time) on each study, for ``run_worker``."""
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    value = {"n_trials": n_trials, "deadline": deadline, "started": started}
    for architecture in architectures:
        study_id = storage.get_study_id_from_name(study_name(group, architecture))
        storage.set_study_user_attr(study_id, ATTR_RUN_BUDGET, value)


def _summaries(studies: Mapping[str, optuna.Study]) -> dict[str, StudySummary]:
    from search.engine import summarize

    return {architecture: summarize(study) for architecture, study in studies.items()}


# ---------------------------------------------------------------------------
# The driver


@dataclasses.dataclass
class _WorkerTasks:
    """The driver's view of the Ray worker tasks it started."""

    pending: dict[Any, int]  # ObjectRef -> worker index
    reports: list[WorkerReport] = dataclasses.field(default_factory=list)
    errors: dict[int, str] = dataclasses.field(default_factory=dict)

    def collect(self, ref: Any, quota_actor: Any) -> None:
        """Read a finished task's report, or log the error that ended it."""
        import ray
        from ray.exceptions import RayError, TaskCancelledError

        worker_index = self.pending.pop(ref)
        try:
            report = ray.get(ref)
        except TaskCancelledError:
            self.errors[worker_index] = "cancelled"
            _logger.info("worker %d cancelled", worker_index)
        except RayError as error:
            message = _ray_error_line(error)
            self.errors[worker_index] = message
            _logger.error("worker %d failed: %s", worker_index, message)
        else:
            self.reports.append(report)
            _logger.info(
                "worker %d finished (%s): %d trials in %.1f s",
                worker_index, report.stop_reason, len(report.trials), report.seconds,
            )
            return

        # A worker that died holding a grant cannot return it. Its trial, if it started one,
        # is failed by the heartbeat and its retry counts in the ledger then.
        quota_actor.release.remote(worker_index, True)


def _ray_error_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        text = " ".join(str(cause).split())
        return f"{type(cause).__name__}: {text}"
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def _local_cpus(workers: int, cpus_per_trial: float, num_cpus: int | None) -> int | None:
    """Return the CPUs to declare for a local Ray instance so that every worker runs at once."""
    if num_cpus is not None:
        return num_cpus
    needed = math.ceil(workers * cpus_per_trial)
    detected = os.cpu_count() or 1
    if needed <= detected:
        return None
    _logger.info(
        "declaring %d CPUs to the local Ray instance (this machine has %d) so that all %d "
        "workers run at once; their trials share the cores",
        needed, detected, workers,
    )
    return needed


def _warn_capacity(workers: int, cpus_per_trial: float, gpus_per_trial: float) -> None:
    import ray

    resources = ray.cluster_resources()
    limits = []
    if cpus_per_trial > 0:
        limits.append(math.floor(resources.get("CPU", 0.0) / cpus_per_trial + 1e-9))
    if gpus_per_trial > 0:
        limits.append(math.floor(resources.get("GPU", 0.0) / gpus_per_trial + 1e-9))
    concurrent = min(limits) if limits else workers
    if concurrent < workers:
        _logger.warning(
            "the Ray cluster (%g CPUs, %g GPUs) runs only %d of the %d workers at once with "
            "%g CPUs and %g GPUs per trial; the others start when a worker stops",
            resources.get("CPU", 0.0), resources.get("GPU", 0.0), concurrent, workers,
            cpus_per_trial, gpus_per_trial,
        )


def run_distributed(
    group: str,
    storage_url: str | None,
    architectures: Sequence[str],
    data_spec: Any = None,
    settings: Any = None,
    space: Any = None,
    *,
    n_trials: int | None,
    timeout: float | None = None,
    workers: int = 1,
    gpus_per_trial: float | None = None,
    ray_address: str | None = None,
    cpus_per_trial: float = 1.0,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    failed_trial_max_retry: int = 1,
    poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    objective: Callable[[optuna.Trial], float] | None = None,
    on_progress: Callable[[dict[str, StudySummary]], None] | None = None,
    **study_options: Any,
) -> DistributedSummary:
    """Run ``n_trials`` trials per architecture with ``workers`` Ray workers on shared storage.

    Args:
        group, storage_url, architectures, data_spec, settings, space: as for
            ``search.engine.prepare_studies``, which creates or resumes the studies here,
            before any worker starts. Further keyword arguments (``dataset``,
            ``pruner_settings``, ``seed``, ``artifacts_dir``, ``weights_top_k``,
            ``enqueue_defaults``) go to it too.
        n_trials: the trial budget of each study, earlier runs included; None for no limit.
        timeout: seconds after which no trial starts (running trials finish); None for none.
        workers: Ray worker tasks to start.
        gpus_per_trial: GPUs each worker reserves; fractions pack trials on a GPU. None
            means 1 on a cluster with GPUs and 0 (train on CPUs) on one without.
        ray_address: the Ray cluster to join (``HOST:PORT``, ``auto``, ``ray://...``); None
            starts a local instance, never on Redis's port 6379, without the dashboard.
        cpus_per_trial: CPUs each worker reserves.
        heartbeat_interval, grace_period, failed_trial_max_retry: the RDB storage's
            heartbeat settings for the driver and the workers (see ``storage.open_storage``).
        poll_interval: seconds between progress reports, and between an idle worker's looks
            for trials to retry.
        num_cpus, object_store_memory: the size of a local Ray instance; by default it
            declares at least ``workers * cpus_per_trial`` CPUs.
        objective: replaces the engine's objective in the workers (tests, benchmarks); it must
            be picklable by reference, like a module-level function.
        on_progress: called with the study summaries after each poll that changed them.

    Returns:
        The summary; ``summary.ok`` is False when a worker failed.

    Raises:
        DistributedInterrupted: Ctrl-C; the workers were cancelled and their running trials
            recorded as FAIL with ``fail_reason`` "interrupted".
        ValueError: an invalid option value.
    """
    _check_positive_int("workers", workers)
    _check_positive_int("n_trials", n_trials, allow_none=True)
    _check_positive_number("timeout", timeout, allow_none=True)
    _check_positive_number("poll_interval", poll_interval)
    _check_positive_number("cpus_per_trial", cpus_per_trial, allow_zero=True)

    from search.engine import prepare_studies

    started = time.monotonic()
    architectures = list(dict.fromkeys(architectures))
    if ray_address:
        import ray

        from search._ray_runtime import check_ray_address_reachable

        if not ray.is_initialized():
            # Before the studies are created: a dead head must leave the storage as it was.
            check_ray_address_reachable(ray_address)
    shared_url = _shared_storage_url(storage_url, local_cluster=not ray_address)
    storage = _open_driver_storage(shared_url, heartbeat_interval, grace_period, failed_trial_max_retry)
    try:
        studies = prepare_studies(group, storage, architectures, data_spec, settings, space, **study_options)
        deadline = None if timeout is None else time.time() + timeout
        record_run_budget(storage, group, architectures, n_trials, deadline)
        options = WorkerOptions(
            group=group,
            storage_url=shared_url,
            budgets=dict.fromkeys(architectures, n_trials),
            deadline=deadline,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            failed_trial_max_retry=failed_trial_max_retry,
            poll_interval=poll_interval,
            log_level=logging.getLogger().getEffectiveLevel(),
            objective=objective,
        )
        return _run_on_ray(
            options,
            studies,
            workers=workers,
            gpus_per_trial=gpus_per_trial,
            cpus_per_trial=cpus_per_trial,
            ray_address=ray_address,
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            on_progress=on_progress,
            started=started,
        )
    finally:
        from storage import close_storage

        close_storage(storage)


def _run_on_ray(
    options: WorkerOptions,
    studies: Mapping[str, optuna.Study],
    *,
    workers: int,
    gpus_per_trial: float | None,
    cpus_per_trial: float,
    ray_address: str | None,
    num_cpus: int | None,
    object_store_memory: int | None,
    on_progress: Callable[[dict[str, StudySummary]], None] | None,
    started: float,
) -> DistributedSummary:
    import ray

    from search._ray_runtime import init_ray, resolve_gpus_per_trial

    local_cpus = None
    if not ray_address and not ray.is_initialized():
        local_cpus = _local_cpus(workers, cpus_per_trial, num_cpus)
    started_ray = init_ray(ray_address, num_cpus=local_cpus, object_store_memory=object_store_memory)
    quota_actor: Any = None
    try:
        gpus = resolve_gpus_per_trial(gpus_per_trial, ray.cluster_resources())
        _warn_capacity(workers, cpus_per_trial, gpus)

        heartbeats = heartbeats_enabled(next(iter(studies.values()))._storage)
        snapshots = {arch: take_snapshot(study, fail_stale=heartbeats) for arch, study in studies.items()}
        quota_actor = ray.remote(num_cpus=0, max_restarts=0)(TrialQuota).remote(options.budgets, snapshots)

        task = ray.remote(ray_worker_task).options(
            num_cpus=cpus_per_trial, num_gpus=gpus, max_retries=WORKER_TASK_MAX_RETRIES
        )
        tasks = _WorkerTasks(pending={})
        budget = next(iter(options.budgets.values()))
        try:
            for index in range(workers):
                tasks.pending[task.remote(options, index, quota_actor, gpus)] = index
            _logger.info(
                "started %d workers (%g CPUs, %g GPUs each) on studies %s; budget %s trials "
                "per study",
                workers, cpus_per_trial, gpus, ", ".join(s.study_name for s in studies.values()),
                "unlimited" if budget is None else budget,
            )
            _monitor(tasks, studies, quota_actor, heartbeats, options.poll_interval, on_progress)
        except KeyboardInterrupt:
            _cancel(tasks, quota_actor)
            summary = DistributedSummary(
                _summaries(studies), tasks.reports, tasks.errors, True, time.monotonic() - started
            )
            _logger.warning("run interrupted: %s", _progress_line(summary.studies))
            raise DistributedInterrupted(summary) from None

        summary = DistributedSummary(
            _summaries(studies), tasks.reports, tasks.errors, False, time.monotonic() - started
        )
        _logger.info("run finished in %.1f s: %s", summary.seconds, _progress_line(summary.studies))
        return summary
    finally:
        if quota_actor is not None:
            ray.kill(quota_actor)
        if started_ray:
            ray.shutdown()


def _monitor(
    tasks: _WorkerTasks,
    studies: Mapping[str, optuna.Study],
    quota_actor: Any,
    heartbeats: bool,
    poll_interval: float,
    on_progress: Callable[[dict[str, StudySummary]], None] | None,
) -> None:
    """Wait for the worker tasks, reporting progress and failing stale trials every poll."""
    import ray

    last_line = ""
    next_poll = time.monotonic()
    while tasks.pending:
        wait_s = max(0.0, next_poll - time.monotonic())
        ready, _ = ray.wait(list(tasks.pending), num_returns=1, timeout=wait_s)
        for ref in ready:
            tasks.collect(ref, quota_actor)
        if time.monotonic() < next_poll:
            continue
        next_poll = time.monotonic() + poll_interval

        snapshots: dict[str, StudySnapshot] = {
            arch: take_snapshot(study, fail_stale=heartbeats) for arch, study in studies.items()
        }
        quota_actor.observe.remote(snapshots)
        summaries = _summaries(studies)
        line = _progress_line(summaries)
        if line != last_line:
            _logger.info("progress: %s", line)
            last_line = line
            if on_progress is not None:
                on_progress(summaries)


def _cancel(tasks: _WorkerTasks, quota_actor: Any) -> None:
    """Cancel the workers, wait CANCEL_GRACE_S for them to record their trials, then kill them."""
    import ray

    _logger.warning("interrupted: cancelling %d workers", len(tasks.pending))
    for ref in tasks.pending:
        ray.cancel(ref, force=False)

    deadline = time.monotonic() + CANCEL_GRACE_S
    try:
        while tasks.pending and time.monotonic() < deadline:
            ready, _ = ray.wait(
                list(tasks.pending), num_returns=len(tasks.pending),
                timeout=max(0.0, deadline - time.monotonic()),
            )
            for ref in ready:
                tasks.collect(ref, quota_actor)
    except KeyboardInterrupt:
        _logger.warning("interrupted again: killing the workers now")

    for ref in list(tasks.pending):
        _logger.warning(
            "worker %d did not stop within %g s; killing it (its trial is failed by the heartbeat)",
            tasks.pending[ref], CANCEL_GRACE_S,
        )
        ray.cancel(ref, force=True)
        tasks.errors[tasks.pending.pop(ref)] = "killed after cancellation"


# ---------------------------------------------------------------------------
# archsweep worker


def _existing_architectures(storage: BaseStorage, group: str) -> list[str]:
    from search.space import ARCHITECTURES

    names = {study.study_name for study in storage.get_all_studies()}
    return [arch for arch in ARCHITECTURES if study_name(group, arch) in names]


def _default_worker_index() -> int:
    # Mixed into the sampler seed: distinct per process, so two workers that join at the same
    # moment do not sample the same start-up configurations.
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % (2**31)


def _read_run_budget(storage: BaseStorage, group: str, architecture: str) -> dict[str, Any] | None:
    name = study_name(group, architecture)
    study_id = storage.get_study_id_from_name(name)
    value = storage.get_study_user_attrs(study_id).get(ATTR_RUN_BUDGET)
    return value if isinstance(value, dict) else None


def run_worker(
    group: str,
    storage_url: str | None,
    architectures: Sequence[str] | None = None,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    worker_index: int | None = None,
    device: str | None = None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    failed_trial_max_retry: int = 1,
    poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    objective: Callable[[optuna.Trial], float] | None = None,
) -> WorkerReport:
    """Join the studies of ``group`` from this process and run trials until their budget is used.

    The data spec, training settings, sampler and pruners come from each study's record. The
    trial budget and deadline come from the ``run_budget`` attribute that ``run_distributed``
    (or ``record_run_budget``) stored. ``n_trials`` overrides the budget; ``timeout`` (seconds
    from now) shortens the deadline. ``architectures`` None joins every architecture whose
    study exists. ``device`` overrides the recorded training device (e.g. ``cuda:1``).

    Raises:
        ValueError: no study of the group exists, a named one is missing, or a study has no
            budget and ``n_trials`` is None.
        KeyboardInterrupt: Ctrl-C; the running trial ends FAIL with ``fail_reason``
            "interrupted".
    """
    _check_positive_int("n_trials", n_trials, allow_none=True)
    _check_positive_number("timeout", timeout, allow_none=True)
    _check_positive_number("poll_interval", poll_interval)

    shared_url = _shared_storage_url(storage_url, local_cluster=True)
    storage = _open_driver_storage(shared_url, heartbeat_interval, grace_period, failed_trial_max_retry)
    try:
        if architectures is None:
            chosen = _existing_architectures(storage, group)
            if not chosen:
                raise ValueError(
                    f"no study of {group!r} exists in the storage; start it with "
                    f"archsweep run --study {group}"
                )
        else:
            chosen = list(dict.fromkeys(architectures))

        budgets: dict[str, int | None] = {}
        deadlines: list[float] = []
        for architecture in chosen:
            try:
                run_budget = _read_run_budget(storage, group, architecture)
            except KeyError:
                raise ValueError(
                    f"study {study_name(group, architecture)!r} does not exist in the storage; "
                    f"start it with archsweep run --study {group} --arch {architecture}"
                ) from None
            if n_trials is None and run_budget is None:
                raise ValueError(
                    f"study {study_name(group, architecture)!r} has no trial budget recorded "
                    "(it was not started by archsweep run); pass n_trials"
                )
            budgets[architecture] = n_trials if n_trials is not None else run_budget["n_trials"]  # type: ignore[index]
            if run_budget is not None and run_budget.get("deadline") is not None:
                deadlines.append(float(run_budget["deadline"]))
    finally:
        from storage import close_storage

        close_storage(storage)

    if timeout is not None:
        deadlines.append(time.time() + timeout)
    options = WorkerOptions(
        group=group,
        storage_url=shared_url,
        budgets=budgets,
        deadline=min(deadlines) if deadlines else None,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        failed_trial_max_retry=failed_trial_max_retry,
        poll_interval=poll_interval,
        objective=objective,
    )
    index = _default_worker_index() if worker_index is None else worker_index
    return run_worker_loop(options, index, StorageQuota(budgets), device=device)
