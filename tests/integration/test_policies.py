"""Retry, no-capacity, interruption, GPU utilization, priority and cron schedules on real Ray."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path


from dstack_ray.models import JobStatus, JobTerminationReason, RunStatus, RunTerminationReason
from tests.helpers import no_leftovers, wait_for

SMALL = {"cpu": 1, "memory": "256MB"}


def task(name, commands, **extra):
    return {"type": "task", "name": name, "commands": commands, "resources": dict(SMALL), **extra}


def fail_once(marker: Path) -> list:
    """Commands that fail on the first attempt and succeed on the next."""
    return [f"if [ -f {marker} ]; then echo second attempt; else touch {marker}; echo first attempt; exit 1; fi"]


def test_error_is_retried_until_done(client, tmp_path):
    run = client.apply(task("retry-error", fail_once(tmp_path / "m1"), retry={"on_events": ["error"]}))
    assert run.wait(60) == RunStatus.DONE
    assert run.record.attempt == 1
    # `exit` in `bash -i -c` prints "exit", as in dstack's containers.
    assert list(run.logs(attempt=0)) == ["first attempt", "exit"]
    assert list(run.logs(attempt=1)) == ["second attempt"]
    assert any("retrying" in message for _, message in run.events())


def test_error_without_retry_fails(client, tmp_path):
    run = client.apply(task("no-retry", fail_once(tmp_path / "m2")))
    assert run.wait(60) == RunStatus.FAILED
    assert run.status_message == "exited (1)"
    assert run.termination_reason == RunTerminationReason.JOB_FAILED


def test_retry_events_not_covered_fail(client, tmp_path):
    run = client.apply(task("retry-other", fail_once(tmp_path / "m3"), retry={"on_events": ["no-capacity"]}))
    assert run.wait(60) == RunStatus.FAILED
    assert run.record.attempt == 0


def test_retry_duration_runs_out(client, tmp_path):
    run = client.apply(task("retry-limit", ["sleep 2", "exit 1"], retry={"on_events": ["error"], "duration": "1s"}))
    assert run.wait(60) == RunStatus.FAILED
    assert run.termination_reason == RunTerminationReason.RETRY_LIMIT_EXCEEDED
    assert run.error == "retry limit exceeded"


def test_no_capacity_waits_with_retry_until_a_node_fits(client, gpu_nodes):
    run = client.apply(task("wait-big", ["echo ran on a big node"], resources={**SMALL, "gpu": "H100:2"}, retry=True))
    assert wait_for(lambda: run.refresh().status_message == "retrying", 30)
    assert run.status == RunStatus.PENDING
    assert run.jobs[0].termination_reason == JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY
    big = gpu_nodes.add_node(num_cpus=1, num_gpus=2, resources={"accelerator_type:H100": 2}, object_store_memory=80 * 1024**2)
    try:
        assert run.wait(60) == RunStatus.DONE
        assert list(run.logs()) == ["ran on a big node"]
        assert run.jobs[0].node_id == big.node_id
    finally:
        gpu_nodes.remove_node(big)


def test_interruption_is_resubmitted_on_the_remaining_nodes(client, gpu_nodes, tmp_path):
    marker = tmp_path / "interrupted"
    run = client.apply(
        task(
            "resubmit",
            [f"if [ -f {marker} ]; then echo resumed; else echo first; sleep 31350; fi"],
            nodes=2,
            retry={"on_events": ["interruption"]},
        )
    )
    assert wait_for(lambda: run.refresh().jobs and all(j.status == JobStatus.RUNNING for j in run.jobs), 60)
    marker.touch()
    victim = next(n for n in gpu_nodes.worker_nodes if n.node_id == run.jobs[1].node_id)
    gpu_nodes.remove_node(victim, allow_graceful=False)
    assert run.wait(90) == RunStatus.DONE
    assert run.record.attempt == 1
    first = [j for j in run.jobs_history() if j.attempt == 0]
    assert {j.termination_reason for j in first} >= {JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY}
    assert victim.node_id not in {j.node_id for j in run.jobs}
    assert list(run.logs(rank=0)) == ["resumed"]
    assert no_leftovers("sleep 31350", timeout=30) == []


def gpu_task(name, commands, script, **extra):
    """A one-GPU task whose GPUs the head's scripted sampler reports as `script` says."""
    return task(name, commands, resources=GPU_TASK, env={"DSTACK_RAY_FAKE_GPU": script}, **extra)


