"""Offline checks of docker-compose.yml, .env.example, the image files and the entry scripts.

No Docker engine is needed. `find_compose_problems` checks a parsed compose mapping, and the
tests run it on the real file and on mutated copies of it, so each check is shown to fail
where it should. `docker-compose config` (Debian's docker-compose 1.29, or the Compose v2
plugin) validates the file against the Compose schema without an engine.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
RAY_WORKER_SCRIPT = REPO_ROOT / "docker" / "ray-worker.sh"
RAY_JOIN_SCRIPT = REPO_ROOT / "docker" / "ray-join.sh"

COMPOSE_INSTALL_HINT = (
    "docker-compose is not installed: run `apt-get update && apt-get install -y docker-compose` "
    "(Debian's docker-compose 1.29 validates the file without a Docker engine)"
)

# Services that run archsweep code and therefore must open the same Optuna storage.
ARCHSWEEP_SERVICES = ("ray-head", "ray-worker", "dashboard", "sweep")
STORAGE_ENV_VAR = "ARCHSWEEP_STORAGE"
GPU_LOCK_DIR_ENV_VAR = "ARCHSWEEP_GPU_LOCK_DIR"
RAY_DEFAULT_PORT = 6379  # Redis's port too, so the head must not use it

# Hosts that address the container itself rather than another service.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0"})
LOOPBACK_BIND_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})

# Compose interpolation (https://docs.docker.com/reference/compose-file/interpolation/):
# $$ is a literal dollar sign, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error},
# ${NAME?error}, ${NAME:+replacement}, ${NAME+replacement} and $NAME.
INTERPOLATION_PATTERN = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)

# host:port after a URL scheme (with optional credentials) or after a Ray address option.
URL_HOST_PATTERN = re.compile(r"://(?:[^@/\s]*@)?(?P<host>[A-Za-z0-9_.-]+):(?P<port>\d+)")
ADDRESS_OPTION_PATTERN = re.compile(
    r"--(?:ray-)?address[= ](?P<host>[A-Za-z0-9_.-]+):(?P<port>\d+)"
)
HOST_PORT_VALUE_PATTERN = re.compile(r"(?P<host>[A-Za-z][A-Za-z0-9_.-]*):(?P<port>\d+)")


# --- reading the files ---------------------------------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """Parse a compose file. The YAML loader resolves anchors and merge keys."""
    with path.open(encoding="utf-8") as stream:
        compose = yaml.safe_load(stream)
    if not isinstance(compose, dict):
        raise TypeError(f"{path} does not contain a YAML mapping")
    return compose


def parse_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines as Docker Compose reads an .env file, skipping comments."""
    variables: dict[str, str] = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue

        name, separator, value = stripped.partition("=")
        if not separator:
            raise ValueError(f"{path}:{line_number}: expected KEY=VALUE, got {line!r}")
        variables[name.strip()] = value.strip().strip("'\"")
    return variables


# --- interpolation ---------------------------------------------------------------------------


