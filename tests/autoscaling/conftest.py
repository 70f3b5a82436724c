"""A fake autoscaling cluster (Ray's fake_multinode provider): no workers at first; the
autoscaler adds GPU nodes when a placement group asks for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import isolate_home

RAY_CLI = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"]
# Node types may leave `memory` out (the fake provider even must): it then counts as unknown.
GPU_TYPE = {"CPU": 1, "GPU": 1, "accelerator_type:H100": 1, "object_store_memory": 80 * 1024**2}


def autoscaling_config() -> dict:
    """Ray's fake_multinode example config, with our node types."""
    return {
        "cluster_name": "dstack-ray-fake",
        "max_workers": 4,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu-worker": {"resources": GPU_TYPE, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    import ray

    config = tmp_path_factory.mktemp("autoscaler") / "cluster.json"
    config.write_text(json.dumps(autoscaling_config()))
    previous_home = isolate_home()
    env = dict(os.environ, AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1")
    subprocess.run([*RAY_CLI, "stop", "--force"], capture_output=True)
    subprocess.run(
        [*RAY_CLI, "start", "--head", f"--autoscaling-config={config}", "--num-cpus=0", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, check=True, capture_output=True,
    )
    ray.init(address="auto")
    yield config
    ray.shutdown()
    subprocess.run([*RAY_CLI, "stop", "--force"], capture_output=True)
    if previous_home is not None:
        os.environ["HOME"] = previous_home


@pytest.fixture(scope="package")
def client(cluster, tmp_path_factory):
    from dstack_ray import Client
    from dstack_ray.runtime.settings import RuntimeSettings

    return Client(settings=RuntimeSettings(state_dir=str(tmp_path_factory.mktemp("state")), stop_grace_seconds=2, provisioning_timeout=180))
