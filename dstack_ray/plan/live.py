"""The connected Ray cluster as a ClusterView: its nodes (from GCS) and the autoscaler's node
types. Separate from `cluster.py` (the models) so that `autoscaler.py` can use those models."""

from __future__ import annotations

from dstack_ray.plan.autoscaler import autoscaler_node_types
from dstack_ray.plan.cluster import HEAD_MARKER, ClusterView, NodeShape, NodeView


def live_cluster_view() -> ClusterView:
    """The connected cluster's nodes (from GCS; works without the dashboard)."""
    import ray

    try:
        from ray._private.state import available_resources_per_node

        available = available_resources_per_node()
        known = True
    except Exception:  # a private API: without it, offers don't say "busy" and Ray queues runs
        available, known = {}, False
    nodes = []
    for node in ray.nodes():
        resources = node.get("Resources", {}) or {}
        view = NodeView(
            node_id=node["NodeID"],
            ip=node.get("NodeManagerAddress", ""),
            alive=bool(node.get("Alive")),
            is_head=HEAD_MARKER in resources,
            available=available.get(node["NodeID"], {}),
            **NodeShape.from_resources(resources, node.get("Labels") or {}).model_dump(),
        )
        nodes.append(view)
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
