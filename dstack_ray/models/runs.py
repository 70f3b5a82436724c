"""Run and job records, statuses and termination reasons, with dstack's values and mappings."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Set

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, field_serializer, field_validator

from dstack_ray.config.profiles import RetryEvent
from dstack_ray.config.task import RUN_NAME_RE, TaskConfiguration
from dstack_ray.models.secrets import public_spec


class RunStatus(str, enum.Enum):
    PENDING = "pending"
    SUBMITTED = "submitted"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"
    DONE = "done"

    def is_finished(self) -> bool:
        return self in (RunStatus.TERMINATED, RunStatus.FAILED, RunStatus.DONE)


class JobStatus(str, enum.Enum):
    SUBMITTED = "submitted"
    PROVISIONING = "provisioning"
    PULLING = "pulling"
    RUNNING = "running"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    ABORTED = "aborted"
    FAILED = "failed"
    DONE = "done"

    def is_finished(self) -> bool:
        return self in (JobStatus.TERMINATED, JobStatus.ABORTED, JobStatus.FAILED, JobStatus.DONE)


class RunTerminationReason(str, enum.Enum):
    ALL_JOBS_DONE = "all_jobs_done"
    JOB_FAILED = "job_failed"
    RETRY_LIMIT_EXCEEDED = "retry_limit_exceeded"
    STOPPED_BY_USER = "stopped_by_user"
    ABORTED_BY_USER = "aborted_by_user"
    SERVER_ERROR = "server_error"

    def to_status(self) -> RunStatus:
        return {
            RunTerminationReason.ALL_JOBS_DONE: RunStatus.DONE,
            RunTerminationReason.STOPPED_BY_USER: RunStatus.TERMINATED,
            RunTerminationReason.ABORTED_BY_USER: RunStatus.TERMINATED,
        }.get(self, RunStatus.FAILED)

    def to_job_reason(self) -> "JobTerminationReason":
        """The reason given to jobs still active when the run ends for this reason."""
        return {
            RunTerminationReason.ALL_JOBS_DONE: JobTerminationReason.DONE_BY_RUNNER,
            RunTerminationReason.STOPPED_BY_USER: JobTerminationReason.TERMINATED_BY_USER,
            RunTerminationReason.ABORTED_BY_USER: JobTerminationReason.ABORTED_BY_USER,
        }.get(self, JobTerminationReason.TERMINATED_BY_SERVER)

    def to_error(self) -> Optional[str]:
        return {
            RunTerminationReason.RETRY_LIMIT_EXCEEDED: "retry limit exceeded",
            RunTerminationReason.SERVER_ERROR: "server error",
        }.get(self)


class JobTerminationReason(str, enum.Enum):
    FAILED_TO_START_DUE_TO_NO_CAPACITY = "failed_to_start_due_to_no_capacity"
    INTERRUPTED_BY_NO_CAPACITY = "interrupted_by_no_capacity"
    INSTANCE_UNREACHABLE = "instance_unreachable"
    TERMINATED_BY_USER = "terminated_by_user"
    DONE_BY_RUNNER = "done_by_runner"
    ABORTED_BY_USER = "aborted_by_user"
    TERMINATED_BY_SERVER = "terminated_by_server"
    TERMINATED_DUE_TO_UTILIZATION_POLICY = "terminated_due_to_utilization_policy"
    CONTAINER_EXITED_WITH_ERROR = "container_exited_with_error"
    CREATING_CONTAINER_ERROR = "creating_container_error"
    EXECUTOR_ERROR = "executor_error"
    MAX_DURATION_EXCEEDED = "max_duration_exceeded"

    def to_status(self) -> JobStatus:
        return {
            JobTerminationReason.TERMINATED_BY_USER: JobStatus.TERMINATED,
            JobTerminationReason.DONE_BY_RUNNER: JobStatus.DONE,
            JobTerminationReason.ABORTED_BY_USER: JobStatus.ABORTED,
            JobTerminationReason.TERMINATED_BY_SERVER: JobStatus.TERMINATED,
            JobTerminationReason.TERMINATED_DUE_TO_UTILIZATION_POLICY: JobStatus.TERMINATED,
            JobTerminationReason.MAX_DURATION_EXCEEDED: JobStatus.TERMINATED,
        }.get(self, JobStatus.FAILED)

    def to_retry_event(self) -> Optional[RetryEvent]:
        """dstack's mapping: capacity reasons explicitly; any other failure is an `error`."""
        explicit = {
            JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY: RetryEvent.NO_CAPACITY,
            JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY: RetryEvent.INTERRUPTION,
        }
        if self in explicit:
            return explicit[self]
        return RetryEvent.ERROR if self.to_status() == JobStatus.FAILED else None

    def to_error(self) -> Optional[str]:
        return {
            JobTerminationReason.INSTANCE_UNREACHABLE: "instance unreachable",
            JobTerminationReason.TERMINATED_DUE_TO_UTILIZATION_POLICY: "utilization policy",
            JobTerminationReason.CREATING_CONTAINER_ERROR: "runner error",
            JobTerminationReason.EXECUTOR_ERROR: "executor error",
            JobTerminationReason.MAX_DURATION_EXCEEDED: "max duration exceeded",
        }.get(self)


