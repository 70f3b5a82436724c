"""The service's API, defined once: each operation's route, its arguments and its answer.

The Controller implements every operation as a method of the same name and arguments; the HTTP
server makes its routes from `OPERATIONS` (service/server.py), and both ways a client reaches
the Controller — HTTP to the service (the CLI) and actor handles (inside a Ray application) —
call an operation by name with keyword arguments (`Transport.call`). Adding a field: the
request model here and the Controller's method; adding an operation: one `Operation` and the
method. Errors are typed once in `dstack_ray.errors`. Two routes carry bytes and stay written
by hand: a job's log stream and the port relay.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from dstack_ray.models.cluster import ClusterView
from dstack_ray.models.runs import JobRecord, RunRecord


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ListRuns(_Request):
    """Runs newest first: the active ones, or a page of the history (`before_*`: the previous
    page's last run)."""

    limit: Optional[int] = Field(None, ge=1)
    active_only: bool = Field(False, alias="active")
    before_at: Optional[str] = None
    before_id: Optional[str] = None


class WaitRun(_Request):
    """Long poll: the run once its version passes `version`, or after `timeout` seconds."""

    version: int
    timeout: float = Field(10.0, ge=0, le=60)


class Metrics(_Request):
    since_seconds: Optional[float] = Field(None, alias="since", ge=0)


class Submit(_Request):
    """A run spec (validated by the Controller, which names a wrong field) and its packed files."""

    spec: Dict[str, Any]
    payload: Optional[str] = None


class StopRun(_Request):
    abort: bool = False


class Empty(_Request):
    pass


Event = Tuple[str, str]  # (time, message)


class MetricsSample(BaseModel):
    """One sample of a job of the run's latest attempt: a GPU's (`kind` "gpu": gpu,
    utilization %, memory_used/memory_total bytes) or the job's processes' (`kind` "job":
    cpu_percent of one core, memory_bytes resident)."""

    at: datetime
    attempt: int
    rank: int
    kind: Literal["gpu", "job"] = "gpu"
    gpu: Optional[str] = None
    utilization: Optional[float] = None
    memory_used: Optional[int] = None
    memory_total: Optional[int] = None
    cpu_percent: Optional[float] = None
    memory_bytes: Optional[int] = None


@dataclass(frozen=True)
class Operation:
    """One operation: the Controller's method `name`, its HTTP route (path placeholders are
    arguments too), the model of its other arguments (from the query of a GET or DELETE, the
    JSON body otherwise) and the type of its answer. `missing_ok`: the Controller answers None
    for an unknown run (HTTP 404; the clients give None back)."""

    name: str
    method: str
    path: str
    arguments: Type[_Request] = Empty
    answer: Any = Any
    missing_ok: bool = False
    waits: Optional[str] = None  # the argument that says how long the Controller may wait

    @property
    def path_names(self) -> List[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]

    @property
    def in_query(self) -> bool:
        return self.method in ("GET", "DELETE")

    @functools.cached_property
    def _answer_adapter(self) -> TypeAdapter:
        return TypeAdapter(self.answer)  # built once per operation: every call of it validates with it

    def answer_of(self, data: Any) -> Any:
        """The Controller's JSON answer as the operation's type."""
        return None if data is None else self._answer_adapter.validate_python(data)


OPERATIONS: Dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("cluster_view", "GET", "/api/cluster", answer=ClusterView),
        Operation("list_runs", "GET", "/api/runs", ListRuns, answer=List[RunRecord]),
        Operation("submit", "POST", "/api/runs", Submit, answer=RunRecord),
        Operation("get_run", "GET", "/api/runs/{name}", answer=RunRecord, missing_ok=True),
        Operation("wait_run", "GET", "/api/runs/{run_id}/wait", WaitRun, answer=RunRecord, missing_ok=True, waits="timeout"),
        Operation("stop_run", "POST", "/api/runs/{name}/stop", StopRun, answer=RunRecord),
        Operation("delete_run", "DELETE", "/api/runs/{name}", answer=None),
        Operation("events", "GET", "/api/runs/{name}/events", answer=List[Event]),
        Operation("jobs_history", "GET", "/api/runs/{name}/jobs", answer=List[JobRecord]),
        Operation("metrics", "GET", "/api/runs/{name}/metrics", Metrics, answer=List[MetricsSample]),
    )
}
