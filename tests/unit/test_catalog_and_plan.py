"""Offers from a seeded skypilot catalog, bundles, capacity and plan notes (no Ray)."""

from __future__ import annotations

import pytest

from dstack_ray.config import parse_configuration
from dstack_ray.plan.capacity import Released, free_capacity, place, still_counted
from dstack_ray.plan.catalog import catalog_offers
from dstack_ray.models.cluster import ClusterView, NodeShape, NodeType, NodeView, accelerator_gpu_name, accelerator_memory_gb
from dstack_ray.plan.offers import cluster_offers
from dstack_ray.plan.planner import build_plan

GB = 1024**3
HEADER = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone\n"


def gpu_info(name, memory_mib, count):
    return f"\"{{'Gpus': [{{'Name': '{name}', 'Manufacturer': 'NVIDIA', 'Count': {count}.0, 'MemoryInfo': {{'SizeInMiB': {memory_mib}}}}}], 'TotalGpuMemoryInMiB': {memory_mib * count}}}\""


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path))
    aws = tmp_path / ".sky" / "catalogs" / "v8" / "aws"
    aws.mkdir(parents=True)
    aws.joinpath("vms.csv").write_text(
        HEADER
        + f"p5.48xlarge,H100,8,192,2048,{gpu_info('H100', 81920, 8)},98.32,35.1,us-east-1,us-east-1a\n"
        + f"p5.48xlarge,H100,8,192,2048,{gpu_info('H100', 81920, 8)},98.32,35.1,us-east-1,us-east-1b\n"
        + f"g5.xlarge,A10G,1,4,16,{gpu_info('A10G', 24576, 1)},1.006,0.4,us-east-1,us-east-1a\n"
        + f"g5.12xlarge,A10G,4,48,192,{gpu_info('A10G', 24576, 4)},5.672,2.1,us-west-2,us-west-2a\n"
        + "p4de.24xlarge,A100-80GB,8,96,1152,,40.96,,us-east-1,us-east-1a\n"
        + "m5.2xlarge,,,8,32,,0.384,0.15,us-west-2,us-west-2a\n"
    )
    gcp = tmp_path / ".sky" / "catalogs" / "v8" / "gcp"
    gcp.mkdir(parents=True)
    gcp.joinpath("vms.csv").write_text(HEADER + f"a2-highgpu-1g,A100,1,12,85,{gpu_info('A100', 40960, 1)},3.67,1.1,us-central1,us-central1-a\n")
    return tmp_path


def offers_for(resources=None, **extra):
    cfg = parse_configuration({"type": "task", "commands": ["x"], "resources": resources or {}, **extra})
    return catalog_offers(cfg)


def names(result):
    return [(o.instance_type, o.spot) for o in result.offers]


def test_gpu_name_count_and_cheapest_first(catalog):
    assert names(offers_for({"gpu": "A10G:1"})) == [("g5.xlarge", False)]
    assert names(offers_for({"gpu": "A10G"})) == [("g5.xlarge", False), ("g5.12xlarge", False)]  # count 1..
    assert names(offers_for({"gpu": "A10G:4"})) == [("g5.12xlarge", False)]
    assert names(offers_for({"gpu": "A10G:1.."})) == [("g5.xlarge", False), ("g5.12xlarge", False)]
    assert names(offers_for({"gpu": "H100:8"})) == [("p5.48xlarge", False)]  # zones deduplicated


def test_gpu_memory_and_names_with_memory_suffix(catalog):
    assert names(offers_for({"gpu": "80GB.."})) == [("p4de.24xlarge", False), ("p5.48xlarge", False)]
    assert names(offers_for({"gpu": "A100:80GB"})) == [("p4de.24xlarge", False)]
    assert names(offers_for({"gpu": "A100:40GB"})) == [("a2-highgpu-1g", False)]


def test_cpu_memory_and_cpu_only(catalog):
    assert names(offers_for({"cpu": "8..", "memory": "32GB..64GB", "gpu": 0})) == [("m5.2xlarge", False)]


def test_spot_policies_and_max_price(catalog):
    result = offers_for({"gpu": "A10G:1"}, spot_policy="spot")
    assert names(result) == [("g5.xlarge", True)] and result.offers[0].price == 0.4
    assert result.offers[0].spot
    assert names(offers_for({"gpu": "A10G:1"}, spot_policy="auto")) == [("g5.xlarge", True), ("g5.xlarge", False)]
    assert names(offers_for({"gpu": "A100-80GB"}, spot_policy="spot")) == []  # no spot price
    assert names(offers_for({"gpu": "A10G:1.."}, max_price=2)) == [("g5.xlarge", False)]


def test_regions_backends_and_instance_types(catalog):
    assert names(offers_for({"gpu": "A10G:1.."}, regions=["us-west-2"])) == [("g5.12xlarge", False)]
    assert names(offers_for({"gpu": "A100:1"}, backends=["gcp"])) == [("a2-highgpu-1g", False)]
    assert names(offers_for({"gpu": "A100:1"}, backends=["aws"])) == []
    assert names(offers_for({"gpu": 0}, instance_types=["m5.2xlarge"])) == [("m5.2xlarge", False)]
    offer = offers_for({"gpu": "A100:1"}).offers[0]
    assert offer.backend == "gcp (us-central1)" and offer.price == 3.67
    assert offer.shape.describe() == "cpu=12 mem=85GB disk=100GB.. gpu=A100:40GB:1"
    assert (offer.shape.gpu_name, offer.shape.gpu_memory_gb, offer.shape.gpu_count) == ("A100", 40, 1)


