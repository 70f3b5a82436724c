"""From a task configuration and a cluster view to a RunPlan: one Ray bundle per node.

A resource range resolves to its smallest value (as dstack picks the smallest offer); the GPU
name, vendor and memory select the Ray accelerator type to request. Several nodes use
STRICT_SPREAD, ranks are bundle indexes, groups keep their own resources with contiguous ranks.
Whatever a bundle cannot express (disk, spot, regions, backends...) becomes a note in the plan.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

from pydantic import BaseModel, Field

from dstack_ray.config.checks import inferred_gpu_vendor
from dstack_ray.config.gpus import AcceleratorVendor, vendors_of
from dstack_ray.config.resources import GPUSpec, ResourcesSpec
from dstack_ray.config.task import TaskConfiguration
from dstack_ray.models.cluster import ACCELERATOR_PREFIX, GB, ClusterView, NodeShape

ACCELERATOR_AMOUNT = 0.001
MIN_BUNDLE_CPU = 0.001  # Ray rejects empty bundles


class NodeBundle(BaseModel):
    """The resources of one rank, as Ray will reserve them."""

    rank: int
    group: str
    group_index: int
    index_in_group: int
    cpus: float
    memory_bytes: int
    gpus: int
    accelerator: Optional[str] = None
    label_selector: Dict[str, str] = Field(default_factory=dict)

    @property
    def resources(self) -> Dict[str, float]:
        bundle: Dict[str, float] = {"CPU": max(self.cpus, MIN_BUNDLE_CPU)}
        if self.memory_bytes:
            bundle["memory"] = float(self.memory_bytes)
        if self.gpus:
            bundle["GPU"] = float(self.gpus)
        if self.accelerator:
            bundle[ACCELERATOR_PREFIX + self.accelerator] = ACCELERATOR_AMOUNT
        return bundle

    def describe(self) -> str:
        parts = [f"cpu={self.cpus:g}", f"mem={self.memory_bytes / GB:g}GB"]
        if self.gpus:
            parts.append(f"gpu={self.accelerator + ':' if self.accelerator else ''}{self.gpus}")
        return " ".join(parts)


class RunPlan(BaseModel):
    bundles: List[NodeBundle]
    strategy: str
    notes: List[str] = Field(default_factory=list)
    no_capacity: Optional[str] = None  # why nothing in the cluster can ever hold the run
    needs_new_nodes: bool = False  # fits only on nodes the autoscaler would add
    layout: Optional[str] = None  # how host-mode jobs see their nodes (None: in a container)

    @property
    def nodes_num(self) -> int:
        return len(self.bundles)

    def gpus_per_node(self) -> List[int]:
        return [b.gpus for b in self.bundles]

    def need_key(self) -> tuple:
        """Equal for plans that fit in exactly the same free resources."""
        return (self.strategy, tuple(tuple(sorted(b.resources.items())) for b in self.bundles))


def _gpu_filter(gpu: Optional[GPUSpec], vendor: Optional[AcceleratorVendor]):
    """A predicate on node shapes for the GPU part of the request (count checked elsewhere)."""

    def accepts(shape: NodeShape) -> bool:
        if gpu is None:
            return True
        name = shape.gpu_name()
        if gpu.name:
            if name is None or name.lower() not in {n.lower() for n in gpu.name}:
                return False
        if vendor is not None and name is not None:
            known = vendors_of(name)
            if known and vendor not in known:
                return False
        if vendor is not None and vendor != AcceleratorVendor.NVIDIA and name is None:
            return False  # Ray's plain GPU resource is NVIDIA unless the node says otherwise
        for memory_range in (gpu.memory,):
            if memory_range is not None:
                memory = shape.gpu_memory_gb()
                if memory is None or not memory_range.contains(memory):
                    return False
        if gpu.total_memory is not None:
            memory = shape.gpu_memory_gb()
            count = gpu.count.min or 0
            if memory is None or not gpu.total_memory.contains(memory * max(count, 1)):
                return False
        return True

    return accepts


class _Need:
    """One group's per-node requirement, resolved to the smallest values."""

    def __init__(self, resources: ResourcesSpec, image: Optional[str], docker: Optional[bool]) -> None:
        self.resources = resources
        self.cpus = float(resources.cpu.count.min or 0)
        self.memory_bytes = int((resources.memory.min or 0) * GB)
        gpu = resources.gpu
        self.gpus = int(gpu.count.min or 0) if gpu is not None else 0
        self.gpu_wanted = gpu is not None and (gpu.count.max is None or gpu.count.max > 0) and self.gpus > 0
        self.vendor = inferred_gpu_vendor(gpu, image, docker)
        self.gpu_ok = _gpu_filter(gpu if self.gpu_wanted else None, self.vendor if self.gpu_wanted else None)

    def fits(self, shape: NodeShape) -> bool:
        if shape.cpus < self.cpus:
            return False
        if shape.memory_bytes is not None and shape.memory_bytes < self.memory_bytes:
            return False
        if self.gpus and shape.gpus < self.gpus:
            return False
        return self.gpu_ok(shape) if self.gpu_wanted else True

    def why_not(self, shapes: Sequence[NodeShape]) -> str:
        """The first resource that rules every node out, for the `no capacity` message."""
        if not shapes:
            return "the cluster has no nodes"
        best_cpu = max(s.cpus for s in shapes)
        if best_cpu < self.cpus:
            return f"needs {self.cpus:g} CPUs per node, the largest node has {best_cpu:g}"
        best_mem = max(s.memory_bytes if s.memory_bytes is not None else float("inf") for s in shapes)
        if best_mem < self.memory_bytes:
            return (
                f"needs {self.memory_bytes / GB:g}GB of memory per node, the largest node has"
                f" {best_mem / GB:.1f}GB (Ray's `memory` resource)"
            )
        best_gpu = max(s.gpus for s in shapes)
        if self.gpus and best_gpu < self.gpus:
            return f"needs {self.gpus} GPUs per node, the largest node has {best_gpu:g}"
        if self.gpu_wanted:
            names = sorted({s.gpu_name() or "unknown" for s in shapes if s.gpus})
            wanted = self.resources.gpu.pretty_format() if self.resources.gpu else ""
            return f"needs GPU {wanted}, the cluster has: {', '.join(names) or 'none'}"
        return "no node satisfies the resources"

    def accelerator_for(self, shapes: Sequence[NodeShape]) -> Optional[str]:
        """The Ray accelerator type to request: one the fitting nodes have, when names matter."""
        gpu = self.resources.gpu
        if not self.gpu_wanted or gpu is None:
            return None
        constrained = bool(gpu.name or gpu.memory or gpu.total_memory)
        if not constrained:
            return None
        for shape in shapes:
            if self.fits(shape) and shape.accelerator:
                return shape.accelerator
        return None


