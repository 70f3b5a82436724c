"""The run supervisor's state machine without Ray: a fake host records what the supervisor
reports, placement succeeds at once on N fake nodes, and a scripted fake node agent stands in
for each rank (reports ready, waits for its start order, "runs" until its script says how it
ends or a stop order comes)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Optional

import pytest

from dstack_ray.models.cluster import ClusterView, NodeView
from dstack_ray.runtime import supervisor as sup
from dstack_ray.models.messages import NodeOutcome
from dstack_ray.models import JobStatus, RunRecord, RunSpec, RunStatus, RunTerminationReason, new_jobs
from dstack_ray.runtime.settings import RuntimeSettings
from dstack_ray.config import parse_configuration

NODES = 3


class FakeHost:
    """What a RunSupervisor needs from its SupervisorHost, in process."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.rendezvous = sup.AgentRendezvous()
        self.reports: List[Dict[str, Any]] = []
        self.events: List[str] = []
        self.controller = self.self_handle = None
        self.link = FakeControllerLink(self)

    def open_slot(self, key):
        return self.rendezvous.open_slot(key)

    def close_slot(self, key):
        self.rendezvous.close_slot(key)

    def forget(self, run_id: str) -> None:
        pass


class FakeControllerLink:
    """The Controller as the supervisor sees it (sup.ControllerLink's methods): records reports,
    admits at once."""

    controller = None  # the handle node agents are given

    def __init__(self, host: FakeHost) -> None:
        self.host = host

    async def report_run(self, run_id, changes, jobs, events, released) -> None:
        self.host.reports.append({"changes": changes, "jobs": jobs, "released": released})
        self.host.events.extend(events)

    async def request_admission(self, run_id) -> bool:
        return True

    async def withdraw_admission(self, run_id) -> None:
        pass

    async def get_payload(self, run_id):
        return None

    async def record_metrics(self, run_id, attempt, rank, samples) -> None:
        pass


def test_the_fake_controller_link_has_the_real_ones_methods():
    public = lambda cls: {n for n in vars(cls) if not n.startswith("_")}
    assert public(FakeControllerLink) - {"host"} == public(sup.ControllerLink)


def test_the_controller_link_finds_a_new_controller_once_the_old_is_gone(monkeypatch):
    """A Controller killed for good is made again under its name by the service: the link
    must not retry the dead handle forever."""
    import ray

    class Method:
        def __init__(self, answer):
            self.answer = answer

        def remote(self, *args):
            async def call():
                if isinstance(self.answer, Exception):
                    raise self.answer
                return self.answer

            return call()

    class Handle:
        def __init__(self, answer):
            self.request_admission = Method(answer)

    real_sleep = asyncio.sleep
    monkeypatch.setattr(asyncio, "sleep", lambda seconds: real_sleep(0))
    dead, new = Handle(ray.exceptions.RayActorError()), Handle(True)
    lookups = iter([None, new])  # none for a moment, then the new one
    link = sup.ControllerLink(dead, lookup=lambda: next(lookups))
    assert asyncio.run(asyncio.wait_for(link.request_admission("run"), 5)) is True
    assert link.controller is new


class FakePlacementGroup:
    class id:
        @staticmethod
        def hex() -> str:
            return "fa4e9a"

    async def _ready(self):
        return True

    def ready(self):
        return self._ready()


Script = Callable[[int, int], Any]  # (attempt, rank) -> an outcome, "run" (until stopped), "lost", ...