def _walk_strings(node: Any, location: str) -> Iterator[tuple[str, str]]:
    """Yield (location, string) for every string value below node. Compose never interpolates keys."""
    if isinstance(node, str):
        yield location, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _walk_strings(value, f"{location}.{key}" if location else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk_strings(value, f"{location}[{index}]")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Substitute variables in one string as Compose does. A missing required variable becomes ""."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"

        name = match.group("braced") or match.group("bare")
        operator = match.group("operator") or ""
        argument = match.group("argument") or ""
        value = env.get(name)
        if operator == ":-":
            return value if value else argument
        if operator == "-":
            return value if value is not None else argument
        if operator == ":+":
            return argument if value else ""
        if operator == "+":
            return argument if value is not None else ""
        return value or ""

    return INTERPOLATION_PATTERN.sub(substitute, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    return node


def referenced_variables(compose: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Map each variable the file interpolates to (first location, whether it has a default)."""
    references: dict[str, tuple[str, bool]] = {}
    for location, text in _walk_strings(compose, ""):
        for match in INTERPOLATION_PATTERN.finditer(text):
            if match.group("escaped"):
                continue

            name = match.group("braced") or match.group("bare")
            # ${NAME:-x} and ${NAME-x} fall back to x; ${NAME:+x} and ${NAME+x} are empty when
            # NAME is unset. ${NAME}, $NAME, ${NAME:?e} and ${NAME?e} need NAME to be set.
            has_default = (match.group("operator") or "").lstrip(":") in ("-", "+")
            first_location, had_default = references.get(name, (location, True))
            references[name] = (first_location, had_default and has_default)
    return references


# --- helpers over one service -----------------------------------------------------------------


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose.get("services") or {}
    return {name: service or {} for name, service in services.items()}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, dict):
        return {key: "" if value is None else str(value) for key, value in environment.items()}
    pairs = (entry.partition("=") for entry in environment)
    return {key: value for key, _, value in pairs}


def _command_words(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(word) for word in value]


def _option_value(words: list[str], option: str) -> str | None:
    """Return the value of --option VALUE or --option=VALUE in a command, or None."""
    for index, word in enumerate(words):
        if word == option and index + 1 < len(words):
            return words[index + 1]
        if word.startswith(option + "="):
            return word[len(option) + 1 :]
    return None


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: {} for name in depends_on}
    return {name: condition or {} for name, condition in depends_on.items()}


def _published_ports(service: dict[str, Any]) -> Iterator[tuple[str | None, str]]:
    """Yield (host address or None for all interfaces, port text) for each published port."""
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                yield entry.get("host_ip") or None, str(entry)
            continue

        text = str(entry).split("/", 1)[0]
        if text.startswith("["):  # [::1]:8080:8080
            yield text[1:].partition("]")[0], str(entry)
            continue

        # HOST_IP:HOST:CONTAINER binds HOST_IP. HOST:CONTAINER and a lone CONTAINER port
        # (Docker then picks a free host port) bind all interfaces.
        parts = text.split(":")
        yield (parts[0] or None) if len(parts) == 3 else None, str(entry)


def _volume_mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """Yield (type, source, target) for each mount, with type "volume", "bind" or "anonymous"."""
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mount_type = entry.get("type", "volume")
            source = str(entry.get("source") or "")
            target = str(entry.get("target") or "")
            if mount_type == "volume" and not source:
                mount_type = "anonymous"
            yield mount_type, source, target
            continue

        parts = str(entry).split(":")
        if len(parts) == 1:
            yield "anonymous", "", parts[0]
            continue

        source, target = parts[0], parts[1]
        is_path = source.startswith(("/", ".", "~")) or not source
        yield ("bind" if is_path else "volume"), source, target


# --- the checks --------------------------------------------------------------------------------


def _check_variables(compose: dict[str, Any], env: dict[str, str]) -> list[str]:
    problems = []
    for name, (location, has_default) in sorted(referenced_variables(compose).items()):
        if not has_default and name not in env:
            problems.append(
                f"variable {name} (at {location}) has no default and is not defined in "
                f".env.example: add it there or write ${{{name}:-default}}"
            )
    return problems


def _check_volumes(compose: dict[str, Any]) -> list[str]:
    declared = set((compose.get("volumes") or {}).keys())
    problems = []
    for service_name, service in _services(compose).items():
        for mount_type, source, target in _volume_mounts(service):
            if mount_type == "bind" and not source:
                problems.append(f"service {service_name} mounts an empty source at {target}")
            if mount_type == "volume" and source not in declared:
                problems.append(
                    f"service {service_name} mounts named volume {source!r}, which the "
                    f"top-level volumes section does not declare"
                )
    return problems


def _check_images(compose: dict[str, Any], project_dir: Path) -> list[str]:
    problems = []
    for service_name, service in _services(compose).items():
        build = service.get("build")
        if build is None:
            if not service.get("image"):
                problems.append(f"service {service_name} has neither an image nor a build")
            continue

        if isinstance(build, str):
            build = {"context": build}
        context = project_dir / str(build.get("context", "."))
        dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
        if not context.is_dir():
            problems.append(f"service {service_name}: build context {context} does not exist")
        elif not dockerfile.is_file():
            problems.append(f"service {service_name}: Dockerfile {dockerfile} does not exist")
    return problems


def _storage_url(service: dict[str, Any]) -> str | None:
    """Return the storage URL a service's archsweep command uses: --storage, else the env var."""
    for key in ("entrypoint", "command"):
        value = _option_value(_command_words(service.get(key)), "--storage")
        if value is not None:
            return value
    return _environment(service).get(STORAGE_ENV_VAR)


def _check_storage(compose: dict[str, Any]) -> list[str]:
    services = _services(compose)
    problems = []

    urls: dict[str, str] = {}
    for service_name in ARCHSWEEP_SERVICES:
        if service_name not in services:
            problems.append(f"service {service_name} is missing")
            continue
        url = _storage_url(services[service_name])
        if not url:
            problems.append(
                f"service {service_name} sets no storage URL: set {STORAGE_ENV_VAR} in its "
                f"environment"
            )
            continue
        urls[service_name] = url

    if len(set(urls.values())) > 1:
        listing = ", ".join(f"{name}={url}" for name, url in sorted(urls.items()))
        problems.append(f"services use different storage URLs: {listing}")

    for service_name, service in services.items():
        for key in ("entrypoint", "command"):
            for word in _command_words(service.get(key)):
                if "://" in word and urlsplit(word).password:
                    problems.append(
                        f"service {service_name} has a URL with a password in its {key}, "
                        f"which `ps` shows to every user of the host: pass it in the environment"
                    )

    postgres = services.get("postgres")
    if postgres is None:
        problems.append("service postgres is missing")
        return problems

    postgres_env = _environment(postgres)
    password = postgres_env.get("POSTGRES_PASSWORD", "")
    if quote(password, safe="") != password:
        problems.append(
            "POSTGRES_PASSWORD contains characters that would need percent-encoding in the "
            "storage URL: use letters, digits, '-', '_', '.' and '~' only"
        )
    for service_name, url in sorted(urls.items()):
        parts = urlsplit(url)
        expected = (
            postgres_env.get("POSTGRES_USER", "postgres"),
            password,
            "/" + postgres_env.get("POSTGRES_DB", postgres_env.get("POSTGRES_USER", "postgres")),
        )
        if (parts.username, parts.password, parts.path) != expected:
            problems.append(
                f"service {service_name}: the user, password or database of storage URL {url} "
                f"differ from the postgres service's POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB"
            )
        if not parts.scheme.startswith("postgresql"):
            problems.append(f"service {service_name}: storage URL {url} is not a PostgreSQL URL")
    return problems


def _ray_head_port(compose: dict[str, Any]) -> int | None:
    head = _services(compose).get("ray-head", {})
    port = _option_value(_command_words(head.get("command")), "--port")
    return int(port) if port and port.isdigit() else None


def _check_hosts(compose: dict[str, Any]) -> list[str]:
    services = _services(compose)
    head_port = _ray_head_port(compose)
    problems = []

    for service_name, service in services.items():
        texts = list(_walk_strings(service.get("command"), "command"))
        texts += list(_walk_strings(service.get("entrypoint"), "entrypoint"))
        texts += list(_walk_strings(service.get("healthcheck"), "healthcheck"))
        addresses = [
            (location, match)
            for location, text in texts
            for pattern in (URL_HOST_PATTERN, ADDRESS_OPTION_PATTERN)
            for match in pattern.finditer(text)
        ]
        # Environment values are either a URL or, for an address, host:port as a whole value.
        for key, value in _environment(service).items():
            addresses += [(f"environment.{key}", m) for m in URL_HOST_PATTERN.finditer(value)]
            whole_value = HOST_PORT_VALUE_PATTERN.fullmatch(value)
            if whole_value:
                addresses.append((f"environment.{key}", whole_value))

        for location, match in addresses:
            host, port = match.group("host"), int(match.group("port"))
            if host in LOCAL_HOSTS:
                continue
            if host not in services:
                problems.append(
                    f"service {service_name} ({location}) addresses host {host!r}, which is not "
                    f"a service name"
                )
            elif host == "ray-head" and port != head_port:
                problems.append(
                    f"service {service_name} ({location}) addresses ray-head:{port}, but the Ray "
                    f"head listens on --port={head_port}"
                )

        for dependency in _depends_on(service):
            if dependency not in services:
                problems.append(f"service {service_name} depends on unknown service {dependency}")
    return problems


def _check_ray(compose: dict[str, Any]) -> list[str]:
    services = _services(compose)
    head = services.get("ray-head")
    if head is None:
        return ["service ray-head is missing"]

    problems = []
    words = _command_words(head.get("command"))
    head_port = _ray_head_port(compose)
    if "--head" not in words or "--block" not in words:
        problems.append("ray-head must run `ray start --head ... --block`")
    if head_port is None:
        problems.append("ray-head's command sets no --port=PORT")
    elif head_port == RAY_DEFAULT_PORT:
        problems.append(f"ray-head uses port {RAY_DEFAULT_PORT}, which Redis servers use too")
    if _option_value(words, "--include-dashboard") != "false" and not _option_value(
        words, "--dashboard-host"
    ):
        problems.append(
            "ray-head starts the Ray dashboard without --dashboard-host: turn it off with "
            "--include-dashboard=false or bind it explicitly"
        )
    healthcheck = " ".join(_command_words((head.get("healthcheck") or {}).get("test")))
    if head_port is not None and str(head_port) not in healthcheck:
        problems.append(f"ray-head's healthcheck does not probe its port {head_port}")
    return problems


def _check_ports(compose: dict[str, Any]) -> list[str]:
    problems = []
    for service_name, service in _services(compose).items():
        for address, entry in _published_ports(service):
            if address not in LOOPBACK_BIND_ADDRESSES:
                problems.append(
                    f"service {service_name} publishes port {entry} on all host interfaces: "
                    f"prefix it with 127.0.0.1:"
                )
    return problems


def _check_workers(compose: dict[str, Any]) -> list[str]:
    worker = _services(compose).get("ray-worker")
    if worker is None:
        return ["service ray-worker is missing"]

    problems = []
    if "container_name" in worker:
        problems.append("ray-worker sets container_name, so `--scale ray-worker=N` fails")
    if worker.get("ports"):
        problems.append("ray-worker publishes host ports, so `--scale ray-worker=N` fails")

    resources = (worker.get("deploy") or {}).get("resources") or {}
    devices = (resources.get("reservations") or {}).get("devices") or []
    has_gpu = any(
        device.get("driver") == "nvidia" and "gpu" in (device.get("capabilities") or [])
        for device in devices
    )
    if not has_gpu:
        problems.append(
            "ray-worker reserves no GPU: add deploy.resources.reservations.devices with "
            "driver nvidia and capabilities [gpu]"
        )

    # Replicas claim GPUs through lock files, which work only in a volume they all share.
    lock_dir = _environment(worker).get(GPU_LOCK_DIR_ENV_VAR)
    shared_targets = {
        target for mount_type, _, target in _volume_mounts(worker) if mount_type == "volume"
    }
    if lock_dir not in shared_targets:
        problems.append(
            f"ray-worker's {GPU_LOCK_DIR_ENV_VAR}={lock_dir!r} is not a named volume mount, so "
            f"replicas cannot see each other's GPU claims"
        )
    return problems


def _check_dependencies(compose: dict[str, Any]) -> list[str]:
    services = _services(compose)
    problems = []

    postgres = services.get("postgres", {})
    test = " ".join(_command_words((postgres.get("healthcheck") or {}).get("test")))
    if "pg_isready" not in test:
        problems.append("postgres has no healthcheck that runs pg_isready")

    for service_name in ARCHSWEEP_SERVICES:
        condition = _depends_on(services.get(service_name, {})).get("postgres")
        if condition is None or condition.get("condition") != "service_healthy":
            problems.append(
                f"service {service_name} must depend on postgres with condition: service_healthy"
            )
    return problems


def find_compose_problems(
    compose: dict[str, Any], env: dict[str, str], project_dir: Path = REPO_ROOT
) -> list[str]:
    """Return one sentence per problem found in a parsed compose file; [] when it passes.

    env contains the variables that the file is interpolated with (.env.example in these tests).
    """
    problems = _check_variables(compose, env)

    resolved = interpolate_tree(compose, env)
    for check in (
        _check_volumes,
        _check_storage,
        _check_hosts,
        _check_ray,
        _check_ports,
        _check_workers,
        _check_dependencies,
    ):
        problems += check(resolved)
    problems += _check_images(resolved, project_dir)
    return problems


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture
def env() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


def _problems_mentioning(problems: list[str], text: str) -> list[str]:
    return [problem for problem in problems if text in problem]


# --- the real files --------------------------------------------------------------------------


def test_compose_file_passes_checks(compose: dict[str, Any], env: dict[str, str]) -> None:
    assert find_compose_problems(compose, env) == []


def test_env_example_defines_only_used_variables(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    unused = set(env) - set(referenced_variables(compose))
    assert unused == set(), f".env.example defines variables the compose file never uses: {unused}"


def test_dockerignore_excludes_env_file() -> None:
    patterns = DOCKERIGNORE.read_text(encoding="utf-8").split()
    assert ".env" in patterns
    assert ".git" in patterns
    assert ".venv" in patterns


def test_compose_services_share_storage_url(compose: dict[str, Any], env: dict[str, str]) -> None:
    resolved = interpolate_tree(compose, env)
    services = _services(resolved)
    password = env["POSTGRES_PASSWORD"]
    expected = f"postgresql+psycopg://archsweep:{password}@postgres:5432/archsweep"
    for service_name in ARCHSWEEP_SERVICES:
        assert _storage_url(services[service_name]) == expected, service_name


def test_dashboard_publishes_port_8080_on_loopback(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    dashboard = _services(interpolate_tree(compose, env))["dashboard"]
    words = _command_words(dashboard["command"])

    assert words[:2] == ["archsweep", "dashboard"]
    assert _option_value(words, "--host") == "0.0.0.0"
    assert _option_value(words, "--port") == "8080"
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]


# --- each check fails where it should ------------------------------------------------------------


def test_compose_check_reports_undeclared_volume(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["ray-worker"]["volumes"].append("scratch-data:/scratch")

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "'scratch-data'")) == 1
    assert len(problems) == 1


def test_compose_check_accepts_declared_volume(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["ray-worker"]["volumes"].append("scratch-data:/scratch")
    mutated["volumes"]["scratch-data"] = None

    assert find_compose_problems(mutated, env) == []


def test_compose_check_reports_long_syntax_volume(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["dashboard"]["volumes"] = [
        {"type": "volume", "source": "dashboard-cache", "target": "/cache"}
    ]

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "'dashboard-cache'")) == 1


def test_compose_check_reports_undefined_variable(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["dashboard"]["environment"]["LOG_LEVEL"] = "${ARCHSWEEP_LOG_LEVEL}"
    mutated["services"]["ray-head"]["command"].append("--temp-dir=$RAY_TEMP_DIR")

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "ARCHSWEEP_LOG_LEVEL")) == 1
    assert len(_problems_mentioning(problems, "RAY_TEMP_DIR")) == 1
    assert len(problems) == 2


def test_compose_check_reports_required_variable(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["dashboard"]["environment"]["TOKEN"] = "${DASHBOARD_TOKEN:?set it}"

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "DASHBOARD_TOKEN")) == 1


def test_compose_check_reports_unset_password(compose: dict[str, Any], env: dict[str, str]) -> None:
    reduced_env = {name: value for name, value in env.items() if name != "POSTGRES_PASSWORD"}

    problems = find_compose_problems(compose, reduced_env)

    assert len(_problems_mentioning(problems, "variable POSTGRES_PASSWORD")) == 1


def test_compose_check_accepts_defaults_and_escapes(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    environment = mutated["services"]["dashboard"]["environment"]
    environment["LOG_LEVEL"] = "${ARCHSWEEP_LOG_LEVEL:-info}"
    environment["EXTRA"] = "${ARCHSWEEP_EXTRA-}"
    environment["LITERAL"] = "$${NOT_INTERPOLATED} $$ALSO_NOT"

    assert find_compose_problems(mutated, env) == []


def test_compose_check_reports_public_postgres_port(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    for ports in (["5432:5432"], ["0.0.0.0:5432:5432"], [{"target": 5432, "published": 5432}]):
        mutated = copy.deepcopy(compose)
        mutated["services"]["postgres"]["ports"] = ports

        problems = find_compose_problems(mutated, env)

        assert len(_problems_mentioning(problems, "service postgres publishes port")) == 1, ports


def test_compose_check_reports_mismatched_storage_url(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["dashboard"]["environment"][STORAGE_ENV_VAR] = "sqlite:///archsweep.db"

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "different storage URLs")) == 1


def test_compose_check_reports_password_on_command_line(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    dashboard = mutated["services"]["dashboard"]
    dashboard["command"] += ["--storage", dashboard["environment"][STORAGE_ENV_VAR]]

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "URL with a password in its command")) == 1


def test_compose_check_reports_unknown_host(compose: dict[str, Any], env: dict[str, str]) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["ray-worker"]["environment"]["ARCHSWEEP_RAY_HEAD"] = "ray-master:6380"

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "'ray-master'")) == 1


