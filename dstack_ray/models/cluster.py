"""What a plan is made against: the Ray cluster's nodes and the node types it can add."""

from __future__ import annotations

from typing import Dict, List, Optional

from pydantic import BaseModel, Field

from dstack_ray.config.gpus import canonical_name, find_accelerators

ACCELERATOR_PREFIX = "accelerator_type:"
HEAD_MARKER = "node:__internal_head__"
GB = 1024**3


class NodeShape(BaseModel):
    """Resources of one node, or of one node an autoscaler node type would add."""

    cpus: float = 0
    gpus: float = 0
    memory_bytes: Optional[float] = None  # None: not declared (an autoscaler node type may omit it)
    accelerator: Optional[str] = None  # Ray's accelerator type, e.g. "H100" or "A100-80G"
    labels: Dict[str, str] = Field(default_factory=dict)
    custom: Dict[str, float] = Field(default_factory=dict)

    @classmethod
    def from_resources(cls, resources: Dict[str, float], labels: Optional[Dict[str, str]] = None) -> "NodeShape":
        accelerators = [k[len(ACCELERATOR_PREFIX) :] for k in resources if k.startswith(ACCELERATOR_PREFIX)]
        return cls(
            cpus=resources.get("CPU", 0),
            gpus=resources.get("GPU", 0),
            memory_bytes=resources.get("memory"),
            accelerator=accelerators[0] if accelerators else (labels or {}).get("ray.io/accelerator-type"),
            labels=dict(labels or {}),
            custom={
                k: v
                for k, v in resources.items()
                if k not in ("CPU", "GPU", "memory", "object_store_memory")
                and not k.startswith("node:")
                and "_group_" not in k  # Ray's placement-group resources (CPU_group_<pg>...): not the node's own
            },
        )

    def gpu_name(self) -> Optional[str]:
        """The dstack GPU name of this node's accelerator type (`A100-80G` -> `A100`)."""
        return accelerator_gpu_name(self.accelerator) if self.accelerator else None

    def gpu_memory_gb(self) -> Optional[float]:
        if not self.accelerator:
            return None
        return accelerator_memory_gb(self.accelerator)

    def describe(self) -> str:
        parts = [f"cpu={self.cpus:g}", f"mem={memory_text(self.memory_bytes)}"]
        if self.gpus:
            name = self.gpu_name() or "gpu"
            parts.append(f"gpu={name}:{self.gpus:g}")
        return " ".join(parts)


class NodeView(NodeShape):
    node_id: str
    ip: str
    alive: bool = True
    is_head: bool = False
    available: Dict[str, float] = Field(default_factory=dict)
    # How host-mode jobs see this node (exec/view.py `NodeLayout.describe`), once probed there;
    # job_view: whether they get dstack's layout in a private view (None: not probed yet).
    layout: Optional[str] = None
    job_view: Optional[bool] = None


class NodeType(NodeShape):
    """An autoscaler node type: `max_workers - running` more nodes of this shape can appear."""

    name: str
    min_workers: int = 0
    max_workers: int = 0
    running: int = 0

    @property
    def can_add(self) -> int:
        return max(0, self.max_workers - self.running)


class ClusterView(BaseModel):
    nodes: List[NodeView] = Field(default_factory=list)
    node_types: List[NodeType] = Field(default_factory=list)
    autoscaling: bool = False
    availability_known: bool = False  # whether `NodeView.available` was read from Ray
    default_image: Optional[str] = None  # the cluster's image for tasks without `image`

    @property
    def alive_nodes(self) -> List[NodeView]:
        return [n for n in self.nodes if n.alive]

    def shape_key(self) -> str:
        """Everything a run's plan depends on (not the free resources): equal keys, equal plans."""
        return self.model_copy(update={"nodes": [n.model_copy(update={"available": {}}) for n in self.nodes]}).model_dump_json()


def memory_text(memory_bytes: Optional[float]) -> str:
    return "?" if memory_bytes is None else f"{memory_bytes / GB:.0f}GB"


def _normalize(name: str) -> str:
    text = name.lower()
    for prefix in ("amd-instinct-", "intel-gpu-", "nvidia-", "intel-", "tpu-"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text.replace("-", "").replace("_", "")


def accelerator_gpu_name(accelerator: str) -> str:
    """`A100-80G` -> `A100`, `RTX-PRO-6000` -> `RTXPRO6000`, `AMD-Instinct-MI300X` -> `MI300X`."""
    text = accelerator
    for suffix in ("-80G", "-40G"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    normalized = _normalize(text)
    for candidate in (text, normalized):
        if find_accelerators(candidate):
            return canonical_name(candidate)
    return normalized.upper() if normalized else accelerator


def accelerator_memory_gb(accelerator: str) -> Optional[float]:
    if accelerator.endswith("-80G"):
        return 80.0
    if accelerator.endswith("-40G"):
        return 40.0
    known = find_accelerators(accelerator_gpu_name(accelerator))
    return min(a.memory_gb for a in known) if known else None