def assign_distinct(count: int, slots: int, fits: Callable[[int, int], bool]) -> Optional[List[int]]:
    """A distinct slot for each of `count` items (augmenting-path bipartite matching), or None."""
    owner: Dict[int, int] = {}

    def assign(item: int, seen: set) -> bool:
        for slot in range(slots):
            if slot in seen or not fits(item, slot):
                continue
            seen.add(slot)
            if slot not in owner or assign(owner[slot], seen):
                owner[slot] = item
                return True
        return False

    if not all(assign(item, set()) for item in range(count)):
        return None
    by_item = {item: slot for slot, item in owner.items()}
    return [by_item[item] for item in range(count)]


def _match(needs: List["_Need"], shapes: List[NodeShape], distinct: bool) -> bool:
    """Whether every need gets its own node or, if not distinct, any node that fits."""
    if not distinct:
        return all(any(n.fits(s) for s in shapes) for n in needs)
    return assign_distinct(len(needs), len(shapes), lambda i, j: needs[i].fits(shapes[j])) is not None


def _notes(cfg: TaskConfiguration) -> List[str]:
    notes = []
    for group in cfg.node_groups:
        res = group.resources
        if "disk" in res.model_fields_set and res.disk is not None:
            notes.append(f"disk={res.disk.size} is not enforced: Ray has no disk resource")
        if res.cpu.arch is not None:
            notes.append(f"cpu arch {res.cpu.arch.value} is not checked: Ray nodes do not report it")
        if res.shm_size is not None and cfg.image is None:
            notes.append("shm_size applies to containers only (set `image`)")
    unsupported = {
        "backends": "backends",
        "availability_zones": "availability_zones",
        "instance_types": "instance_types",
        "reservation": "reservation",
        "fleets": "fleets",
        "instances": "instances",
        "max_price": "max_price",
        "backend_options": "backend_options",
    }
    for field, label in unsupported.items():
        if getattr(cfg, field):
            notes.append(f"{label} is used for offers only: Ray schedules on the nodes the cluster has")
    for volume in cfg.volumes:
        if hasattr(volume, "name"):
            notes.append(f"network volume {volume.name} is not mounted: Ray has no volumes; use an instance path")
    if cfg.dstack:
        notes.append("`dstack: true` has no effect: there is no dstack server on Ray")
    return notes


