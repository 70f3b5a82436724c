"""The typed model of runs, shared by every layer (no Ray, no I/O): statuses and termination
reasons with dstack's values, run and job records, the run spec a client submits."""

from dstack_ray.models.runs import (
    WAITING_FOR_RESOURCES,
    WAITING_FOR_SCHEDULE,
    JobRecord,
    JobStatus,
    JobTerminationReason,
    RunRecord,
    RunSpec,
    RunStatus,
    RunTerminationReason,
    job_status_message,
    new_jobs,
)

__all__ = [
    "WAITING_FOR_RESOURCES",
    "WAITING_FOR_SCHEDULE",
    "JobRecord",
    "JobStatus",
    "JobTerminationReason",
    "RunRecord",
    "RunSpec",
    "RunStatus",
    "RunTerminationReason",
    "job_status_message",
    "new_jobs",
]
