"""Where a run's record changes after submission, as one rule: the supervisor reports, and the
Controller applies the report here (no Ray: unit-tested on its own).

Like Ray's job manager, which never lets a job leave a terminal status, a finished run or job
stays finished: a report that would bring one back (a supervisor's late report racing a stop, a
restarted supervisor replaying an old attempt) is refused and the record is left as it was.
"""

from __future__ import annotations

from typing import Any, Dict, List

from dstack_ray.models import JobRecord, RunRecord


class IllegalTransition(Exception):
    """A report that would change a finished run or job."""


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