def install_fakes(monkeypatch, script: Script, started: List[tuple]) -> None:
    """Placement on NODES fake nodes; each rank's agent follows `script`."""
    nodes = [NodeView(node_id=f"node-{i}", ip=f"10.0.0.{i + 1}", cpus=4, memory_bytes=64 * 2**30) for i in range(NODES)]
    monkeypatch.setattr(sup, "live_cluster_view", lambda: ClusterView(nodes=nodes, availability_known=False))
    monkeypatch.setattr(sup, "placement_group", lambda *a, **k: FakePlacementGroup())
    monkeypatch.setattr(sup, "placement_group_table", lambda pg: {"bundles_to_node_id": {i: f"node-{i}" for i in range(NODES)}})
    monkeypatch.setattr(sup, "remove_placement_group", lambda pg: None)
    monkeypatch.setattr(sup, "new_run_key", lambda comment: None)

    async def fake_launch(self, pg, bundle, assignment, payload, nodes_by_bundle):
        rendezvous: sup.AgentRendezvous = self.host.rendezvous
        key = (assignment.run_id, assignment.attempt, assignment.rank)
        plan = script(assignment.attempt, assignment.rank)
        if plan == "lost-before-ready":
            raise RuntimeError("the node died")
        await rendezvous.ready(key, f"10.0.0.{bundle.rank + 1}", f"node-{bundle.rank}", [], None)
        if assignment.nodes_num > 1:
            order = await rendezvous.wait_start(key)
            if order is None:
                return NodeOutcome(stopped=True)
        started.append((assignment.attempt, assignment.rank))
        await rendezvous.running(key, 1000 + assignment.rank)
        seen = 0
        delay = plan[1] if isinstance(plan, tuple) else 0.01
        outcome = plan[0] if isinstance(plan, tuple) else plan
        deadline = asyncio.get_running_loop().time() + delay
        while True:  # "run" until the scripted end or a stop order
            remaining = deadline - asyncio.get_running_loop().time()
            if outcome != "run" and remaining <= 0:
                break
            order = await rendezvous.wait_order(key, seen, max(0.01, remaining) if outcome != "run" else 5)
            if order is not None:
                seen += 1
                return NodeOutcome(exit_code=137 if order.abort else 130, stopped=True, started=True)
        if outcome == "lost":
            raise RuntimeError("the node died")
        return NodeOutcome(exit_code=outcome, started=True)

    monkeypatch.setattr(sup.RunSupervisor, "_launch", fake_launch)


def run_record(config: Dict[str, Any], submitted_at: Optional[datetime] = None, submitted_jobs: bool = False) -> RunRecord:
    """As the Controller stores a new run (with its attempt-0 jobs when `submitted_jobs`)."""
    cfg = parse_configuration({"type": "task", "name": "rr", "resources": {"cpu": 1, "memory": "1GB"}, **config})
    now = submitted_at or datetime.now(timezone.utc)
    spec = RunSpec(run_name=cfg.name, configuration=cfg.model_dump(mode="json", exclude_unset=True))
    jobs = new_jobs("run-1", 0, cfg, now) if submitted_jobs else []
    return RunRecord(id="run-1", name=cfg.name, status=RunStatus.SUBMITTED, submitted_at=now, last_processed_at=now, spec=spec.model_dump(mode="json"), jobs=jobs)


def supervise(
    monkeypatch, config: Dict[str, Any], script: Script, settings: Optional[RuntimeSettings] = None, during=None, submitted_at=None, submitted_jobs=False
):
    """Run a supervisor to its end (after `during`, which acts on it meanwhile); returns
    (supervisor, host, started: the (attempt, rank) of every job that started, in order)."""
    settings = settings or RuntimeSettings(retry_delays=[0.01], stop_grace_seconds=0.05, agent_start_timeout=5)
    host = FakeHost(settings)
    started: List[tuple] = []
    install_fakes(monkeypatch, script, started)
    supervisor = sup.RunSupervisor(host, run_record(config, submitted_at, submitted_jobs), resume_lost=False)

    async def main():
        task = asyncio.ensure_future(supervisor.main())
        if during is not None:
            await during(supervisor, host, started)
        await asyncio.wait_for(task, timeout=20)

    asyncio.run(main())
    return supervisor, host, started


def reasons(supervisor) -> List[Optional[str]]:
    return [j.termination_reason.value if j.termination_reason else None for j in supervisor.jobs]


# --- statuses and reasons ----------------------------------------------------------------------


def test_exit_codes_map_to_dstack_statuses(monkeypatch):
    done, host, _ = supervise(monkeypatch, {"commands": ["true"]}, lambda a, r: 0)
    assert done.run.status == RunStatus.DONE and done.run.termination_reason == RunTerminationReason.ALL_JOBS_DONE
    assert reasons(done) == ["done_by_runner"] and done.jobs[0].status == JobStatus.DONE
    failed, host, _ = supervise(monkeypatch, {"commands": ["false"]}, lambda a, r: 3)
    assert failed.run.status == RunStatus.FAILED and failed.run.termination_reason == RunTerminationReason.JOB_FAILED
    assert reasons(failed) == ["container_exited_with_error"] and failed.jobs[0].exit_code == 3
    assert failed.jobs[0].termination_message == "exit status 3"
    assert host.events[-1] == "run failed (job_failed)"


