"""A run's record changes in one place after submission (runtime/lifecycle.py); a finished run
or job stays finished."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from dstack_ray.config import parse_configuration
from dstack_ray.models import JobStatus, JobTerminationReason, RunRecord, RunSpec, RunStatus, RunTerminationReason, new_jobs
from dstack_ray.runtime.lifecycle import IllegalTransition, apply_report


def _run(nodes: int = 2) -> RunRecord:
    cfg = parse_configuration({"type": "task", "name": "r", "nodes": nodes, "commands": ["true"], "resources": {"cpu": 1, "memory": "1GB"}})
    now = datetime.now(timezone.utc)
    spec = RunSpec(run_name="r", configuration=cfg.model_dump(mode="json", exclude_unset=True))
    return RunRecord(id="run-1", name="r", status=RunStatus.SUBMITTED, submitted_at=now, last_processed_at=now, spec=spec, jobs=new_jobs("run-1", 0, cfg, now), version=7)


def _jobs(run: RunRecord, **by_rank: JobStatus):
    jobs = [job.model_copy() for job in run.jobs]
    for job in jobs:
        status = by_rank.get(f"r{job.rank}")
        if status is not None:
            job.status = status
    return [job.model_dump(mode="json") for job in jobs]


def test_a_report_changes_the_fields_and_jobs_it_names_and_keeps_spec_and_version():
    run = _run()
    updated = apply_report(run, {"status": "running", "status_message": "running"}, _jobs(run, r0=JobStatus.RUNNING))
    assert updated.status == RunStatus.RUNNING and updated.jobs[0].status == JobStatus.RUNNING
    assert updated.spec is run.spec and updated.version == 7 and updated.name == "r"
    assert run.status == RunStatus.SUBMITTED  # the old record is left as it was


def test_a_finished_run_is_never_changed_again():
    run = _run()
    run.status, run.termination_reason = RunStatus.TERMINATED, RunTerminationReason.STOPPED_BY_USER
    with pytest.raises(IllegalTransition, match="run r is finished"):
        apply_report(run, {"status": "running"}, _jobs(run))


def test_a_finished_job_does_not_come_back_but_a_new_attempt_starts_fresh():
    run = _run()
    run.jobs[1].finish(JobTerminationReason.DONE_BY_RUNNER)
    with pytest.raises(IllegalTransition, match="job 1 of attempt 0 of run r is finished"):
        apply_report(run, {}, _jobs(run, r1=JobStatus.RUNNING))
    assert apply_report(run, {}, _jobs(run, r0=JobStatus.RUNNING)).jobs[1].status == run.jobs[1].status  # unchanged: fine
    cfg = run.spec.configuration
    retried = [job.model_dump(mode="json") for job in new_jobs("run-1", 1, cfg, datetime.now(timezone.utc))]
    assert [job.attempt for job in apply_report(run, {"attempt": 1}, retried).jobs] == [1, 1]