def test_compose_check_reports_unknown_storage_host(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    for service_name in ARCHSWEEP_SERVICES:
        environment = mutated["services"][service_name]["environment"]
        environment[STORAGE_ENV_VAR] = environment[STORAGE_ENV_VAR].replace("@postgres:", "@db:")

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "'db'")) == len(ARCHSWEEP_SERVICES)


def test_compose_check_reports_wrong_ray_port(compose: dict[str, Any], env: dict[str, str]) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["ray-worker"]["environment"]["ARCHSWEEP_RAY_HEAD"] = "ray-head:6379"

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "ray-head:6379")) == 1


def test_compose_check_reports_ray_head_on_redis_port(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    command = mutated["services"]["ray-head"]["command"]
    command[command.index("--port=6380")] = "--port=6379"

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "uses port 6379")) == 1


def test_compose_check_reports_missing_gpu_reservation(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    del mutated["services"]["ray-worker"]["deploy"]

    problems = find_compose_problems(mutated, env)

    assert problems == [_problems_mentioning(problems, "reserves no GPU")[0]]


def test_compose_check_reports_unscalable_worker(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["ray-worker"]["container_name"] = "archsweep-worker"
    mutated["services"]["ray-worker"]["ports"] = ["127.0.0.1:9000:9000"]

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "sets container_name")) == 1
    assert len(_problems_mentioning(problems, "publishes host ports")) == 1


