"""PostgreSQL for the tests: find a server that responds, or run a private throwaway cluster.

The tests never skip for want of PostgreSQL. They use the server named by
``$ARCHSWEEP_TEST_POSTGRES_URL`` (default: 127.0.0.1:5432, user postgres) when it responds,
else start a private cluster from the local server binaries (initdb, pg_ctl) in a temporary
directory on a free port, and fail with an install hint when there are no binaries either.

As root, PostgreSQL refuses to run, so the cluster belongs to ``$ARCHSWEEP_TEST_POSTGRES_OS_USER``
(default: the ``postgres`` system user, else ``nobody``) and its commands run as that user.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Self

import psycopg
from sqlalchemy.engine import make_url

__all__ = [
    "BIN_DIR_ENV",
    "DEFAULT_PROBE_URL",
    "PROBE_URL_ENV",
    "PostgresUnavailable",
    "PrivateCluster",
    "create_database",
    "drop_database",
    "find_bin_dir",
    "find_or_start_postgres",
    "server_responds",
]

_logger = logging.getLogger(__name__)

PROBE_URL_ENV = "ARCHSWEEP_TEST_POSTGRES_URL"
BIN_DIR_ENV = "ARCHSWEEP_TEST_POSTGRES_BIN"
OS_USER_ENV = "ARCHSWEEP_TEST_POSTGRES_OS_USER"
DEFAULT_PROBE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`; "
    "Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`), "
    f"or set {PROBE_URL_ENV} to a server that responds, "
    f"or set {BIN_DIR_ENV} to the directory that holds initdb and pg_ctl"
)

# Seconds to wait for a server to respond to a probe, and for pg_ctl to start or stop one.
PROBE_TIMEOUT_S = 2
PG_CTL_TIMEOUT_S = 60

_REQUIRED_BINARIES = ("initdb", "pg_ctl")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server responds and none can be started here."""


def find_bin_dir() -> Path:
    """Return the directory holding initdb and pg_ctl.

    ``$ARCHSWEEP_TEST_POSTGRES_BIN`` replaces the search when set. Otherwise the search covers
    ``pg_config --bindir``, Debian's /usr/lib/postgresql/VERSION/bin (newest first), the
    source-build prefix /usr/local/pgsql/bin and the PATH.

    Raises:
        PostgresUnavailable: no directory has both binaries. The message names what to install.
    """
    override = os.environ.get(BIN_DIR_ENV)
    candidates = [override] if override else _candidate_bin_dirs()
    for candidate in candidates:
        if all(os.access(os.path.join(candidate, name), os.X_OK) for name in _REQUIRED_BINARIES):
            return Path(candidate)

    searched = ", ".join(candidates) or "nothing"
    raise PostgresUnavailable(
        f"no PostgreSQL server responds at {_probe_url_for_messages()} and the PostgreSQL "
        f"server binaries ({', '.join(_REQUIRED_BINARIES)}) were not found (searched: "
        f"{searched}); {INSTALL_HINT}"
    )


def _candidate_bin_dirs() -> list[str]:
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            candidates.append(
                subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
                ).stdout.strip()
            )

    def version_key(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True))
    candidates.append("/usr/local/pgsql/bin")
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    return list(dict.fromkeys(path for path in candidates if path))


def _probe_url_for_messages() -> str:
    probe = os.environ.get(PROBE_URL_ENV) or DEFAULT_PROBE_URL
    return make_url(probe).render_as_string(hide_password=True)


