"""Cluster launcher rendering: configurations Ray itself accepts, sized so the task's placement
group lands on the workers.

Every VM config is checked with Ray's own schema (`ray/autoscaler/ray-schema.json`) and with the
preparation `ray up` does before launching (`prepare_config` + `validate_config`); KubeRay
manifests go through the function Ray's KubeRay autoscaler uses to read a RayCluster. Placement
is checked with the planner against the node types the autoscaler would read from the file.
Catalog offers come from small skypilot-format CSVs written here (no network).
"""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import jsonschema
import pytest
from importlib import metadata
import ray.autoscaler
import yaml
from dstack_ray_cli import cluster_cmd
from dstack_ray_cli.console import CLIError
from dstack_ray_cli.main import app
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import prepare_config, validate_config
from typer.testing import CliRunner

from dstack_ray.config import parse_configuration
from dstack_ray.plan.autoscaler import node_types_from_config
from dstack_ray.plan.catalog import catalog_offers
from dstack_ray.models.cluster import GB, ClusterView, NodeView, accelerator_gpu_name, accelerator_memory_gb
from dstack_ray.plan.launcher import (
    AUTO_SPOT_NOTE,
    RAY_IMAGE_AUTO,
    LauncherError,
    ray_accelerator_type,
    ray_image_for,
    render,
    render_cluster,
    template_path,
)
from dstack_ray.plan.planner import build_plan

SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
CLOUDS = ["aws", "gcp", "azure"]


def _gpu_info(name: str, count: int, mib: int) -> str:
    return str(
        {
            "Gpus": [{"Name": name, "Manufacturer": "NVIDIA", "Count": float(count), "MemoryInfo": {"SizeInMiB": mib}}],
            "TotalGpuMemoryInMiB": mib * count,
        }
    )


COLUMNS = (
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone"
)
ROWS = {  # cloud -> (instance type, gpu name, gpu count, gpu MiB, vCPUs, GiB, price, spot price, region)
    "aws": [
        ("m5.large", None, 0, 0, 2, 8, 0.096, 0.04, "us-east-1"),
        ("m5.xlarge", None, 0, 0, 4, 16, 0.192, 0.08, "us-east-1"),
        ("m5.xlarge", None, 0, 0, 4, 16, 0.214, 0.09, "eu-west-1"),
        ("g5.xlarge", "A10G", 1, 24576, 4, 16, 1.006, 0.45, "us-east-1"),
        ("g5.xlarge", "A10G", 1, 24576, 4, 16, 1.12, 0.5, "eu-west-1"),
        ("g5.12xlarge", "A10G", 4, 24576, 48, 192, 5.672, 2.1, "us-east-1"),
        ("p4de.24xlarge", "A100-80GB", 8, 81920, 96, 1152, 40.96, 12.0, "us-west-2"),
    ],
    "gcp": [
        ("n2-standard-2", None, 0, 0, 2, 8, 0.097, 0.02, "us-central1"),
        ("n2-standard-4", None, 0, 0, 4, 16, 0.194, 0.04, "us-central1"),
        ("g2-standard-4", "L4", 1, 24576, 4, 16, 0.707, 0.28, "us-central1"),
        ("g2-standard-4", "L4", 1, 24576, 4, 16, 0.78, 0.31, "europe-west4"),
    ],
    "azure": [
        ("Standard_D2s_v3", None, 0, 0, 2, 8, 0.096, 0.01, "eastus"),
        ("Standard_D4s_v3", None, 0, 0, 4, 16, 0.192, 0.02, "eastus"),
        ("Standard_NV36ads_A10_v5", "A10", 1, 24576, 36, 440, 3.2, 0.64, "eastus"),
    ],
}
GPU = {"aws": "A10G", "gcp": "L4", "azure": "A10"}


def _write_catalog(root: Path) -> None:
    for cloud, rows in ROWS.items():
        lines = [COLUMNS]
        for itype, gpu, count, mib, cpus, mem, price, spot, region in rows:
            info = json.dumps(_gpu_info(gpu, count, mib)) if gpu else ""
            lines.append(f"{itype},{gpu or ''},{count or ''},{cpus},{mem},{info},{price},{spot},{region},{region}-a")
        path = root / cloud / "vms.csv"
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    runtime_dir = tmp_path_factory.mktemp("sky-runtime")
    _write_catalog(runtime_dir / ".sky" / "catalogs" / "v8")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("SKY_RUNTIME_DIR", str(runtime_dir))  # where skypilot caches catalogs
        yield runtime_dir