def test_compose_check_reports_unshared_gpu_locks(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["ray-worker"]["volumes"] = [
        mount for mount in mutated["services"]["ray-worker"]["volumes"] if "gpu-locks" not in mount
    ]

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, GPU_LOCK_DIR_ENV_VAR)) == 1


def test_compose_check_reports_missing_build_files(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["sweep"]["build"] = {"context": "no-such-dir"}
    mutated["services"]["dashboard"]["build"] = {"context": ".", "dockerfile": "docker/Nope"}

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "no-such-dir does not exist")) == 1
    assert len(_problems_mentioning(problems, "Nope does not exist")) == 1


def test_compose_check_reports_unhealthy_dependency(
    compose: dict[str, Any], env: dict[str, str]
) -> None:
    mutated = copy.deepcopy(compose)
    mutated["services"]["dashboard"]["depends_on"] = ["postgres"]
    del mutated["services"]["postgres"]["healthcheck"]

    problems = find_compose_problems(mutated, env)

    assert len(_problems_mentioning(problems, "dashboard must depend on postgres")) == 1
    assert len(_problems_mentioning(problems, "pg_isready")) == 1


# --- docker-compose config ----------------------------------------------------------------------


def _compose_command() -> list[str]:
    """Return the command that runs Docker Compose, or fail with the install command."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        plugin = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if plugin.returncode == 0:
            return ["docker", "compose"]
    pytest.fail(COMPOSE_INSTALL_HINT)


def _run_compose_config(env_file: Path, home: Path, *arguments: str) -> subprocess.CompletedProcess:
    # A clean environment, so that variables of the calling shell cannot mask a missing one.
    command = [
        *_compose_command(),
        "--project-directory",
        str(REPO_ROOT),
        "--file",
        str(COMPOSE_FILE),
        "--env-file",
        str(env_file),
        "config",
        *arguments,
    ]
    clean_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}
    return subprocess.run(
        command, capture_output=True, text=True, env=clean_env, timeout=120, check=False
    )


def test_docker_compose_config_accepts_file(tmp_path: Path) -> None:
    result = _run_compose_config(ENV_EXAMPLE, tmp_path, "--quiet")

    assert result.returncode == 0, result.stderr


def test_docker_compose_config_output_passes_checks(tmp_path: Path) -> None:
    result = _run_compose_config(ENV_EXAMPLE, tmp_path)
    assert result.returncode == 0, result.stderr

    resolved = yaml.safe_load(result.stdout)

    assert sorted(_services(resolved)) == [
        "dashboard",
        "postgres",
        "ray-head",
        "ray-worker",
        "sweep",
    ]
    assert find_compose_problems(resolved, {}) == []


def test_docker_compose_config_requires_password(tmp_path: Path) -> None:
    env_file = tmp_path / "without-password.env"
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    env_file.write_text(
        "\n".join(line for line in lines if not line.startswith("POSTGRES_PASSWORD=")) + "\n",
        encoding="utf-8",
    )

    result = _run_compose_config(env_file, tmp_path, "--quiet")

    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# --- entry scripts --------------------------------------------------------------------------------

FAKE_GPU_UUIDS = (
    "GPU-00000000-0000-0000-0000-000000000000",
    "GPU-11111111-1111-1111-1111-111111111111",
    "GPU-22222222-2222-2222-2222-222222222222",
)
SCRIPT_START_TIMEOUT_S = 20.0


@pytest.fixture
def fake_tools(tmp_path: Path) -> Path:
    """A directory with stand-ins for nvidia-smi and ray, to put first on PATH.

    nvidia-smi lists the GPU UUIDs in $FAKE_GPU_UUIDS. ray writes CUDA_VISIBLE_DEVICES and its
    arguments to $FAKE_RAY_RECORD, then sleeps in place of `ray start --block`, keeping the
    descriptors (and so the GPU locks) it inherited.
    """
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(
        '#!/usr/bin/env bash\nprintf "%s\\n" $FAKE_GPU_UUIDS\n', encoding="utf-8"
    )
    (tools / "ray").write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n%s\\n" "${CUDA_VISIBLE_DEVICES-unset}" "$*" > "$FAKE_RAY_RECORD.tmp"\n'
        'mv "$FAKE_RAY_RECORD.tmp" "$FAKE_RAY_RECORD"\n'
        'if [[ "$*" == *--block* ]]; then exec sleep 60; fi\n',
        encoding="utf-8",
    )
    for tool in tools.iterdir():
        tool.chmod(0o755)
    return tools


class WorkerReplicas:
    """Starts ray-worker.sh processes that share one GPU lock directory, and stops them."""

    def __init__(self, tools: Path, work_dir: Path) -> None:
        self.tools = tools
        self.work_dir = work_dir
        self.lock_dir = work_dir / "gpu-locks"
        self.processes: list[subprocess.Popen] = []

    def start(self, gpus_per_worker: str = "1") -> tuple[subprocess.Popen, Path]:
        record = self.work_dir / f"replica-{len(self.processes)}.txt"
        env = {
            "PATH": f"{self.tools}:{os.environ.get('PATH', '')}",
            "FAKE_GPU_UUIDS": " ".join(FAKE_GPU_UUIDS),
            "FAKE_RAY_RECORD": str(record),
            "ARCHSWEEP_RAY_HEAD": "ray-head:6380",
            "ARCHSWEEP_GPUS_PER_WORKER": gpus_per_worker,
            GPU_LOCK_DIR_ENV_VAR: str(self.lock_dir),
        }
        process = subprocess.Popen(
            ["bash", str(RAY_WORKER_SCRIPT)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        return process, record

    def wait_for_ray(self, process: subprocess.Popen, record: Path) -> tuple[list[str], str]:
        """Wait until the replica has exec'd ray, and return (claimed GPUs, ray arguments)."""
        deadline = time.monotonic() + SCRIPT_START_TIMEOUT_S
        while not record.exists():
            if process.poll() is not None:
                _, stderr = process.communicate()
                pytest.fail(f"ray-worker.sh exited with {process.returncode}: {stderr}")
            if time.monotonic() > deadline:
                pytest.fail("ray-worker.sh did not start ray in time")
            time.sleep(0.05)
        visible_devices, arguments = record.read_text(encoding="utf-8").splitlines()
        return visible_devices.split(","), arguments

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.fixture
def replicas(fake_tools: Path, tmp_path: Path) -> Iterator[WorkerReplicas]:
    replicas = WorkerReplicas(fake_tools, tmp_path)
    yield replicas
    replicas.close()


