"""Fixtures of the distributed tests: a local Ray instance with two declared GPUs, and data.

The Ray instance declares more CPUs than the machine has and two GPUs that do not exist:
Ray schedules by declared resources, which is what the packing tests check, and the trials
of these tests sleep rather than compute.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from search.data import DataSpec

# Declared resources of the test Ray instance: ten one-CPU workers fit, and GPUs limit them.
RAY_CPUS = 10
RAY_GPUS = 2
OBJECT_STORE_BYTES = 100 * 1024**2


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    from search._ray_runtime import init_ray

    ray.shutdown()  # a Ray instance left by another test module has other resources
    init_ray(num_cpus=RAY_CPUS, num_gpus=RAY_GPUS, object_store_memory=OBJECT_STORE_BYTES)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def small_watch() -> DataSpec:
    """The watch data set with one training session: enough for studies and tiny trials."""
    return DataSpec("watch", max_train_sessions=1)
