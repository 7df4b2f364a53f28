"""The ``--storage`` convention: resolve, validate and mask storage URLs.

A value with ``://`` is an SQLAlchemy URL of an Optuna RDB storage (``sqlite:///file.db``,
``postgresql+psycopg://user@host:5432/db``) or ``grpc://host:port`` for an Optuna gRPC storage
proxy. Anything else is the path of an Optuna journal file, the convention optuna-dashboard
uses too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import urllib.parse
from typing import TYPE_CHECKING

from storage._errors import StorageError, StorageURLError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = [
    "DEFAULT_JOURNAL_FILE",
    "STORAGE_ENV_VAR",
    "StorageLocation",
    "mask_url",
    "parse_storage_url",
    "resolve_storage_url",
]

STORAGE_ENV_VAR = "ARCHSWEEP_STORAGE"
DEFAULT_JOURNAL_FILE = "archsweep.journal"

# Backends whose SQLAlchemy dialect Optuna's RDBStorage supports (Optuna 5.1 tests these three).
RDB_BACKENDS = ("sqlite", "postgresql", "mysql")

MASK = "***"

# Prefixes that show a value was meant as a URL even when "://" is missing or mistyped, such as
# "postgres:/x" or "sqlite:db". Other values without "://" are journal file paths.
_URL_LIKE_SCHEMES = frozenset(
    {
        "sqlite",
        "postgresql",
        "postgres",
        "mysql",
        "mariadb",
        "oracle",
        "mssql",
        "grpc",
        "http",
        "https",
        "redis",
        "file",
    }
)
_SCHEME_PREFIX = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*):")

# user:password@ in the authority part, for values that SQLAlchemy cannot parse.
# The password runs to the last "@" before the path, as SQLAlchemy parses it.
_AUTHORITY_PASSWORD = re.compile(r"(?P<head>://[^/@:?#]*:)[^/?#]*(?=@)")
# password=... in a query string (libpq and SQLAlchemy both accept it there).
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&#]*", re.IGNORECASE)

_DISPLAY_NAMES = {
    "journal": "journal",
    "sqlite": "SQLite",
    "postgresql": "PostgreSQL",
    "mysql": "MySQL",
    "grpc": "gRPC storage proxy",
}

_EXAMPLES = (
    "use sqlite:///FILE.db, postgresql+psycopg://USER@HOST:5432/DATABASE, "
    "grpc://HOST:PORT or the path of a journal file"
)


@dataclasses.dataclass(frozen=True)
class StorageLocation:
    """A validated storage value, split into the parts that messages and openers need.

    ``url`` is the value as given and may contain a password: show ``masked_url`` instead.
    """

    kind: str  # "journal", "sqlite", "postgresql", "mysql" or "grpc"
    url: str = dataclasses.field(repr=False)
    masked_url: str
    path: str | None = None  # journal and SQLite files
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)

    def describe(self) -> str:
        """Name the server or file in words, for messages."""
        name = _DISPLAY_NAMES.get(self.kind, self.kind)
        if self.kind in ("journal", "sqlite"):
            return f"{name} file {self.path}"
        if self.kind == "grpc":
            return f"{name} at {self.host}:{self.port}"
        host = self.host or "the local socket"
        port = self.port if self.port is not None else "the default port"
        return f"{name} at {host}:{port}, database '{self.database}', user '{self.user}'"

    def scrub(self, text: str) -> str:
        """Return ``text`` with this location's password replaced by the mask."""
        text = mask_url(text)
        # Driver messages do not echo passwords; this catches one that does. Passwords shorter
        # than four characters are left alone, because replacing every "a" or "pw" in a
        # message would make it unreadable while hiding almost nothing.
        if self.password and len(self.password) >= 4:
            text = text.replace(self.password, MASK)
        return text


