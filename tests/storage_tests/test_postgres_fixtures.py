"""The PostgreSQL test fixtures: the private-cluster fallback and the missing-binaries failure."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from tests._postgres import (
    BIN_DIR_ENV,
    PROBE_URL_ENV,
    PostgresUnavailable,
    find_or_start_postgres,
    server_responds,
)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_find_or_start_postgres_starts_private_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = _closed_port()
    monkeypatch.setenv(PROBE_URL_ENV, f"postgresql+psycopg://postgres@127.0.0.1:{closed}/postgres")

    url, cluster = find_or_start_postgres()
    try:
        assert cluster is not None
        assert cluster.port != closed
        assert url == cluster.url()
        assert server_responds(url)
        with psycopg.connect(
            host="127.0.0.1", port=cluster.port, user="postgres", dbname="postgres"
        ) as connection:
            data_directory = connection.execute("SHOW data_directory").fetchone()
        assert data_directory is not None
        assert Path(data_directory[0]) == cluster.data_dir
    finally:
        if cluster is not None:
            cluster.cleanup()

    assert not server_responds(url)


def test_find_or_start_postgres_reuses_server(
    monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    monkeypatch.setenv(PROBE_URL_ENV, postgres_url)

    url, cluster = find_or_start_postgres()

    assert cluster is None
    assert url == postgres_url


def test_find_or_start_postgres_without_binaries_names_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    closed = _closed_port()
    monkeypatch.setenv(PROBE_URL_ENV, f"postgresql+psycopg://postgres@127.0.0.1:{closed}/postgres")
    monkeypatch.setenv(BIN_DIR_ENV, str(tmp_path))

    with pytest.raises(PostgresUnavailable) as raised:
        find_or_start_postgres()

    message = str(raised.value)
    assert f"127.0.0.1:{closed}" in message
    assert "PostgreSQL server binaries" in message
    assert "apt-get install postgresql" in message
    assert str(tmp_path) in message


def test_private_cluster_restart_keeps_data_and_port(postgres_cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = postgres_cluster_factory(password="cluster-pw")
    port = cluster.port
    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", password="cluster-pw", dbname="postgres",
        autocommit=True,
    ) as connection:  # fmt: skip
        connection.execute("CREATE TABLE kept (value INTEGER)")
        connection.execute("INSERT INTO kept VALUES (42)")

    cluster.restart(down_seconds=0.2)

    assert cluster.port == port
    assert not server_responds(cluster.url().replace("cluster-pw", "wrong-pw"))
    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", password="cluster-pw", dbname="postgres"
    ) as connection:
        assert connection.execute("SELECT value FROM kept").fetchone() == (42,)