@pytest.fixture
def no_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path))


def task(**fields: Any):
    commands = {} if "groups" in fields else {"commands": ["true"]}
    return parse_configuration({"type": "task", **commands, **fields})


CPU_TASK = {"resources": {"cpu": 2, "memory": "8GB"}}


def gpu_task(provider: str, **fields: Any) -> Dict[str, Any]:
    return {"nodes": 3, "resources": {"gpu": f"{GPU[provider]}:1"}, **fields}


def groups_task(provider: str, **fields: Any) -> Dict[str, Any]:
    return {
        "groups": [
            {"name": "ps", "nodes": 1, "resources": {"cpu": 4, "memory": "16GB"}, "commands": ["true"]},
            {"name": "gpus", "nodes": 2, "resources": {"gpu": f"{GPU[provider]}:1"}, "commands": ["true"]},
        ],
        **fields,
    }


TASKS = {
    "cpu": lambda p: CPU_TASK,
    "gpu-nodes": gpu_task,
    "groups": groups_task,
    "spot": lambda p: gpu_task(p, spot_policy="spot"),
    "image": lambda p: {**CPU_TASK, "image": "python:3.11-slim"},
}


def assert_launchable(config: Dict[str, Any]) -> Dict[str, Any]:
    """Ray's schema accepts it, and so does what `ray up` does to it before launching."""
    jsonschema.validate(config, SCHEMA)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def assert_placement_fits(cfg, config: Dict[str, Any]) -> None:
    """The planner, seeing only the head and the node types, plans the run onto new workers,
    and each bundle fits the node type of its group."""
    head = NodeView(node_id="head", ip="10.0.0.1", is_head=True, cpus=0, memory_bytes=8 * GB)
    types = node_types_from_config(config)
    plan = build_plan(cfg, ClusterView(nodes=[head], node_types=types, autoscaling=True))
    assert plan.no_capacity is None and plan.needs_new_nodes
    declared = config["available_node_types"]
    for bundle in plan.bundles:
        resources = declared[f"worker-{bundle.group}"]["resources"]
        for key, amount in bundle.resources.items():
            assert resources.get(key, 0) >= amount, (bundle.group, key, resources)
        for key, value in bundle.label_selector.items():
            wanted = value[3:-1].split(",") if value.startswith("in(") else [value]
            assert declared[f"worker-{bundle.group}"]["labels"][key] in wanted


# --- templates -----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure", "local"])
def test_vm_templates_are_valid_cluster_configs(provider):
    config = yaml.safe_load(template_path(provider).read_text())
    assert config["provider"]["type"] == provider
    assert_launchable(config)