def test_a_first_attempt_and_a_run_end_cost_no_extra_report(monkeypatch):
    """The first attempt runs the jobs the Controller made at submission (nothing to report
    before admission); the last node's end, the run's end and the bundles of the placement group
    just removed (queued runs may take them once Ray shows them free) go in one report."""
    long_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    done, host, _ = supervise(monkeypatch, {"commands": ["true"], "nodes": 2}, lambda a, r: 0, submitted_at=long_ago, submitted_jobs=True)
    assert done.run.status == RunStatus.DONE and done.run.attempt == 0
    first = host.reports[0]
    assert first["changes"]["status"] == "provisioning"
    assert {j["submitted_at"] for j in first["jobs"]} == {long_ago.isoformat().replace("+00:00", "Z")}  # the submitted jobs
    last = host.reports[-1]
    assert last["changes"]["status"] == "done" and host.events[-1] == "run done (all_jobs_done)"
    assert {"node 0 exited (0)", "node 1 exited (0)"} <= set(host.events)
    bundle = {"CPU": 1.0, "memory": float(2**30)}
    assert sorted(last["released"]) == [("node-0", "fa4e9a", bundle), ("node-1", "fa4e9a", bundle)]
    assert not any(r["released"] for r in host.reports[:-1])


def test_a_lost_node_is_an_interruption(monkeypatch):
    lost, _, _ = supervise(monkeypatch, {"commands": ["x"]}, lambda a, r: "lost")
    assert reasons(lost) == ["interrupted_by_no_capacity"] and lost.run.status == RunStatus.FAILED


# --- startup order, stop criteria, fail-fast ----------------------------------------------------


@pytest.mark.parametrize(
    "order, first, later",
    [("master-first", [0], [1, 2]), ("workers-first", [1, 2], [0])],
)
def test_startup_order(monkeypatch, order, first, later):
    _, host, started = supervise(monkeypatch, {"commands": ["x"], "nodes": 3, "startup_order": order}, lambda a, r: (0, 0.2))
    ranks = [rank for _, rank in started]
    assert sorted(ranks[: len(first)]) == first and sorted(ranks[len(first) :]) == later
    assert any(f"({order})" in e for e in host.events)


def test_master_done_stops_the_workers_and_the_run_is_done(monkeypatch):
    script = lambda a, r: (0, 0.05) if r == 0 else "run"  # noqa: E731
    done, host, _ = supervise(monkeypatch, {"commands": ["x"], "nodes": 3, "stop_criteria": "master-done"}, script)
    assert done.run.status == RunStatus.DONE
    assert reasons(done) == ["done_by_runner"] * 3
    assert "the master is done (stop_criteria: master-done)" in host.events


def test_all_done_waits_for_every_node(monkeypatch):
    done, _, _ = supervise(monkeypatch, {"commands": ["x"], "nodes": 3}, lambda a, r: (0, 0.05 * (r + 1)))
    assert done.run.status == RunStatus.DONE and reasons(done) == ["done_by_runner"] * 3


def test_a_failing_worker_stops_the_others(monkeypatch):
    script = lambda a, r: (1, 0.05) if r == 2 else "run"  # noqa: E731
    failed, host, _ = supervise(monkeypatch, {"commands": ["x"], "nodes": 3}, script)
    assert failed.run.status == RunStatus.FAILED and failed.run.termination_reason == RunTerminationReason.JOB_FAILED
    assert reasons(failed) == ["terminated_by_server", "terminated_by_server", "container_exited_with_error"]
    assert "node 2 failed; stopping the others" in host.events


# --- max duration, user stop ----------------------------------------------------------------------


def test_max_duration_terminates(monkeypatch):
    over, host, _ = supervise(monkeypatch, {"commands": ["x"], "max_duration": 1}, lambda a, r: "run")
    assert reasons(over) == ["max_duration_exceeded"] and over.jobs[0].status == JobStatus.TERMINATED
    assert over.run.status == RunStatus.FAILED
    assert "max_duration 1s exceeded" in host.events


@pytest.mark.parametrize("abort, reason, job_reason", [(False, "stopped_by_user", "terminated_by_user"), (True, "aborted_by_user", "aborted_by_user")])
def test_user_stop(monkeypatch, abort, reason, job_reason):
    async def stop_when_running(supervisor, host, started):
        while not started:
            await asyncio.sleep(0.01)
        supervisor.request_stop(abort)

    stopped, _, _ = supervise(monkeypatch, {"commands": ["x"], "nodes": 2}, lambda a, r: "run", during=stop_when_running)
    assert stopped.run.status == RunStatus.TERMINATED and stopped.run.termination_reason.value == reason
    assert reasons(stopped) == [job_reason, job_reason]


# --- retry and backoff -----------------------------------------------------------------------------


