"""A run's and its jobs' lifecycle as plain functions (no Ray, no I/O: unit-tested on their own):
the record a submission makes, the schedule firing, which runs a supervisor host must be handed,
a supervisor's report applied, and how a job ends from its node's outcome. The Controller and
the supervisor do the I/O around them.

Where a run's record changes after submission is one rule: the supervisor reports, and the
Controller applies the report here.

Like Ray's job manager, which never lets a job leave a terminal status, a finished run or job
stays finished: a report that would bring one back (a supervisor's late report racing a stop, a
restarted supervisor replaying an old attempt) is refused and the record is left as it was.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from dstack_ray.config.cron import next_fire_time
from dstack_ray.models import JobRecord, JobStatus, JobTerminationReason, RunRecord, RunSpec, RunStatus, WaitReason, new_jobs
from dstack_ray.models.messages import NodeOutcome


class IllegalTransition(Exception):
    """A report that would change a finished run or job."""


def submitted_run(run_id: str, spec: RunSpec, now: datetime, clock_now: datetime) -> RunRecord:
    """The record of a new run and its first attempt's jobs: submitted, or with a `schedule`
    pending until the first trigger after `clock_now` (the cluster's clock, which tests move)."""
    cfg = spec.configuration
    run = RunRecord(
        id=run_id,
        name=spec.run_name or "",
        status=RunStatus.SUBMITTED,
        status_message=RunStatus.SUBMITTED.value,
        submitted_at=now,
        last_processed_at=now,
        priority=cfg.priority or 0,
        spec=spec,
    )
    if cfg.schedule is not None:
        run.status, run.status_message = RunStatus.PENDING, RunStatus.PENDING.value
        run.wait_reason = WaitReason.SCHEDULE
        run.next_trigger_at = next_fire_time(cfg.schedule.crons, clock_now)
    run.jobs = new_jobs(run_id, 0, cfg, now)
    return run


def fire_schedules(runs: Iterable[RunRecord], now: datetime) -> List[RunRecord]:
    """The runs waiting for their schedule whose trigger time has come, each made submitted (the
    caller hands them to a supervisor)."""
    fired = []
    for run in runs:
        if run.wait_reason != WaitReason.SCHEDULE or run.status.is_finished():
            continue
        if run.next_trigger_at is None or run.next_trigger_at > now:
            continue
        run.status, run.status_message, run.wait_reason = RunStatus.SUBMITTED, RunStatus.SUBMITTED.value, None
        fired.append(run)
    return fired


def to_hand_over(runs: Iterable[RunRecord], supervised: Set[str]) -> List[Tuple[RunRecord, bool]]:
    """The active runs a (new or restarted) supervisor host must be given, each with whether an
    attempt of it was under way (the supervisor then ends that attempt as interrupted): not the
    runs it supervises already, not the finished ones, not those waiting for their schedule."""
    given = []
    for run in runs:
        if run.status.is_finished() or run.id in supervised or run.wait_reason == WaitReason.SCHEDULE:
            continue
        given.append((run, any(job.status != JobStatus.SUBMITTED for job in run.jobs)))
    return given


def apply_report(run: RunRecord, changes: Dict[str, Any], jobs: List[Dict[str, Any]]) -> RunRecord:
    """The run with a supervisor's report applied: its changed fields, and the jobs of its
    current attempt (replacing the ones it had). The spec never changes and is not validated
    again; the version is the Controller's to raise."""
    if run.status.is_finished():
        raise IllegalTransition(f"run {run.name} is finished ({run.status.value}): a report changing it is ignored")
    merged = {**run.model_dump(mode="json", exclude={"spec", "jobs"}), **changes}
    updated = RunRecord.model_validate(merged)
    updated.spec = run.spec
    updated.jobs = [JobRecord.model_validate(job) for job in jobs]
    updated.version = run.version
    before = {(job.attempt, job.rank): job for job in run.jobs}
    for job in updated.jobs:
        old = before.get((job.attempt, job.rank))
        if old is not None and old.status.is_finished() and job.status != old.status:
            raise IllegalTransition(
                f"job {job.rank} of attempt {job.attempt} of run {run.name} is finished ({old.status.value}),"
                f" a report would make it {job.status.value}: ignored"
            )
    return updated


def job_end(
    outcome: Optional[NodeOutcome], intended: Optional[JobTerminationReason], error: Optional[BaseException] = None
) -> Tuple[JobTerminationReason, Optional[str]]:
    """How a job ends, from its node agent's outcome (None: the agent's task failed with
    `error`) and the reason of the stop order the supervisor gave it, if any: a stop the
    supervisor ordered wins over what the agent saw, except the agent's own errors; a node lost
    without an order interrupts the job (the retry policy's `no-capacity`)."""
    if outcome is None:
        if intended is not None:
            return intended, None
        text = str(error).strip().splitlines()[0] if error and str(error).strip() else "the node agent was lost"
        return JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY, text[:500]
    if outcome.node_lost and intended is None:
        return JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY, "the node was lost"
    if outcome.error:
        return outcome.error_reason or JobTerminationReason.EXECUTOR_ERROR, outcome.error
    if intended is not None:
        return intended, None
    if outcome.exit_code == 0:
        return JobTerminationReason.DONE_BY_RUNNER, None
    return JobTerminationReason.CONTAINER_EXITED_WITH_ERROR, f"exit status {outcome.exit_code}"
