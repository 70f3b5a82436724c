"""Tunable timings and choices of the runtime; tests shorten the delays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from pydantic import BaseModel, Field

NAMESPACE = "dstack"
CONTROLLER_NAME = "dstack:controller"
SUPERVISOR_NAME = "dstack:supervisor"
STATE_DIR_ENV = "DSTACK_RAY_STATE_DIR"


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path.home() / ".dstack-ray")


class RuntimeSettings(BaseModel):
    """Given to the Controller when it is first created; it hands them to Supervisors."""

    state_dir: Optional[str] = None  # on the head node; None: $DSTACK_RAY_STATE_DIR or ~/.dstack-ray
    stop_grace_seconds: float = 10.0  # dstack's runner waits 10 s between SIGINT and SIGKILL
    log_flush_interval: float = 0.05
    log_chunk_bytes: int = 4 << 20
    retry_delays: List[float] = Field(default_factory=lambda: [15, 30, 60, 120, 300, 600])
    provisioning_timeout: float = 600.0  # autoscaling clusters: wait this long for new nodes
    agent_start_timeout: float = 120.0  # scheduled node tasks must report within this
    metrics_interval: float = 5.0
    gpu_sampler: str = "dstack_ray.metrics.gpu:NvmlSampler"
    container_runtime: Optional[str] = None  # podman or docker; None: whichever the node has
    clock_offset_file: Optional[str] = None  # tests: seconds to add to the scheduling clock
    scheduler_interval: float = 1.0  # how often queued runs and schedules are looked at

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir()
