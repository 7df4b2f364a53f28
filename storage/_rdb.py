"""Optuna's RDBStorage with bounded retries on transient database errors.

When PostgreSQL restarts or drops a connection, a storage call fails with an OperationalError
that Optuna converts to StorageInternalError. ``pool_pre_ping`` replaces connections that died
while idle in the pool, but a call that is in flight when the server goes away still fails.
RetryingRDBStorage repeats such calls a bounded number of times with a growing delay, so
workers ride out a restart of a few seconds instead of failing the trial.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from storage._errors import StorageError
from storage._url import mask_url, parse_storage_url

__all__ = [
    "MAX_TRANSIENT_RETRIES",
    "RETRY_INITIAL_DELAY_S",
    "RETRY_MAX_DELAY_S",
    "RetryingRDBStorage",
    "is_transient_database_error",
]

_logger = logging.getLogger(__name__)

# Delays of 0.5, 1, 2, 4, 5, 5, 5 and 5 s add up to about 28 s. That is longer than a
# PostgreSQL restart or a managed-database failover usually takes (an estimate), and short
# enough that a server that is really gone fails the worker within half a minute.
MAX_TRANSIENT_RETRIES = 8
RETRY_INITIAL_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 5.0

# Storage calls that go to the database. Reads are safe to repeat. The writes are upserts or
# state changes that are safe to repeat, except where a write was committed but its
# acknowledgement was lost (see set_trial_state_values and _create_new_trial below).
_RETRIED_METHODS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_trials",
    "_get_trials",
    "get_n_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
)

# Set while a thread is inside a retried call, so that retried methods calling each other
# (get_all_trials calls _get_trials) retry once at the outermost level instead of multiplying
# the retry budget.
_retry_scope = threading.local()

_Method = TypeVar("_Method", bound=Callable[..., Any])


def is_transient_database_error(error: BaseException) -> bool:
    """Tell whether a storage error is a lost connection, a server that is (re)starting, a
    deadlock or a lock timeout: errors that a later attempt can get past.

    Optuna wraps SQLAlchemy errors raised inside a session in StorageInternalError, so the
    cause is checked too.
    """
    candidates = [error, error.__cause__]
    for candidate in candidates:
        if isinstance(candidate, sqlalchemy.exc.DBAPIError) and candidate.connection_invalidated:
            return True
        if isinstance(candidate, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        # Optuna's _get_trials catches an OperationalError and queries again in the same
        # session, which then raises PendingRollbackError with the lost connection as context.
        if isinstance(candidate, sqlalchemy.exc.PendingRollbackError):
            context = candidate.__context__
            if context is not None and context is not candidate:
                return is_transient_database_error(context)
    return False


def _summarize(error: BaseException) -> str:
    cause = error.__cause__ if error.__cause__ is not None else error
    original = getattr(cause, "orig", None) or cause
    first_line = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"{type(original).__name__}: {first_line}"[:300]


def _first_argument_name(method: Callable[..., Any]) -> str | None:
    parameters = list(inspect.signature(method).parameters)
    return parameters[1] if len(parameters) > 1 else None


def _call_in_retry_scope(
    storage: RetryingRDBStorage,
    method: Callable[..., Any],
    argument_name: str | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    if getattr(_retry_scope, "active", False):
        return method(storage, *args, **kwargs)

    _retry_scope.active = True
    try:
        return storage._call_with_retries(method, argument_name, args, kwargs)
    finally:
        _retry_scope.active = False


def _retrying(method: _Method) -> _Method:
    argument_name = _first_argument_name(method)

    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return _call_in_retry_scope(self, method, argument_name, args, kwargs)

    return call  # type: ignore[return-value]


def _with_retried_methods(cls: type[RetryingRDBStorage]) -> type[RetryingRDBStorage]:
    for name in _RETRIED_METHODS:
        if name not in cls.__dict__:
            setattr(cls, name, _retrying(getattr(RDBStorage, name)))
    return cls


@_with_retried_methods
class RetryingRDBStorage(RDBStorage):
    """RDBStorage that repeats a call failing with a transient database error.

    A call is tried up to ``1 + MAX_TRANSIENT_RETRIES`` times, with delays growing from
    ``RETRY_INITIAL_DELAY_S`` to ``RETRY_MAX_DELAY_S``. Each retry is logged as a warning with
    the method, the study or trial id and the masked URL, and the last failure is raised as
    StorageError naming the server. Other errors propagate at once.

    NOTE: a write that the server committed but whose acknowledgement was lost with the
    connection is sent again. That is harmless for attribute, parameter and intermediate
    value writes and is handled for trial state changes, but a repeated ``_create_new_trial``
    leaves one extra trial in the RUNNING state.
    """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({mask_url(self.url)!r})"

    def _call_with_retries(
        self,
        method: Callable[..., Any],
        argument_name: str | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        delay = RETRY_INITIAL_DELAY_S
        for attempt in range(MAX_TRANSIENT_RETRIES + 1):
            try:
                return method(self, *args, **kwargs)
            except (
                optuna.exceptions.StorageInternalError,
                sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.InterfaceError,
            ) as error:
                if not is_transient_database_error(error):
                    raise

                target = f"{argument_name}={args[0]}" if argument_name and args else ""
                if attempt == MAX_TRANSIENT_RETRIES:
                    raise StorageError(
                        f"storage call {method.__name__}({target}) failed "
                        f"{MAX_TRANSIENT_RETRIES + 1} times on "
                        f"{parse_storage_url(self.url).describe()} ({_summarize(error)}); "
                        "check that the database server is up and reachable"
                    ) from error

                _logger.warning(
                    "Storage call %s(%s) on %s failed (%s); retry %d of %d in %.1f s",
                    method.__name__,
                    target,
                    mask_url(self.url),
                    _summarize(error),
                    attempt + 1,
                    MAX_TRANSIENT_RETRIES,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY_S)

        raise AssertionError("unreachable: the last attempt returns or raises")

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """Set a trial's state and values, retrying transient errors.

        When an attempt committed but lost its acknowledgement, the retry finds the trial
        already finished and Optuna raises UpdateFinishedTrialError. If the stored state and
        values are the ones requested, that earlier attempt succeeded and True is returned.
        """
        attempts = 0

        def set_trial_state_values(
            storage: RetryingRDBStorage,
            trial_id: int,
            state: TrialState,
            values: Sequence[float] | None,
        ) -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return RDBStorage.set_trial_state_values(storage, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if attempts == 1 or not storage._is_stored(trial_id, state, values):
                    raise
                _logger.info(
                    "Trial state of trial_id=%d was already set to %s by an attempt whose "
                    "acknowledgement was lost",
                    trial_id,
                    state.name,
                )
                return True

        return _call_in_retry_scope(
            self, set_trial_state_values, "trial_id", (trial_id, state, values), {}
        )

    def _is_stored(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        stored = RDBStorage.get_trial(self, trial_id)
        if stored.state != state:
            return False
        return values is None or stored.values == list(values)

    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat, retrying transient errors.

        Optuna calls this from a background thread that stops at the first exception, which
        would let a healthy trial go stale and be failed by another worker. A heartbeat that
        still fails after the retries is logged and skipped, and the next one tries again.
        """
        try:
            _call_in_retry_scope(self, RDBStorage.record_heartbeat, "trial_id", (trial_id,), {})
        except StorageError as error:
            _logger.warning("Heartbeat skipped: %s; the next heartbeat tries again", error)
