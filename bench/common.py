"""Shared set-up for the benchmarks: one warm local Ray, a dstack-ray Client, figures."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from typing import Dict, List, Sequence

# The benchmark cluster is local and private; token auth would only add set-up here.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SMALL = {"cpu": 1, "memory": "0.."}


def machine() -> str:
    cpus = os.cpu_count()
    with open("/proc/meminfo") as f:
        total_kb = int(f.readline().split()[1])
    return f"{platform.machine()} {cpus} cores {total_kb / 1024**2:.0f} GiB, {platform.python_version()}"


def start_local_ray(num_cpus: int = 2, dashboard: bool = False) -> None:
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=False)


def client(**settings):
    from dstack_ray import Client
    from dstack_ray.runtime.settings import RuntimeSettings

    state = tempfile.mkdtemp(prefix="dstack-ray-bench-")
    return Client(settings=RuntimeSettings(state_dir=state, **settings))


def summary(values: Sequence[float]) -> Dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median": round(statistics.median(ordered), 4), "p90": round(p90, 4), "min": round(ordered[0], 4), "n": len(ordered)}


def report(name: str, figures: Dict) -> None:
    """Print the figures readably, then one JSON line (the last line of the output)."""
    print(f"# {name} on {machine()}")
    for key, value in figures.items():
        print(f"{key}: {value}")
    print(json.dumps({"benchmark": name, "machine": machine(), **figures}))


def task(name: str, commands: List[str], **extra) -> dict:
    return {"type": "task", "name": name, "commands": commands, "resources": dict(SMALL), **extra}
