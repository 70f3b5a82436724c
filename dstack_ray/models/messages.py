"""The messages a supervisor and the node agents running its jobs exchange (through the
SupervisorHost's rendezvous), the same types on both sides."""

from __future__ import annotations

from typing import List, Optional

from pydantic import BaseModel

from dstack_ray.models.runs import JobTerminationReason


class NodeReady(BaseModel):
    """A job's node agent is up: where the job will run."""

    ip: str
    node_id: str
    gpu_ids: List[str] = []
    ssh_port: Optional[int] = None  # the job's sshd; None where the node runs none


class StartOrder(BaseModel):
    """Run the commands: every node's IP and GPU count, in rank order."""

    ips: List[str]
    gpus_per_node: List[int]
    ssh_ports: List[Optional[int]] = []  # per rank; None where the node runs no sshd


class StopOrder(BaseModel):
    """Stop the job: SIGINT, then SIGKILL after `grace` seconds; at once with `abort`."""

    reason: Optional[JobTerminationReason]  # what the job ends with; None: nobody supervises it any more
    abort: bool = False
    grace: Optional[float] = None  # None: the agent's setting


CLOSED = StopOrder(reason=None, abort=True)


class NodeOutcome(BaseModel):
    """How a job ended, as its node agent saw it."""

    exit_code: Optional[int] = None
    stopped: bool = False  # a stop order ended it, or it was called off before it started
    error: Optional[str] = None  # the agent could not run the command
    error_reason: Optional[JobTerminationReason] = None  # how that error ends the job
    node_lost: bool = False  # the node's raylet died while the command ran
    started: bool = False
