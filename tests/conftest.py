"""Fixtures shared by every test package: PostgreSQL servers and databases.

- ``postgres_url`` (session): URL of a PostgreSQL superuser login on the server at
  ``$ARCHSWEEP_TEST_POSTGRES_URL`` (default 127.0.0.1:5432) or, when none responds, on a
  private cluster started for this run. Fails, never skips, when neither is possible.
- ``postgres_database``: a fresh, uniquely named database for one test, dropped afterwards;
  yields its ``postgresql+psycopg://`` URL.
- ``postgres_cluster_factory``: starts private clusters a test may stop and restart; each is
  deleted after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests._postgres import (
    PostgresUnavailable,
    PrivateCluster,
    create_database,
    drop_database,
    find_or_start_postgres,
    unique_database_name,
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    try:
        url, cluster = find_or_start_postgres()
    except PostgresUnavailable as error:
        pytest.fail(str(error), pytrace=False)

    try:
        yield url
    finally:
        if cluster is not None:
            cluster.cleanup()


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    name = unique_database_name()
    url = create_database(postgres_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_url, name)


@pytest.fixture
def postgres_cluster_factory() -> Iterator[Callable[..., PrivateCluster]]:
    clusters: list[PrivateCluster] = []

    def start_cluster(*, password: str | None = None) -> PrivateCluster:
        try:
            cluster = PrivateCluster(password=password)
            clusters.append(cluster)
            cluster.start()
        except PostgresUnavailable as error:
            pytest.fail(str(error), pytrace=False)
        return cluster

    try:
        yield start_cluster
    finally:
        for cluster in clusters:
            cluster.cleanup()
