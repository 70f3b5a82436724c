"""The Supervisor of each run: placement, node agents, lifecycle, stop, retries.

One `RunSupervisor` per run does all state transitions of that run. They live in one detached
`SupervisorHost` actor (an asyncio process for many runs; one process per run would cost ~1 s
and ~80 MB per run, see bench/). The host is separate from the Controller so that a Controller
restart leaves running runs untouched. Node agents are one detached actor per Ray node
(`dstack:agent:<node id>`, made by the host on first use), shared by every run there; a job's
guard outlives its agent, which re-attaches to it when Ray restarts it. If the host dies, Ray
restarts it and the Controller hands it the active runs again: a run whose attempt was under
way is marked lost (`resume_lost`), its attempt fails as interrupted, and its retry policy
decides what follows.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Dict, List, Optional, Tuple

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from dstack_ray.config.cron import next_fire_time
from dstack_ray.config.profiles import RetryEvent, StartupOrder, StopCriteria, effective_retry
from dstack_ray.config.task import TaskConfiguration
from dstack_ray.plan.capacity import Released
from dstack_ray.plan.live import live_cluster_view
from dstack_ray.plan.planner import NodeBundle, RunPlan, build_plan
from dstack_ray.config.volumes import InstanceMountPoint
from dstack_ray.exec.container import DIND_IMAGE, ContainerSpec, InstanceMount
from dstack_ray.exec.prepare import NodeSpec, RunPayload
from dstack_ray.exec.ssh import RunKey, new_run_key
from dstack_ray.models.messages import CLOSED, NodeOutcome, NodeReady, StartOrder, StopOrder
from dstack_ray.runtime.agent import NodeAgent, NodeAssignment, bundle_probe
from dstack_ray.runtime.clock import Clock
from dstack_ray.runtime.lifecycle import job_end
from dstack_ray.models import (
    JobRecord,
    JobStatus,
    JobTerminationReason,
    RunRecord,
    RunSpec,
    RunStatus,
    RunTerminationReason,
    WaitReason,
    new_jobs,
)
from dstack_ray.runtime.retry import backoff, decide
from dstack_ray.runtime.settings import CONTROLLER_NAME, NAMESPACE, RuntimeSettings, named_controller
from dstack_ray.runtime.utilization import COVERAGE_SLACK_SECONDS, Sample, prune, utilization_violation
from dstack_ray.store.db import utcnow

logger = logging.getLogger(__name__)

Key = Tuple[str, int, int]  # run id, attempt, rank

# Job reasons that end a run as failed unless retried; the first one decides the run.
_FAILURE_REASONS = {
    JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY,
    JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY,
    JobTerminationReason.CONTAINER_EXITED_WITH_ERROR,
    JobTerminationReason.CREATING_CONTAINER_ERROR,
    JobTerminationReason.EXECUTOR_ERROR,
    JobTerminationReason.INSTANCE_UNREACHABLE,
    JobTerminationReason.MAX_DURATION_EXCEEDED,
    JobTerminationReason.TERMINATED_DUE_TO_UTILIZATION_POLICY,
}


@dataclass
class AgentSlot:
    """The rendezvous between a Supervisor and the node agent running one of its jobs."""

    ready: "asyncio.Future[NodeReady]"
    running: "asyncio.Future[int]"
    start: "asyncio.Future[Optional[StartOrder]]"
    # Stop orders, kept: an agent that restarts asks again from the first one.
    orders: List[StopOrder] = field(default_factory=list)
    new_order: asyncio.Event = field(default_factory=asyncio.Event)

    def order(self, order: StopOrder) -> None:
        self.orders.append(order)
        self.new_order.set()


class AgentRendezvous:
    """Where supervisors and the node agents running their jobs meet, one slot per job
    (run id, attempt, rank): the agent reports ready and running there, waits for its start
    order and asks for stop orders; the supervisor waits on and sets the same slot."""

    def __init__(self) -> None:
        self.slots: Dict[Key, AgentSlot] = {}

    def open_slot(self, key: Key) -> AgentSlot:
        loop = asyncio.get_running_loop()
        slot = AgentSlot(ready=loop.create_future(), running=loop.create_future(), start=loop.create_future())
        self.slots[key] = slot
        return slot

    def close_slot(self, key: Key) -> None:
        slot = self.slots.pop(key, None)
        if slot is not None:
            slot.order(CLOSED)

    async def ready(self, key: Key, ip: str, node_id: str, gpu_ids: List[str], ssh_port: Optional[int] = None) -> None:
        slot = self.slots.get(key)
        if slot is not None and not slot.ready.done():
            slot.ready.set_result(NodeReady(ip=ip, node_id=node_id, gpu_ids=gpu_ids, ssh_port=ssh_port))

    async def wait_start(self, key: Key) -> Optional[StartOrder]:
        slot = self.slots.get(key)
        if slot is None:
            return None
        return await asyncio.shield(slot.start)

    async def running(self, key: Key, pid: int) -> None:
        slot = self.slots.get(key)
        if slot is not None and not slot.running.done():
            slot.running.set_result(pid)

    async def wait_order(self, key: Key, seen: int, timeout: float) -> Optional[StopOrder]:
        """The stop order after the first `seen` ones, waiting up to `timeout` for it. A job
        nobody supervises (its run ended, or the supervisor restarted) is told to die."""
        slot = self.slots.get(key)
        if slot is None:
            return CLOSED
        deadline = asyncio.get_running_loop().time() + timeout
        while len(slot.orders) <= seen:
            slot.new_order.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(slot.new_order.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                return None
        return slot.orders[seen]


class RunSupervisor:
    def __init__(self, host: "SupervisorHost", run: RunRecord, resume_lost: bool) -> None:
        self.host = host
        self.run = run
        self.spec: RunSpec = run.spec
        self.cfg: TaskConfiguration = run.spec.configuration
        self.settings = host.settings
        self.retry = effective_retry(self.cfg)
        self.resume_lost = resume_lost
        self.stop_requested: Optional[RunTerminationReason] = None
        self.stop_event = asyncio.Event()
        self.jobs: List[JobRecord] = list(run.jobs)
        self.stop_reasons: Dict[int, JobTerminationReason] = {}
        self.last_provisioned_at: Optional[datetime] = None
        self.task: Optional[asyncio.Task] = None
        self.clock = Clock(self.settings.clock_offset_file)
        self._stopping = False
        self._slots: Dict[int, AgentSlot] = {}
        self._payload: Any = None
        self._ssh_key: Optional[RunKey] = None  # the current attempt's, for multi-node runs
        self._ssh_ports: Dict[int, Optional[int]] = {}
        self._samples: Dict[int, Dict[str, List[Sample]]] = {}
        self._bundle_nodes: Dict[int, str] = {}  # bundle index -> node id, once placed
        # Told to the Controller with the next report (the run's end follows at once):
        self._deferred_events: List[str] = []
        self._released: List[Released] = []  # the bundles of the placement group just removed

    # -- reporting ----------------------------------------------------------------------------

    async def report(self, event: Optional[str] = None, changed: Tuple[str, ...] = (), **fields: Any) -> None:
        """Persist run fields (those given, and those `changed` in `self.run`) and the current
        attempt's jobs in the Controller, with the events and released resources held back for it."""
        for name, value in fields.items():
            setattr(self.run, name, value)
        self.run.last_processed_at = utcnow()
        changes = self.run.model_dump(mode="json", include={*fields, *changed, "last_processed_at"})
        jobs = [j.model_dump(mode="json") for j in self.jobs]
        events, self._deferred_events = self._deferred_events + ([event] if event else []), []
        released, self._released = self._released, []
        await self.host.link.report_run(self.run.id, changes, jobs, events, released)

    # -- main loop ----------------------------------------------------------------------------

    async def main(self) -> None:
        try:
            if self.resume_lost:
                await self._fail_lost_attempt()
                if await self._finish_or_retry():
                    return
            while True:
                if self.stop_requested:
                    await self._finish(self.stop_requested)
                    return
                await self._attempt()
                if await self._finish_or_retry():
                    return
        except Exception as e:  # a bug here must not leave the run hanging as "running"
            logger.exception("supervisor of %s failed", self.run.name)
            for job in self.jobs:
                if not job.status.is_finished():
                    job.finish(JobTerminationReason.EXECUTOR_ERROR, f"supervisor error: {e}")
            await self._finish(RunTerminationReason.SERVER_ERROR, f"supervisor error: {e}")
        finally:
            self.host.forget(self.run.id)

    async def _fail_lost_attempt(self) -> None:
        for job in self.jobs:
            if not job.status.is_finished():
                job.finish(JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY, "the supervisor of this run was lost")
            if job.started_at:
                self.last_provisioned_at = max(self.last_provisioned_at or job.started_at, job.started_at)
        await self.report(event="the supervisor was lost; the attempt was interrupted")

    async def _finish_or_retry(self) -> bool:
        """After an attempt: end the run, or wait out the backoff before the next attempt."""
        reasons = [j.termination_reason for j in self.jobs if j.termination_reason in _FAILURE_REASONS]
        if self.stop_requested:
            await self._finish(self.stop_requested)
            return True
        if not reasons:
            await self._finish(RunTerminationReason.ALL_JOBS_DONE)
            return True
        started = self.run.next_trigger_at or self.run.submitted_at
        decision = decide(self.retry, reasons, self.clock.now(), started, self.last_provisioned_at)
        if not decision.retry:
            reason = RunTerminationReason.RETRY_LIMIT_EXCEEDED if decision.limit_exceeded else RunTerminationReason.JOB_FAILED
            await self._finish(reason)
            return True
        resubmission = self.run.attempt + 1
        delay = backoff(self.settings.retry_delays, resubmission)
        await self.report(
            event=f"attempt {self.run.attempt} failed ({decision.event.value}); retrying in {delay:g}s",
            status=RunStatus.PENDING,
            status_message="retrying" if decision.event == RetryEvent.NO_CAPACITY else RunStatus.PENDING.value,
            wait_reason=WaitReason.RETRY,
            retry_at=self.clock.now() + timedelta(seconds=delay),
        )
        try:
            await asyncio.wait_for(self.stop_event.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass
        return False

    async def _finish(self, reason: RunTerminationReason, message: Optional[str] = None) -> None:
        self.run.jobs = self.jobs
        status = reason.to_status()
        user_stop = reason in (RunTerminationReason.STOPPED_BY_USER, RunTerminationReason.ABORTED_BY_USER)
        if self.cfg.schedule is not None and not user_stop:
            # dstack: a scheduled run goes back to waiting for its next trigger.
            fire = next_fire_time(self.cfg.schedule.crons, self.clock.now())
            self.run.end_jobs(reason)
            await self.report(
                event=message or f"execution {status.value} ({reason.value}); next at {fire}",
                status=RunStatus.PENDING,
                status_message=RunStatus.PENDING.value,
                wait_reason=WaitReason.SCHEDULE,
                next_trigger_at=fire,
            )
            return
        self.run.finish(reason)
        await self.report(
            event=message or f"run {status.value} ({reason.value})",
            changed=("status", "termination_reason", "status_message", "wait_reason", "finished_at"),
        )

    # -- one attempt ----------------------------------------------------------------------------

    async def _attempt(self) -> None:
        # The jobs the Controller made at submission (all still `submitted`) serve the first
        # attempt as they are; any other attempt gets new ones.
        as_submitted = bool(self.jobs) and all(j.status == JobStatus.SUBMITTED for j in self.jobs)
        if self.jobs and not as_submitted:
            self.run.attempt += 1
        self.stop_reasons = {}
        self._stopping = False
        self._samples = {}
        if not as_submitted:
            self.jobs = new_jobs(self.run.id, self.run.attempt, self.cfg, utcnow())
            await self.report(attempt=self.run.attempt)
        if not await self._admitted():
            return
        cluster = await asyncio.get_running_loop().run_in_executor(None, live_cluster_view)
        plan = build_plan(self.cfg, cluster)
        if plan.no_capacity:  # no alive node and no autoscaler node type can ever hold it
            await self._no_capacity(plan.no_capacity)
            return
        for job in self.jobs:
            job.advance(JobStatus.PROVISIONING)
        await self.report(
            event=f"attempt {self.run.attempt}: placing {plan.nodes_num} node(s)",
            status=RunStatus.PROVISIONING,
            status_message=RunStatus.PROVISIONING.value,
            attempt=self.run.attempt,
            wait_reason=WaitReason.AUTOSCALER if plan.needs_new_nodes else WaitReason.RESOURCES,
        )
        pg = placement_group(
            [b.resources for b in plan.bundles],
            strategy=plan.strategy,
            name=f"dstack:{self.run.name}:pg",
            bundle_label_selector=[b.label_selector for b in plan.bundles] if plan.bundles[0].label_selector else None,
        )
        self._bundle_nodes = {}
        try:
            placed = await self._wait_placement(pg, cluster.autoscaling)
            if placed:
                await self._run_nodes(pg, plan)
        finally:
            remove_placement_group(pg)
            # With the next report, so that the Controller admits queued runs the moment Ray's
            # numbers show these free.
            self._released = [Released(self._bundle_nodes[b.rank], pg.id.hex(), b.resources) for b in plan.bundles if b.rank in self._bundle_nodes]

    async def _admitted(self) -> bool:
        """Wait for the Controller's go (priority order, capacity); False if stopped meanwhile."""
        admission = asyncio.ensure_future(self.host.link.request_admission(self.run.id))
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait([admission, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if admission.done():
            return True
        admission.cancel()
        await self.host.link.withdraw_admission(self.run.id)
        return False

    async def _no_capacity(self, why: str) -> None:
        for job in self.jobs:
            job.finish(JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY, why)
        await self.report(event=f"no capacity: {why}", wait_reason=None, attempt=self.run.attempt)

    async def _wait_placement(self, pg: Any, autoscaling: bool) -> bool:
        """Wait until the bundles are reserved; False on stop or no capacity."""
        ready = asyncio.ensure_future(pg.ready())
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            return await self._placement_loop(pg, ready, stop, autoscaling)
        finally:
            stop.cancel()
            if not ready.done():
                ready.cancel()

    async def _placement_loop(self, pg: Any, ready: "asyncio.Future", stop: "asyncio.Future", autoscaling: bool) -> bool:
        waited = 0.0
        interval = 0.05
        while True:
            done, _ = await asyncio.wait([ready, stop], timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            if ready in done:
                return True
            if stop in done:
                return False
            waited += interval
            interval = min(interval * 2, 1.0)
            state = placement_group_table(pg).get("stats", {}).get("scheduling_state")
            reason = {
                "INFEASIBLE": WaitReason.AUTOSCALER if autoscaling else None,
                "NO_RESOURCES": WaitReason.RESOURCES,
            }.get(state or "")
            if reason and reason != self.run.wait_reason:
                await self.report(wait_reason=reason)
            if state == "INFEASIBLE" and not autoscaling:
                cluster = await asyncio.get_running_loop().run_in_executor(None, live_cluster_view)
                replanned = build_plan(self.cfg, cluster)
                if replanned.no_capacity:
                    await self._no_capacity(replanned.no_capacity)
                    return False
            if autoscaling and waited > self.settings.provisioning_timeout:
                await self._no_capacity(f"the autoscaler added no node for it within {self.settings.provisioning_timeout:g}s")
                return False

    async def _run_nodes(self, pg: Any, plan: RunPlan) -> None:
        run_id, attempt = self.run.id, self.run.attempt
        slots = {b.rank: self.host.open_slot((run_id, attempt, b.rank)) for b in plan.bundles}
        self._slots = slots
        refs = {}
        specs = self._node_specs()
        payload = await self._payload_ref()
        sizes = [g.nodes for g in self.cfg.node_groups]
        self._ssh_key = new_run_key(f"dstack-ray:{self.run.name}:{attempt}") if plan.nodes_num > 1 else None
        self._ssh_ports = {}
        # On the event loop's thread, as in _placement_loop: Ray's GCS client is not called from
        # other threads of this actor (a first version did, and the actor's process died once).
        table = placement_group_table(pg)
        nodes = {int(index): node for index, node in (table.get("bundles_to_node_id") or {}).items()}
        self._bundle_nodes = nodes
        for bundle in plan.bundles:
            job = self.jobs[bundle.rank]
            assignment = NodeAssignment(
                run_id=run_id,
                run_name=self.run.name,
                attempt=attempt,
                rank=bundle.rank,
                job_id=str(uuid.uuid4()),
                nodes_num=plan.nodes_num,
                gpus=bundle.gpus,
                group_sizes=sizes,
                spec=specs[bundle.group_index],
                settings=self.settings,
                gpu_sampler=self.settings.gpu_sampler,  # the head's setting: never a client's
                container_runtime=self.spec.container_runtime or self.settings.container_runtime,
                ssh_key=self._ssh_key,
            )
            refs[bundle.rank] = self._launch(pg, bundle, assignment, payload, nodes)
            job.advance(JobStatus.PROVISIONING)
            job.resources = bundle.describe()
        outcomes: Dict[int, "asyncio.Future"] = {rank: asyncio.ensure_future(self._outcome(launch)) for rank, launch in refs.items()}
        try:
            await self._start_nodes(plan, slots, outcomes)
            await self._watch(plan, slots, outcomes)
        finally:
            for rank, slot in slots.items():
                if not slot.start.done():
                    slot.start.set_result(None)
            await self._drain(slots, outcomes)
            for rank in slots:
                self.host.close_slot((run_id, attempt, rank))

    async def _launch(self, pg: Any, bundle: NodeBundle, assignment: NodeAssignment, payload: Any, nodes: Dict[int, str]) -> NodeOutcome:
        """Run one rank on its bundle's node (`nodes`: bundle index -> node id), by that node's
        agent. A bundle with GPUs first runs a short task in it (named after the run, for the
        dashboard) that reads the GPU ids Ray assigns there; a CPU-only one needs no process."""
        if bundle.gpus == 0 and bundle.rank in nodes:
            node_id, gpu_ids = nodes[bundle.rank], []
        else:
            node_id, gpu_ids = await self._probe(pg, bundle)
        agent = await self.host.agent_for(node_id)
        try:
            return await agent.run_job.remote(assignment, self.host.link.controller, self.host.self_handle, payload, gpu_ids)
        except ray.exceptions.RayActorError:
            self.host.forget_agent(node_id)  # its node is gone: a later job there starts a new one
            raise

    async def _probe(self, pg: Any, bundle: NodeBundle) -> Tuple[str, List[str]]:
        resources = {k: v for k, v in bundle.resources.items() if k not in ("CPU", "GPU", "memory")}
        return await _bundle_probe().options(
            name=f"dstack:{self.run.name}:node-{bundle.rank}",
            num_cpus=bundle.resources["CPU"],
            num_gpus=bundle.gpus,
            memory=bundle.memory_bytes or None,
            resources=resources or None,
            max_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=bundle.rank
            ),
        ).remote()

    def _node_specs(self) -> List[NodeSpec]:
        """How each group's nodes run their commands (host process or container)."""
        cfg = self.cfg
        env = {k: v for k, v in cfg.env.items() if isinstance(v, str)}
        specs = []
        for group in cfg.node_groups:
            container = None
            default_image = self.spec.default_image or self.settings.resolved_default_image()
            if cfg.image or cfg.docker or default_image:
                container = ContainerSpec(
                    image=cfg.image or (DIND_IMAGE if cfg.docker else default_image),
                    user=cfg.user,
                    privileged=cfg.privileged,
                    docker=bool(cfg.docker),
                    shm_size_gb=group.resources.shm_size,
                    registry_username=cfg.registry_auth.username if cfg.registry_auth else None,
                    registry_password=cfg.registry_auth.password if cfg.registry_auth else None,
                    mounts=[InstanceMount(**v.model_dump()) for v in cfg.volumes if isinstance(v, InstanceMountPoint)],
                )
            specs.append(
                NodeSpec(
                    commands=list(group.commands),
                    shell=cfg.effective_shell,
                    entrypoint=cfg.entrypoint,
                    working_dir=cfg.working_dir,
                    user_env=env,
                    python=cfg.python.value if cfg.python else None,
                    nvcc=bool(cfg.nvcc),
                    container=container,
                )
            )
        return specs

    async def _payload_ref(self) -> Any:
        """The files and repo shipped with the run, put into Ray's object store once."""
        if self._payload is None and self.spec.has_payload:
            data = await self.host.link.get_payload(self.run.id)
            self._payload = ray.put(RunPayload.model_validate_json(data)) if data else None
        return self._payload

    @staticmethod
    async def _outcome(launch: Any) -> Tuple[Optional[NodeOutcome], Optional[BaseException]]:
        try:
            return await launch, None
        except Exception as e:  # the agent died with its node (or the probe could not run)
            return None, e

    async def _start_nodes(self, plan: RunPlan, slots: Dict[int, AgentSlot], outcomes: Dict[int, "asyncio.Future"]) -> None:
        """Collect every node's IP, then release the commands in `startup_order`."""
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            await self._collect_nodes(slots, outcomes, stop)
            if plan.nodes_num > 1 and not stop.done() and not any(f.done() for f in outcomes.values()):
                await self._release(plan, slots, outcomes, stop)
        finally:
            stop.cancel()

    async def _collect_nodes(self, slots: Dict[int, AgentSlot], outcomes: Dict[int, "asyncio.Future"], stop: "asyncio.Future") -> None:
        pending = {rank: asyncio.ensure_future(asyncio.shield(slot.ready)) for rank, slot in slots.items()}
        deadline = asyncio.get_running_loop().time() + self.settings.agent_start_timeout
        while pending:
            if stop.done() or any(f.done() for f in outcomes.values()):
                return  # a node ended before all started: _watch handles it
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                for rank in pending:
                    self.stop_reasons.setdefault(rank, JobTerminationReason.EXECUTOR_ERROR)
                await self._stop_all(JobTerminationReason.TERMINATED_BY_SERVER, slots, "node agents did not start in time")
                for rank in pending:
                    self.jobs[rank].finish(JobTerminationReason.EXECUTOR_ERROR, "the node agent did not start in time")
                return
            await asyncio.wait(
                list(pending.values()) + list(outcomes.values()) + [stop],
                timeout=min(timeout, 1.0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for rank, fut in list(pending.items()):
                if fut.done():
                    info = fut.result()
                    job = self.jobs[rank]
                    job.node_ip, job.node_id, job.gpu_ids = info.ip, info.node_id, info.gpu_ids
                    self._ssh_ports[rank] = info.ssh_port
                    del pending[rank]
            if pending:  # where the nodes are so far (once all are there, the running report says it)
                await self.report()

    async def _release(self, plan: RunPlan, slots: Dict[int, AgentSlot], outcomes: Dict[int, "asyncio.Future"], stop: "asyncio.Future") -> None:
        """Give every node the cluster's IPs, in the order `startup_order` asks for."""
        ips = [self.jobs[r].node_ip or "" for r in range(plan.nodes_num)]
        ports = [self._ssh_ports.get(r) for r in range(plan.nodes_num)]
        order = StartOrder(ips=ips, gpus_per_node=plan.gpus_per_node(), ssh_ports=ports)
        without = [str(r) for r, port in enumerate(ports) if port is None]
        if without and self._ssh_key is not None:
            await self.report(
                event=f"SSH between nodes is unavailable: node(s) {', '.join(without)} have no sshd"
                " (install openssh-server there, or use an `image` with sshd)"
            )
        startup = self.cfg.startup_order or StartupOrder.ANY
        master, workers = [0], list(range(1, plan.nodes_num))
        if startup == StartupOrder.ANY:
            first, second = master + workers, []
        elif startup == StartupOrder.MASTER_FIRST:
            first, second = master, workers
        else:
            first, second = workers, master
        for rank in first:
            slots[rank].start.set_result(order)
        if second:
            await self.report(event=f"waiting for {'the master' if startup == StartupOrder.MASTER_FIRST else 'the workers'} to run ({startup.value})")
            waits = [asyncio.shield(slots[r].running) for r in first]
            while not all(w.done() for w in waits):
                if stop.done() or any(f.done() for f in outcomes.values()):
                    return
                await asyncio.wait(list(waits) + list(outcomes.values()) + [stop], return_when=asyncio.FIRST_COMPLETED)
            for rank in second:
                slots[rank].start.set_result(order)

    async def _watch(self, plan: RunPlan, slots: Dict[int, AgentSlot], outcomes: Dict[int, "asyncio.Future"]) -> None:
        """Until every node ended: running states, stops, max_duration, fail-fast, master-done."""
        running = {rank: asyncio.ensure_future(asyncio.shield(slot.running)) for rank, slot in slots.items()}
        max_duration = self.cfg.max_duration if isinstance(self.cfg.max_duration, int) else None
        loop = asyncio.get_running_loop()
        deadline: Optional[float] = None
        stop_wait = asyncio.ensure_future(self.stop_event.wait())
        remaining = dict(outcomes)
        try:
            while remaining:
                started = [rank for rank, fut in running.items() if fut.done()]
                for rank in started:
                    del running[rank]
                if started:
                    await self._mark_running(started)
                    if max_duration is not None and deadline is None:
                        deadline = loop.time() + max_duration
                if self.stop_requested and not self._stopping:
                    abort = self.stop_requested == RunTerminationReason.ABORTED_BY_USER
                    await self._stop_all(self.stop_requested.to_job_reason(), slots, abort=abort)
                if deadline is not None and loop.time() >= deadline and not self._stopping:
                    deadline = None
                    await self._stop_all(
                        JobTerminationReason.MAX_DURATION_EXCEEDED, slots, f"max_duration {max_duration}s exceeded"
                    )
                for rank in [r for r, fut in remaining.items() if fut.done()]:
                    self._record_outcome(rank, *remaining.pop(rank).result())
                    await self._after_node_ended(rank, bool(remaining), slots)
                if not remaining:
                    break
                waitables = list(remaining.values()) + list(running.values())
                if not self._stopping:
                    waitables.append(stop_wait)
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait(waitables, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            for fut in running.values():
                fut.cancel()

    async def _mark_running(self, ranks: List[int]) -> None:
        now = utcnow()
        for rank in ranks:
            job = self.jobs[rank]
            if job.advance(JobStatus.RUNNING, now):
                self.last_provisioned_at = now
        if self.run.status != RunStatus.RUNNING and not self._stopping:
            await self.report(status=RunStatus.RUNNING, status_message=RunStatus.RUNNING.value, wait_reason=None)
        else:
            await self.report()

    async def _after_node_ended(self, rank: int, others_left: bool, slots: Dict[int, AgentSlot]) -> None:
        """Fail fast when a node fails; end the run when the master is done (master-done)."""
        job = self.jobs[rank]
        if not others_left:  # the attempt's end is reported next
            self._deferred_events.append(f"node {rank} {job.status_message}")
            return
        await self.report(event=f"node {rank} {job.status_message}")
        if self._stopping:
            return
        if job.status == JobStatus.DONE:
            if rank == 0 and self.cfg.stop_criteria == StopCriteria.MASTER_DONE:
                await self._stop_all(
                    JobTerminationReason.DONE_BY_RUNNER, slots, "the master is done (stop_criteria: master-done)"
                )
        else:
            await self._stop_all(JobTerminationReason.TERMINATED_BY_SERVER, slots, f"node {rank} failed; stopping the others")

    def _record_outcome(self, rank: int, outcome: Optional[NodeOutcome], error: Optional[BaseException]) -> None:
        job = self.jobs[rank]
        if outcome is not None:
            job.exit_code = outcome.exit_code
        job.finish(*job_end(outcome, self.stop_reasons.get(rank), error))

    async def _stop_all(
        self,
        reason: JobTerminationReason,
        slots: Dict[int, AgentSlot],
        event: Optional[str] = None,
        abort: bool = False,
    ) -> None:
        """Order every unfinished node to stop (SIGINT, SIGKILL after the grace period)."""
        self._stopping = True
        for rank, slot in slots.items():
            job = self.jobs[rank]
            if job.status.is_finished():
                continue
            self.stop_reasons.setdefault(rank, reason)
            job.advance(JobStatus.TERMINATING)
            if not slot.start.done():
                slot.start.set_result(None)  # never started: it just returns
            slot.order(StopOrder(reason=reason, abort=abort, grace=self.settings.stop_grace_seconds))
        await self.report(event=event, status=RunStatus.TERMINATING, status_message=RunStatus.TERMINATING.value)

    async def _drain(self, slots: Dict[int, AgentSlot], outcomes: Dict[int, "asyncio.Future"]) -> None:
        """Make sure no job outlives the attempt: those still running after the grace period
        are killed, and the attempt waits a little more for their agents to say so."""
        grace = self.settings.stop_grace_seconds + 10
        pending = [f for f in outcomes.values() if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for rank, fut in outcomes.items():
            if not fut.done():
                slots[rank].order(CLOSED)
        pending = [f for f in outcomes.values() if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)

    # -- GPU metrics and the utilization policy ----------------------------------------------------

    def on_metrics(self, attempt: int, rank: int, samples: List[Dict[str, Any]]) -> None:
        if attempt != self.run.attempt:
            return
        by_gpu = self._samples.setdefault(rank, {})
        for sample in samples:
            series = by_gpu.setdefault(sample["gpu"], [])
            series.append((sample["at"], sample["utilization"]))
        policy = self.cfg.utilization_policy
        window = policy.time_window if policy else 0
        keep_after = time.time() - window - COVERAGE_SLACK_SECONDS - 60
        for gpu, series in by_gpu.items():
            by_gpu[gpu] = prune(series, keep_after)
        asyncio.ensure_future(self.host.link.record_metrics(self.run.id, attempt, rank, samples))
        if policy is None or self._stopping:
            return
        message = utilization_violation(by_gpu, policy.min_gpu_utilization, policy.time_window, time.time())
        if message is not None:
            asyncio.ensure_future(
                self._stop_all(JobTerminationReason.TERMINATED_DUE_TO_UTILIZATION_POLICY, self._slots, message)
            )

    # -- requests ---------------------------------------------------------------------------------

    def request_stop(self, abort: bool) -> None:
        self.stop_requested = RunTerminationReason.ABORTED_BY_USER if abort else RunTerminationReason.STOPPED_BY_USER
        self.stop_event.set()


_BUNDLE_PROBE: Any = None


def _bundle_probe() -> Any:
    """The bundle probe remote function, registered once per process."""
    global _BUNDLE_PROBE
    if _BUNDLE_PROBE is None:
        _BUNDLE_PROBE = ray.remote(bundle_probe)
    return _BUNDLE_PROBE


class ControllerLink:
    """What supervisors ask of the Controller; each call is retried while the Controller
    restarts, and goes to a new Controller once the old one is gone for good (made again from
    the store by the service)."""

    def __init__(self, controller: Any, lookup: Callable[[], Optional[Any]] = named_controller) -> None:
        self._controller = controller
        self._lookup = lookup

    async def report_run(
        self, run_id: str, changes: Dict[str, Any], jobs: List[Dict[str, Any]], events: List[str], released: List[Released]
    ) -> None:
        await self._retried(lambda c: c.report_run.remote(run_id, changes, jobs, events, released))

    async def request_admission(self, run_id: str) -> bool:
        return await self._retried(lambda c: c.request_admission.remote(run_id))

    async def withdraw_admission(self, run_id: str) -> None:
        await self._retried(lambda c: c.withdraw_admission.remote(run_id))

    async def get_payload(self, run_id: str) -> Optional[str]:
        return await self._retried(lambda c: c.get_payload.remote(run_id))

    async def record_metrics(self, run_id: str, attempt: int, rank: int, samples: List[Dict[str, Any]]) -> None:
        await self._retried(lambda c: c.record_metrics.remote(run_id, attempt, rank, samples))

    @property
    def controller(self) -> Any:
        """The Controller's handle as last known (node agents store logs through it)."""
        return self._controller

    async def _retried(self, call: Callable[[Any], Any]) -> Any:
        delay = 0.2
        while True:
            try:
                return await call(self._controller)
            except ray.exceptions.RayActorError:
                await asyncio.sleep(delay)  # the Controller restarts (or a new one is made): try again
                delay = min(delay * 2, 5.0)
                self._controller = self._lookup() or self._controller


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=10000)
class SupervisorHost:
    """Hosts the RunSupervisors and the rendezvous points of their node agents."""

    def __init__(self, settings: Dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        self.settings = RuntimeSettings.model_validate(settings)
        self.incarnation = uuid.uuid4().hex
        self.link = ControllerLink(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE))  # it made this host
        self.self_handle = ray.get_runtime_context().current_actor
        self.supervisors: Dict[str, RunSupervisor] = {}
        self.rendezvous = AgentRendezvous()
        self.agents: Dict[str, Any] = {}  # node id -> its NodeAgent actor

    def __repr__(self) -> str:
        return "DstackSupervisor"

    async def ping(self) -> str:
        return self.incarnation

    async def start_run(self, run: Dict[str, Any], resume_lost: bool = False) -> None:
        record = RunRecord.model_validate(run)
        if record.id in self.supervisors:
            return
        supervisor = RunSupervisor(self, record, resume_lost)
        self.supervisors[record.id] = supervisor
        supervisor.task = asyncio.ensure_future(supervisor.main())

    async def stop_run(self, run_id: str, abort: bool) -> bool:
        supervisor = self.supervisors.get(run_id)
        if supervisor is None:
            return False
        supervisor.request_stop(abort)
        return True

    async def active_runs(self) -> List[str]:
        return list(self.supervisors)

    def forget(self, run_id: str) -> None:
        self.supervisors.pop(run_id, None)

    # -- node agent rendezvous --------------------------------------------------------------------

    def open_slot(self, key: Key) -> AgentSlot:
        return self.rendezvous.open_slot(key)

    def close_slot(self, key: Key) -> None:
        self.rendezvous.close_slot(key)

    async def agent_ready(
        self, run_id: str, attempt: int, rank: int, ip: str, node_id: str, gpu_ids: List[str], ssh_port: Optional[int] = None
    ) -> None:
        await self.rendezvous.ready((run_id, attempt, rank), ip, node_id, gpu_ids, ssh_port)

    async def agent_wait_start(self, run_id: str, attempt: int, rank: int) -> Optional[StartOrder]:
        return await self.rendezvous.wait_start((run_id, attempt, rank))

    async def agent_running(self, run_id: str, attempt: int, rank: int, pid: int) -> None:
        await self.rendezvous.running((run_id, attempt, rank), pid)

    async def agent_event(self, run_id: str, attempt: int, rank: int, message: str) -> None:
        supervisor = self.supervisors.get(run_id)
        if supervisor is not None and attempt == supervisor.run.attempt:
            await supervisor.report(event=f"node {rank}: {message}")

    async def agent_pulling(self, run_id: str, attempt: int, rank: int) -> None:
        supervisor = self.supervisors.get(run_id)
        if supervisor is not None and attempt == supervisor.run.attempt:
            job = supervisor.jobs[rank]
            if job.status == JobStatus.PROVISIONING and job.advance(JobStatus.PULLING):
                await supervisor.report()

    async def agent_metrics(self, run_id: str, attempt: int, rank: int, samples: List[Dict[str, Any]]) -> None:
        supervisor = self.supervisors.get(run_id)
        if supervisor is not None:
            supervisor.on_metrics(attempt, rank, samples)

    async def agent_metrics_unavailable(self, run_id: str, attempt: int, rank: int, reason: str) -> None:
        supervisor = self.supervisors.get(run_id)
        if supervisor is not None and attempt == supervisor.run.attempt:
            await supervisor.report(event=f"node {rank}: no GPU metrics ({reason})")

    async def agent_wait_order(self, run_id: str, attempt: int, rank: int, seen: int, timeout: float) -> Optional[StopOrder]:
        return await self.rendezvous.wait_order((run_id, attempt, rank), seen, timeout)

    async def agent_for(self, node_id: str) -> Any:
        """The node agent actor of a node, started by the first job there."""
        agent = self.agents.get(node_id)
        if agent is None:
            agent = NodeAgent.options(
                name=f"dstack:agent:{node_id}",
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            ).remote()
            self.agents[node_id] = agent
        return agent

    def forget_agent(self, node_id: str) -> None:
        self.agents.pop(node_id, None)
