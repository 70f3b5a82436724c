"""The examples/ that run on one host, on the simulated cluster (fake H100s, 1 CPU per node).
The distributed recipes (torchrun, MPI, files and repos, web app, the Python API in a Ray
application) run on separate hosts in tests/multihost; hello and distributed in test_run_engine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from dstack_ray.models import JobStatus, JobTerminationReason, RunStatus
from tests.helpers import local_torch_sources, no_leftovers, wait_for
from tests.integration.test_policies import set_clock

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_single_node_training(client, settings):
    """`python:` 3.11 (this machine's), `uv pip install -r` into the job's venv, train, save.
    The node has a (fake) GPU; torch is a CPU build here, so it trains on the CPU."""
    run = client.apply(EXAMPLES / "single-node-training.dstack.yml", env=local_torch_sources())
    assert run.wait(300) == RunStatus.DONE, (run.events(), list(run.logs())[-10:])
    lines = list(run.logs())
    assert "training on cpu (1 GPU(s) on this node)" in lines
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == [f"{i}/5" for i in range(1, 6)]
    assert float(epochs[-1].split()[-1]) > 0.9  # accuracy
    saved = lines[-1]
    assert saved == "saved /root/checkpoints/model.pt"  # the job's home, dstack's /root in its view
    assert list(Path(settings.state_dir, "runs").glob("train-single-*/node-0/home/checkpoints/model.pt"))


def test_retry_waits_for_capacity(client, gpu_nodes):
    run = client.apply(EXAMPLES / "retry.dstack.yml")
    assert wait_for(lambda: run.refresh().status_message == "retrying", 30)
    assert run.jobs[0].termination_reason == JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY
    big = gpu_nodes.add_node(num_cpus=1, num_gpus=2, resources={"accelerator_type:H100": 2}, object_store_memory=80 * 1024**2)
    try:
        assert run.wait(60) == RunStatus.DONE, run.events()
        (line,) = list(run.logs())
        assert line.startswith("training on ") and line.endswith(" with GPUs 0,1")
    finally:
        gpu_nodes.remove_node(big)


def test_schedule_runs_nightly(client, settings):
    day = datetime.now(timezone.utc).date() + timedelta(days=3)
    three = datetime(day.year, day.month, day.day, 3, 0, tzinfo=timezone.utc)
    set_clock(settings, three - timedelta(seconds=30))
    try:
        run = client.apply(EXAMPLES / "schedule.dstack.yml")
        assert run.status == RunStatus.PENDING and run.record.wait_reason == "waiting for schedule"
        assert run.record.next_trigger_at == three
        set_clock(settings, three + timedelta(seconds=1))
        assert wait_for(lambda: run.refresh().jobs and run.jobs[0].status == JobStatus.DONE, 60), run.events()
        assert list(run.logs())[0].startswith("nightly job on ")  # (`date` in it is the real time)
        assert any("schedule fired" in message for _, message in run.events())
        assert wait_for(lambda: run.refresh().record.next_trigger_at == three + timedelta(days=1), 30)
        assert run.status == RunStatus.PENDING
        run.stop()
        assert run.refresh().status == RunStatus.TERMINATED
    finally:
        set_clock(settings, datetime.now(timezone.utc))


def test_utilization_policy_stops_an_idle_gpu_run(client, settings):
    """The sampler reports 3% for the last 40 minutes (the head's scripted fake; no NVML here)."""
    example = yaml.safe_load((EXAMPLES / "utilization-policy.dstack.yml").read_text())
    run = client.apply({**example, "env": {"DSTACK_RAY_FAKE_GPU": "utilization=3&history=2400"}})
    assert run.wait(90) == RunStatus.FAILED, run.events()
    assert run.jobs[0].termination_reason == JobTerminationReason.TERMINATED_DUE_TO_UTILIZATION_POLICY
    assert any("The job GPU utilization below 10% for 1800 seconds" in m for _, m in run.events())
    assert run.jobs[0].status == JobStatus.TERMINATED
    assert no_leftovers("sleep infinity") == []
