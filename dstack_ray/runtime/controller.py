"""The Controller: one detached actor per cluster, on the head node.

It owns the store (runs, jobs, events, logs), answers clients, queues runs and hands them to
the SupervisorHost, and watches that host: if it is lost, the runs it supervised are handed to
its successor, which applies their retry policy. Restarted by Ray after a crash, it reloads
everything from the store; running runs are not disturbed.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import time
import uuid
from collections import OrderedDict, defaultdict, deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import ray
from pydantic import ValidationError

from dstack_ray import __version__
from dstack_ray.errors import Conflict, InvalidInput, NotFound, invalid_fields
from dstack_ray.metrics.runs import RunMetrics
from dstack_ray.plan.capacity import Released, free_capacity, place, still_counted
from dstack_ray.plan.live import live_cluster_view, with_layouts
from dstack_ray.models.cluster import ClusterView
from dstack_ray.plan.planner import RunPlan, build_plan
from dstack_ray.runtime.admission import admission_pass
from dstack_ray.runtime.clock import Clock
from dstack_ray.runtime.lifecycle import IllegalTransition, apply_report, fire_schedules, submitted_run, to_hand_over
from dstack_ray.models import (
    RunRecord,
    RunSpec,
    RunStatus,
    RunTerminationReason,
    WaitReason,
)
from dstack_ray.runtime.names import generate_run_name
from dstack_ray.runtime.settings import CONTROLLER_NAME, NAMESPACE, SUPERVISOR_NAME, RuntimeSettings, named_controller
from dstack_ray.store import LogGap, LogStore, Store, utcnow

logger = logging.getLogger(__name__)

HOST_PING_INTERVAL = 1.0
RECENT_RUNS = 256  # finished runs kept in memory besides the store
RETENTION_INTERVAL = 600.0  # how often runs past the retention are removed
RELEASE_RECHECK = 0.015  # seconds between looks at Ray's numbers while a removed group still shows
RELEASE_MEMORY = 5.0  # seconds a removed group is looked for in Ray's numbers at most
LOG_READ_LIMIT = 4 << 20


class _GCPauses:
    """Seconds the garbage collector paused this process, in total (gc.callbacks); and after
    each full collection, what survived it is frozen out of the next ones. With 2,000 queued
    runs a full pass over the heap took ~0.16 s (the Controller's event loop stood still); now
    a full pass sees only what was made since the previous one. Cyclic garbage among frozen
    objects is collected by `collect_all`, which the Controller calls when no run waits."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def install(self) -> None:
        if self._observe not in gc.callbacks:
            gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: Dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.total += time.perf_counter() - self._started
        if info.get("generation") == 2 and not self._collecting_all:
            gc.freeze()

    _collecting_all = False

    def collect_all(self) -> None:
        self._collecting_all = True
        try:
            gc.unfreeze()
            gc.collect()
        finally:
            self._collecting_all = False
        gc.freeze()


_GC_PAUSES = _GCPauses()


class _NameCheck:
    """`name in taken` for the name generator, asked of the Controller (and its store)."""

    def __init__(self, taken: Any) -> None:
        self._taken = taken

    def __contains__(self, name: object) -> bool:
        return self._taken(name)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=10000)
