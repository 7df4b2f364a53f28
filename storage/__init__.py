"""Optuna storages for archsweep: the ``--storage`` convention, PostgreSQL hardening, gRPC proxy.

``--storage`` takes an SQLAlchemy URL (``sqlite:///file.db``,
``postgresql+psycopg://user@host:5432/db``), ``grpc://host:port`` for an Optuna gRPC storage
proxy, or the path of an Optuna journal file. URLs are shown with the password masked.
"""

from __future__ import annotations

from storage._errors import StorageError, StorageURLError
from storage._grpc import DEFAULT_GRPC_PORT, GRPC_PROXY_THREADS, serve_grpc_proxy
from storage._open import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_GRACE_PERIOD_FACTOR,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    MAX_OVERFLOW,
    POOL_SIZE,
    close_storage,
    create_studies,
    ensure_storage_ready,
    open_storage,
)
from storage._rdb import MAX_TRANSIENT_RETRIES, RetryingRDBStorage
from storage._url import (
    DEFAULT_JOURNAL_FILE,
    STORAGE_ENV_VAR,
    StorageLocation,
    check_storage_exists,
    mask_url,
    parse_storage_url,
    resolve_storage_url,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_GRACE_PERIOD_FACTOR",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HEARTBEAT_INTERVAL_S",
    "DEFAULT_JOURNAL_FILE",
    "GRPC_PROXY_THREADS",
    "MAX_OVERFLOW",
    "MAX_TRANSIENT_RETRIES",
    "POOL_SIZE",
    "STORAGE_ENV_VAR",
    "RetryingRDBStorage",
    "StorageError",
    "StorageLocation",
    "StorageURLError",
    "check_storage_exists",
    "close_storage",
    "create_studies",
    "ensure_storage_ready",
    "mask_url",
    "open_storage",
    "parse_storage_url",
    "resolve_storage_url",
    "serve_grpc_proxy",
]