UTILIZATION = {"min_gpu_utilization": 30, "time_window": "5m"}
GPU_TASK = {**SMALL, "gpu": "H100:1"}


def test_idle_gpus_terminate_the_run(client, settings):
    run = client.apply(gpu_task("idle-gpu", ["echo training", "sleep 31351"], "utilization=5&history=600", utilization_policy=UTILIZATION))
    assert run.wait(60) == RunStatus.FAILED
    job = run.jobs[0]
    assert job.status == JobStatus.TERMINATED
    assert job.termination_reason == JobTerminationReason.TERMINATED_DUE_TO_UTILIZATION_POLICY
    assert run.error == "utilization policy"
    assert any("The job GPU utilization below 30% for 300 seconds" in m for _, m in run.events())
    samples = run.metrics()
    assert samples and {s.utilization for s in samples} == {5.0}
    assert no_leftovers("sleep 31351") == []


def test_busy_gpus_are_not_terminated(client, settings):
    run = client.apply(gpu_task("busy-gpu", ["sleep 3", "echo done"], "utilization=90&history=600", utilization_policy=UTILIZATION))
    assert run.wait(60) == RunStatus.DONE
    assert len(run.metrics()) > 10


def test_too_few_samples_do_not_terminate(client, settings):
    run = client.apply(gpu_task("fresh-gpu", ["sleep 3", "echo done"], "utilization=0", utilization_policy=UTILIZATION))
    assert run.wait(60) == RunStatus.DONE


def test_no_gpu_metrics_is_reported_not_fatal(client, settings):
    run = client.apply(gpu_task("no-nvml", ["sleep 1"], "nvml=1", utilization_policy=UTILIZATION))
    assert run.wait(60) == RunStatus.DONE
    assert any("no GPU metrics" in m for _, m in run.events())


def test_priority_order_and_no_blocking(client):
    # Three 1-CPU nodes: a 3-node run holds the whole cluster.
    blocker = client.apply(task("blocker", ["sleep 31352"], nodes=3))
    assert wait_for(lambda: blocker.refresh().status == RunStatus.RUNNING, 60)
    low = client.apply(task("low", ["echo low"], nodes=3, priority=10))
    high = client.apply(task("high", ["echo high"], nodes=3, priority=90))
    time.sleep(1.5)
    assert low.refresh().status == RunStatus.SUBMITTED and high.refresh().status == RunStatus.SUBMITTED
    assert high.record.wait_reason == "waiting for resources"
    blocker.stop()
    assert high.wait(60) == RunStatus.DONE and low.wait(60) == RunStatus.DONE
    assert high.jobs[0].started_at < low.jobs[0].started_at

    # A high-priority run that cannot fit now does not hold back a smaller one that can.
    small_blocker = client.apply(task("one-node", ["sleep 31353"]))
    assert wait_for(lambda: small_blocker.refresh().status == RunStatus.RUNNING, 60)
    big = client.apply(task("big-high", ["echo big"], nodes=3, priority=100))
    small = client.apply(task("small-low", ["echo small"], priority=0))
    assert small.wait(60) == RunStatus.DONE
    assert big.refresh().status == RunStatus.SUBMITTED
    small_blocker.stop()
    assert big.wait(60) == RunStatus.DONE
    assert no_leftovers("sleep 3135") == []


def set_clock(settings, moment: datetime) -> None:
    offset = (moment - datetime.now(timezone.utc)).total_seconds()
    Path(settings.clock_offset_file).write_text(str(offset))


def test_cron_schedule_fires_at_the_next_minute(client, settings):
    base = datetime.now(timezone.utc).replace(second=10, microsecond=0) + timedelta(hours=1)
    set_clock(settings, base)
    try:
        run = client.apply(task("cron", ["echo fired"], schedule={"cron": "* * * * *"}))
        assert run.status == RunStatus.PENDING
        assert run.record.wait_reason == "waiting for schedule"
        assert run.record.next_trigger_at == base.replace(second=0) + timedelta(minutes=1)
        time.sleep(1.5)
        assert run.refresh().status == RunStatus.PENDING  # not before its time
        set_clock(settings, base + timedelta(seconds=55))
        assert wait_for(lambda: run.refresh().record.attempt >= 0 and any("schedule fired" in m for _, m in run.events()), 30)
        # After the execution it waits for the next trigger again.
        assert wait_for(lambda: run.refresh().status == RunStatus.PENDING and run.jobs[0].status == JobStatus.DONE, 60)
        assert list(run.logs()) == ["fired"]
        assert run.record.next_trigger_at == base.replace(second=0) + timedelta(minutes=2)
        run.stop()
        assert run.refresh().status == RunStatus.TERMINATED
    finally:
        set_clock(settings, datetime.now(timezone.utc))