def job_status_message(status: JobStatus, reason: Optional[JobTerminationReason], exit_code: Optional[int]) -> str:
    """What `ps` shows for a job, exactly as dstack words it."""
    if status == JobStatus.DONE:
        return "exited (0)"
    if status == JobStatus.FAILED:
        if reason == JobTerminationReason.CONTAINER_EXITED_WITH_ERROR and exit_code is not None:
            return f"exited ({exit_code})"
        if reason == JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY:
            return "no capacity"
        if reason == JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY:
            return "interrupted"
        return "error"
    if status == JobStatus.TERMINATED and reason == JobTerminationReason.TERMINATED_BY_USER:
        return "stopped"
    if status == JobStatus.ABORTED or (
        status == JobStatus.TERMINATED and reason == JobTerminationReason.ABORTED_BY_USER
    ):
        return "aborted"
    return status.value


class WaitReason(str, enum.Enum):
    """Why a pending, submitted or provisioning run waits (`ps` shows it after the status)."""

    SCHEDULE = "waiting for schedule"
    RESOURCES = "waiting for resources"  # in the priority queue, or its placement group waits
    AUTOSCALER = "waiting for the autoscaler"  # only nodes the autoscaler adds can hold it
    RETRY = "retrying"  # an attempt failed; the next starts at the run's `retry_at`


_ACTIVE_ORDER = [JobStatus.SUBMITTED, JobStatus.PROVISIONING, JobStatus.PULLING, JobStatus.RUNNING, JobStatus.TERMINATING]


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class JobRecord(Model):
    """One node (rank) of one attempt of a run."""

    run_id: str
    attempt: int
    rank: int
    group: str = "0"
    resources: str = ""  # the resolved bundle, e.g. "cpu=2 mem=8GB gpu=H100:1"
    status: JobStatus = JobStatus.SUBMITTED
    termination_reason: Optional[JobTerminationReason] = None
    termination_message: Optional[str] = None
    exit_code: Optional[int] = None
    node_ip: Optional[str] = None
    node_id: Optional[str] = None
    gpu_ids: List[str] = Field(default_factory=list)
    submitted_at: datetime
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None

    @property
    def status_message(self) -> str:
        return job_status_message(self.status, self.termination_reason, self.exit_code)

    def advance(self, status: JobStatus, at: Optional[datetime] = None) -> bool:
        """The one way an active job moves on (provisioning, pulling, running, terminating):
        forward only, never out of a finished status; False where the job stays as it is.
        Running sets `started_at`."""
        if status.is_finished():
            raise ValueError(f"a job ends through finish(), not advance({status.value})")
        if self.status.is_finished() or _ACTIVE_ORDER.index(status) <= _ACTIVE_ORDER.index(self.status):
            return False
        self.status = status
        if status == JobStatus.RUNNING:
            self.started_at = at or datetime.now(timezone.utc)
        return True

    def finish(self, reason: JobTerminationReason, message: Optional[str] = None, at: Optional[datetime] = None) -> bool:
        """The one way a job ends: its status follows from the reason (dstack's mapping). The
        first end wins, as in Ray's job manager: a finished job is left as it is (False)."""
        if self.status.is_finished():
            return False
        self.status = reason.to_status()
        self.termination_reason = reason
        self.termination_message = message
        self.finished_at = at or datetime.now(timezone.utc)
        return True

    @property
    def error(self) -> Optional[str]:
        if self.termination_reason is None:
            return None
        return self.termination_reason.to_error()


def new_jobs(run_id: str, attempt: int, cfg: TaskConfiguration, now: datetime) -> List[JobRecord]:
    """An attempt's jobs, one per rank, ranks contiguous across node groups (`submitted`)."""
    groups = [g.name or str(i) for i, g in enumerate(cfg.node_groups) for _ in range(g.nodes)]
    return [JobRecord(run_id=run_id, attempt=attempt, rank=rank, group=group, submitted_at=now) for rank, group in enumerate(groups)]


