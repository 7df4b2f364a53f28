"""The gRPC storage proxy between workers and PostgreSQL, on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import GrpcStorageProxy
from optuna.trial import TrialState

from storage import StorageError, StorageURLError, close_storage, open_storage, serve_grpc_proxy

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

# Seconds for the proxy process to import Optuna and bind its port on 2 busy cores.
PROXY_START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_grpc_proxy_round_trip(postgres_database: str, tmp_path: Path) -> None:
    port = _free_port()
    log_path = tmp_path / "proxy.log"
    code = (
        "import logging, sys; from storage import serve_grpc_proxy; "
        "logging.basicConfig(level=logging.INFO); "
        f"serve_grpc_proxy(sys.argv[1], host='127.0.0.1', port={port}, max_workers=2)"
    )
    with log_path.open("wb") as log:
        proxy = subprocess.Popen(
            [sys.executable, "-c", code, postgres_database],
            cwd=REPOSITORY_ROOT,
            env=dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT)),
            stdout=log,
            stderr=log,
        )
    try:
        client = open_storage(f"grpc://127.0.0.1:{port}", connect_timeout=PROXY_START_TIMEOUT_S)
        assert isinstance(client, GrpcStorageProxy)

        study = optuna.create_study(study_name="proxy/transformer", storage=client)
        study.set_user_attr("group", "proxy")
        study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=3)
        close_storage(client)
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)

    direct = open_storage(postgres_database)
    loaded = optuna.load_study(study_name="proxy/transformer", storage=direct)
    assert [trial.state for trial in loaded.get_trials()] == [TrialState.COMPLETE] * 3
    assert loaded.user_attrs == {"group": "proxy"}
    assert f"gRPC storage proxy on 127.0.0.1:{port}" in log_path.read_text()
    close_storage(direct)


def test_grpc_client_without_proxy_fails_fast() -> None:
    port = _free_port()

    started = time.monotonic()
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        open_storage(f"grpc://127.0.0.1:{port}", connect_timeout=1)

    assert time.monotonic() - started < 5


def test_serve_grpc_proxy_rejects_journal(tmp_path: Path) -> None:
    with pytest.raises(StorageURLError, match="database storages only"):
        serve_grpc_proxy(str(tmp_path / "a.journal"), port=_free_port())


def test_serve_grpc_proxy_reports_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
            serve_grpc_proxy(f"sqlite:///{tmp_path / 'a.db'}", port=port)