@pytest.mark.parametrize("script", [RAY_WORKER_SCRIPT, RAY_JOIN_SCRIPT], ids=lambda p: p.name)
def test_entry_script_is_valid_bash(script: Path) -> None:
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_ray_worker_replicas_claim_distinct_gpus(replicas: WorkerReplicas) -> None:
    claims = []
    for _ in FAKE_GPU_UUIDS:
        process, record = replicas.start()
        claimed, arguments = replicas.wait_for_ray(process, record)
        claims.append(claimed)

        assert "--address=ray-head:6380" in arguments.split()
        assert "--num-gpus=1" in arguments.split()
        assert "--block" in arguments.split()

    assert sorted(gpu for claimed in claims for gpu in claimed) == sorted(FAKE_GPU_UUIDS)


def test_ray_worker_fails_when_no_gpu_is_free(replicas: WorkerReplicas) -> None:
    for _ in FAKE_GPU_UUIDS:
        replicas.wait_for_ray(*replicas.start())

    process, record = replicas.start()
    _, stderr = process.communicate(timeout=SCRIPT_START_TIMEOUT_S)

    assert process.returncode == 1
    assert "only 0 of the 3 visible GPUs are free" in stderr
    assert not record.exists()


def test_ray_worker_reclaims_stopped_replica_gpu(replicas: WorkerReplicas) -> None:
    first_process, first_record = replicas.start()
    first_claim, _ = replicas.wait_for_ray(first_process, first_record)
    for _ in FAKE_GPU_UUIDS[1:]:
        replicas.wait_for_ray(*replicas.start())

    first_process.kill()
    first_process.communicate()
    process, record = replicas.start()
    claimed, _ = replicas.wait_for_ray(process, record)

    assert claimed == first_claim