def resolve_storage_url(storage: str | None) -> str:
    """Return the storage to use: ``storage`` itself, else ``$ARCHSWEEP_STORAGE``, else the
    journal file ``archsweep.journal`` in the working directory."""
    if storage is not None and storage.strip():
        return storage.strip()

    from_env = os.environ.get(STORAGE_ENV_VAR, "").strip()
    if from_env:
        return from_env

    return DEFAULT_JOURNAL_FILE


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``.

    Values without ``://`` (journal file paths) come back unchanged.
    """
    if "://" not in url:
        return url

    masked = _AUTHORITY_PASSWORD.sub(lambda match: match.group("head") + MASK, url)
    return _QUERY_PASSWORD.sub(lambda match: match.group("head") + MASK, masked)


def parse_storage_url(storage: str) -> StorageLocation:
    """Validate a storage value without connecting to anything.

    Raises:
        StorageURLError: the value is empty or malformed, names an unsupported backend, or
            needs a database driver that is not installed. The message names the masked
            value and the fix.
    """
    value = storage.strip()
    if not value:
        raise StorageURLError(f"storage must not be empty: {_EXAMPLES}")

    if "://" not in value:
        return _parse_journal_path(value)

    scheme = value.split("://", 1)[0].lower()
    if scheme == "grpc":
        return _parse_grpc_url(value)
    if scheme == "postgres":
        fixed = "postgresql+psycopg://" + value.split("://", 1)[1]
        raise StorageURLError(
            f"invalid storage URL {mask_url(value)!r}: SQLAlchemy has no 'postgres' dialect; "
            f"write {mask_url(fixed)!r}"
        )
    return _parse_rdb_url(value)


def check_storage_exists(storage: str) -> None:
    """Raise StorageError when ``storage`` names a journal or SQLite file that does not exist.

    Commands that only read studies call this first: opening a missing file would
    create an empty one. Server URLs are not checked here; opening them reports a
    missing database.
    """
    location = parse_storage_url(storage)
    if location.kind not in ("journal", "sqlite") or not location.path:
        return
    if location.path == ":memory:" or os.path.exists(location.path):
        return
    raise StorageError(
        f"{location.describe()} does not exist; check --storage (or ${STORAGE_ENV_VAR}), "
        "or start a study there with archsweep run"
    )


def _parse_journal_path(value: str) -> StorageLocation:
    prefix = _SCHEME_PREFIX.match(value)
    if prefix is not None:
        scheme = prefix.group("scheme").lower()
        if scheme in _URL_LIKE_SCHEMES or "+" in scheme:
            raise StorageURLError(
                f"invalid storage URL {mask_url(value)!r}: a URL needs '://' after "
                f"'{prefix.group('scheme')}' and a journal file path must not start with a URL "
                f"scheme; {_EXAMPLES}"
            )

    path = os.path.expanduser(value)
    return StorageLocation(kind="journal", url=value, masked_url=value, path=path)


def _parse_grpc_url(value: str) -> StorageLocation:
    masked = mask_url(value)
    parts = urllib.parse.urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        not parts.hostname
        or port is None
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
    ):
        raise StorageURLError(
            f"invalid gRPC storage URL {masked!r}: expected grpc://HOST:PORT, "
            "for example grpc://127.0.0.1:13000"
        )

    if importlib.util.find_spec("grpc") is None:
        raise StorageURLError(
            f"storage URL {masked!r} needs the grpcio package, which is not installed; "
            "install grpcio and protobuf into this environment"
        )

    return StorageLocation(
        kind="grpc", url=value, masked_url=masked, host=parts.hostname, port=port
    )


def _parse_rdb_url(value: str) -> StorageLocation:
    # SQLAlchemy is imported here so that resolving a journal path stays cheap.
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    masked = mask_url(value)
    try:
        url = make_url(value)
    except sqlalchemy.exc.ArgumentError as error:
        raise StorageURLError(f"invalid storage URL {masked!r} ({error}); {_EXAMPLES}") from None
    except ValueError:
        # SQLAlchemy 2.1 raises a bare ValueError for a port that is not a number. The
        # message below names the masked URL instead.
        raise StorageURLError(
            f"invalid storage URL {masked!r}: the port must be a number; {_EXAMPLES}"
        ) from None

    backend = url.get_backend_name()
    if backend not in RDB_BACKENDS:
        raise StorageURLError(
            f"unsupported storage URL {masked!r}: scheme '{url.drivername}' is not a database "
            f"that Optuna stores studies in; {_EXAMPLES}"
        )

    _check_driver(url, masked)

    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise StorageURLError(
                f"invalid storage URL {masked!r}: an in-memory SQLite database is not shared "
                "between processes; name a file, for example sqlite:///archsweep.db"
            )
        return StorageLocation(
            kind="sqlite", url=value, masked_url=masked, path=os.path.expanduser(url.database)
        )

    if not url.database:
        raise StorageURLError(
            f"invalid storage URL {masked!r}: name the database after the host, for example "
            f"{backend}+DRIVER://USER@HOST:PORT/DATABASE"
        )

    password = url.password or url.query.get("password")
    return StorageLocation(
        kind=backend,
        url=value,
        masked_url=masked,
        host=url.host,
        port=url.port,
        database=url.database,
        user=url.username,
        password=str(password) if password else None,
    )


def _check_driver(url: URL, masked: str) -> None:
    import sqlalchemy.exc

    try:
        dialect = url.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageURLError(
            f"unsupported storage URL {masked!r}: SQLAlchemy has no driver "
            f"'{url.get_driver_name()}' for {url.get_backend_name()}; {_EXAMPLES}"
        ) from None

    if getattr(dialect, "is_async", False):
        raise StorageURLError(
            f"unsupported storage URL {masked!r}: the asyncio driver "
            f"'{url.get_driver_name()}' does not work with Optuna; use a synchronous driver "
            "such as postgresql+psycopg://"
        )

    try:
        dialect.import_dbapi()
    except ImportError as error:
        hint = (
            "use postgresql+psycopg:// (psycopg 3 is an archsweep dependency)"
            if url.get_backend_name() == "postgresql"
            else "install it into this environment"
        )
        raise StorageURLError(
            f"storage URL {masked!r} needs the database driver "
            f"'{url.get_driver_name()}', which is not installed ({error.name or error}); {hint}"
        ) from None
