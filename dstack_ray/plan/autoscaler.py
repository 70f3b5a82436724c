"""The node types an autoscaling cluster can add, read from the autoscaler's own configuration.

Ray's autoscaler (`monitor`) runs on the head node with `--autoscaling-config=<cluster yaml>`;
its `available_node_types` say what can join. This must run on the head node (the Controller
does); elsewhere, and on clusters without an autoscaler, there are no node types.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from dstack_ray.plan.cluster import NodeShape, NodeType

logger = logging.getLogger(__name__)


def _autoscaler_config_path() -> Optional[Path]:
    override = os.environ.get("DSTACK_RAY_AUTOSCALER_CONFIG")
    if override:
        return Path(override)
    proc = Path("/proc")
    if not proc.exists():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(b"monitor" in arg for arg in argv[:3]):
            continue
        for index, arg in enumerate(argv):
            text = arg.decode(errors="replace")
            if text.startswith("--autoscaling-config="):
                return Path(text.split("=", 1)[1])
            if text == "--autoscaling-config" and index + 1 < len(argv):
                return Path(argv[index + 1].decode(errors="replace"))
    return None


def node_types_from_config(config: Dict, running: Optional[Dict[str, int]] = None) -> List[NodeType]:
    """Worker node types of a cluster launcher config (`available_node_types`), head excluded."""
    head = config.get("head_node_type")
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        labels = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
        shape = NodeShape.from_resources(resources, labels)
        types.append(
            NodeType(
                name=name,
                min_workers=int(spec.get("min_workers", 0) or 0),
                max_workers=int(spec.get("max_workers", config.get("max_workers", 0)) or 0),
                running=(running or {}).get(name, 0),
                **shape.model_dump(),
            )
        )
    return types


def autoscaler_node_types(running: Optional[Dict[str, int]] = None) -> List[NodeType]:
    path = _autoscaler_config_path()
    if path is None:
        return []
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        logger.warning("cannot read the autoscaler configuration %s: %s", path, e)
        return []
    if not isinstance(config, dict):
        return []
    return node_types_from_config(config, running)