def _label_selector(cfg: TaskConfiguration, cluster: ClusterView) -> Dict[str, str]:
    """Market type and region, where the cluster's nodes carry Ray's default labels."""
    labels = set().union(*(n.labels.keys() for n in cluster.alive_nodes)) if cluster.alive_nodes else set()
    labels |= set().union(*(t.labels.keys() for t in cluster.node_types)) if cluster.node_types else set()
    selector = {}
    if cfg.spot_policy is not None and cfg.spot_policy.value != "auto" and "ray.io/market-type" in labels:
        selector["ray.io/market-type"] = "spot" if cfg.spot_policy.value == "spot" else "on-demand"
    if cfg.regions and "ray.io/availability-region" in labels:
        selector["ray.io/availability-region"] = "in(" + ",".join(cfg.regions) + ")"
    return selector


def host_layout(cfg: TaskConfiguration, cluster: ClusterView) -> Optional[str]:
    """Which layout a host-mode run gets on the cluster's nodes, and why (from what each node's
    probe found: exec/view.py); None for a run in a container."""
    if cfg.image is not None or cfg.docker or cluster.default_image is not None:
        return None
    counts: Dict[str, int] = {}
    for node in cluster.alive_nodes:
        text = node.layout or "decided on the node when a job starts there (not probed yet)"
        counts[text] = counts.get(text, 0) + 1
    if cluster.autoscaling:
        counts.setdefault("decided on each node the autoscaler adds", 0)
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{text} ({n} node{'s' if n != 1 else ''})" if n else text for text, n in counts.items())


def build_plan(cfg: TaskConfiguration, cluster: ClusterView) -> RunPlan:
    """Resolve each node's bundle and judge whether the cluster can ever hold the run."""
    alive: List[NodeShape] = list(cluster.alive_nodes)
    addable: List[NodeShape] = [t for t in cluster.node_types for _ in range(min(t.can_add, 64))]
    selector = _label_selector(cfg, cluster)
    bundles: List[NodeBundle] = []
    needs: List[_Need] = []
    rank = 0
    for group_index, group in enumerate(cfg.node_groups):
        need = _Need(group.resources, cfg.image, cfg.docker)
        accelerator = need.accelerator_for(alive + addable)
        for index in range(group.nodes):
            bundles.append(
                NodeBundle(
                    rank=rank,
                    group=group.name or str(group_index),
                    group_index=group_index,
                    index_in_group=index,
                    cpus=need.cpus,
                    memory_bytes=need.memory_bytes,
                    gpus=need.gpus,
                    accelerator=accelerator,
                    label_selector=selector,
                )
            )
            needs.append(need)
            rank += 1
    distinct = len(bundles) > 1
    plan = RunPlan(bundles=bundles, strategy="STRICT_SPREAD" if distinct else "PACK", notes=_notes(cfg), layout=host_layout(cfg, cluster))
    if "CUDA_VISIBLE_DEVICES" in cfg.env and cfg.image is None and not cfg.docker:
        plan.notes.append("CUDA_VISIBLE_DEVICES in `env` is replaced by the GPUs Ray assigns to each node")
    if "stop_duration" in cfg.model_fields_set:
        plan.notes.append(
            "stop_duration: on stop, commands get SIGINT and are killed 10 s later, as dstack's"
            " runner does; the stop duration only bounds the whole stop"
        )
    if cfg.image is None and not cfg.docker and cluster.default_image:
        plan.notes.append(f"no `image`: runs in the cluster's default image {cluster.default_image}")
        if cfg.python or cfg.nvcc:
            plan.notes.append("`python`/`nvcc` are not applied inside the default image: it brings its own Python and CUDA")
    if selector:
        plan.notes.append("placed with node labels " + ", ".join(f"{k}={v}" for k, v in selector.items()))
    elif cfg.spot_policy is not None and cfg.spot_policy.value == "spot":
        plan.notes.append("spot_policy: spot is not enforced: nodes carry no ray.io/market-type label")
    if not _match(needs, alive, distinct):
        if _match(needs, alive + addable, distinct):
            plan.needs_new_nodes = True
        else:
            shapes = alive + addable
            reasons = []
            for need in dict.fromkeys(needs):
                if not any(need.fits(s) for s in shapes):
                    reasons.append(need.why_not(shapes))
            if not reasons:
                fitting = sum(1 for s in shapes if any(n.fits(s) for n in needs))
                reasons.append(f"needs {len(bundles)} distinct nodes, {fitting} can hold a node of this run")
            plan.no_capacity = "; ".join(dict.fromkeys(reasons))
    return plan
