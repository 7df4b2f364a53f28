"""The --storage convention: resolution, validation and password masking."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage import (
    DEFAULT_JOURNAL_FILE,
    STORAGE_ENV_VAR,
    StorageError,
    StorageURLError,
    mask_url,
    open_storage,
    parse_storage_url,
    resolve_storage_url,
)

PASSWORD = "hunter2-Secret"


def test_resolve_storage_url_prefers_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORAGE_ENV_VAR, "sqlite:///from-env.db")

    assert resolve_storage_url("given.journal") == "given.journal"


def test_resolve_storage_url_falls_back_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORAGE_ENV_VAR, "sqlite:///from-env.db")

    assert resolve_storage_url(None) == "sqlite:///from-env.db"
    assert resolve_storage_url("  ") == "sqlite:///from-env.db"


def test_resolve_storage_url_defaults_to_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORAGE_ENV_VAR, raising=False)

    assert resolve_storage_url(None) == DEFAULT_JOURNAL_FILE == "archsweep.journal"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("runs/archsweep.journal", "journal"),
        ("archsweep.journal", "journal"),
        ("C:/runs/archsweep.journal", "journal"),
        ("sqlite:///archsweep.db", "sqlite"),
        ("postgresql+psycopg://user@db.example:5432/archsweep", "postgresql"),
        # SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql:// URL.
        ("postgresql://user@db.example:5432/archsweep", "postgresql"),
        ("grpc://127.0.0.1:13000", "grpc"),
    ],
)
def test_parse_storage_url_accepts(value: str, kind: str) -> None:
    assert parse_storage_url(value).kind == kind


def test_parse_storage_url_splits_postgres_parts() -> None:
    location = parse_storage_url(f"postgresql+psycopg://sweeper:{PASSWORD}@db.example:6543/runs")

    assert location.host == "db.example"
    assert location.port == 6543
    assert location.database == "runs"
    assert location.user == "sweeper"
    assert PASSWORD not in repr(location)
    assert PASSWORD not in location.describe()


@pytest.mark.parametrize(
    ("value", "expected_in_message"),
    [
        ("", "must not be empty"),
        ("postgres:/x", "needs '://'"),
        ("sqlite:archsweep.db", "needs '://'"),
        ("postgresql+psycopg:/db", "needs '://'"),
        ("http://example.com/studies", "scheme 'http'"),
        ("redis://127.0.0.1:6379/0", "scheme 'redis'"),
        (f"postgres://user:{PASSWORD}@h:5432/db", "postgresql+psycopg://"),
        (f"mysql://user:{PASSWORD}@h:3306/db", "not installed"),
        ("postgresql+asyncpg://user@h/db", "asyncio"),
        ("postgresql+nosuchdriver://user@h/db", "no driver"),
        ("sqlite://", "in-memory"),
        (f"postgresql+psycopg://user:{PASSWORD}@h:5432", "name the database"),
        ("grpc://127.0.0.1", "grpc://HOST:PORT"),
        ("grpc://127.0.0.1:notaport", "grpc://HOST:PORT"),
        (f"postgresql+psycopg://user:{PASSWORD}@h:notaport/db", "port must be a number"),
    ],
)
def test_parse_storage_url_rejects(value: str, expected_in_message: str) -> None:
    with pytest.raises(StorageURLError) as raised:
        parse_storage_url(value)

    message = str(raised.value)
    assert expected_in_message in message
    assert PASSWORD not in message
    assert "\n" not in message
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, StorageError)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            f"postgresql+psycopg://user:{PASSWORD}@h:5432/db",
            "postgresql+psycopg://user:***@h:5432/db",
        ),
        ("postgresql+psycopg://user@h:5432/db", "postgresql+psycopg://user@h:5432/db"),
        ("postgresql+psycopg://user:p@ss@h/db", "postgresql+psycopg://user:***@h/db"),
        (
            f"postgresql+psycopg://user@h/db?sslmode=require&password={PASSWORD}",
            "postgresql+psycopg://user@h/db?sslmode=require&password=***",
        ),
        ("sqlite:///runs/a.db", "sqlite:///runs/a.db"),
        ("runs/archsweep.journal", "runs/archsweep.journal"),
    ],
)
def test_mask_url_hides_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_open_storage_rejects_sqlite_file_as_journal(tmp_path: Path) -> None:
    database = tmp_path / "studies.db"
    sqlite3.connect(database).execute("CREATE TABLE t (x INTEGER)").connection.close()

    with pytest.raises(StorageURLError, match=r"sqlite:///"):
        open_storage(str(database))


def test_open_storage_rejects_directory_as_journal(tmp_path: Path) -> None:
    with pytest.raises(StorageURLError, match="is a directory"):
        open_storage(str(tmp_path))


def test_open_storage_rejects_missing_journal_directory(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "archsweep.journal"

    with pytest.raises(StorageError, match="does not exist"):
        open_storage(str(missing))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"heartbeat_interval": -1}, "heartbeat_interval"),
        ({"heartbeat_interval": 5, "grace_period": 5}, "grace_period"),
        ({"heartbeat_interval": 0, "grace_period": 5}, "grace_period"),
        ({"failed_trial_max_retry": -1}, "failed_trial_max_retry"),
        ({"pool_size": 0}, "pool_size"),
        ({"max_overflow": -1}, "max_overflow"),
        ({"connect_timeout": 0}, "connect_timeout"),
    ],
)
def test_open_storage_rejects_bad_options(
    tmp_path: Path, options: dict[str, int], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        open_storage(str(tmp_path / "a.journal"), **options)  # type: ignore[arg-type]