def test_kuberay_template_is_a_raycluster_ray_can_read():
    manifest = yaml.safe_load(template_path("kuberay").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    _derive_autoscaling_config_from_ray_cr({**manifest, "metadata": {**manifest["metadata"], "namespace": "default"}})


# --- cloud providers -----------------------------------------------------------------------


@pytest.mark.parametrize("provider", CLOUDS)
@pytest.mark.parametrize("kind", list(TASKS))
def test_cloud_configs_are_valid_and_hold_the_run(catalog, provider, kind):
    cfg = task(**TASKS[kind](provider))
    rendered = render(cfg, provider)
    config = rendered.config
    assert_launchable(config)
    assert yaml.safe_load(rendered.to_yaml()) == config
    assert_placement_fits(cfg, config)
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert set(workers) == {f"worker-{g.name}" for g in cfg.node_groups}
    for group in cfg.node_groups:
        assert workers[f"worker-{group.name}"]["min_workers"] == 0
        assert workers[f"worker-{group.name}"]["max_workers"] >= group.nodes
    assert config["max_workers"] >= cfg.nodes_num
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    assert 'pip install -U "ray[default]==' in " ".join(config["setup_commands"])
    assert 'dstack-ray' not in " ".join(config["setup_commands"])  # shipped by the first apply
    assert "{{" not in json.dumps(config)


def test_aws_gpu_nodes_get_the_cheapest_offer_and_declare_its_resources(catalog):
    cfg = task(**gpu_task("aws"))
    rendered = render(cfg, "aws")
    config = rendered.config
    worker = config["available_node_types"]["worker-0"]
    assert worker["node_config"]["InstanceType"] == "g5.xlarge"
    assert "InstanceMarketOptions" not in worker["node_config"]
    assert worker["resources"] == {"CPU": 4, "memory": 16 * GB, "GPU": 1, "accelerator_type:A10G": 1}
    assert worker["labels"] == {"ray.io/market-type": "on-demand", "ray.io/availability-region": "us-east-1"}
    assert (worker["min_workers"], worker["max_workers"], config["max_workers"]) == (0, 3, 3)
    assert config["provider"]["region"] == "us-east-1"  # cheaper than eu-west-1
    assert config["upscaling_speed"] == 3
    assert any("g5.xlarge in us-east-1, $1.006/h on-demand" in note for note in rendered.notes)


def test_spot_markets_per_provider(catalog):
    aws = render_cluster(task(**gpu_task("aws", spot_policy="spot", max_price=0.6)), "aws")["available_node_types"][
        "worker-0"
    ]
    assert aws["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot", "SpotOptions": {"MaxPrice": "0.6"}}
    assert aws["labels"]["ray.io/market-type"] == "spot"
    gcp = render_cluster(task(**gpu_task("gcp", spot_policy="spot")), "gcp")["available_node_types"]["worker-0"]
    assert gcp["node_config"]["scheduling"]["provisioningModel"] == "SPOT"
    assert gcp["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"
    azure = render_cluster(task(**gpu_task("azure", spot_policy="spot")), "azure")["available_node_types"]["worker-0"]
    params = azure["node_config"]["azure_arm_parameters"]
    assert (params["priority"], params["evictionPolicy"], params["billingProfile"]) == (
        "Spot",
        "Delete",
        {"maxPrice": -1},
    )
    assert params["vmSize"] == "Standard_NV36ads_A10_v5"


def test_spot_auto_renders_on_demand_and_says_so(catalog):
    rendered = render(task(**gpu_task("aws", spot_policy="auto")), "aws")
    worker = rendered.config["available_node_types"]["worker-0"]
    assert "InstanceMarketOptions" not in worker["node_config"]
    assert worker["labels"]["ray.io/market-type"] == "on-demand"
    assert worker["node_config"]["InstanceType"] == "g5.xlarge"
    assert AUTO_SPOT_NOTE in rendered.notes and AUTO_SPOT_NOTE in rendered.to_yaml()


def test_heterogeneous_groups_get_their_own_node_types(catalog):
    config = render_cluster(task(**groups_task("aws")), "aws")
    types = config["available_node_types"]
    assert types["worker-ps"]["node_config"]["InstanceType"] == "m5.xlarge"
    assert types["worker-ps"]["resources"] == {"CPU": 4, "memory": 16 * GB}
    assert types["worker-ps"]["max_workers"] == 1
    assert types["worker-gpus"]["node_config"]["InstanceType"] == "g5.xlarge"
    assert types["worker-gpus"]["max_workers"] == 2
    assert config["max_workers"] == 3


def test_region_argument_and_no_offer_there(catalog):
    config = render_cluster(task(**gpu_task("aws")), "aws", region="eu-west-1")
    assert config["provider"]["region"] == "eu-west-1"
    assert config["available_node_types"]["worker-0"]["labels"]["ray.io/availability-region"] == "eu-west-1"
    with pytest.raises(LauncherError, match="no aws catalog offer in ap-south-1 matches node group 0") as error:
        render(task(**gpu_task("aws")), "aws", region="ap-south-1")
    assert "--instance-type" in error.value.hint


def test_no_matching_offer_names_the_group_and_how_to_go_on(catalog):
    with pytest.raises(LauncherError) as error:
        render(task(resources={"gpu": "H100:8"}), "aws")
    assert "no aws catalog offer matches node group 0 (cpu=2.. mem=8GB.. disk=100GB.. gpu=H100:8, on-demand)" in str(
        error.value
    )
    assert "--instance-type" in error.value.hint


def test_a100_80gb_offer_declares_rays_80g_accelerator_type(catalog):
    config = render_cluster(task(resources={"gpu": "A100:80GB:8"}), "aws")
    worker = config["available_node_types"]["worker-0"]
    assert worker["node_config"]["InstanceType"] == "p4de.24xlarge"
    assert worker["resources"]["accelerator_type:A100-80G"] == 1 and worker["resources"]["GPU"] == 8
    assert config["provider"]["region"] == "us-west-2"


def test_instance_type_override(catalog):
    cfg = task(**gpu_task("aws"))
    in_catalog = render(task(resources={"gpu": "A10G:1..4"}), "aws", instance_type="g5.12xlarge")
    worker = in_catalog.config["available_node_types"]["worker-0"]  # matches the catalog: its shape
    assert worker["node_config"]["InstanceType"] == "g5.12xlarge"
    assert worker["resources"] == {"CPU": 48, "memory": 192 * GB, "GPU": 4, "accelerator_type:A10G": 1}
    too_big = render(cfg, "aws", instance_type="g5.12xlarge")  # 4 GPUs, the task says exactly 1
    assert any("g5.12xlarge has no matching aws catalog offer" in note for note in too_big.notes)
    unknown = render(cfg, "aws", instance_type="g6.xlarge")  # unknown: the group's minimums
    worker = unknown.config["available_node_types"]["worker-0"]
    assert worker["node_config"]["InstanceType"] == "g6.xlarge"
    assert worker["resources"] == {"CPU": 2, "memory": 8 * GB, "GPU": 1, "accelerator_type:A10G": 1}
    assert any("g6.xlarge" in note and "minimum" in note for note in unknown.notes)
    assert_placement_fits(cfg, unknown.config)
    per_group = render_cluster(task(**groups_task("aws")), "aws", instance_type={"ps": "c5.2xlarge"})
    assert per_group["available_node_types"]["worker-ps"]["node_config"]["InstanceType"] == "c5.2xlarge"
    assert per_group["available_node_types"]["worker-gpus"]["node_config"]["InstanceType"] == "g5.xlarge"
    with pytest.raises(LauncherError, match="doesn't have: nope") as error:
        render(cfg, "aws", instance_type={"nope": "x"})
    assert "node groups: 0" in error.value.hint


def test_without_a_catalog_the_error_says_to_pass_an_instance_type(no_catalog):
    with pytest.raises(LauncherError) as error:
        render(task(**gpu_task("aws")), "aws")
    assert str(error.value).startswith(
        "no instance type for node group 0 (cpu=2.. mem=8GB.. disk=100GB.. gpu=A10G:1, on-demand):"
    )
    why = catalog_offers(task(**gpu_task("aws", backends=["aws"]))).message
    assert why and str(error.value).endswith(why)
    assert error.value.hint.startswith("pass --instance-type TYPE")
    cfg = task(**gpu_task("aws", regions=["us-west-2"]))
    rendered = render(cfg, "aws", instance_type="g5.xlarge")
    assert rendered.config["available_node_types"]["worker-0"]["node_config"]["InstanceType"] == "g5.xlarge"
    assert rendered.config["provider"]["region"] == "us-west-2"
    assert_launchable(rendered.config)
    assert_placement_fits(cfg, rendered.config)
    from_task = render_cluster(task(**gpu_task("aws", instance_types=["g5.2xlarge"])), "aws")
    assert from_task["available_node_types"]["worker-0"]["node_config"]["InstanceType"] == "g5.2xlarge"


def test_gcp_n1_gpus_are_attached_and_zone_and_project_set(no_catalog):
    rendered = render(
        task(resources={"gpu": "T4:2"}), "gcp", instance_type="n1-standard-8", region="us-east1", project_id="my-proj"
    )
    config = rendered.config
    node = config["available_node_types"]["worker-0"]["node_config"]
    assert node["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 2}]
    assert node["scheduling"] == {"onHostMaintenance": "TERMINATE"}
    assert "common-cu" in node["disks"][0]["initializeParams"]["sourceImage"]
    assert config["provider"] == {
        "type": "gcp",
        "region": "us-east1",
        "availability_zone": "us-east1-a",
        "project_id": "my-proj",
    }
    assert any("us-east1-a" in note for note in rendered.notes)
    assert_launchable(config)


def test_disk_and_head_instance_type(catalog):
    config = render_cluster(task(resources={"cpu": 2, "disk": "500GB"}), "aws", head_instance_type="m5.2xlarge")
    assert config["available_node_types"]["head"]["node_config"]["InstanceType"] == "m5.2xlarge"
    ebs = config["available_node_types"]["worker-0"]["node_config"]["BlockDeviceMappings"][0]["Ebs"]
    assert ebs["VolumeSize"] == 500
    azure = render_cluster(task(resources={"cpu": 2, "disk": "200GB"}), "azure", head_instance_type="Standard_D8s_v3")
    assert azure["available_node_types"]["head"]["node_config"]["azure_arm_parameters"]["vmSize"] == "Standard_D8s_v3"
    assert azure["available_node_types"]["worker-0"]["node_config"]["azure_arm_parameters"]["osDiskSize"] == 200


def test_task_image_is_pulled_on_the_workers_and_ray_stays_on_the_host(catalog):
    config = render_cluster(task(**CPU_TASK, image="python:3.11-slim"), "aws")
    assert "docker" not in config
    assert config["available_node_types"]["worker-0"]["initialization_commands"] == [
        "docker pull python:3.11-slim || true"
    ]
    with_auth = render(
        task(**CPU_TASK, image="ghcr.io/me/img", registry_auth={"username": "u", "password": "p"}), "aws"
    )
    assert "initialization_commands" not in with_auth.config["available_node_types"]["worker-0"]
    assert "p" not in json.dumps(
        with_auth.config["available_node_types"]["worker-0"].get("initialization_commands", [])
    )
    with pytest.raises(LauncherError, match="runs in its own image"):
        render(task(**CPU_TASK, image="python:3.11-slim"), "aws", ray_image=RAY_IMAGE_AUTO)


def test_docker_section_runs_ray_in_rayproject_images(catalog):
    config = render_cluster(task(**groups_task("aws")), "aws", ray_image=RAY_IMAGE_AUTO)
    assert config["docker"]["image"] == ray_image_for(gpu=False)
    assert config["docker"]["container_name"] and config["docker"]["pull_before_run"] is True
    gpu_docker = config["available_node_types"]["worker-gpus"]["docker"]
    assert gpu_docker == {"worker_run_options": ["--gpus all"], "worker_image": ray_image_for(gpu=True)}
    assert "docker" not in config["available_node_types"]["worker-ps"]
    prepared = assert_launchable(config)
    assert prepared["docker"]["image"].startswith("rayproject/ray:")
    custom = render_cluster(task(**gpu_task("gcp")), "gcp", ray_image="me/ray:custom")
    assert custom["docker"]["image"] == "me/ray:custom"
    assert custom["available_node_types"]["worker-0"]["docker"] == {"worker_run_options": ["--gpus all"]}
    assert_launchable(custom)


def test_nodes_install_ray_only_and_template_overrides(catalog, tmp_path):
    """dstack-ray is not on any package index: no rendered config installs it (the first apply
    ships it through Ray's runtime environments); nodes get the client's Ray."""
    for provider in ("aws", "gcp", "azure", "kuberay"):
        text = yaml.safe_dump(render_cluster(task(**CPU_TASK), provider, **({"project_id": "p"} if provider == "gcp" else {})))
        assert "dstack-ray\"" not in text and "pip install -U \"dstack" not in text and "{{" not in text, provider
    config = render_cluster(task(**CPU_TASK), "aws")
    assert config["setup_commands"] == [f'pip install -U "ray[default]=={metadata.version("ray")}"']
    template = tmp_path / "mine.yaml"
    base = yaml.safe_load(template_path("aws").read_text())
    base["setup_commands"] = ["pip install {{ ray }}", "echo {{ nope }}"]
    template.write_text(yaml.safe_dump(base))
    with pytest.raises(LauncherError, match=r"unknown placeholder \{\{ nope \}\}"):
        render(task(**CPU_TASK), "aws", template=template)
    with pytest.raises(LauncherError, match="not a gcp template"):
        render(task(**CPU_TASK), "gcp", template=template_path("aws"))


def test_options_of_other_providers_are_errors():
    with pytest.raises(LauncherError, match="--head-ip applies to --provider local, not aws"):
        render(task(**CPU_TASK), "aws", head_ip="10.0.0.1")
    with pytest.raises(LauncherError, match="--instance-type applies to --provider aws, gcp, azure, not kuberay"):
        render(task(**CPU_TASK), "kuberay", instance_type="m5.large")
    with pytest.raises(LauncherError, match="unknown provider 'lambda'"):
        render(task(**CPU_TASK), "lambda")


# --- local (on-prem) -----------------------------------------------------------------------


def test_local_config_lists_the_machines():
    cfg = task(**gpu_task("aws"))
    rendered = render(cfg, "local", head_ip="10.0.0.1", worker_ips=["10.0.0.2", "10.0.0.3"], ssh_user="me")
    config = rendered.config
    assert config["provider"] == {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2", "10.0.0.3"]}
    assert (config["max_workers"], config["auth"]["ssh_user"]) == (2, "me")
    assert "available_node_types" not in config  # `ray up` rejects node types for on-prem clusters
    prepared = assert_launchable(config)
    node_type = prepared["available_node_types"]["local.cluster.node"]
    assert (node_type["min_workers"], node_type["max_workers"]) == (2, 2)
    assert any("3 machine(s) with at least cpu=2 mem=8GB gpu=A10G:1" in note for note in rendered.notes)
    docker = render_cluster(cfg, "local", head_ip="h", worker_ips=["a", "b"], ray_image=RAY_IMAGE_AUTO)["docker"]
    assert docker["image"] == ray_image_for(gpu=True) and "--gpus all" in docker["run_options"]


def test_local_errors():
    with pytest.raises(LauncherError, match="needs the machines") as error:
        render(task(**CPU_TASK), "local")
    assert "--head-ip" in error.value.hint
    with pytest.raises(LauncherError, match="the task has 3 nodes, but --head-ip and 1 --worker-ip make 2 machines"):
        render(task(**gpu_task("aws")), "local", head_ip="h", worker_ips=["a"])
    with pytest.raises(LauncherError, match="not spot"):
        render(task(**CPU_TASK, spot_policy="spot"), "local", head_ip="h")


# --- KubeRay -------------------------------------------------------------------------------


def test_kuberay_manifest_declares_the_bundle_resources():
    cfg = task(**groups_task("aws", spot_policy="spot"))
    rendered = render(cfg, "kuberay", cluster_name="My_Cluster")
    manifest = rendered.config
    assert (manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]) == (
        "ray.io/v1",
        "RayCluster",
        "my-cluster",
    )
    spec = manifest["spec"]
    assert spec["rayVersion"] == ray.__version__ and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    # The head keeps dstack-ray's state on a persistent volume (runs survive a head restart).
    head = spec["headGroupSpec"]["template"]["spec"]
    assert {"name": "dstack-ray-state", "mountPath": "/home/ray/.dstack-ray"} in head["containers"][0]["volumeMounts"]
    assert head["volumes"] == [{"name": "dstack-ray-state", "persistentVolumeClaim": {"claimName": "dstack-ray-state"}}]
    claim = yaml.safe_load(template_path("kuberay").with_name("kuberay-state-pvc.yaml").read_text())
    assert (claim["kind"], claim["metadata"]["name"]) == ("PersistentVolumeClaim", "dstack-ray-state")
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"worker-ps", "worker-gpus"}
    gpus = groups["worker-gpus"]
    assert (gpus["replicas"], gpus["minReplicas"], gpus["maxReplicas"]) == (0, 0, 2)
    container = gpus["template"]["spec"]["containers"][0]
    assert container["image"] == ray_image_for(gpu=True)
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}
    assert {"name": "RAY_NODE_MARKET_TYPE", "value": "spot"} in container["env"]
    assert "$KUBERAY_GEN_RAY_START_CMD" in container["args"][0] and "pip install" not in container["args"][0]
    assert "{{" not in json.dumps(manifest)
    # What Ray's KubeRay autoscaler reads from this RayCluster:
    derived = _derive_autoscaling_config_from_ray_cr(
        {**manifest, "metadata": {**manifest["metadata"], "namespace": "ns"}}
    )
    node_types = derived["available_node_types"]
    assert node_types["worker-gpus"]["resources"] == {"CPU": 2, "GPU": 1, "memory": 8 * GB, "accelerator_type:A10G": 1}
    assert node_types["worker-ps"]["resources"] == {"CPU": 4, "memory": 16 * GB}
    assert node_types["headgroup"]["resources"]["CPU"] == 0
    assert derived["max_workers"] == 3
    assert any("nodeSelector" in note for note in rendered.notes)


def test_kuberay_refuses_task_images():
    with pytest.raises(LauncherError, match="KubeRay pods") as error:
        render(task(**CPU_TASK, image="python:3.11"), "kuberay")
    assert "--ray-image" in error.value.hint


# --- accelerator names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, memory, expected",
    [
        ("A10G", None, "A10G"),
        ("h100", None, "H100"),
        ("A100", 40, "A100"),
        ("A100", 80, "A100-80G"),
        ("A100-80GB", None, "A100-80G"),
        ("L4", None, "L4"),
        ("RTXPRO6000", None, "RTX-PRO-6000"),
        ("MI300X", None, "AMD-Instinct-MI300X"),
        ("v5litepod", None, "TPU-V5LITEPOD"),
        ("Gaudi2", None, "Intel-GAUDI2"),
    ],
)
def test_ray_accelerator_types_read_back_as_the_same_gpu(name, memory, expected):
    accelerator = ray_accelerator_type(name, memory)
    assert accelerator == expected
    assert accelerator_gpu_name(accelerator).lower() == name.split("-")[0].lower()
    if expected.endswith("-80G"):
        assert accelerator_memory_gb(accelerator) == 80


