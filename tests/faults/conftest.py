"""Fault tests: a simulated 3-node cluster with slow retries (to stop runs during backoff)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import FAST_HEALTH_CHECKS, GPU_NODE


@pytest.fixture(scope="package")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS},
    )
    for _ in range(3):
        cluster.add_node(**GPU_NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="package")
def settings(tmp_path_factory):
    from dstack_ray.runtime.settings import RuntimeSettings

    return RuntimeSettings(
        state_dir=str(tmp_path_factory.mktemp("state")),
        stop_grace_seconds=2,
        retry_delays=[20],
        scheduler_interval=0.5,
    )


@pytest.fixture(scope="package")
def client(cluster, settings):
    from dstack_ray import Client

    return Client(settings=settings)
