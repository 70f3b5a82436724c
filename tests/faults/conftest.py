"""Fault tests: a simulated 3-node cluster with slow retries (to stop runs during backoff)."""

from __future__ import annotations

import pytest

from tests.helpers import simulated_cluster
from tests.integration.conftest import GPU_NODE


@pytest.fixture(scope="package")
def cluster():
    yield from simulated_cluster(3, **GPU_NODE)


@pytest.fixture(scope="package")
def settings(tmp_path_factory):
    from dstack_ray.runtime.settings import RuntimeSettings

    return RuntimeSettings(
        state_dir=str(tmp_path_factory.mktemp("state")),
        stop_grace_seconds=2,
        retry_delays=[20],
        scheduler_interval=0.5,
        log_limit_bytes=1 << 20,  # small, for the log-limit test (the others print little)
    )


@pytest.fixture(scope="package")
def client(cluster, settings):
    from dstack_ray import Client

    return Client(settings=settings)