def test_error_is_retried_with_the_backoff_then_done(monkeypatch):
    settings = RuntimeSettings(retry_delays=[0.2, 0.4], stop_grace_seconds=0.05)
    script = lambda a, r: 1 if a == 0 else 0  # noqa: E731
    done, host, started = supervise(monkeypatch, {"commands": ["x"], "retry": {"on_events": ["error"]}}, script, settings)
    assert done.run.status == RunStatus.DONE and done.run.attempt == 1
    assert started == [(0, 0), (1, 0)]
    assert any(e == "attempt 0 failed (error); retrying in 0.2s" for e in host.events)
    retrying = [r["changes"] for r in host.reports if r["changes"].get("wait_reason") == "retrying"]
    assert retrying and retrying[0]["status"] == "pending" and retrying[0]["retry_at"]


def test_backoff_delays_grow_with_resubmissions():
    delays = [15, 30, 60, 120, 300, 600]
    assert [sup.backoff(delays, n) for n in range(1, 9)] == [15, 30, 60, 120, 300, 600, 600, 600]


def test_events_not_covered_are_not_retried(monkeypatch):
    failed, _, started = supervise(monkeypatch, {"commands": ["x"], "retry": {"on_events": ["interruption"]}}, lambda a, r: 1)
    assert failed.run.termination_reason == RunTerminationReason.JOB_FAILED and started == [(0, 0)]


def test_interruption_is_retried(monkeypatch):
    script = lambda a, r: "lost" if a == 0 else 0  # noqa: E731
    done, _, started = supervise(monkeypatch, {"commands": ["x"], "retry": {"on_events": ["interruption"]}}, script)
    assert done.run.status == RunStatus.DONE and started == [(0, 0), (1, 0)]


def test_retry_duration_after_a_provisioned_attempt(monkeypatch):
    """After an attempt that ran, the retry clock is the time since it was last active."""
    config = {"commands": ["x"], "retry": {"on_events": ["error"], "duration": 1}}
    failed, _, started = supervise(monkeypatch, config, lambda a, r: (1, 1.2))
    assert failed.run.termination_reason == RunTerminationReason.RETRY_LIMIT_EXCEEDED
    assert started == [(0, 0)]


def test_no_capacity_retry_duration_counts_from_submission(monkeypatch):
    """A run that never found room is judged by its age: submitted 2 min ago, `duration: 1m`."""
    config = {"commands": ["x"], "retry": {"on_events": ["no-capacity"], "duration": "1m"}, "resources": {"cpu": 64, "memory": "1GB"}}
    failed, host, started = supervise(monkeypatch, config, lambda a, r: 0, submitted_at=datetime.now(timezone.utc) - timedelta(minutes=2))
    assert failed.run.termination_reason == RunTerminationReason.RETRY_LIMIT_EXCEEDED and started == []
    assert reasons(failed) == ["failed_to_start_due_to_no_capacity"]
    young, host, _ = supervise(monkeypatch, {**config, "retry": {"on_events": ["no-capacity"], "duration": "1h"}}, lambda a, r: 0, during=stop_after_a_retry)
    assert any(e.startswith("attempt 0 failed (no-capacity); retrying") for e in host.events)
    assert young.run.termination_reason == RunTerminationReason.STOPPED_BY_USER  # it was still retrying


async def stop_after_a_retry(supervisor, host, started):
    while not any("retrying" in e for e in host.events):
        await asyncio.sleep(0.01)
    supervisor.request_stop(False)


# --- utilization policy, schedule ----------------------------------------------------------------


def test_low_gpu_utilization_over_the_window_terminates(monkeypatch):
    async def feed_idle_samples(supervisor, host, started):
        while not started:
            await asyncio.sleep(0.01)
        now = datetime.now(timezone.utc).timestamp()
        samples = [{"gpu": "0", "at": now - s, "utilization": 3.0, "memory_used": 0} for s in range(0, 400, 5)]
        supervisor.on_metrics(0, 0, samples)

    config = {"commands": ["x"], "utilization_policy": {"min_gpu_utilization": 30, "time_window": "5m"}}
    stopped, host, _ = supervise(monkeypatch, config, lambda a, r: "run", during=feed_idle_samples)
    assert reasons(stopped) == ["terminated_due_to_utilization_policy"]
    assert any("The job GPU utilization below 30% for 300 seconds" in e for e in host.events)


