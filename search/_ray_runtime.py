"""Ray for archsweep's distributed runs: start or join a cluster, size workers, pick devices.

A local Ray instance is started with ``ray.init(address="local")``, so a ``RAY_ADDRESS``
variable or a cluster that ``ray start`` left running on this machine is never joined by
accident. Ray 2.60 (``ray/_private/node.py``) gives a new local head's GCS server the port in
``$RAY_GCS_SERVER_PORT``, or a random free port when that variable is unset. Ray's default
head port for ``ray start --head`` is 6379, Redis's default port, so ``init_ray`` rejects that
port from the variable and checks the port the GCS server bound.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = [
    "RESERVED_PORTS",
    "check_ray_address_reachable",
    "configure_worker_logging",
    "gcs_port",
    "init_ray",
    "resolve_gpus_per_trial",
    "select_cuda_device",
    "split_ray_address",
    "worker_device",
]

_logger = logging.getLogger(__name__)

# Redis's default port (and Ray's default head port): never give it to a local Ray head.
RESERVED_PORTS = frozenset({6379})

# The environment variable Ray 2.60 reads for a new local head's GCS port. Unset or 0 means a
# random free port.
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"

# GPUs a trial reserves by default on a cluster that has GPUs: one whole GPU, the safe choice
# for models of unknown size. --gpus-per-trial 0.25 packs four trials on each GPU.
DEFAULT_GPUS_PER_TRIAL = 1.0

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
) -> bool:
    """Connect to the Ray cluster at ``address``, or start a local instance when it is None.

    An already initialised Ray (a test fixture, a caller that set Ray up) is used as it is.
    ``num_cpus``, ``num_gpus`` and ``object_store_memory`` (bytes) size a local instance;
    None lets Ray detect the machine. The Ray dashboard is never started.

    Returns:
        True when this call started or joined Ray, so the caller should ``ray.shutdown()``;
        False when Ray was initialised before.

    Raises:
        ValueError: ``$RAY_GCS_SERVER_PORT`` names a reserved port (6379).
        RuntimeError: the local GCS server bound a reserved port anyway.
    """
    import ray

    if ray.is_initialized():
        _logger.info("Using the Ray instance this process joined before (GCS %s)", _gcs_address())
        return False

    if address:
        check_ray_address_reachable(address)
        _logger.info("Joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        _logger.info("Joined the Ray cluster (GCS %s): %s", _gcs_address(), _describe_resources())
        return True

    _check_gcs_port_env()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        object_store_memory=object_store_memory,
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": {"PYTHONPATH": _worker_python_path()}},
    )
    port = gcs_port()
    if port in RESERVED_PORTS:
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray instance's GCS server took port {port}, which Redis uses; set "
            f"{GCS_PORT_ENV} to a free port and try again"
        )
    _logger.info("Started a local Ray instance (GCS %s): %s", _gcs_address(), _describe_resources())
    return True


def _worker_python_path() -> str:
    """Return a PYTHONPATH under which local Ray workers import archsweep as this process does.

    Ray adds only the driver's working directory and script directory to its workers'
    sys.path, so a source checkout that is not installed would be missing when the driver
    runs from another directory.
    """
    source_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    existing = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    return os.pathsep.join(dict.fromkeys([source_root, *existing]))


def _check_gcs_port_env() -> None:
    value = os.environ.get(GCS_PORT_ENV, "").strip()
    if not value:
        return
    try:
        port = int(value)
    except ValueError:
        raise ValueError(
            f"{GCS_PORT_ENV}={value!r} is not a port number; unset it (Ray then picks a free "
            "port) or set a free port"
        ) from None
    if port in RESERVED_PORTS:
        raise ValueError(
            f"{GCS_PORT_ENV}={port} would put the local Ray head on Redis's port; unset it "
            "(Ray then picks a free port) or set another free port"
        )


def _gcs_address() -> str:
    import ray

    return str(ray.get_runtime_context().gcs_address)


def gcs_port() -> int:
    """Return the port of the GCS server of the Ray cluster this process joined."""
    return int(_gcs_address().rsplit(":", 1)[1])


def _describe_resources() -> str:
    import ray

    resources = ray.cluster_resources()
    return f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"


def resolve_gpus_per_trial(
    gpus_per_trial: float | None, cluster_resources: Mapping[str, float]
) -> float:
    """Return the GPUs each worker reserves, checking ``gpus_per_trial`` against the cluster.

    None means 1 on a cluster with GPUs and 0 on one without. A fraction below 1 packs
    several trials on one GPU; above 1, Ray needs a whole number.

    Raises:
        ValueError: negative, not a whole number above 1, or more than the cluster has.
    """
    cluster_gpus = float(cluster_resources.get("GPU", 0.0))
    if gpus_per_trial is None:
        return DEFAULT_GPUS_PER_TRIAL if cluster_gpus > 0 else 0.0

    if isinstance(gpus_per_trial, bool) or not isinstance(gpus_per_trial, (int, float)):
        raise TypeError(f"gpus_per_trial must be a number, got {gpus_per_trial!r}")
    if not math.isfinite(gpus_per_trial) or gpus_per_trial < 0:
        raise ValueError(f"gpus_per_trial must be >= 0, got {gpus_per_trial}")
    if gpus_per_trial > 1 and not float(gpus_per_trial).is_integer():
        raise ValueError(
            f"gpus_per_trial above 1 must be a whole number of GPUs (Ray's rule), got "
            f"{gpus_per_trial}; use a fraction up to 1 to share GPUs, or 2, 3, ..."
        )
    if gpus_per_trial > cluster_gpus:
        raise ValueError(
            f"gpus_per_trial {gpus_per_trial:g} exceeds the {cluster_gpus:g} GPUs of the Ray "
            "cluster, so no trial could start; pass --gpus-per-trial 0 to train on CPUs"
        )
    return float(gpus_per_trial)


def worker_device(gpus_per_trial: float) -> str:
    """Return the torch device of a Ray worker holding ``gpus_per_trial`` GPUs.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned (IDs or UUIDs), so the first
    assigned GPU is usually ``cuda:0``. Where Ray is configured not to set the variable, the
    GPU ID is the CUDA index. Workers without a GPU train on the CPU even where the node has GPUs,
    because they reserved none.
    """
    import ray

    if gpus_per_trial <= 0:
        return "cpu"
    gpu_ids = [str(gpu_id) for gpu_id in ray.get_gpu_ids()]
    if not gpu_ids:
        _logger.warning(
            "Ray assigned this worker no GPU although it reserved %g; training on the CPU",
            gpus_per_trial,
        )
        return "cpu"

    visible = [
        entry.strip()
        for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        if entry.strip()
    ]
    if gpu_ids[0] in visible:
        return f"cuda:{visible.index(gpu_ids[0])}"
    if not visible and gpu_ids[0].isdigit():
        return f"cuda:{gpu_ids[0]}"
    return "cuda:0"


def select_cuda_device(device: str | None) -> None:
    """Make ``device`` torch's current CUDA device, for code that uses the current device."""
    if device is None or not device.startswith("cuda"):
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(torch.device(device))


