"""Tunable timings and choices of the runtime; tests shorten the delays."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, List, Optional, Tuple

from pydantic import BaseModel, Field

NAMESPACE = "dstack"
CONTROLLER_NAME = "dstack:controller"
SUPERVISOR_NAME = "dstack:supervisor"
STATE_DIR_ENV = "DSTACK_RAY_STATE_DIR"
DEFAULT_IMAGE_ENV = "DSTACK_RAY_DEFAULT_IMAGE"
RETENTION_DAYS_ENV = "DSTACK_RAY_RETENTION_DAYS"
RETENTION_RUNS_ENV = "DSTACK_RAY_RETENTION_RUNS"


def named_controller() -> Optional[Any]:
    """The cluster's Controller by its name, or None while there is none (in a Ray process)."""
    import ray

    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path.home() / ".dstack-ray")


class RuntimeSettings(BaseModel):
    """Given to the Controller when it is first created; it hands them to Supervisors."""

    state_dir: Optional[str] = None  # on the head node; None: $DSTACK_RAY_STATE_DIR or ~/.dstack-ray
    stop_grace_seconds: float = 10.0  # dstack's runner waits 10 s between SIGINT and SIGKILL
    log_flush_interval: float = 0.05
    log_chunk_bytes: int = 4 << 20
    log_limit_bytes: int = 10 << 30  # per job and attempt; 0: no limit
    retry_delays: List[float] = Field(default_factory=lambda: [15, 30, 60, 120, 300, 600])
    provisioning_timeout: float = 600.0  # autoscaling clusters: wait this long for new nodes
    agent_start_timeout: float = 120.0  # scheduled node tasks must report within this
    metrics_interval: float = 5.0
    gpu_sampler: str = "dstack_ray.metrics.gpu:NvmlSampler"
    container_runtime: Optional[str] = None  # podman or docker; None: whichever the node has
    clock_offset_file: Optional[str] = None  # tests: seconds to add to the scheduling clock
    scheduler_interval: float = 1.0  # how often queued runs and schedules are looked at
    # Host-mode jobs: may uv download a `python:` version a node does not have (from uv's
    # Python builds)? Tests and air-gapped clusters turn it off.
    python_downloads: bool = True
    # The cluster's default image: tasks without `image` run in it (podman/docker on every node),
    # as dstack runs them in its base image. None: $DSTACK_RAY_DEFAULT_IMAGE on the head, else
    # host mode (the job's own venv and home on the node).
    default_image: Optional[str] = None
    # Finished runs (record, events, metrics, logs, shipped files) are removed once older than
    # `retention_days`, or beyond the newest `retention_runs` runs; None: kept for ever. None
    # here: $DSTACK_RAY_RETENTION_DAYS / $DSTACK_RAY_RETENTION_RUNS on the head, if set.
    retention_days: Optional[float] = Field(default=None, gt=0)
    retention_runs: Optional[int] = Field(default=None, gt=0)

    def state_dir_for(self, gcs_address: str) -> Path:
        """The state directory of the cluster at `gcs_address`: the configured one, else one
        per cluster below the default, so two Ray clusters on one machine never share runs."""
        if self.state_dir:
            return Path(self.state_dir)
        key = re.sub(r"[^A-Za-z0-9.-]", "_", gcs_address) or "default"
        return default_state_dir() / "clusters" / key

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir()

    def resolved_retention(self) -> Tuple[Optional[float], Optional[int]]:
        """(days, runs) of the retention; an environment value that is not a positive number
        is an error naming the variable."""
        days, runs = self.retention_days, self.retention_runs
        for name, kind in ((RETENTION_DAYS_ENV, float), (RETENTION_RUNS_ENV, int)):
            text = os.environ.get(name)
            if not text or (kind is float and days is not None) or (kind is int and runs is not None):
                continue
            try:
                value = kind(text)
                if value <= 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{name}={text!r}: give a positive {'number of days' if kind is float else 'whole number of runs'}") from None
            if kind is float:
                days = value
            else:
                runs = int(value)
        return days, runs

    def resolved_default_image(self) -> Optional[str]:
        return self.default_image or os.environ.get(DEFAULT_IMAGE_ENV) or None