def test_ray_worker_claims_all_free_gpus(replicas: WorkerReplicas) -> None:
    replicas.wait_for_ray(*replicas.start())

    process, record = replicas.start(gpus_per_worker="all")
    claimed, arguments = replicas.wait_for_ray(process, record)

    assert len(claimed) == len(FAKE_GPU_UUIDS) - 1
    assert f"--num-gpus={len(FAKE_GPU_UUIDS) - 1}" in arguments.split()


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_ray_worker_rejects_invalid_gpu_count(replicas: WorkerReplicas, value: str) -> None:
    process, record = replicas.start(gpus_per_worker=value)
    _, stderr = process.communicate(timeout=SCRIPT_START_TIMEOUT_S)

    assert process.returncode == 2
    assert f"invalid ARCHSWEEP_GPUS_PER_WORKER='{value}'" in stderr
    assert not record.exists()


def _run_ray_join(fake_tools: Path, tmp_path: Path, *command: str) -> tuple[str, str | None]:
    """Run ray-join.sh with a command, and return its stdout and the fake ray's arguments or None."""
    record = tmp_path / "ray-join.txt"
    env = {"PATH": f"{fake_tools}:{os.environ.get('PATH', '')}", "FAKE_RAY_RECORD": str(record)}
    result = subprocess.run(
        ["bash", str(RAY_JOIN_SCRIPT), *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=SCRIPT_START_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if not record.exists():
        return result.stdout, None
    return result.stdout, record.read_text(encoding="utf-8").splitlines()[1]


@pytest.mark.parametrize(
    "address_arguments",
    [("--ray-address", "ray-head:6380"), ("--ray-address=ray-head:6380",)],
    ids=["separate", "equals"],
)
def test_ray_join_joins_cluster_before_run(
    fake_tools: Path, tmp_path: Path, address_arguments: tuple[str, ...]
) -> None:
    stdout, ray_arguments = _run_ray_join(
        fake_tools, tmp_path, "echo", "run", "--study", "demo", *address_arguments
    )

    assert stdout.split() == ["run", "--study", "demo", *address_arguments]
    assert ray_arguments is not None
    assert ray_arguments.split() == [
        "start",
        "--address=ray-head:6380",
        "--num-cpus=0",
        "--num-gpus=0",
        "--disable-usage-stats",
    ]


@pytest.mark.parametrize(
    "command",
    [
        ("echo", "status", "--study", "demo"),
        ("echo", "run", "--ray-address", "auto"),
        ("echo", "run", "--ray-address=ray://ray-head:10001"),
    ],
    ids=["no-ray", "auto", "ray-client"],
)
def test_ray_join_skips_without_cluster_address(
    fake_tools: Path, tmp_path: Path, command: tuple[str, ...]
) -> None:
    stdout, ray_arguments = _run_ray_join(fake_tools, tmp_path, *command)

    assert stdout.split() == list(command[1:])
    assert ray_arguments is None
