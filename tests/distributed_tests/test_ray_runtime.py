"""search._ray_runtime: GPU option checks and the guard against Redis's port."""

from __future__ import annotations

import pytest

from search._ray_runtime import GCS_PORT_ENV, init_ray, resolve_gpus_per_trial

NO_GPU = {"CPU": 8.0}
TWO_GPUS = {"CPU": 8.0, "GPU": 2.0}


def test_gpus_per_trial_default_follows_cluster() -> None:
    assert resolve_gpus_per_trial(None, NO_GPU) == 0.0
    assert resolve_gpus_per_trial(None, TWO_GPUS) == 1.0


@pytest.mark.parametrize("value", [0, 0.25, 0.5, 1, 2])
def test_gpus_per_trial_valid_values_kept(value: float) -> None:
    assert resolve_gpus_per_trial(value, TWO_GPUS) == float(value)


@pytest.mark.parametrize(
    ("value", "resources", "message"),
    [
        (-0.5, TWO_GPUS, "must be >= 0"),
        (1.5, TWO_GPUS, "whole number"),
        (3, TWO_GPUS, "exceeds the 2 GPUs"),
        (0.25, NO_GPU, "exceeds the 0 GPUs"),
    ],
)
def test_gpus_per_trial_invalid_rejected(value: float, resources: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_gpus_per_trial(value, resources)


def test_gpus_per_trial_not_number_rejected() -> None:
    with pytest.raises(TypeError, match="must be a number"):
        resolve_gpus_per_trial("half", TWO_GPUS)  # type: ignore[arg-type]


def test_init_ray_rejects_redis_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    ray.shutdown()
    monkeypatch.setenv(GCS_PORT_ENV, "6379")

    with pytest.raises(ValueError, match="Redis's port"):
        init_ray(num_cpus=1)
    assert not ray.is_initialized()


def test_init_ray_unreachable_address_fails_fast() -> None:
    import socket
    import time

    import ray

    # A port that was just free on 127.0.0.1 has no listener on it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        init_ray(f"127.0.0.1:{port}", num_cpus=1, num_gpus=0)

    assert time.monotonic() - started < 30
    assert not ray.is_initialized()