def test_cron_list_fires_at_the_earliest(client, settings):
    base = datetime(2031, 1, 6, 8, 0, 0, tzinfo=timezone.utc)  # a Monday
    set_clock(settings, base)
    try:
        run = client.apply(task("cron-list", ["true"], schedule={"cron": ["30 9 * * *", "15 8 * * mon", "0 7 * * *"]}))
        assert run.record.next_trigger_at == datetime(2031, 1, 6, 8, 15, tzinfo=timezone.utc)
        run.stop()
    finally:
        set_clock(settings, datetime.now(timezone.utc))


def test_controller_restart_loses_nothing(client, settings):
    import ray

    run = client.apply(task("survivor", ["for i in $(seq 1 6); do echo tick-$i; sleep 0.5; done"]))
    assert wait_for(lambda: "tick-1" in list(run.logs()), 30)
    ray.kill(client._controller.handle, no_restart=False)
    assert run.wait(90) == RunStatus.DONE
    assert list(run.logs()) == [f"tick-{i}" for i in range(1, 7)]
    assert client.get_run("survivor").id == run.id
    # Scheduling still works after the restart.
    after = client.apply(task("after-restart", ["echo still here"]))
    assert after.wait(60) == RunStatus.DONE


def test_head_restart_reconciles_runs(client, settings):
    """The Controller and the supervisor are killed for good (as when the head restarts with
    its state directory kept) and come back from the store: running jobs become `interrupted`
    (the retry policy applies), a queued run stays queued and runs later, a finished run and
    its logs are intact, and nothing of the interrupted jobs keeps running."""
    import ray

    from dstack_ray import Client
    from dstack_ray.runtime.settings import CONTROLLER_NAME, NAMESPACE, SUPERVISOR_NAME

    finished = client.apply(task("before-restart", ["echo kept-1", "echo kept-2"]))
    assert finished.wait(60) == RunStatus.DONE
    resumable = 'if [ -e ~/started ]; then echo resumed; else touch ~/started; echo first; sleep 31360; fi'
    with_retry = client.apply(task("restart-retry", [resumable], retry={"on_events": ["interruption"]}))
    without_retry = client.apply(task("restart-no-retry", ["echo up", "sleep 31361"]))
    for run in (with_retry, without_retry):
        assert wait_for(lambda: run.refresh().status == RunStatus.RUNNING and list(run.logs()), 60)
    queued = client.apply(task("restart-queued", ["echo all three"], nodes=3))
    assert wait_for(lambda: queued.refresh().record.wait_reason == "waiting for resources", 30)

    for name in (CONTROLLER_NAME, SUPERVISOR_NAME):
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
    client._controller = None  # the package's client gets the new Controller below, whatever happens

    def gone(name: str) -> bool:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return True
        return False

    assert wait_for(lambda: gone(CONTROLLER_NAME) and gone(SUPERVISOR_NAME), 30)
    restarted = Client(settings=settings)  # recreates both from the state directory
    client._controller = restarted._controller

    with_retry, without_retry, queued, finished = (restarted.get_run(r.name) for r in (with_retry, without_retry, queued, finished))
    assert without_retry.wait(60) == RunStatus.FAILED
    assert without_retry.jobs[0].termination_reason == JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY
    assert with_retry.wait(90) == RunStatus.DONE, with_retry.events()
    assert with_retry.record.attempt == 1 and list(with_retry.logs(attempt=0)) == ["first"] and list(with_retry.logs()) == ["resumed"]
    assert queued.wait(90) == RunStatus.DONE and list(queued.logs()) == ["all three"]
    assert finished.refresh().status == RunStatus.DONE and list(finished.logs()) == ["kept-1", "kept-2"]
    assert no_leftovers("sleep 3136", timeout=30) == []