def test_missing_catalog_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path))
    result = offers_for({"gpu": "A10G"}, backends=["aws", "kubernetes"])
    assert result.offers == []
    assert "no skypilot catalog on this machine for aws" in result.message
    assert "sky gpus list" in result.message and "no catalog exists for kubernetes" in result.message


def node(node_id, cpus, gpus=0, accelerator=None, memory=16, available=None, **extra):
    shape = NodeShape(cpus=cpus, gpus=gpus, memory_bytes=memory * GB, accelerator=accelerator)
    return NodeView(node_id=node_id, ip="10.0.0.1", available=available or {}, **shape.model_dump(), **extra)


def cfg(**body):
    base = {"type": "task"} if "groups" in body else {"type": "task", "commands": ["x"]}
    return parse_configuration({**base, **body})


def test_bundles_resolve_to_the_smallest_values():
    cluster = ClusterView(nodes=[node("a", 8, 2, "H100"), node("b", 8, 2, "H100")])
    plan = build_plan(cfg(nodes=2, resources={"cpu": "2..", "memory": "4GB..", "gpu": "H100:1..2"}), cluster)
    assert plan.strategy == "STRICT_SPREAD" and plan.no_capacity is None
    assert plan.bundles[0].resources == {"CPU": 2, "memory": 4 * GB, "GPU": 1, "accelerator_type:H100": 0.001}
    assert [b.rank for b in plan.bundles] == [0, 1]


def test_groups_keep_their_resources_and_contiguous_ranks():
    cluster = ClusterView(nodes=[node("a", 8, 1, "A100-80G"), node("b", 4), node("c", 4)])
    plan = build_plan(
        cfg(groups=[{"name": "trainer", "resources": {"gpu": "A100:80GB:1", "cpu": 2}, "commands": ["t"]},
                                   {"name": "loader", "nodes": 2, "resources": {"cpu": 2}, "commands": ["l"]}]),
        cluster,
    )
    assert [(b.rank, b.group, b.gpus, b.accelerator) for b in plan.bundles] == [(0, "trainer", 1, "A100-80G"), (1, "loader", 0, None), (2, "loader", 0, None)]
    assert plan.no_capacity is None


def test_no_capacity_reasons():
    cluster = ClusterView(nodes=[node("a", 2, 1, "T4"), node("b", 2)])
    assert "needs 4 CPUs per node, the largest node has 2" in build_plan(cfg(resources={"cpu": 4}), cluster).no_capacity
    assert "needs 2 GPUs per node" in build_plan(cfg(resources={"cpu": 1, "gpu": 2}), cluster).no_capacity
    assert "the cluster has: T4" in build_plan(cfg(resources={"cpu": 1, "gpu": "H100"}), cluster).no_capacity
    assert "needs 3 distinct nodes" in build_plan(cfg(nodes=3, resources={"cpu": 1}), cluster).no_capacity
    assert "memory per node" in build_plan(cfg(resources={"cpu": 1, "memory": "64GB"}), cluster).no_capacity


def test_autoscaler_node_types_make_it_fit_later():
    cluster = ClusterView(nodes=[node("head", 2)], node_types=[NodeType(name="gpu", cpus=8, gpus=1, accelerator="H100", max_workers=2)], autoscaling=True)
    plan = build_plan(cfg(nodes=2, resources={"cpu": 1, "gpu": "H100:1"}), cluster)
    assert plan.needs_new_nodes and plan.no_capacity is None
    assert "needs 3 distinct nodes" in build_plan(cfg(nodes=3, resources={"cpu": 1, "gpu": "H100:1"}), cluster).no_capacity
    offers = cluster_offers(cfg(resources={"cpu": 1, "gpu": "H100:1"}), plan, cluster)
    assert [(o.backend, o.instance_type, o.availability) for o in offers] == [("ray autoscaler", "gpu", "up to 2 more")]


def test_plan_names_the_clusters_default_image():
    cluster = ClusterView(nodes=[node("a", 2)], default_image="localhost/base:1")
    notes = build_plan(cfg(resources={"cpu": 1}, python="3.12"), cluster).notes
    assert notes == [
        "no `image`: runs in the cluster's default image localhost/base:1",
        "`python`/`nvcc` are not applied inside the default image: it brings its own Python and CUDA",
    ]
    assert build_plan(cfg(resources={"cpu": 1}, image="x"), cluster).notes == []


def test_plan_notes_only_for_fields_ray_cannot_express():
    plain = build_plan(cfg(resources={"cpu": 1}), ClusterView(nodes=[node("a", 2)]))
    assert plain.notes == []
    noted = build_plan(cfg(resources={"cpu": "arm:1", "disk": "200GB"}, backends=["aws"], volumes=["data:/data"], image="x"), ClusterView(nodes=[node("a", 2)]))
    text = " | ".join(noted.notes)
    assert "disk=200GB is not enforced" in text and "cpu arch arm" in text and "backends" in text and "network volume data" in text


