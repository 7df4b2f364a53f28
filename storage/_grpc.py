"""Optuna's gRPC storage proxy between many workers and one database.

Workers open ``grpc://HOST:PORT`` and the proxy keeps the only database connections, so a
run with hundreds of workers needs ``max_workers`` connections instead of hundreds.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor

from optuna.exceptions import ExperimentalWarning
from optuna.storages import get_storage, run_grpc_proxy_server

from storage._errors import StorageError, StorageURLError
from storage._open import DEFAULT_CONNECT_TIMEOUT_S, close_storage, open_storage
from storage._url import parse_storage_url, resolve_storage_url

__all__ = ["DEFAULT_GRPC_PORT", "GRPC_PROXY_THREADS", "serve_grpc_proxy"]

_logger = logging.getLogger(__name__)

# Optuna's own defaults for run_grpc_proxy_server.
DEFAULT_GRPC_PORT = 13000
GRPC_PROXY_THREADS = 10


def serve_grpc_proxy(
    storage: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_GRPC_PORT,
    *,
    max_workers: int = GRPC_PROXY_THREADS,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> None:
    """Serve an RDB storage to ``grpc://HOST:PORT`` clients until the process is stopped.

    Each of the ``max_workers`` server threads uses one pooled database connection. Bind to
    127.0.0.1 unless the workers run on other machines: the proxy has no authentication.

    NOTE: Optuna 5.1's gRPC client has no heartbeat, so behind the proxy the trial of a worker
    that dies stays RUNNING instead of being failed and retried.

    Raises:
        StorageURLError: the storage is a journal file or another proxy (Optuna proxies RDB
            storages only).
        StorageError: the database cannot be opened or the address cannot be bound.
    """
    location = parse_storage_url(resolve_storage_url(storage))
    if location.kind in ("journal", "grpc"):
        raise StorageURLError(
            f"the gRPC storage proxy serves database storages only, got {location.kind} "
            f"storage {location.masked_url!r}; use a sqlite:/// or postgresql+psycopg:// URL"
        )
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")

    backend = open_storage(
        location.url,
        heartbeat_interval=0,
        pool_size=max_workers,
        max_overflow=0,
        connect_timeout=connect_timeout,
    )
    try:
        _logger.info(
            "Serving storage %s through the gRPC storage proxy on %s:%d",
            location.masked_url,
            host,
            port,
        )
        with warnings.catch_warnings():
            # The proxy is experimental in Optuna 5.1; archsweep uses it on purpose.
            warnings.simplefilter("ignore", ExperimentalWarning)
            # Optuna recommends its caching wrapper in front of an RDB storage here.
            run_grpc_proxy_server(
                get_storage(backend),
                host=host,
                port=port,
                thread_pool=ThreadPoolExecutor(max_workers=max_workers),
            )
    except RuntimeError as error:
        if "bind" not in str(error).lower():
            raise
        raise StorageError(
            f"cannot serve the gRPC storage proxy on {host}:{port}: the address is in use or "
            "not available here; choose another port or host"
        ) from None
    finally:
        close_storage(backend)
        _logger.info("Stopped the gRPC storage proxy on %s:%d", host, port)