class Controller:
    def __init__(self, settings: Dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        self.settings = RuntimeSettings.model_validate(settings)
        state_dir = self.settings.state_dir_for(ray.get_runtime_context().gcs_address)
        self.settings.state_dir = str(state_dir)
        self.store = Store(state_dir / "state.db")
        self.logs = LogStore(state_dir / "logs")
        # Active runs live here; finished ones in the store (the newest few also in `recent`),
        # so that nothing the Controller does slows down as the history grows.
        self.runs: Dict[str, RunRecord] = {r.id: r for r in self.store.load_runs(active_only=True)}
        self.recent: "OrderedDict[str, RunRecord]" = OrderedDict()
        for run_id, error in self.store.quarantined:
            logger.error("run record %s cannot be read and was quarantined: %s", run_id, error)
        self.conditions: Dict[str, asyncio.Condition] = {}
        self.run_metrics = RunMetrics(self.runs.values(), history=self.store.status_counts())
        self.run_metrics.export_counts()
        self.log_events: Dict[Tuple[str, int, int], asyncio.Event] = defaultdict(asyncio.Event)
        self.handed: Dict[str, str] = {}  # run id -> incarnation of the host supervising it
        self.admission: Dict[str, "asyncio.Future[bool]"] = {}  # runs waiting for the go
        self.recently_admitted: Dict[str, Tuple[float, List[Dict[str, float]]]] = {}
        self.recently_released: Dict[str, Tuple[float, List[Released]]] = {}  # run id -> its removed group's bundles
        self.plans: Dict[str, Tuple[str, RunPlan, tuple]] = {}  # run id -> (cluster shape, its plan there, its need)
        # (at, runs waiting, seconds, CPU seconds of its thread, plans made, seconds of garbage
        # collection in it): the wall time also counts waiting for a CPU on a busy head
        self.admission_passes: "deque[Tuple[float, int, float, float, int, float]]" = deque(maxlen=20_000)
        self.plans_made = 0
        self._layout_probed: set = set()  # node ids asked how host-mode jobs see them
        self.clock = Clock(self.settings.clock_offset_file)
        self.wakeup: Optional[asyncio.Event] = None
        self.host: Any = None
        self.host_incarnation: Optional[str] = None
        self.background: Optional[asyncio.Task] = None
        logger.info("controller started with %d runs in %s", len(self.runs), state_dir)
        # What exists now (Ray, the loaded runs) lives as long as the actor: keep it out of the
        # collector's full passes, which otherwise pause the event loop ~0.1 s with long queues.
        gc.freeze()
        _GC_PAUSES.install()

    def __repr__(self) -> str:
        return "DstackController"

    # -- lifecycle --------------------------------------------------------------------------------

    async def ping(self) -> Dict[str, Any]:
        await self._ensure_background()
        return {
            "version": __version__,  # a service of another version replaces this Controller
            "state_dir": self.settings.state_dir,
            "host": self.host_incarnation,
            "job_id": ray.get_runtime_context().get_job_id(),  # the job whose driver created it
            "quarantined": [{"run_id": run_id, "error": why} for run_id, why in self.store.quarantined],
        }

    async def _ensure_background(self) -> None:
        if self.background is None or self.background.done():
            self.wakeup = asyncio.Event()
            await self._connect_host()
            self.background = asyncio.ensure_future(
                asyncio.gather(self._watch_host(), self._schedule_loop(), self._retention_loop())
            )

    def _kick(self) -> None:
        """Run a scheduling pass soon (a run arrived, finished, or asks to be placed)."""
        if self.wakeup is not None:
            self.wakeup.set()

    async def _connect_host(self) -> None:
        self.host = _supervisor_host_options(self.settings).remote(self.settings.model_dump())
        incarnation = await self.host.ping.remote()
        await self._adopt(incarnation)

    async def _adopt(self, incarnation: str) -> None:
        """Make sure every active run is supervised by this host incarnation."""
        previous = self.host_incarnation
        self.host_incarnation = incarnation
        supervised = set(await self.host.active_runs.remote())
        for run_id in supervised & set(self.runs):
            self.handed[run_id] = incarnation
        for run, lost in to_hand_over(list(self.runs.values()), supervised):
            if previous is not None or lost:
                logger.warning("run %s lost its supervisor; handing it over", run.name)
            await self._hand_over(run, resume_lost=lost)

    async def _watch_host(self) -> None:
        while True:
            await asyncio.sleep(HOST_PING_INTERVAL)
            try:
                incarnation = await asyncio.wait_for(self.host.ping.remote(), timeout=30)
            except Exception as e:  # restarting: ping again
                logger.warning("supervisor host unreachable: %s", e)
                continue
            if incarnation != self.host_incarnation:
                logger.warning("supervisor host restarted")
                try:
                    await self._adopt(incarnation)
                except Exception:
                    logger.exception("cannot hand runs to the restarted supervisor host")

    async def _hand_over(self, run: RunRecord, resume_lost: bool = False) -> None:
        self.handed[run.id] = self.host_incarnation or ""
        await self.host.start_run.remote(run.model_dump(mode="json"), resume_lost)

    # -- runs -------------------------------------------------------------------------------------

    def _find(self, name_or_id: str) -> Optional[RunRecord]:
        """A run by id or name (the newest of that name): an active one, else from the store."""
        run = self.runs.get(name_or_id) or self.recent.get(name_or_id)
        if run is not None:
            return run
        named = [r for r in self.runs.values() if r.name == name_or_id]
        if named:  # an active run is the newest of its name (a name is reused once it finished)
            return named[0]
        run = self.store.find_run(name_or_id)
        if run is not None:
            self._remember(run)
        return run

    def _get(self, run_id: str) -> Optional[RunRecord]:
        return self.runs.get(run_id) or self.recent.get(run_id) or self.store.find_run(run_id)

    def _remember(self, run: RunRecord) -> None:
        """Keep a finished run at hand (clients waiting on it, `logs` right after the end)."""
        self.recent[run.id] = run
        self.recent.move_to_end(run.id)
        while len(self.recent) > RECENT_RUNS:
            self.recent.popitem(last=False)

    def _name_taken(self, name: str) -> bool:
        return any(r.name == name for r in self.runs.values()) or self.store.has_name(name)

    def _require(self, name: str) -> RunRecord:
        run = self._find(name)
        if run is None:
            raise NotFound(f"run {name} not found", hint="list runs with `dstack-ray ps -a`")
        return run

    async def _changed(self, run: RunRecord) -> None:
        run.version += 1
        self.store.save_run(run)
        self.run_metrics.observe(run)
        if run.status.is_finished() and self.runs.pop(run.id, None) is not None:
            self._remember(run)
        condition = self.conditions.setdefault(run.id, asyncio.Condition())
        async with condition:
            condition.notify_all()

    def _payload_path(self, run_id: str) -> Path:
        return self.settings.resolved_state_dir() / "payloads" / f"{run_id}.json"

    async def get_payload(self, run_id: str) -> Optional[str]:
        """The files and repo shipped with a run (JSON of exec.prepare.RunPayload)."""
        try:
            return self._payload_path(run_id).read_text()
        except FileNotFoundError:
            return None

    async def submit(self, spec: Dict[str, Any], payload: Optional[str] = None) -> Dict[str, Any]:
        await self._ensure_background()
        try:
            run_spec = RunSpec.model_validate(spec)
        except ValidationError as e:
            raise invalid_fields("run spec", e.errors(include_input=False)) from None
        if run_spec.submission_id:
            # Ray retries this call on a restarted Controller when the first one crashed after
            # saving the run: answer with that run instead of a duplicate or a false conflict.
            known = next(
                (r for r in self.runs.values() if r.spec is not None and r.spec.submission_id == run_spec.submission_id), None
            ) or self.store.find_submission(run_spec.submission_id)
            if known is not None:
                return known.public()
        name = run_spec.run_name or generate_run_name(_NameCheck(self._name_taken))
        existing = self._find(name)
        if existing is not None:
            if not existing.status.is_finished():
                raise Conflict(f"run {name} is active ({existing.status.value}); stop it first", hint=f"`dstack-ray stop {name}`")
            self._delete(existing)
        run_spec.run_name = name
        run = submitted_run(uuid.uuid4().hex, run_spec, utcnow(), self.clock.now())
        if payload is not None:
            path = self._payload_path(run.id)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(payload)
        self.runs[run.id] = run
        self.store.save_jobs(run.jobs)
        self.store.add_event(run.id, f"submitted ({run_spec.configuration.nodes_num} node(s))")
        await self._changed(run)
        if run.wait_reason == WaitReason.SCHEDULE:
            self.store.add_event(run.id, f"waiting for schedule; next at {run.next_trigger_at}")
        else:
            await self._hand_over(run)
        return run.public()

    async def report_run(
        self, run_id: str, changes: Dict[str, Any], jobs: List[Dict[str, Any]], events: List[str], released: List[Released]
    ) -> None:
        """Called by Supervisors: merge run fields, replace the attempt's jobs, record the events;
        `released`: the bundles of the run's placement group it just removed, which queued runs
        may take as soon as Ray's numbers show them free."""
        run = self.runs.get(run_id)
        if run is None:
            return
        try:
            updated = apply_report(run, changes, jobs)
        except IllegalTransition as e:
            logger.warning("%s", e)
            return
        self.runs[run_id] = updated
        self.store.save_jobs(updated.jobs)
        for event in events:
            self.store.add_event(run_id, event)
        if released:
            self._forget_old_releases()  # (here too: no run may have waited since they were told)
            self.recently_released[run_id] = (time.monotonic(), released)
            self._kick()
        if updated.status.is_finished() or updated.wait_reason == WaitReason.SCHEDULE:
            self.handed.pop(run_id, None)
            self.recently_admitted.pop(run_id, None)
            self.plans.pop(run_id, None)
            for job in updated.jobs:
                self.log_events[(run_id, job.attempt, job.rank)].set()
            self._kick()
            # Ray's numbers lag a placement group's removal (see `released`); once more in case
            # they still did when the last look at them ended.
            asyncio.get_running_loop().call_later(0.25, self._kick)
        elif updated.status == RunStatus.RUNNING:
            self.recently_admitted.pop(run_id, None)
        await self._changed(updated)

    async def get_run(self, name: str) -> Optional[Dict[str, Any]]:
        run = self._find(name)
        return run.public() if run else None

    async def list_runs(
        self, limit: Optional[int] = None, active_only: bool = False, before_at: Optional[str] = None, before_id: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """Runs newest first (models/api.py: ListRuns): the active ones without their specs
        (`active_only`), or a page of all of them (`limit`, and `before_*` = submitted_at and id
        of the previous page's last)."""
        if active_only:
            active = sorted(self.runs.values(), key=lambda r: (r.submitted_at, r.id), reverse=True)
            return [r.model_dump(mode="json", exclude={"spec"}) for r in active[:limit]]
        try:
            after = None if before_at is None else (datetime.fromisoformat(before_at), before_id or "")
        except ValueError:
            raise InvalidInput("`before_at` must be an ISO 8601 time (a run's submitted_at)") from None
        return [r.public() for r in self.store.list_runs(limit, after)]  # every change is saved

    async def wait_run(self, run_id: str, version: int, timeout: float) -> Optional[Dict[str, Any]]:
        """Long-poll: the run once its version passes `version`, or after `timeout` seconds."""
        run = self._get(run_id)
        if run is None:
            return None
        if run.version <= version and not run.status.is_finished():
            condition = self.conditions.setdefault(run_id, asyncio.Condition())
            async with condition:
                try:
                    await asyncio.wait_for(condition.wait_for(lambda: self._get(run_id).version > version), timeout)
                except asyncio.TimeoutError:
                    pass
            run = self._get(run_id)
        return run.public()

    async def stop_run(self, name: str, abort: bool = False) -> Dict[str, Any]:
        run = self._require(name)
        if run.status.is_finished():
            return run.public()
        stopped = False
        if self.handed.get(run.id):
            stopped = await self.host.stop_run.remote(run.id, abort)
        if not stopped:  # not (or no longer) supervised: end it here
            reason = RunTerminationReason.ABORTED_BY_USER if abort else RunTerminationReason.STOPPED_BY_USER
            run.finish(reason)
            self.store.save_jobs(run.jobs)
            self.store.add_event(run.id, f"run {run.status.value} ({reason.value})")
            await self._changed(run)
        else:
            self.store.add_event(run.id, "abort requested" if abort else "stop requested")
        return run.public()

    def _delete(self, run: RunRecord) -> None:
        """Hide a run from listings (a resubmission under its name keeps its logs on disk, and
        its record without secrets)."""
        self.store.mark_deleted(run)
        self.run_metrics.forget(run)
        self.runs.pop(run.id, None)
        self.recent.pop(run.id, None)
        self.conditions.pop(run.id, None)
        self._payload_path(run.id).unlink(missing_ok=True)

    async def delete_run(self, name: str) -> None:
        run = self._require(name)
        if not run.status.is_finished():
            raise Conflict(f"run {name} is active ({run.status.value}); stop it before deleting", hint=f"`dstack-ray stop {name}`")
        self._remove_node_copies([(run.name, run.id)])
        self._delete(run)
        self.store.delete_run(run.id)
        self.logs.delete_run(run.id)

    def _remove_node_copies(self, runs: List[Tuple[str, str]]) -> None:
        """Have the agent of every node a job of these runs (name, id) ran on remove their
        directories there (in the background: `delete` does not wait for the nodes; a node
        that is gone or whose agent is not running keeps its copy)."""
        nodes: Dict[str, List[Tuple[str, str]]] = defaultdict(list)
        for name, run_id in runs:
            for node_id in {job.node_id for job in self.store.load_jobs(run_id) if job.node_id}:
                nodes[node_id].append((name, run_id))
        if nodes:
            asyncio.ensure_future(self._tell_agents_to_remove(dict(nodes)))

    async def _tell_agents_to_remove(self, nodes: Dict[str, List[Tuple[str, str]]]) -> None:
        loop = asyncio.get_running_loop()
        for node_id, runs in nodes.items():
            try:
                agent = await loop.run_in_executor(None, functools.partial(ray.get_actor, f"dstack:agent:{node_id}", namespace=NAMESPACE))
            except ValueError:
                continue  # no agent there (the node is gone): its copy, if any, stays
            for name, run_id in runs:
                try:
                    await asyncio.wait_for(agent.remove_run.remote(name, run_id, self.settings.state_dir), 60)
                except Exception as e:  # noqa: BLE001 - the node went away meanwhile
                    logger.warning("could not remove run %s's directories on node %s: %s", name, node_id, e)

    async def events(self, name: str) -> List[Tuple[str, str]]:
        run = self._require(name)
        return [(at.isoformat(), message) for at, message in self.store.events(run.id)]

    async def jobs_history(self, name: str) -> List[Dict[str, Any]]:
        run = self._require(name)
        return [j.model_dump(mode="json") for j in self.store.load_jobs(run.id)]

    async def cluster_view(self) -> Dict[str, Any]:
        view = live_cluster_view()
        view.default_image = self.settings.resolved_default_image()
        if await self._probe_layouts(view):
            view.nodes = with_layouts(view.nodes)
        return view.model_dump(mode="json")

    async def _probe_layouts(self, view: ClusterView, wait: float = 2.0) -> bool:
        """Ask each node no job has run on yet how host-mode jobs would see it (once per node),
        waiting up to `wait` seconds for the answers (later plans get the slower ones)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from dstack_ray.runtime.agent import probe_layout

        asked = []
        for node in view.alive_nodes:
            if node.job_view is None and node.node_id not in self._layout_probed:
                self._layout_probed.add(node.node_id)
                asked.append(probe_layout.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)).remote())
        if not asked:
            return False
        await asyncio.wait([asyncio.ensure_future(ref) for ref in asked], timeout=wait)
        return True

    # -- scheduling: priority queue, capacity, cron ---------------------------------------------------

    async def request_admission(self, run_id: str) -> bool:
        """Called by a Supervisor before each attempt; returns once the run may be placed."""
        future = self.admission.get(run_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self.admission[run_id] = future
        run = self.runs.get(run_id)
        if run is not None and run.wait_reason != WaitReason.RESOURCES:
            # Said here rather than in the scheduling pass, which must stay short however many
            # runs wait (a pass that saved each newly waiting run would take seconds for 2,000).
            run.wait_reason = WaitReason.RESOURCES
            await self._changed(run)
        self._kick()
        return await asyncio.shield(future)

    async def withdraw_admission(self, run_id: str) -> None:
        self.plans.pop(run_id, None)
        future = self.admission.pop(run_id, None)
        if future is not None and not future.done():
            future.cancel()

    async def _schedule_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=self.settings.scheduler_interval)
            except asyncio.TimeoutError:
                pass
            self.wakeup.clear()
            try:
                await self._fire_schedules()
                await self._admit()
            except Exception:
                logger.exception("scheduling pass failed")

    async def _fire_schedules(self) -> None:
        for run in fire_schedules(list(self.runs.values()), self.clock.now()):
            self.store.add_event(run.id, f"schedule fired ({run.next_trigger_at})")
            await self._changed(run)
            await self._hand_over(run)

    async def _admit(self) -> None:
        """Admit waiting runs, highest priority first, then oldest; one that does not fit now
        does not block the ones after it that do."""
        waiting = [(self.runs[r], f) for r, f in self.admission.items() if r in self.runs and not f.done()]
        if not waiting:
            return
        cluster = await asyncio.get_running_loop().run_in_executor(None, live_cluster_view)
        if self._released(cluster):  # Ray's numbers do not show them free yet: look again very soon
            asyncio.get_running_loop().call_later(RELEASE_RECHECK, self._kick)
        started, cpu, self.plans_made, collected = time.perf_counter(), time.thread_time(), 0, _GC_PAUSES.total
        try:
            self._admit_into(waiting, cluster)
        finally:
            took, cpu = time.perf_counter() - started, time.thread_time() - cpu
            self.admission_passes.append((time.time(), len(waiting), took, cpu, self.plans_made, _GC_PAUSES.total - collected))

    def _admit_into(self, waiting: List[Tuple[RunRecord, "asyncio.Future[bool]"]], cluster: ClusterView) -> None:
        """One pass over the waiting runs against the cluster's free resources (admission.py
        decides; no I/O here)."""
        shape = cluster.shape_key()
        futures = {run.id: future for run, future in waiting}
        decided = admission_pass([run for run, _ in waiting], lambda run: self._plan(run, cluster, shape), place, free_capacity(cluster, self._reserved()))
        for run, error in decided.failed:
            logger.error("cannot judge run %s for admission", run.name, exc_info=error)
            self.store.add_event(run.id, f"admission check failed ({type(error).__name__}: {error}); its supervisor decides")
            self.admission.pop(run.id, None)
            futures[run.id].set_result(True)
        for run, plan in decided.admitted:
            self.admission.pop(run.id, None)
            self.plans.pop(run.id, None)
            self.recently_admitted[run.id] = (time.monotonic(), [b.resources for b in plan.bundles])
            futures[run.id].set_result(True)

    def _plan(self, run: RunRecord, cluster: ClusterView, shape: str) -> Tuple[RunPlan, tuple]:
        """The run's plan on this cluster and its need: made once per cluster shape (nodes and
        node types; free resources do not change a plan), not on every scheduling pass."""
        known = self.plans.get(run.id)
        if known is not None and known[0] == shape:
            return known[1], known[2]
        plan = build_plan(run.spec.configuration, cluster)
        self.plans_made += 1
        need = plan.need_key()
        self.plans[run.id] = (shape, plan, need)
        return plan, need

    async def admission_stats(self) -> List[Tuple[float, int, float, float, int, float]]:
        """The latest scheduling passes: (when, runs waiting, seconds the pass took, CPU seconds
        it used, plans it made, seconds the garbage collector paused it)."""
        return list(self.admission_passes)

    def _reserved(self) -> List[Dict[str, float]]:
        """Bundles of runs admitted moments ago whose placement may not show in Ray yet."""
        horizon = time.monotonic() - 5.0
        return [b for at, bundles in self.recently_admitted.values() if at > horizon for b in bundles]

    def _released(self, cluster: ClusterView) -> List[Released]:
        """Bundles of groups removed moments ago that Ray's numbers still count as taken (kept
        until they do not, RELEASE_MEMORY seconds at most)."""
        self._forget_old_releases()
        for run_id, (_, bundles) in list(self.recently_released.items()):
            if not any(still_counted(b, cluster) for b in bundles):
                del self.recently_released[run_id]
        return [b for _, bundles in self.recently_released.values() for b in bundles]

    def _forget_old_releases(self) -> None:
        horizon = time.monotonic() - RELEASE_MEMORY
        self.recently_released = {r: entry for r, entry in self.recently_released.items() if entry[0] > horizon}

    # -- retention ----------------------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                logger.exception("removing runs past the retention failed")
            if not self.admission:  # a quiet moment: a full collection of everything (see _GCPauses)
                _GC_PAUSES.collect_all()
            await asyncio.sleep(RETENTION_INTERVAL)

    async def prune(self, days: Optional[float] = None, keep: Optional[int] = None) -> int:
        """Remove finished runs past the retention for good (as `delete` does); returns how many.
        `days`/`keep` given here replace the configured retention for this call."""
        if days is None and keep is None:
            days, keep = self.settings.resolved_retention()
        if days is None and keep is None:
            return 0
        older_than = None if days is None else utcnow() - timedelta(days=days)
        expired = self.store.expired_runs(older_than, keep)
        for run_id in expired:
            run = self.recent.pop(run_id, None) or self.store.find_run(run_id)
            if run is not None:
                self.run_metrics.forget(run)
        self._remove_node_copies(self.store.names(expired))
        self.store.delete_runs(expired)
        for run_id in expired:
            self.logs.delete_run(run_id)
            self._payload_path(run_id).unlink(missing_ok=True)
            self.conditions.pop(run_id, None)
        if expired:
            logger.info("removed %d finished run(s) past the retention (%s days, %s runs)", len(expired), days, keep)
        return len(expired)

    # -- metrics ----------------------------------------------------------------------------------

    async def record_metrics(self, run_id: str, attempt: int, rank: int, samples: List[Dict[str, Any]]) -> None:
        for sample in samples:
            at = datetime.fromtimestamp(sample["at"], tz=timezone.utc)
            self.store.add_metrics(run_id, attempt, rank, at, {k: v for k, v in sample.items() if k != "at"})

    async def metrics(self, name: str, since_seconds: Optional[float] = None) -> List[Dict[str, Any]]:
        run = self._require(name)
        since = None if since_seconds is None else utcnow() - timedelta(seconds=since_seconds)
        return [{**m, "at": m["at"].isoformat()} for m in self.store.metrics(run.id, run.attempt, since)]

    # -- logs -------------------------------------------------------------------------------------

    async def append_logs(self, run_id: str, attempt: int, rank: int, offset: int, data: bytes) -> int:
        try:
            size = self.logs.append(run_id, attempt, rank, offset, data)
        except LogGap as e:
            logger.error("%s", e)
            raise
        event = self.log_events[(run_id, attempt, rank)]
        event.set()
        return size

    async def read_logs(
        self, run_id: str, attempt: int, rank: int, offset: int, wait: float = 0.0
    ) -> Tuple[bytes, int, bool]:
        """Log bytes from `offset`; with `wait`, block up to that long for new lines.

        Returns (data, next offset, final): final once the job ended and everything was read.
        """
        key = (run_id, attempt, rank)
        data, next_offset = self.logs.read(run_id, attempt, rank, offset, LOG_READ_LIMIT)
        if not data and wait > 0 and not self._log_final(key):
            event = self.log_events[key]
            event.clear()
            data, next_offset = self.logs.read(run_id, attempt, rank, offset, LOG_READ_LIMIT)
            if not data:
                try:
                    await asyncio.wait_for(event.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
                data, next_offset = self.logs.read(run_id, attempt, rank, offset, LOG_READ_LIMIT)
        final = not data and self._log_final(key)
        return data, next_offset, final

    def _log_final(self, key: Tuple[str, int, int]) -> bool:
        run = self.runs.get(key[0])
        if run is None:
            return True
        if run.status.is_finished():
            return True
        if key[1] < run.attempt:
            return True
        return any(j.rank == key[2] and j.attempt == key[1] and j.status.is_finished() for j in run.jobs)


def _supervisor_host_options(settings: RuntimeSettings) -> Any:
    """The SupervisorHost actor: detached, named, on the Controller's (head) node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from dstack_ray.runtime.supervisor import SupervisorHost

    return SupervisorHost.options(
        name=SUPERVISOR_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False
        ),
    )


def controller_handle(settings: RuntimeSettings, runtime_env: Optional[Dict[str, Any]] = None) -> Any:
    """The cluster's Controller: the existing one, else a new one on the head node (it then
    belongs to the job of the calling process: the service's, in normal use), with
    `runtime_env` (everything it starts inherits it) or the job's."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    existing = named_controller()
    if existing is not None:
        return existing
    head = next((n for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})), None)
    options: Dict[str, Any] = dict(name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True)
    if runtime_env:
        options["runtime_env"] = runtime_env
    if head is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=head["NodeID"], soft=False)
    return Controller.options(**options).remote(settings.model_dump())
