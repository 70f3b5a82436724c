"""Does a plan fit the cluster's free resources right now? (The Controller's admission test.)"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

from dstack_ray.models.cluster import ClusterView
from dstack_ray.plan.planner import RunPlan, assign_distinct

Resources = Dict[str, float]


def _fits(bundle: Resources, free: Resources) -> bool:
    return all(free.get(key, 0.0) + 1e-9 >= amount for key, amount in bundle.items())


def _take(bundle: Resources, free: Resources) -> None:
    for key, amount in bundle.items():
        free[key] = free.get(key, 0.0) - amount


class Released(NamedTuple):
    """A bundle of a placement group just removed: Ray's numbers count it as taken until its
    node's next resource report, which drops the group's own resources at the same time. (A run
    admitted on the strength of it before then would wait in Ray's queue of pending groups, which
    Ray retries later than that report: measured, slower than waiting for the report.)"""

    node_id: str
    group_id: str  # the placement group's id (hex)
    resources: Resources


def still_counted(released: Released, cluster: ClusterView) -> bool:
    """Whether Ray's view of the node still holds the removed group (so its resources are not
    yet back in the node's free numbers)."""
    node = next((n for n in cluster.alive_nodes if n.node_id == released.node_id), None)
    return node is not None and f"bundle_group_{released.group_id}" in node.available


def free_capacity(cluster: ClusterView, reserved: List[Resources]) -> List[Resources]:
    """Free resources per alive node, less bundles just admitted (their placement may not show
    in Ray's numbers yet)."""
    if cluster.availability_known:
        free = [dict(node.available) for node in cluster.alive_nodes]
    else:  # unknown: treat every node as free and let Ray queue the placement groups
        free = [{**node.custom, "CPU": node.cpus, "GPU": node.gpus, "memory": node.memory_bytes or 0.0} for node in cluster.alive_nodes]
    for bundle in reserved:
        for node in free:
            if _fits(bundle, node):
                _take(bundle, node)
                break
    return free


def _assign(bundles: List[Resources], free: List[Resources], distinct: bool) -> Optional[List[int]]:
    """A node index per bundle (distinct nodes when asked)."""
    if not distinct:
        chosen = []
        scratch = [dict(node) for node in free]
        for bundle in bundles:
            index = next((i for i, node in enumerate(scratch) if _fits(bundle, node)), None)
            if index is None:
                return None
            _take(bundle, scratch[index])
            chosen.append(index)
        return chosen
    return assign_distinct(len(bundles), len(free), lambda b, n: _fits(bundles[b], free[n]))


def place(plan: RunPlan, free: List[Resources]) -> bool:
    """Whether the plan fits now; if so, its bundles are taken out of `free`."""
    bundles = [b.resources for b in plan.bundles]
    assignment = _assign(bundles, free, plan.strategy == "STRICT_SPREAD")
    if assignment is None:
        return False
    for bundle, node in zip(bundles, assignment):
        _take(bundle, free[node])
    return True
