"""PostgreSQL specifics: engine settings, the schema lock and connection error messages."""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.pool import NullPool

from storage._errors import StorageError
from storage._url import StorageLocation

__all__ = [
    "LOCK_TIMEOUT_S",
    "SCHEMA_LOCK_KEY",
    "advisory_lock",
    "connect",
    "connection_error",
    "postgres_connect_args",
    "schema_is_ready",
]

_logger = logging.getLogger(__name__)

# Key of the session-level advisory lock that serialises schema and study creation. Any
# constant works as long as every archsweep process uses the same one: this is the ASCII of
# "archswep" read as a signed 64-bit integer.
SCHEMA_LOCK_KEY = int.from_bytes(b"archswep", "big", signed=True)

# How long a process waits for another one to finish creating the schema or its studies.
# Creating Optuna's tables takes well under a second, so a minute means the holder is stuck.
LOCK_TIMEOUT_S = 60

# libpq rounds connect_timeout to whole seconds and treats values below 2 as 2.
_MIN_CONNECT_TIMEOUT_S = 2

# TCP keepalives make the kernel notice a server or network path that vanished without
# closing the connection (a failover, a firewall dropping idle flows) within about a minute,
# so pool_pre_ping fails fast instead of hanging on a dead socket.
_KEEPALIVE_ARGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def postgres_connect_args(connect_timeout: float) -> dict[str, Any]:
    """Return the libpq connection parameters archsweep sets on every PostgreSQL connection."""
    return {
        "connect_timeout": max(_MIN_CONNECT_TIMEOUT_S, math.ceil(connect_timeout)),
        "application_name": "archsweep",
        **_KEEPALIVE_ARGS,
    }


def connection_error(location: StorageLocation, error: BaseException) -> StorageError:
    """Turn a driver error from connecting into a one-line StorageError that names the host,
    port, database and user, and the fix, without the password."""
    detail = location.scrub(_driver_message(error))
    return StorageError(
        f"cannot connect to {location.describe()}: {detail}; {_fix(detail, location)}"
    )


def _driver_message(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error.__cause__ or error
    if isinstance(original, sqlalchemy.exc.SQLAlchemyError):
        original = getattr(original, "orig", None) or original
    # libpq appends a hint line such as "Is the server running on that host...?".
    lines = str(original).strip().splitlines()
    message = " ".join(lines[0].split()) if lines else ""

    # libpq prefixes the reason with 'connection to server at "HOST", port PORT failed:' and
    # the server's reason with FATAL; the message already names host and port.
    reason = message.rsplit(" failed: ", 1)[-1]
    reason = re.sub(r"^(FATAL|ERROR):\s*", "", reason)
    return reason or type(original).__name__


def _fix(detail: str, location: StorageLocation) -> str:
    lowered = detail.lower()
    host = location.host or "localhost"
    port = location.port or 5432
    user = location.user or "postgres"
    client = f"-h {host} -p {port} -U {user}"

    if "database" in lowered and "does not exist" in lowered:
        return f"create it with `createdb {client} {location.database}` or fix the database name"
    if "role" in lowered and "does not exist" in lowered:
        return (
            f"create the role as a superuser with `createuser -h {host} -p {port} --pwprompt "
            f"{user}` or fix the user name"
        )
    if "password" in lowered:
        return "check the password in the URL (or in PGPASSWORD or ~/.pgpass)"
    if "pg_hba.conf" in lowered:
        return "allow this client in the server's pg_hba.conf"
    if "starting up" in lowered or "shutting down" in lowered:
        return "wait until the server is up and start again"
    return f"check that PostgreSQL runs at {host}:{port} and accepts TCP connections from here"


@contextlib.contextmanager
def connect(location: StorageLocation, connect_timeout: float) -> Iterator[sqlalchemy.Connection]:
    """Open one autocommit connection outside any pool, for checks and the schema lock.

    Raises:
        StorageError: the server is unreachable or refuses the login.
    """
    engine = sqlalchemy.create_engine(
        location.url,
        poolclass=NullPool,
        connect_args=postgres_connect_args(connect_timeout),
        isolation_level="AUTOCOMMIT",
    )
    try:
        try:
            connection = engine.connect()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as error:
            raise connection_error(location, error) from None

        with connection:
            yield connection
    finally:
        engine.dispose()


def schema_is_ready(connection: sqlalchemy.Connection) -> bool:
    """Tell whether Optuna's schema is complete: Optuna stamps alembic_version last."""
    table = connection.execute(sqlalchemy.text("SELECT to_regclass('alembic_version')")).scalar()
    if table is None:
        return False
    count = connection.execute(sqlalchemy.text("SELECT count(*) FROM alembic_version")).scalar()
    return bool(count)


@contextlib.contextmanager
def advisory_lock(connection: sqlalchemy.Connection, location: StorageLocation) -> Iterator[None]:
    """Hold archsweep's PostgreSQL advisory lock on ``connection`` for the block.

    The server releases a session-level advisory lock when the connection ends, so a process
    that dies while holding it does not block the others.

    Raises:
        StorageError: the lock was not granted within LOCK_TIMEOUT_S seconds.
    """
    connection.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
    try:
        connection.execute(
            sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY}
        )
    except sqlalchemy.exc.OperationalError as error:
        raise StorageError(
            f"timed out after {LOCK_TIMEOUT_S} s waiting for the schema lock on "
            f"{location.describe()} ({location.scrub(_driver_message(error))}); another "
            "archsweep process holds it: stop it or wait until it has created the studies"
        ) from None
    _logger.debug("Acquired the schema lock on %s", location.masked_url)

    try:
        yield
    finally:
        try:
            connection.execute(
                sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY}
            )
        except sqlalchemy.exc.DBAPIError as error:
            # The lock ends with the connection anyway, which is closed next.
            _logger.debug("Releasing the schema lock on %s failed: %s", location.masked_url, error)