@pytest.mark.parametrize(
    "utilization, seconds",
    [(90.0, 400), (0.0, 60)],  # busy over the window; idle, but samples cover only 60 s of 300
)
def test_busy_gpus_or_too_few_samples_do_not_terminate(monkeypatch, utilization, seconds):
    async def feed(supervisor, host, started):
        while not started:
            await asyncio.sleep(0.01)
        now = datetime.now(timezone.utc).timestamp()
        for gpu in ("0", "1"):
            supervisor.on_metrics(0, 0, [{"gpu": gpu, "at": now - s, "utilization": utilization, "memory_used": 0} for s in range(0, seconds, 5)])

    config = {"commands": ["x"], "utilization_policy": {"min_gpu_utilization": 30, "time_window": "5m"}}
    done, _, _ = supervise(monkeypatch, config, lambda a, r: (0, 0.3), during=feed)
    assert done.run.status == RunStatus.DONE


def test_one_idle_gpu_is_enough_to_terminate(monkeypatch):
    """dstack: any GPU whose every sample in a covered window is below the minimum."""

    async def feed(supervisor, host, started):
        while not started:
            await asyncio.sleep(0.01)
        now = datetime.now(timezone.utc).timestamp()
        supervisor.on_metrics(0, 0, [{"gpu": "0", "at": now - s, "utilization": 95.0, "memory_used": 0} for s in range(0, 400, 5)])
        supervisor.on_metrics(0, 0, [{"gpu": "1", "at": now - s, "utilization": 1.0, "memory_used": 0} for s in range(0, 400, 5)])

    config = {"commands": ["x"], "utilization_policy": {"min_gpu_utilization": 30, "time_window": "5m"}}
    stopped, _, _ = supervise(monkeypatch, config, lambda a, r: "run", during=feed)
    assert reasons(stopped) == ["terminated_due_to_utilization_policy"]


def test_a_scheduled_run_waits_for_its_next_trigger(monkeypatch):
    waiting, host, _ = supervise(monkeypatch, {"commands": ["x"], "schedule": {"cron": "0 3 * * *"}}, lambda a, r: 0)
    assert waiting.run.status == RunStatus.PENDING and waiting.run.wait_reason == "waiting for schedule"
    fire = waiting.run.next_trigger_at
    assert (fire.hour, fire.minute) == (3, 0) and fire > datetime.now(timezone.utc)
    assert reasons(waiting) == ["done_by_runner"]


# --- the log store's offsets -----------------------------------------------------------------------


def test_log_store_offsets(tmp_path):
    from dstack_ray.store.logs import LogGap, LogStore

    store = LogStore(tmp_path)
    assert store.append("r", 0, 0, 0, b"a 1\nb 2\n") == 8
    assert store.append("r", 0, 0, 4, b"b 2\nc 3\n") == 12  # overlap: only the new part is written
    assert store.append("r", 0, 0, 0, b"") == 12  # an empty append answers the size
    with pytest.raises(LogGap):
        store.append("r", 0, 0, 20, b"x\n")
    assert store.read("r", 0, 0, 0, 100) == (b"a 1\nb 2\nc 3\n", 12)
    assert store.read("r", 0, 0, 0, 6) == (b"a 1\n", 4)  # cut at the last whole line
    assert store.read("r", 0, 0, 12, 100) == (b"", 12)
    assert store.size("r", 0, 0) == 12 and store.size("r", 0, 1) == 0


def test_the_gpu_sampler_is_the_heads_setting_never_the_clients(monkeypatch):
    """A spec naming code for the node agent to import (the review's `subprocess:Popen?...`) is
    read without that field: every node gets the head's sampler."""
    settings = RuntimeSettings(retry_delays=[0.01], stop_grace_seconds=0.05, agent_start_timeout=5, gpu_sampler="dstack_ray.metrics.fake:FakeSampler")
    host, started, samplers = FakeHost(settings), [], []
    install_fakes(monkeypatch, lambda a, r: 0, started)
    launch = sup.RunSupervisor._launch

    async def recording(self, pg, bundle, assignment, payload, nodes_by_bundle):
        samplers.append(assignment.gpu_sampler)
        return await launch(self, pg, bundle, assignment, payload, nodes_by_bundle)

    monkeypatch.setattr(sup.RunSupervisor, "_launch", recording)
    record = run_record({"commands": ["x"], "nodes": 2}).model_dump(mode="json")
    record["spec"]["gpu_sampler"] = "subprocess:Popen?args=touch /tmp/pwned&shell=1"
    supervisor = sup.RunSupervisor(host, RunRecord.model_validate(record), resume_lost=False)
    asyncio.run(asyncio.wait_for(supervisor.main(), timeout=20))
    assert samplers == ["dstack_ray.metrics.fake:FakeSampler"] * 2
    assert not hasattr(supervisor.spec, "gpu_sampler")
