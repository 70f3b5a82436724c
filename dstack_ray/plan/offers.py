"""Offers: what a task can run on. For a connected cluster, its alive nodes and the node types
its autoscaler can add (price unknown); catalog offers come from skypilot (plan/catalog.py)."""

from __future__ import annotations

from typing import List, Optional

from pydantic import BaseModel

from dstack_ray.config.task import TaskConfiguration
from dstack_ray.models.cluster import GB, ClusterView, NodeShape
from dstack_ray.plan.planner import RunPlan, _Need

class OfferShape(BaseModel):
    """What one node of an offer has (the CLI formats it as dstack does)."""

    cpus: float
    memory_gb: Optional[float] = None  # None: not known (a node that reports no memory)
    disk: Optional[str] = None  # a disk range as dstack writes it, e.g. "100GB.."
    gpu_name: Optional[str] = None
    gpu_memory_gb: Optional[float] = None
    gpu_count: int = 0

    @classmethod
    def of_node(cls, shape: NodeShape) -> "OfferShape":
        gpus = int(shape.gpus or 0)
        return cls(
            cpus=shape.cpus,
            memory_gb=None if shape.memory_bytes is None else round(shape.memory_bytes / GB),
            gpu_name=(shape.gpu_name() or "gpu") if gpus else None,
            gpu_memory_gb=shape.gpu_memory_gb() if gpus else None,
            gpu_count=gpus,
        )

    def describe(self) -> str:
        """dstack's notation: `cpu=12 mem=85GB disk=100GB.. gpu=A100:40GB:1`."""
        parts = [f"cpu={self.cpus:g}", "mem=?" if self.memory_gb is None else f"mem={self.memory_gb:g}GB"]
        if self.disk:
            parts.append(f"disk={self.disk}")
        if self.gpu_count:
            memory = f":{self.gpu_memory_gb:g}GB" if self.gpu_memory_gb else ""
            parts.append(f"gpu={self.gpu_name}{memory}:{self.gpu_count}")
        return " ".join(parts)


class Offer(BaseModel):
    backend: str  # e.g. "ray (10.0.0.5)", "ray autoscaler", "aws (us-east-1)"
    shape: OfferShape
    instance_type: str
    price: Optional[float] = None  # $/hour; None where unknown (the cluster's own nodes)
    spot: bool = False
    availability: str = ""  # blank when available; e.g. "busy", "up to 4 more"
    region: Optional[str] = None


class Offers(BaseModel):
    """What a task can run on: the connected cluster's nodes and node types, then the catalog."""

    cluster: List[Offer]
    catalog: List[Offer]
    catalog_message: Optional[str] = None  # why there are no catalog offers
    no_capacity: Optional[str] = None  # why nothing in the cluster can ever hold the run

    @property
    def all(self) -> List[Offer]:
        return self.cluster + self.catalog


def _fits_now(shape: NodeShape, available: dict, need: _Need) -> bool:
    free = NodeShape.from_resources(available) if available else shape
    free.accelerator = shape.accelerator
    return need.fits(free)


def cluster_offers(cfg: TaskConfiguration, plan: RunPlan, cluster: ClusterView) -> List[Offer]:
    """Nodes (and autoscaler node types) that can hold at least one node of the run."""
    needs = [_Need(g.resources, cfg.image, cfg.docker) for g in cfg.node_groups]
    offers: List[Offer] = []
    for node in cluster.alive_nodes:
        fitting = [n for n in needs if n.fits(node)]
        if not fitting:
            continue
        busy = not any(_fits_now(node, node.available, n) for n in fitting)
        offers.append(
            Offer(
                backend=f"ray ({node.ip})",
                shape=OfferShape.of_node(node),
                instance_type=("head " if node.is_head else "") + node.node_id[:8],
                availability="busy" if busy else "",
                spot=node.labels.get("ray.io/market-type") == "spot",
            )
        )
    for node_type in cluster.node_types:
        if not any(n.fits(node_type) for n in needs):
            continue
        offers.append(
            Offer(
                backend="ray autoscaler",
                shape=OfferShape.of_node(node_type),
                instance_type=node_type.name,
                availability=f"up to {node_type.can_add} more" if node_type.can_add else "at max_workers",
            )
        )
    return offers
