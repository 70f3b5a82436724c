"""Offers: what a task can run on. For a connected cluster, its alive nodes and the node types
its autoscaler can add (price unknown); catalog offers come from skypilot (plan/catalog.py)."""

from __future__ import annotations

from typing import List, Optional

from pydantic import BaseModel

from dstack_ray.config.task import TaskConfiguration
from dstack_ray.plan.cluster import ClusterView, NodeShape, memory_text
from dstack_ray.plan.planner import RunPlan, _Need

NO_OFFERS_WARNING = (
    "[gold1]No matching instance offers available. Possible reasons:"
    " https://dstack.ai/docs/guides/troubleshooting/#no-offers[/]"
)


class Offer(BaseModel):
    backend: str  # e.g. "ray (10.0.0.5)", "ray autoscaler", "aws (us-east-1)"
    resources: str  # dstack's offer display: cpu=... mem=... disk=... gpu=...
    instance_type: str
    price: Optional[float] = None
    spot: bool = False
    availability: str = ""  # blank when available; e.g. "busy", "up to 4 more"
    region: Optional[str] = None

    @property
    def price_text(self) -> str:
        if self.price is None:
            return "-"
        return f"${self.price:3f}".rstrip("0").rstrip(".")


class Offers(BaseModel):
    """What a task can run on: the connected cluster's nodes and node types, then the catalog."""

    cluster: List[Offer]
    catalog: List[Offer]
    catalog_message: Optional[str] = None  # why there are no catalog offers
    no_capacity: Optional[str] = None  # why nothing in the cluster can ever hold the run

    @property
    def all(self) -> List[Offer]:
        return self.cluster + self.catalog


def shape_resources(shape: NodeShape) -> str:
    """`cpu=8 mem=30GB gpu=H100:80GB:1` for a node or node type."""
    parts = [f"cpu={shape.cpus:g}", f"mem={memory_text(shape.memory_bytes)}"]
    if shape.gpus:
        name = shape.gpu_name() or "gpu"
        memory = shape.gpu_memory_gb()
        parts.append(f"gpu={name}:{memory:g}GB:{shape.gpus:g}" if memory else f"gpu={name}:{shape.gpus:g}")
    return " ".join(parts)


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
                resources=shape_resources(node),
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
                resources=shape_resources(node_type),
                instance_type=node_type.name,
                availability=f"up to {node_type.can_add} more" if node_type.can_add else "at max_workers",
            )
        )
    return offers