def _conninfo(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    conninfo: dict[str, Any] = {
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 5432,
        "user": parsed.username or "postgres",
        "dbname": parsed.database or "postgres",
        "connect_timeout": PROBE_TIMEOUT_S,
    }
    if parsed.password:
        conninfo["password"] = parsed.password
    return conninfo


def normalize_url(url: str) -> str:
    """Return ``url`` with the psycopg 3 driver, the one archsweep uses."""
    parsed = make_url(url).set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def server_responds(url: str) -> bool:
    """Tell whether a PostgreSQL server accepts a login at ``url`` within a few seconds."""
    try:
        with psycopg.connect(**_conninfo(url)) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def create_database(admin_url: str, name: str) -> str:
    """Create database ``name`` through ``admin_url`` and return its URL."""
    with psycopg.connect(**_conninfo(admin_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, closing the sessions still connected to it."""
    with psycopg.connect(**_conninfo(admin_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def unique_database_name(prefix: str = "archsweep_test") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def find_or_start_postgres() -> tuple[str, PrivateCluster | None]:
    """Return the URL of a PostgreSQL superuser login, and the cluster started for it if any.

    Raises:
        PostgresUnavailable: no server responds and there are no binaries to start one.
    """
    probe = os.environ.get(PROBE_URL_ENV) or DEFAULT_PROBE_URL
    if server_responds(probe):
        _logger.info("Using the PostgreSQL server at %s", _probe_url_for_messages())
        return normalize_url(probe), None

    _logger.info(
        "No PostgreSQL server responds at %s; starting a private cluster",
        _probe_url_for_messages(),
    )
    cluster = PrivateCluster()
    cluster.start()
    return cluster.url(), cluster


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1, owned by this test run.

    ``start()`` runs initdb the first time. ``stop()``, ``start()`` and ``restart()`` keep the
    data and the port, so a test can take the server away under running clients.
    ``cleanup()`` stops it and deletes its directory. With ``password`` set, TCP logins need
    it (scram-sha-256); without, any login is trusted.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        port: int | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.password = password
        self.port = port
        self._bin_dir = bin_dir or find_bin_dir()
        self._base_dir: Path | None = None
        self._deleted = False
        self.running = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"PrivateCluster(port={self.port}, running={self.running}, dir={self._base_dir})"

    @property
    def data_dir(self) -> Path:
        if self._base_dir is None:
            raise RuntimeError("the cluster has no data directory before start()")
        return self._base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "server.log"

    def url(self, database: str = "postgres") -> str:
        """Return the ``postgresql+psycopg://`` URL of ``database`` on this cluster."""
        credentials = self.user
        if self.password is not None:
            credentials += ":" + urllib.parse.quote(self.password, safe="")
        return f"postgresql+psycopg://{credentials}@{self.host}:{self.port}/{database}"

    def start(self) -> None:
        """Start the server, creating the cluster on the first call."""
        if self._deleted:
            raise RuntimeError(f"{self!r} was deleted by cleanup() and cannot start again")
        if self.running:
            return
        if self._base_dir is None:
            self._init_cluster()

        # A port picked at random can be taken before the server binds it; try a few.
        attempts = 1 if self.port is not None else 3
        for attempt in range(attempts):
            port = self.port if self.port is not None else _free_port()
            try:
                self._pg_ctl("start", "-l", str(self.log_file), "-o", self._server_options(port))
            except PostgresUnavailable:
                if attempt == attempts - 1:
                    raise
                continue
            self.port = port
            self.running = True
            return

    def stop(self) -> None:
        """Stop the server (fast mode: open sessions are ended, data is kept)."""
        if not self.running:
            return
        self._pg_ctl("stop", "-m", "fast")
        self.running = False

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop the server, keep it down for ``down_seconds``, and start it on the same port."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def cleanup(self) -> None:
        """Stop the server and delete the cluster's directory."""
        try:
            self.stop()
        finally:
            self._deleted = True
            if self._base_dir is not None:
                shutil.rmtree(self._base_dir, ignore_errors=True)
                self._base_dir = None

    def _init_cluster(self) -> None:
        base_dir = Path(tempfile.mkdtemp(prefix="archsweep-pg-"))
        self._base_dir = base_dir
        owner = _cluster_owner()
        if owner is not None:
            os.chown(base_dir, owner.pw_uid, owner.pw_gid)

        arguments = [
            "-D", str(self.data_dir),
            "-U", self.user,
            "-E", "UTF8",
            "--no-locale",
            "--no-sync",  # throwaway data: skip the fsync calls to save seconds
            "--auth-local=trust",
            f"--auth-host={'scram-sha-256' if self.password is not None else 'trust'}",
        ]  # fmt: skip
        if self.password is not None:
            password_file = base_dir / "password"
            password_file.write_text(self.password + "\n")
            if owner is not None:
                os.chown(password_file, owner.pw_uid, owner.pw_gid)
            arguments.append(f"--pwfile={password_file}")

        try:
            self._run("initdb", *arguments)
        finally:
            if self.password is not None:
                (base_dir / "password").unlink(missing_ok=True)

    def _server_options(self, port: int) -> str:
        # -F turns fsync off: the data is thrown away, and a clean stop still writes it all.
        return f"-p {port} -h {self.host} -k {self.data_dir.parent} -F"

    def _pg_ctl(self, action: str, *arguments: str) -> None:
        self._run(
            "pg_ctl", action, "-D", str(self.data_dir), "-w", "-t", str(PG_CTL_TIMEOUT_S),
            *arguments,
        )  # fmt: skip

    def _run(self, program: str, *arguments: str) -> None:
        command = [str(self._bin_dir / program), *arguments]
        owner = _cluster_owner()
        options: dict[str, Any] = {}
        if owner is not None:
            options = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        if owner is not None:
            environment["HOME"] = owner.pw_dir

        result = subprocess.run(
            command,
            check=False,  # the return code is checked below, to add the server log
            cwd=self.data_dir.parent,
            env=environment,
            capture_output=True,
            text=True,
            timeout=PG_CTL_TIMEOUT_S + 30,
            **options,
        )
        if result.returncode != 0:
            log_tail = ""
            if self._base_dir is not None and self.log_file.exists():
                log_tail = " | server log: " + " ".join(self.log_file.read_text().splitlines()[-5:])
            raise PostgresUnavailable(
                f"{program} {' '.join(arguments[:1])} failed with exit code {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}{log_tail}"
            )


def _cluster_owner() -> pwd.struct_passwd | None:
    """Return the system user the cluster runs as when this process is root, else None."""
    if os.geteuid() != 0:
        return None

    requested = os.environ.get(OS_USER_ENV)
    names = [requested] if requested else ["postgres", "nobody"]
    for name in names:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(
        f"PostgreSQL does not run as root and none of the users {', '.join(names)} exists; "
        f"create a system user and name it in {OS_USER_ENV}"
    )
