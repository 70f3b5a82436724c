"""The typed model of runs, shared by every layer (no Ray, no I/O): statuses and termination
reasons with dstack's values, run and job records, the run spec a client submits."""

from dstack_ray.models.runs import (
    JobRecord,
    JobStatus,
    JobTerminationReason,
    RunRecord,
    RunSpec,
    RunStatus,
    RunTerminationReason,
    WaitReason,
    job_status_message,
    new_jobs,
)

__all__ = [
    "JobRecord",
    "JobStatus",
    "JobTerminationReason",
    "RunRecord",
    "RunSpec",
    "RunStatus",
    "RunTerminationReason",
    "WaitReason",
    "job_status_message",
    "new_jobs",
]
