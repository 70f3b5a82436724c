"""One simulated 3-node cluster (fake H100 GPUs) shared by the whole integration package."""

from __future__ import annotations

import pytest

from tests.helpers import simulated_cluster

GPU_NODE = dict(num_cpus=1, num_gpus=1, resources={"accelerator_type:H100": 1}, object_store_memory=80 * 1024**2)


@pytest.fixture(scope="package")
def cluster():
    yield from simulated_cluster(3, **GPU_NODE)


@pytest.fixture(scope="package")
def settings(tmp_path_factory):
    from dstack_ray.runtime.settings import RuntimeSettings

    return RuntimeSettings(
        state_dir=str(tmp_path_factory.mktemp("state")),
        stop_grace_seconds=2,
        retry_delays=[0.5, 1, 1],
        agent_start_timeout=60,
        metrics_interval=0.5,
        scheduler_interval=0.5,
        clock_offset_file=str(tmp_path_factory.mktemp("clock") / "offset"),
        python_downloads=False,  # tests reach no Python build server
        gpu_sampler="dstack_ray.metrics.fake:FakeSampler",  # scripted per job (DSTACK_RAY_FAKE_GPU): the nodes have no GPUs
    )


@pytest.fixture(scope="package")
def client(cluster, settings):
    from dstack_ray import Client

    return Client(settings=settings)


@pytest.fixture
def gpu_nodes(cluster):
    """Keep three GPU worker nodes: a test that removes one gets it replaced afterwards. (The
    cluster's own list, not `ray.nodes()`: Ray may take a while to mark a killed node dead.)"""
    yield cluster
    for _ in range(3 - len(cluster.worker_nodes)):
        cluster.add_node(**GPU_NODE)
    cluster.wait_for_nodes()
