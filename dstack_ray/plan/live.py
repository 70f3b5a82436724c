"""The connected Ray cluster as a ClusterView: its nodes (from GCS) and the autoscaler's node
types. Separate from `models/cluster.py` so that `autoscaler.py` can use those models."""

from __future__ import annotations

import json
import threading
import time
from typing import Dict, FrozenSet, List, Optional

from dstack_ray.plan.autoscaler import autoscaler_node_types
from dstack_ray.models.cluster import HEAD_MARKER, ClusterView, NodeShape, NodeView
from dstack_ray.runtime.settings import NAMESPACE

LAYOUT_KV_PREFIX = "layout:"  # + node id: what runtime/agent.py `publish_layout` found there


NODE_TABLE_MAX_AGE = 5.0  # seconds a read of Ray's node table serves while its nodes stay the same


class _NodeTable:
    """The nodes as last read from Ray's node table (`ray.nodes()`: every node's full record,
    the costliest GCS call of a scheduling pass), shared by the threads of one process."""

    lock = threading.Lock()
    at = float("-inf")
    alive: FrozenSet[str] = frozenset()
    views: List[NodeView] = []


def _node_views(reporting: Optional[FrozenSet[str]]) -> List[NodeView]:
    """The cluster's nodes (without free resources). The last read serves while the alive nodes
    are the ones Ray reports free resources for (`reporting`; a node that joins or dies changes
    them) and it is at most NODE_TABLE_MAX_AGE old."""
    import ray

    with _NodeTable.lock:
        if reporting == _NodeTable.alive and time.monotonic() - _NodeTable.at <= NODE_TABLE_MAX_AGE:
            return _NodeTable.views
    views = []
    for node in ray.nodes():
        resources = node.get("Resources", {}) or {}
        views.append(
            NodeView(
                node_id=node["NodeID"],
                ip=node.get("NodeManagerAddress", ""),
                alive=bool(node.get("Alive")),
                is_head=HEAD_MARKER in resources,
                **NodeShape.from_resources(resources, node.get("Labels") or {}).model_dump(),
            )
        )
    with _NodeTable.lock:
        _NodeTable.at, _NodeTable.views = time.monotonic(), views
        _NodeTable.alive = frozenset(v.node_id for v in views if v.alive)
    return views


_known_layouts: Dict[str, dict] = {}  # a node's layout does not change while it lives


def with_layouts(nodes: List[NodeView]) -> List[NodeView]:
    """The nodes with what their probes published (read again while an alive node lacks one)."""
    if any(n.alive and n.node_id not in _known_layouts for n in nodes):
        _known_layouts.update(_layouts())
    return [n.model_copy(update=_known_layouts[n.node_id]) if n.node_id in _known_layouts else n for n in nodes]


def _layouts() -> Dict[str, dict]:
    """What each node's probe published (node id -> `layout`, `job_view`): see
    runtime/agent.py `publish_layout`."""
    try:
        from ray.experimental import internal_kv

        found = {}
        for key in internal_kv._internal_kv_list(LAYOUT_KV_PREFIX, namespace=NAMESPACE):
            value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
            if value:
                found[key.decode()[len(LAYOUT_KV_PREFIX) :]] = json.loads(value)
        return found
    except Exception:  # a private API: without it the plan says layouts are decided on the nodes
        return {}


def live_cluster_view() -> ClusterView:
    """The connected cluster's nodes (from GCS; works without the dashboard)."""
    try:
        from ray._private.state import available_resources_per_node

        available = available_resources_per_node()
        known = True
    except Exception:  # a private API: without it, offers don't say "busy" and Ray queues runs
        available, known = {}, False
    views = _node_views(frozenset(available) if known else None)
    nodes = with_layouts([view.model_copy(update={"available": available.get(view.node_id, {})}) for view in views])
    node_types = autoscaler_node_types()
    for node_type in node_types:  # how many of each type run now (matched by shape)
        node_type.running = sum(
            1
            for n in nodes
            if n.alive
            and not n.is_head
            and (n.cpus, n.gpus, n.accelerator) == (node_type.cpus, node_type.gpus, node_type.accelerator)
        )
    return ClusterView(nodes=nodes, node_types=node_types, autoscaling=bool(node_types), availability_known=known)