class _WorkerLogHandler(logging.StreamHandler[Any]):
    """The stderr handler a Ray worker process installs, a class of its own so it is added once."""


def configure_worker_logging(level: int) -> None:
    """Send this Ray worker process's log records to stderr, which Ray forwards to the driver.

    Ray worker processes start with an unconfigured root logger, so without a handler the
    worker's start, stop and error lines would be lost. A process that has handlers keeps them.
    """
    root = logging.getLogger()
    if any(isinstance(handler, _WorkerLogHandler) for handler in root.handlers):
        root.setLevel(level)
        return
    if root.handlers:
        return
    handler = _WorkerLogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


# Seconds to wait for the head's port before giving up. ray.init itself retries an
# unreachable address for minutes and does not stop on SIGTERM meanwhile.
RAY_CONNECT_TIMEOUT_S = 5.0


def split_ray_address(address: str) -> tuple[str, int] | None:
    """Return the host and port of ``HOST:PORT`` or ``ray://HOST:PORT``, else None.

    None also covers ``auto`` and a port outside 1-65535.
    """
    host, separator, port_text = address.removeprefix("ray://").rpartition(":")
    if not separator or not host or not port_text.isdigit():
        return None
    port = int(port_text)
    return (host, port) if 1 <= port <= 65535 else None


def check_ray_address_reachable(address: str) -> None:
    """Raise ConnectionError unless something accepts TCP connections at ``address``.

    Only the forms ``split_ray_address`` accepts are probed. ``auto`` and other forms
    are left to ray.init.
    """
    import socket

    parts = split_ray_address(address)
    if parts is None:
        return

    host, port = parts
    try:
        with socket.create_connection((host, port), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        raise ConnectionError(
            f"nothing accepts connections at {host}:{port} within "
            f"{RAY_CONNECT_TIMEOUT_S:g} s ({error.strerror or error})"
        ) from None
