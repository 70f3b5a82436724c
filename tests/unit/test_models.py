"""The typed records: one transition ends a job or a run, and the run spec keeps the task
configuration typed through a round trip (as it travels between the client, the Controller and
the supervisor)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from dstack_ray.config.loader import parse_configuration
from dstack_ray.config.task import TaskConfiguration
from dstack_ray.models import JobRecord, JobStatus, JobTerminationReason, RunRecord, RunSpec, RunStatus, RunTerminationReason, WaitReason

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def job(rank: int = 0, status: JobStatus = JobStatus.RUNNING) -> JobRecord:
    return JobRecord(run_id="r", attempt=0, rank=rank, status=status, submitted_at=NOW)


@pytest.mark.parametrize(
    "reason, status, shown",
    [
        (JobTerminationReason.DONE_BY_RUNNER, JobStatus.DONE, "exited (0)"),
        (JobTerminationReason.CONTAINER_EXITED_WITH_ERROR, JobStatus.FAILED, "exited (3)"),
        (JobTerminationReason.TERMINATED_BY_USER, JobStatus.TERMINATED, "stopped"),
        (JobTerminationReason.ABORTED_BY_USER, JobStatus.ABORTED, "aborted"),
        (JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY, JobStatus.FAILED, "interrupted"),
        (JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY, JobStatus.FAILED, "no capacity"),
        (JobTerminationReason.MAX_DURATION_EXCEEDED, JobStatus.TERMINATED, "terminated"),
        (JobTerminationReason.TERMINATED_DUE_TO_UTILIZATION_POLICY, JobStatus.TERMINATED, "terminated"),
        (JobTerminationReason.EXECUTOR_ERROR, JobStatus.FAILED, "error"),
    ],
)
def test_a_job_finishes_with_the_status_its_reason_gives(reason, status, shown):
    record = job()
    record.exit_code = 3
    record.finish(reason, "why", at=NOW)
    assert (record.status, record.termination_reason, record.termination_message, record.finished_at) == (status, reason, "why", NOW)
    assert record.status_message == shown


@pytest.mark.parametrize(
    "reason, status, job_status",
    [
        (RunTerminationReason.ALL_JOBS_DONE, RunStatus.DONE, JobStatus.DONE),
        (RunTerminationReason.STOPPED_BY_USER, RunStatus.TERMINATED, JobStatus.TERMINATED),
        (RunTerminationReason.ABORTED_BY_USER, RunStatus.TERMINATED, JobStatus.ABORTED),
        (RunTerminationReason.JOB_FAILED, RunStatus.FAILED, JobStatus.TERMINATED),
        (RunTerminationReason.RETRY_LIMIT_EXCEEDED, RunStatus.FAILED, JobStatus.TERMINATED),
        (RunTerminationReason.SERVER_ERROR, RunStatus.FAILED, JobStatus.TERMINATED),
    ],
)
def test_a_run_finishes_and_ends_only_its_active_jobs(reason, status, job_status):
    failed = job(0, JobStatus.FAILED)
    run = RunRecord(
        id="r", name="r", status=RunStatus.RUNNING, status_message="running", wait_reason="waiting for resources",
        submitted_at=NOW, last_processed_at=NOW, jobs=[failed, job(1)],
    )
    run.finish(reason, at=NOW)
    assert (run.status, run.termination_reason, run.status_message, run.wait_reason, run.finished_at) == (status, reason, status.value, None, NOW)
    assert run.jobs[0].status == JobStatus.FAILED and run.jobs[0].finished_at is None  # already over: untouched
    assert run.jobs[1].status == job_status and run.jobs[1].termination_reason == reason.to_job_reason()


def test_the_run_spec_keeps_the_configuration_typed_and_as_written():
    cfg = parse_configuration({"type": "task", "commands": ["echo hi"], "nodes": 2, "env": {"A": "1"}, "resources": {"gpu": "H100:1..2"}})
    spec = RunSpec(run_name="rr", configuration=cfg.model_dump(mode="json", exclude_unset=True))
    assert isinstance(spec.configuration, TaskConfiguration)
    dumped = spec.model_dump(mode="json")
    assert "groups" not in dumped["configuration"] and dumped["configuration"]["nodes"] == 2  # only what was set
    again = RunSpec.model_validate(dumped)
    assert again.configuration == spec.configuration
    record = RunRecord(id="r", name="r", status=RunStatus.SUBMITTED, submitted_at=NOW, last_processed_at=NOW, spec=spec)
    assert RunRecord.model_validate_json(record.model_dump_json()).spec.configuration.nodes_num == 2


def test_wait_reasons_are_an_enum_and_old_free_text_still_loads():
    record = dict(id="r", name="r", status=RunStatus.PENDING, submitted_at=NOW, last_processed_at=NOW)
    assert RunRecord(**record, wait_reason="waiting for schedule").wait_reason is WaitReason.SCHEDULE
    # Stored by earlier versions: free text, read as the enum (or nothing) rather than refused.
    assert RunRecord(**record, wait_reason="retrying in 5s after error").wait_reason is WaitReason.RETRY
    assert RunRecord(**record, wait_reason="something else").wait_reason is None
    retrying = RunRecord(**record, wait_reason=WaitReason.RETRY, retry_at=datetime(2026, 1, 1, 0, 0, 30, tzinfo=timezone.utc))
    assert retrying.wait_text(datetime(2026, 1, 1, tzinfo=timezone.utc)) == "retrying in 30s"
    assert retrying.wait_text(datetime(2026, 1, 1, 0, 1, tzinfo=timezone.utc)) == "retrying"
    assert RunRecord(**record, wait_reason=WaitReason.AUTOSCALER).wait_text() == "waiting for the autoscaler"


@pytest.mark.parametrize("name", ["../../../../tmp/x", "a/b", "..", "UPPER", "-x", "x" * 50, "bad name"])
def test_the_head_refuses_run_names_that_are_not_names(name):
    with pytest.raises(ValueError, match="run name must match"):
        RunSpec(run_name=name, configuration={"type": "task", "commands": ["true"]})
    assert RunSpec(run_name="", configuration={"type": "task", "commands": ["true"]}).run_name == ""  # the head names it
    assert RunSpec(run_name="my-run-2", configuration={"type": "task", "commands": ["true"]}).run_name == "my-run-2"


def test_answers_carry_the_spec_without_secrets():
    configuration = {
        "type": "task", "commands": ["true"], "image": "registry.example/x", "env": {"API_KEY": "hunter2-planted"},
        "registry_auth": {"username": "me", "password": "pw-planted"},
        "repos": [{"url": "https://ghp_planted@github.com/o/r.git"}],
    }
    run = RunRecord(id="r", name="r", status=RunStatus.RUNNING, submitted_at=NOW, last_processed_at=NOW,
                    spec=RunSpec(run_name="rr", configuration=configuration))
    public = run.public()
    assert "planted" not in json.dumps(public) and "hunter2" not in json.dumps(public)
    shown = RunRecord.model_validate(public).spec.configuration  # still a valid configuration for clients
    assert shown.env.root == {"API_KEY": "***"} and shown.registry_auth.username == "me"
    assert [r.url for r in shown.repos] == ["https://***@github.com/o/r.git"]
    assert run.spec.configuration.env.root["API_KEY"] == "hunter2-planted"  # the record itself keeps them (for its nodes)