def test_capacity_admission_accounts_for_taken_resources():
    cluster = ClusterView(nodes=[node("a", 2, available={"CPU": 1.0, "memory": 8 * GB}), node("b", 2, available={"CPU": 2.0, "memory": 8 * GB})], availability_known=True)
    plan = build_plan(cfg(nodes=2, resources={"cpu": 1, "memory": "1GB"}), cluster)
    free = free_capacity(cluster, reserved=[])
    assert place(plan, free)
    assert not place(plan, free)  # the first placement took a CPU on each node
    assert not place(plan, free_capacity(cluster, reserved=[{"CPU": 2.0}, {"CPU": 1.0}]))


def test_a_removed_group_counts_until_rays_numbers_drop_it():
    """Ray's free numbers lag a placement group's removal; its `bundle_group_<id>` resource goes
    from a node's numbers in the same report that frees its bundles."""
    released = Released("a", "abc123", {"CPU": 1.0})
    stale = ClusterView(nodes=[node("a", 2, available={"CPU": 1.0, "bundle_group_abc123": 1000.0})], availability_known=True)
    fresh = ClusterView(nodes=[node("a", 2, available={"CPU": 2.0})], availability_known=True)
    gone = ClusterView(nodes=[node("b", 2, available={"CPU": 2.0, "bundle_group_abc123": 1000.0})], availability_known=True)
    assert still_counted(released, stale)
    assert not still_counted(released, fresh) and not still_counted(released, gone)


def test_accelerator_names():
    assert accelerator_gpu_name("A100-80G") == "A100" and accelerator_memory_gb("A100-80G") == 80
    assert accelerator_gpu_name("RTX-PRO-6000") == "RTXPRO6000"
    assert accelerator_gpu_name("AMD-Instinct-MI300X") == "MI300X"
    assert accelerator_memory_gb("H100") == 80


def test_the_node_table_is_read_again_only_when_the_nodes_change(monkeypatch):
    """`ray.nodes()` (every node's full record) is the costliest call of a scheduling pass: it
    is read again when the nodes Ray reports free resources for change, or after a few seconds."""
    import ray
    import ray._private.state as state

    from dstack_ray.plan import live

    reads = []
    table = [{"NodeID": "n1", "Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 2.0, "memory": 8.0 * GB}}]
    available = {"n1": {"CPU": 2.0}}
    monkeypatch.setattr(ray, "nodes", lambda: reads.append(1) or [dict(n) for n in table])
    monkeypatch.setattr(state, "available_resources_per_node", lambda: {k: dict(v) for k, v in available.items()})
    monkeypatch.setattr(live, "autoscaler_node_types", lambda: [])
    for name, value in (("at", float("-inf")), ("views", []), ("alive", frozenset())):
        monkeypatch.setattr(live._NodeTable, name, value)  # and restored after the test
    assert [n.available for n in live.live_cluster_view().nodes] == [{"CPU": 2.0}]
    available["n1"] = {"CPU": 1.0}
    assert [n.available for n in live.live_cluster_view().nodes] == [{"CPU": 1.0}] and len(reads) == 1
    table.append({"NodeID": "n2", "Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 4.0, "memory": 8.0 * GB}})
    available["n2"] = {"CPU": 4.0}  # a node joined
    assert [n.node_id for n in live.live_cluster_view().nodes] == ["n1", "n2"] and len(reads) == 2
    table[1]["Alive"] = False
    del available["n2"]  # and died
    assert [n.alive for n in live.live_cluster_view().nodes] == [True, False] and len(reads) == 3
    monkeypatch.setattr(live._NodeTable, "at", live._NodeTable.at - live.NODE_TABLE_MAX_AGE - 1)
    live.live_cluster_view()
    assert len(reads) == 4  # too old


def test_the_plan_says_which_layout_host_mode_jobs_get_and_why():
    task = parse_configuration({"type": "task", "commands": ["x"]})
    viewed = dict(layout="dstack's layout (/workflow, /root) in a private mount namespace", job_view=True)
    plain = dict(layout="the run's directories on the node (no private mount namespace: unshare: Operation not permitted)", job_view=False)
    one = ClusterView(nodes=[NodeView(node_id="a", ip="10.0.0.1", cpus=4, **viewed)])
    assert build_plan(task, one).layout == viewed["layout"]
    mixed = ClusterView(nodes=[NodeView(node_id=n, ip="10.0.0.1", cpus=4, **kind) for n, kind in (("a", viewed), ("b", plain), ("c", plain), ("d", {}))])
    text = build_plan(task, mixed).layout
    assert f"{viewed['layout']} (1 node)" in text and f"{plain['layout']} (2 nodes)" in text
    assert "decided on the node when a job starts there (not probed yet) (1 node)" in text
    assert build_plan(parse_configuration({"type": "task", "commands": ["x"], "image": "ubuntu"}), one).layout is None
