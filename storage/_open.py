"""Open an Optuna storage from the ``--storage`` convention, and create studies safely."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.storages import (
    BaseStorage,
    GrpcStorageProxy,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
    _CachedStorage,
)
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection

from storage import _postgres
from storage._errors import StorageError, StorageURLError
from storage._rdb import RetryingRDBStorage, is_transient_database_error
from storage._url import StorageLocation, parse_storage_url, resolve_storage_url

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_GRACE_PERIOD_FACTOR",
    "DEFAULT_HEARTBEAT_INTERVAL_S",
    "MAX_OVERFLOW",
    "POOL_SIZE",
    "close_storage",
    "create_studies",
    "ensure_storage_ready",
    "open_storage",
]

_logger = logging.getLogger(__name__)

# Connections each worker process keeps open to the database. Optuna's trial loop and its
# heartbeat thread each hold at most one at a time.
POOL_SIZE = 2
# Extra connections a process may open for a burst (threads a caller adds); they are closed
# when returned. With N workers the server gets up to N * (POOL_SIZE + MAX_OVERFLOW)
# connections: PostgreSQL's default max_connections of 100 fits 25 workers, so larger runs
# should put the gRPC storage proxy (grpc://HOST:PORT) between the workers and the database.
MAX_OVERFLOW = 2
# Seconds a thread waits for a free pooled connection before SQLAlchemy raises.
POOL_TIMEOUT_S = 30

# An unreachable server fails the open within this many seconds.
DEFAULT_CONNECT_TIMEOUT_S = 5.0

# Seconds between heartbeats of a running trial on an RDB storage.
DEFAULT_HEARTBEAT_INTERVAL_S = 60
# A trial is failed when no heartbeat arrived for this many intervals. Three leave room for a
# heartbeat thread starved by a busy worker or held up by retries during a database restart.
DEFAULT_GRACE_PERIOD_FACTOR = 3

# SQLite waits this many seconds for another process's write transaction to end before
# raising "database is locked", which matters when several workers share one file.
SQLITE_BUSY_TIMEOUT_S = 30

_SQLITE_HEADER = b"SQLite format 3\x00"


def open_storage(
    storage: str | None = None,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    failed_trial_max_retry: int = 1,
    pool_size: int = POOL_SIZE,
    max_overflow: int = MAX_OVERFLOW,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> BaseStorage:
    """Open the Optuna storage that a ``--storage`` value names.

    Args:
        storage: an SQLAlchemy URL, ``grpc://HOST:PORT`` or a journal file path; None or empty
            means ``$ARCHSWEEP_STORAGE``, else ``archsweep.journal`` in the working directory.
        heartbeat_interval: seconds between heartbeats of a running trial, on RDB storages
            (SQLite, PostgreSQL, MySQL). None means DEFAULT_HEARTBEAT_INTERVAL_S and 0 turns
            heartbeats off. A trial whose worker stopped beating is set to FAIL by the next
            worker that starts a trial, and re-queued once (see ``failed_trial_max_retry``).
        grace_period: seconds without a heartbeat after which a trial counts as dead; None
            means DEFAULT_GRACE_PERIOD_FACTOR heartbeat intervals. Must exceed the interval.
        failed_trial_max_retry: how many times a trial failed by a missing heartbeat is
            queued again with the same parameters; 0 never.
        pool_size, max_overflow: the SQLAlchemy connection pool of each process, for
            PostgreSQL and MySQL.
        connect_timeout: seconds to wait for a database server or gRPC proxy to respond.

    Returns:
        RetryingRDBStorage (an optuna RDBStorage) for URLs, JournalStorage for files,
        GrpcStorageProxy for ``grpc://``. Pass it to ``optuna.create_study`` or
        ``optuna.load_study``; release it with ``close_storage``.

    Raises:
        StorageURLError: the value is malformed or names a missing driver (a ValueError too).
        StorageError: the server is unreachable, refuses the login, lacks the database, or
            its schema was written by another Optuna version. Messages never show passwords.
    """
    _check_options(
        heartbeat_interval,
        grace_period,
        failed_trial_max_retry,
        pool_size,
        max_overflow,
        connect_timeout,
    )
    location = parse_storage_url(resolve_storage_url(storage))

    heartbeat_requested = bool(heartbeat_interval) or grace_period is not None
    opened: BaseStorage
    if location.kind == "journal":
        _warn_no_heartbeat(location, heartbeat_requested)
        opened = _open_journal(location)
    elif location.kind == "grpc":
        _warn_no_heartbeat(location, heartbeat_requested)
        opened = _open_grpc(location, connect_timeout)
    else:
        interval = (
            DEFAULT_HEARTBEAT_INTERVAL_S if heartbeat_interval is None else heartbeat_interval
        )
        opened = _open_rdb(
            location,
            engine_kwargs=_engine_kwargs(location, pool_size, max_overflow, connect_timeout),
            heartbeat_interval=interval or None,
            grace_period=grace_period,
            failed_trial_max_retry=failed_trial_max_retry,
            connect_timeout=connect_timeout,
        )

    _logger.info("Opened %s storage %s", location.kind, location.masked_url)
    return opened


def close_storage(storage: BaseStorage) -> None:
    """Release the connections or channel a storage from ``open_storage`` holds."""
    if isinstance(storage, RDBStorage):
        storage.remove_session()
        storage.engine.dispose()
    elif isinstance(storage, GrpcStorageProxy):
        storage.close()


def ensure_storage_ready(
    storage: str | None = None, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
) -> None:
    """Create the storage's schema if it is missing, before any worker starts.

    On PostgreSQL the schema is created under an advisory lock, so it is safe to call from
    several processes at once. ``open_storage`` takes the same lock when it finds an empty
    database, so workers that skip this call are safe too.

    Raises:
        StorageURLError, StorageError: as ``open_storage``.
    """
    opened = open_storage(storage, heartbeat_interval=0, connect_timeout=connect_timeout)
    close_storage(opened)


def create_studies(
    storage: str | BaseStorage | None,
    study_names: Iterable[str],
    *,
    direction: str | StudyDirection = "maximize",
    user_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> dict[str, bool]:
    """Create the studies that do not exist yet, each with its user attributes.

    On PostgreSQL the studies are created and their attributes set under the advisory lock
    that guards the schema, so a process racing this one to create the same study either
    creates it completely or finds it complete. Existing studies are left unchanged.

    NOTE: journal and SQLite storages have no such lock. Creation itself is race-safe there
    (the loser gets DuplicatedStudyError and keeps the winner's study), but a process can load
    a study in the moment before its creator has set the user attributes.

    Args:
        storage: a storage value (as for ``open_storage``) or a storage it returned.
        study_names: names of the studies to create.
        direction: "maximize" or "minimize", for every study created.
        user_attrs: attributes to set on each study that this call creates, by study name.

    Returns:
        For each study name, True if this call created it, False if it existed.
    """
    names = list(dict.fromkeys(study_names))
    attrs_by_study = dict(user_attrs or {})
    unknown = sorted(set(attrs_by_study) - set(names))
    if unknown:
        raise ValueError(
            f"user_attrs names studies that are not in study_names: {', '.join(unknown)}"
        )
    study_direction = _parse_direction(direction)

    opened_here = not isinstance(storage, BaseStorage)
    backend = (
        open_storage(storage, heartbeat_interval=0, connect_timeout=connect_timeout)
        if not isinstance(storage, BaseStorage)
        else storage
    )
    try:
        with _study_creation_lock(backend, connect_timeout):
            created = {
                name: _create_study(backend, name, study_direction, attrs_by_study.get(name, {}))
                for name in names
            }
    finally:
        if opened_here:
            close_storage(backend)
    return created


def _create_study(
    storage: BaseStorage,
    name: str,
    direction: StudyDirection,
    user_attrs: Mapping[str, Any],
) -> bool:
    # Look before creating: on a journal file, create_new_study appends a record even
    # when the name exists, so every resume would grow the file.
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        pass
    else:
        _logger.debug("Study %s exists already", name)
        return False
    try:
        study_id = storage.create_new_study([direction], name)
    except DuplicatedStudyError:
        _logger.debug("Study %s exists already", name)
        return False

    for key, value in user_attrs.items():
        storage.set_study_user_attr(study_id, key, value)
    _logger.info("Created study %s (study_id=%d)", name, study_id)
    return True


@contextlib.contextmanager
def _study_creation_lock(storage: BaseStorage, connect_timeout: float) -> Iterator[None]:
    # optuna.create_study wraps an RDBStorage in its caching layer; lock on what it wraps.
    if isinstance(storage, _CachedStorage):
        storage = storage._backend
    if not isinstance(storage, RDBStorage):
        yield
        return

    location = parse_storage_url(storage.url)
    if location.kind != "postgresql":
        yield
        return

    with (
        _postgres.connect(location, connect_timeout) as connection,
        _postgres.advisory_lock(connection, location),
    ):
        yield


def _check_options(
    heartbeat_interval: int | None,
    grace_period: int | None,
    failed_trial_max_retry: int,
    pool_size: int,
    max_overflow: int,
    connect_timeout: float,
) -> None:
    if heartbeat_interval is not None and heartbeat_interval < 0:
        raise ValueError(
            f"heartbeat_interval must be a whole number of seconds >= 0 (0 turns heartbeats "
            f"off), got {heartbeat_interval}"
        )
    if grace_period is not None:
        interval = (
            DEFAULT_HEARTBEAT_INTERVAL_S if heartbeat_interval is None else heartbeat_interval
        )
        if interval == 0:
            raise ValueError(
                "grace_period needs heartbeats; leave it unset when heartbeat_interval is 0"
            )
        if grace_period <= interval:
            raise ValueError(
                f"grace_period must exceed heartbeat_interval ({interval} s), got {grace_period}: "
                "a shorter one fails trials whose workers are alive"
            )
    if failed_trial_max_retry < 0:
        raise ValueError(f"failed_trial_max_retry must be >= 0, got {failed_trial_max_retry}")
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    if max_overflow < 0:
        raise ValueError(f"max_overflow must be >= 0, got {max_overflow}")
    if connect_timeout <= 0:
        raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")


def _parse_direction(direction: str | StudyDirection) -> StudyDirection:
    if isinstance(direction, StudyDirection):
        return direction
    try:
        return StudyDirection[direction.upper()]
    except KeyError:
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}") from None


def _warn_no_heartbeat(location: StorageLocation, heartbeat_requested: bool) -> None:
    if heartbeat_requested:
        _logger.warning(
            "Heartbeats need an RDB storage (Optuna 5.1); %s storage %s has none, so the trial "
            "of a worker that dies stays RUNNING",
            location.kind,
            location.masked_url,
        )


def _engine_kwargs(
    location: StorageLocation, pool_size: int, max_overflow: int, connect_timeout: float
) -> dict[str, Any]:
    if location.kind == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}

    kwargs: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "pool_timeout": POOL_TIMEOUT_S,
        # Replaces pooled connections the server closed (a restart, an idle timeout) with new
        # ones at checkout, instead of failing the next storage call.
        "pool_pre_ping": True,
    }
    if location.kind == "postgresql":
        kwargs["connect_args"] = _postgres.postgres_connect_args(connect_timeout)
    return kwargs


def _open_rdb(
    location: StorageLocation,
    *,
    engine_kwargs: dict[str, Any],
    heartbeat_interval: int | None,
    grace_period: int | None,
    failed_trial_max_retry: int,
    connect_timeout: float,
) -> RetryingRDBStorage:
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period or DEFAULT_GRACE_PERIOD_FACTOR * heartbeat_interval,
            "heartbeat_stale_trial_callback": _retry_callback(failed_trial_max_retry),
        }

    def construct() -> RetryingRDBStorage:
        return _construct_rdb(location, engine_kwargs, heartbeat)

    if location.kind != "postgresql":
        return construct()

    # Two processes creating Optuna's tables at once on an empty database collide on
    # PostgreSQL's catalog (duplicate type or relation). So the first one creates them under
    # the advisory lock while the others wait. A complete schema is opened without the lock.
    with _postgres.connect(location, connect_timeout) as connection:
        if _postgres.schema_is_ready(connection):
            return construct()
        with _postgres.advisory_lock(connection, location):
            _logger.info("Creating the Optuna schema in %s", location.masked_url)
            return construct()


def _retry_callback(max_retry: int) -> RetryHeartbeatStaleTrialCallback:
    # The heartbeat API is experimental in Optuna 5.1; archsweep uses it on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def _construct_rdb(
    location: StorageLocation, engine_kwargs: dict[str, Any], heartbeat: dict[str, Any]
) -> RetryingRDBStorage:
    import sqlalchemy.exc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return RetryingRDBStorage(location.url, engine_kwargs=engine_kwargs, **heartbeat)
    except (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        optuna.exceptions.StorageInternalError,
    ) as error:
        if not is_transient_database_error(error):
            raise
        if location.kind == "postgresql":
            raise _postgres.connection_error(location, error) from None

        detail = location.scrub(str(getattr(error, "orig", None) or error).splitlines()[0])
        fix = (
            "check that its directory exists and is writable"
            if location.kind == "sqlite"
            else "check the server, the credentials and the database name"
        )
        raise StorageError(f"cannot open {location.describe()}: {detail}; {fix}") from None
    except RuntimeError as error:
        # Optuna raises a bare RuntimeError when the schema is older or newer than it expects.
        if "optuna storage upgrade" not in str(error) and "pip install -U optuna" not in str(error):
            raise
        fix = (
            f"run `optuna storage upgrade --storage '{location.masked_url}'` with the real "
            "password, or use the Optuna version that wrote it"
            if "optuna storage upgrade" in str(error)
            else "upgrade Optuna to the version that wrote it"
        )
        raise StorageError(
            f"the Optuna schema in {location.describe()} does not match Optuna "
            f"{optuna.__version__}; {fix}"
        ) from None


def _open_journal(location: StorageLocation) -> JournalStorage:
    assert location.path is not None
    path = location.path
    if os.path.isdir(path):
        raise StorageURLError(
            f"journal file {path} is a directory; name a file in it, for example "
            f"{os.path.join(path, 'archsweep.journal')}"
        )

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StorageError(
            f"cannot open journal file {path}: directory {directory} does not exist; "
            "create it or pass another storage"
        )

    if os.path.isfile(path) and _has_sqlite_header(path):
        raise StorageURLError(
            f"{path} is an SQLite database, not an Optuna journal file; use sqlite:///{path}"
        )

    try:
        return JournalStorage(JournalFileBackend(path))
    except OSError as error:
        raise StorageError(f"cannot open journal file {path}: {error.strerror or error}") from None


def _has_sqlite_header(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError:
        return False


def _open_grpc(location: StorageLocation, connect_timeout: float) -> GrpcStorageProxy:
    assert location.host is not None and location.port is not None
    # The gRPC proxy is experimental in Optuna 5.1; archsweep uses it on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        proxy = GrpcStorageProxy(host=location.host, port=location.port)

    try:
        proxy.wait_server_ready(timeout=connect_timeout)
    except ConnectionError:
        proxy.close()
        raise StorageError(
            f"no Optuna gRPC storage proxy responded at {location.host}:{location.port} within "
            f"{connect_timeout:g} s; start one there (storage.serve_grpc_proxy) or fix the "
            "host and port"
        ) from None
    return proxy
