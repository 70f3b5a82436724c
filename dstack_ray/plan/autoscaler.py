"""The node types an autoscaling cluster can add, read from the autoscaler's own configuration.

Ray's autoscaler (`monitor`) runs on the head node with `--autoscaling-config=<cluster yaml>`;
its `available_node_types` say what can join. This must run on the head node (the Controller
does); elsewhere, and on clusters without an autoscaler, there are no node types.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from dstack_ray.models.cluster import NodeShape, NodeType

logger = logging.getLogger(__name__)


_SEARCH_AGAIN_S = 10.0
_found: Dict[str, Any] = {"pid": None, "path": None, "searched_at": float("-inf")}
_parsed: Dict[Tuple[str, int], Dict] = {}  # (path, mtime_ns) -> the config read from it


def _config_argument(argv: List[bytes]) -> Optional[Path]:
    if not any(b"monitor" in arg for arg in argv[:3]):
        return None
    for index, arg in enumerate(argv):
        text = arg.decode(errors="replace")
        if text.startswith("--autoscaling-config="):
            return Path(text.split("=", 1)[1])
        if text == "--autoscaling-config" and index + 1 < len(argv):
            return Path(argv[index + 1].decode(errors="replace"))
    return None


def _cmdline(pid: str) -> List[bytes]:
    try:
        return Path("/proc", pid, "cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _autoscaler_config_path() -> Optional[Path]:
    """The `--autoscaling-config` of the head's monitor process. Scanning /proc is the costly
    part (the Controller asks on every scheduling pass): the monitor found is remembered while
    it lives, and a search that found none is repeated every few seconds only."""
    override = os.environ.get("DSTACK_RAY_AUTOSCALER_CONFIG")
    if override:
        return Path(override)
    if _found["pid"] is not None and _config_argument(_cmdline(_found["pid"])) == _found["path"]:
        return _found["path"]
    if _found["pid"] is None and time.monotonic() - _found["searched_at"] < _SEARCH_AGAIN_S:
        return None
    _found.update(pid=None, path=None, searched_at=time.monotonic())
    proc = Path("/proc")
    if not proc.exists():
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit():
            path = _config_argument(_cmdline(entry.name))
            if path is not None:
                _found.update(pid=entry.name, path=path)
                return path
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
        key = (str(path), path.stat().st_mtime_ns)
        config = _parsed.get(key)
        if config is None:
            config = yaml.safe_load(path.read_text())
            _parsed.clear()
            _parsed[key] = config
    except (OSError, yaml.YAMLError) as e:
        logger.warning("cannot read the autoscaler configuration %s: %s", path, e)
        return []
    if not isinstance(config, dict):
        return []
    return node_types_from_config(config, running)
