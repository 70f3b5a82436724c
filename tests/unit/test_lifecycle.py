"""A run's record changes in one place after submission (runtime/lifecycle.py); a finished run
or job stays finished."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dstack_ray.config import parse_configuration
from dstack_ray.models import JobStatus, JobTerminationReason, RunRecord, RunSpec, RunStatus, RunTerminationReason, WaitReason, new_jobs
from dstack_ray.models.messages import NodeOutcome
from dstack_ray.runtime.lifecycle import IllegalTransition, apply_report, fire_schedules, job_end, submitted_run, to_hand_over


def _run(nodes: int = 2) -> RunRecord:
    cfg = parse_configuration({"type": "task", "name": "r", "nodes": nodes, "commands": ["true"], "resources": {"cpu": 1, "memory": "1GB"}})
    now = datetime.now(timezone.utc)
    spec = RunSpec(run_name="rr", configuration=cfg.model_dump(mode="json", exclude_unset=True))
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


NOON = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)  # a Monday


def _spec(**configuration) -> RunSpec:
    cfg = parse_configuration({"type": "task", "name": "s", "commands": ["true"], **configuration})
    return RunSpec(run_name="ss", configuration=cfg.model_dump(mode="json", exclude_unset=True))


def test_a_submission_makes_a_submitted_run_with_its_first_jobs():
    run = submitted_run("id-1", _spec(nodes=3, priority=7), NOON, NOON)
    assert (run.id, run.name, run.status, run.priority, run.wait_reason) == ("id-1", "ss", RunStatus.SUBMITTED, 7, None)
    assert [(j.rank, j.attempt, j.status) for j in run.jobs] == [(r, 0, JobStatus.SUBMITTED) for r in range(3)]


def test_a_scheduled_submission_waits_for_its_first_trigger_on_the_clusters_clock():
    run = submitted_run("id-1", _spec(schedule={"cron": "30 * * * *"}), NOON, NOON + timedelta(hours=5))
    assert (run.status, run.wait_reason) == (RunStatus.PENDING, WaitReason.SCHEDULE)
    assert run.next_trigger_at == NOON + timedelta(hours=5, minutes=30) and run.submitted_at == NOON


def test_schedules_fire_once_their_time_has_come():
    due = submitted_run("due", _spec(schedule={"cron": "30 * * * *"}), NOON, NOON)
    later = submitted_run("later", _spec(schedule={"cron": "0 18 * * *"}), NOON, NOON)
    plain = submitted_run("plain", _spec(), NOON, NOON)
    assert fire_schedules([due, later, plain], NOON + timedelta(minutes=10)) == []
    fired = fire_schedules([due, later, plain], NOON + timedelta(minutes=30))
    assert [r.id for r in fired] == ["due"] and (due.status, due.wait_reason) == (RunStatus.SUBMITTED, None)
    assert fire_schedules([due, later, plain], NOON + timedelta(minutes=31)) == []  # fired once
    assert later.status == RunStatus.PENDING and later.wait_reason == WaitReason.SCHEDULE


def test_a_supervisor_host_gets_the_active_runs_it_lacks_and_knows_which_had_an_attempt_under_way():
    fresh = submitted_run("fresh", _spec(), NOON, NOON)
    running = submitted_run("running", _spec(nodes=2), NOON, NOON)
    running.status, running.jobs[1].status = RunStatus.RUNNING, JobStatus.RUNNING
    supervised = submitted_run("supervised", _spec(), NOON, NOON)
    scheduled = submitted_run("scheduled", _spec(schedule={"cron": "0 18 * * *"}), NOON, NOON)
    done = submitted_run("done", _spec(), NOON, NOON)
    done.finish(RunTerminationReason.ALL_JOBS_DONE, NOON)
    given = to_hand_over([fresh, running, supervised, scheduled, done], {"supervised"})
    assert [(run.id, lost) for run, lost in given] == [("fresh", False), ("running", True)]


@pytest.mark.parametrize(
    "outcome, intended, error, expected",
    [
        (NodeOutcome(exit_code=0, started=True), None, None, (JobTerminationReason.DONE_BY_RUNNER, None)),
        (NodeOutcome(exit_code=3, started=True), None, None, (JobTerminationReason.CONTAINER_EXITED_WITH_ERROR, "exit status 3")),
        (NodeOutcome(exit_code=130, stopped=True), JobTerminationReason.TERMINATED_BY_USER, None, (JobTerminationReason.TERMINATED_BY_USER, None)),
        (NodeOutcome(exit_code=-9, node_lost=True), None, None, (JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY, "the node was lost")),
        # a node lost while it was being stopped ends as the stop says
        (NodeOutcome(node_lost=True), JobTerminationReason.TERMINATED_BY_SERVER, None, (JobTerminationReason.TERMINATED_BY_SERVER, None)),
        # the agent's own error wins over a stop order
        (NodeOutcome(error="no such image", error_reason=JobTerminationReason.CREATING_CONTAINER_ERROR), JobTerminationReason.TERMINATED_BY_SERVER, None,
         (JobTerminationReason.CREATING_CONTAINER_ERROR, "no such image")),
        (NodeOutcome(error="boom"), None, None, (JobTerminationReason.EXECUTOR_ERROR, "boom")),
        (None, None, RuntimeError("worker died\nmore"), (JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY, "worker died")),
        (None, None, RuntimeError(""), (JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY, "the node agent was lost")),
        (None, JobTerminationReason.ABORTED_BY_USER, RuntimeError("killed"), (JobTerminationReason.ABORTED_BY_USER, None)),
    ],
)
def test_how_a_job_ends_from_its_nodes_outcome(outcome, intended, error, expected):
    assert job_end(outcome, intended, error) == expected


def test_an_active_job_only_moves_forward_and_the_first_end_wins():
    job = new_jobs("r", 0, parse_configuration({"type": "task", "commands": ["true"]}), NOON)[0]
    assert job.advance(JobStatus.PROVISIONING) and job.advance(JobStatus.RUNNING, NOON) and job.started_at == NOON
    assert not job.advance(JobStatus.PULLING) and job.status == JobStatus.RUNNING  # never back
    with pytest.raises(ValueError):
        job.advance(JobStatus.DONE)  # ends go through finish()
    assert job.finish(JobTerminationReason.EXECUTOR_ERROR, "the node agent did not start in time")
    assert not job.finish(JobTerminationReason.TERMINATED_BY_SERVER, None)
    assert (job.status, job.termination_reason, job.termination_message) == (
        JobStatus.FAILED, JobTerminationReason.EXECUTOR_ERROR, "the node agent did not start in time")
    assert not job.advance(JobStatus.TERMINATING) and job.status == JobStatus.FAILED