class RunRecord(Model):
    """A run as the Controller stores and serves it."""

    id: str
    name: str
    status: RunStatus
    termination_reason: Optional[RunTerminationReason] = None
    status_message: str = ""
    wait_reason: Optional[WaitReason] = None  # why a pending/submitted/provisioning run waits
    retry_at: Optional[datetime] = None  # with WaitReason.RETRY: when the next attempt starts
    submitted_at: datetime
    last_processed_at: datetime
    finished_at: Optional[datetime] = None
    priority: int = 0
    attempt: int = 0
    next_trigger_at: Optional[datetime] = None
    version: int = 0
    spec: Optional["RunSpec"] = None  # what was submitted (secrets stored, never shown)
    jobs: List[JobRecord] = Field(default_factory=list)  # the latest attempt's jobs, by rank

    @field_validator("wait_reason", mode="before")
    @classmethod
    def _stored_before_the_enum(cls, value: Any) -> Any:
        """Records stored by 0.x versions kept free text ("retrying in 5s after error")."""
        if isinstance(value, str) and value not in WaitReason._value2member_map_:
            return WaitReason.RETRY if value.startswith("retrying") else None
        return value

    def wait_text(self, now: Optional[datetime] = None) -> Optional[str]:
        """The wait reason as `ps` shows it ("retrying in 4s")."""
        if self.wait_reason == WaitReason.RETRY and self.retry_at is not None:
            seconds = (self.retry_at - (now or datetime.now(timezone.utc))).total_seconds()
            return f"retrying in {seconds:.0f}s" if seconds >= 1 else "retrying"
        return self.wait_reason.value if self.wait_reason else None

    def public(self) -> Dict[str, Any]:
        """The record as every API answer carries it: JSON, the spec without its secrets."""
        data = self.model_dump(mode="json")
        if data.get("spec"):
            data["spec"] = public_spec(data["spec"])
        return data

    @property
    def error(self) -> Optional[str]:
        if self.termination_reason is not None and self.termination_reason.to_error():
            return self.termination_reason.to_error()
        for job in self.jobs:
            if job.error:
                return job.error
        return None

    def finish(self, reason: RunTerminationReason, at: Optional[datetime] = None) -> None:
        """The one way a run ends: its status follows from the reason, and jobs still active end
        with the matching job reason (`stopped_by_user` -> `terminated_by_user`, ...)."""
        at = at or datetime.now(timezone.utc)
        self.end_jobs(reason, at)
        self.status = reason.to_status()
        self.termination_reason = reason
        self.status_message = self.status.value
        self.wait_reason = None
        self.retry_at = None
        self.finished_at = at

    def end_jobs(self, reason: RunTerminationReason, at: Optional[datetime] = None) -> None:
        """Jobs still active end with the job reason matching the run's `reason` (also when a
        scheduled run's execution ends and the run waits for its next trigger)."""
        for job in self.jobs:
            if not job.status.is_finished():
                job.finish(reason.to_job_reason(), at=at)

    def display_status(self) -> str:
        """`ps`'s STATUS: the deciding job's message for a finished run, else the run's own."""
        if self.status.is_finished() and self.jobs:
            failed = [j for j in self.jobs if j.status in (JobStatus.FAILED,)]
            return (failed[0] if failed else self.jobs[0]).status_message
        return self.status_message or self.status.value


def declared_ports(run: "RunRecord") -> Set[int]:
    """The ports a run declares for its rank-0 node (`ports` of its first node group): the only
    ones the service's relay reaches."""
    if run.spec is None:
        return set()
    groups = run.spec.configuration.node_groups
    return {mapping.container_port for mapping in groups[0].ports} if groups else set()


class RunSpec(Model):
    """What a client submits: the configuration as it will run (env resolved, args substituted)."""

    run_name: str
    configuration: TaskConfiguration  # validated once, when the client loads the file
    configuration_path: Optional[str] = None
    args: List[str] = Field(default_factory=list)
    has_payload: bool = False  # files or a repo were shipped (the Controller keeps them)
    container_runtime: Optional[str] = Field(None, pattern=r"^[a-z][a-z0-9-]*$")  # podman or docker (Client settings)
    default_image: Optional[str] = None  # the image for tasks without one (Client settings)
    submission_id: Optional[str] = None  # unique per `Client.apply` call: a retried submit is answered once

    @field_validator("run_name")
    @classmethod
    def _a_name_not_a_path(cls, name: str) -> str:
        """Checked where the run is accepted (the head), not only by clients: nodes put the name
        in directory and container names."""
        if name and not RUN_NAME_RE.match(name):
            raise ValueError(f"a run name must match '{RUN_NAME_RE.pattern}' (lower-case letters, digits and '-', starting with a letter)")
        return name

    @field_serializer("configuration")
    def _configuration_as_written(self, cfg: TaskConfiguration, info: SerializationInfo) -> Dict[str, Any]:
        # Only the fields the user set: some checks refuse a field given together with another
        # (nodes with groups, ...), so defaults written out would not validate again.
        return cfg.model_dump(mode=info.mode, exclude_unset=True)


RunRecord.model_rebuild()