# --- CLI -----------------------------------------------------------------------------------


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "train.dstack.yml"
    path.write_text(yaml.safe_dump({"type": "task", "nodes": 3, "commands": ["true"], "resources": {"gpu": "A10G:1"}}))
    return path


def cli(*args: str):
    return CliRunner().invoke(app, ["cluster", "render", *args])


def test_cli_prints_yaml_and_notes_on_stderr(catalog, task_file):
    result = cli("-f", str(task_file), "--provider", "aws")
    assert result.exit_code == 0, result.output + result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["cluster_name"] == "train"
    assert config["available_node_types"]["worker-0"]["node_config"]["InstanceType"] == "g5.xlarge"
    assert_launchable(config)
    assert "g5.xlarge in us-east-1" in result.stderr and "g5.xlarge" not in result.stderr.split("\n", 1)[1]


def test_cli_writes_the_file_and_runs_ray_up(catalog, task_file, tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    ray_cli = fake_bin / "ray"
    ray_cli.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "ray-args"}\n')
    ray_cli.chmod(ray_cli.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "cluster.yaml"
    result = cli("-f", str(task_file), "--provider", "aws", "--instance-type", "0=g5.2xlarge", "-o", str(out), "--up")
    assert result.exit_code == 0, result.output + result.stderr
    assert (tmp_path / "ray-args").read_text().split() == ["up", "-y", str(out)]
    config = yaml.safe_load(out.read_text())
    assert config["available_node_types"]["worker-0"]["node_config"]["InstanceType"] == "g5.2xlarge"
    assert f"Wrote {out}" in result.stderr


def test_cli_up_without_ray_is_a_clear_error(catalog, task_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cluster_cmd.shutil, "which", lambda *args, **kwargs: None)
    result = cli("-f", str(task_file), "--provider", "aws", "--up")
    assert isinstance(result.exception, CLIError)
    assert result.exception.message == "`ray` is not installed (not on PATH)"
    assert (tmp_path / "train.aws.yaml").exists()  # written first: ray up can use it later
    again = cli("-f", str(task_file), "--provider", "aws", "--up")
    assert isinstance(again.exception, CLIError) and again.exception.message == "train.aws.yaml exists"


def test_cli_instance_type_arguments(no_catalog, task_file):
    result = cli("-f", str(task_file), "--provider", "aws", "--instance-type", "a", "--instance-type", "b")
    assert isinstance(result.exception, CLIError) and "without a group" in result.exception.message
    result = cli("-f", str(task_file), "--provider", "aws")
    assert isinstance(result.exception, CLIError) and "no skypilot catalog" in result.exception.message


def test_cli_as_a_user_runs_it(task_file):
    """The installed entry point, in a fresh process: one readable line on errors."""
    command = [
        sys.executable,
        "-m",
        "dstack_ray_cli.main",
        "cluster",
        "render",
        "-f",
        str(task_file),
        "--provider",
        "local",
    ]
    ok = subprocess.run(
        [*command, "--head-ip", "10.0.0.1", "--worker-ip", "10.0.0.2", "--worker-ip", "10.0.0.3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["provider"]["worker_ips"] == ["10.0.0.2", "10.0.0.3"]
    failed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert failed.stderr.startswith("Error: the local provider needs the machines to start Ray on")
    assert "Traceback" not in failed.stderr
