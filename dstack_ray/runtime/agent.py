"""The node agent: one Ray actor per node (`dstack:agent:<node id>`) that runs every job placed
on its node.

A job's resources are still reserved by its run's placement-group bundle; a short task in that
bundle reads the GPU ids Ray assigns there (`bundle_probe`), and the supervisor then asks the
node's agent to run the job (`NodeAgent.run_job`, one thread per job). The agent reports the
node, waits for the start order, prepares the job (files, repo, venv or container), starts the
command under a detached guard (`DetachedJob`: the job's output, orders and exit status live in
its directory on the node), ships the output to the Controller, samples GPUs and the job's
processes, relays stop orders, and owns the job's sshd.

If the agent dies (its node still up), Ray restarts it on the same node and calls `run_job`
again with the same arguments: the agent finds the job's guard still running in the job's
directory and carries on from the last chunk of output the Controller stored, so no line is
lost or shipped twice. Jobs do not hold a Ray worker process each: a running job costs a guard
(a small Python process) and a few threads of the agent.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import ray
from pydantic import BaseModel

from dstack_ray.config.interpolate import substitute_groups_ips
from dstack_ray.exec.commands import ClusterInfo, JobIdentity, host_base_environment
from dstack_ray.exec.prepare import (
    HostLayout,
    NodeContext,
    NodeSpec,
    Prepared,
    RunPayload,
    SetupFailure,
    Staged,
    prepare_container,
    prepare_host,
    stage_host,
)
from dstack_ray.exec.proc import tree_usage
from dstack_ray.exec.process import DetachedJob
from dstack_ray.exec.records import LineEcho
from dstack_ray.models.messages import NodeOutcome, StartOrder, StopOrder
from dstack_ray.models.runs import JobTerminationReason
from dstack_ray.exec.pyenv import VenvMaker, venv_maker
from dstack_ray.exec.ssh import NodeSshd, RunKey, forget_keys, free_port
from dstack_ray.exec.view import node_layout
from dstack_ray.plan.live import LAYOUT_KV_PREFIX
from dstack_ray.runtime.settings import NAMESPACE, SUPERVISOR_NAME, RuntimeSettings, named_controller
from dstack_ray.paths import private_dir

logger = logging.getLogger(__name__)


class NodeAssignment(BaseModel):
    run_id: str
    run_name: str
    attempt: int
    rank: int
    job_id: str
    nodes_num: int
    gpus: int
    group_sizes: List[int]
    spec: NodeSpec
    settings: RuntimeSettings
    gpu_sampler: str
    container_runtime: Optional[str] = None
    ssh_key: Optional[RunKey] = None  # multi-node runs: the attempt's key pair for SSH between nodes


class SpoolShipper:
    """Sends a job's output file (log records the guard appends) to the Controller, in order.

    The stored log is the output file byte for byte, so the two offsets are the same unless
    the head refused a chunk (then dropped, with an event); both are saved in `shipped` after
    every stored chunk, so a restarted agent resumes exactly there (a chunk stored just before
    the agent died is sent again at the same offset, which the store skips). Every complete
    line is also echoed on the agent's stdout, prefixed with the run and rank, which the Ray
    dashboard shows in the agent's log.
    """

    STORE_ATTEMPTS = 5  # a chunk the head refuses this often (disk full...) is dropped, with an event

    def __init__(
        self,
        controller: Any,
        key: Tuple[str, int, int],
        job: DetachedJob,
        settings: RuntimeSettings,
        label: str,
        on_loss: Callable[[str], None] = lambda message: None,
    ) -> None:
        self._controller = controller
        self._key = key
        self._job = job
        self._spool = job.job_dir / "output"
        self._state = job.job_dir / "shipped"
        self._settings = settings
        self._prefix = f"[{label}] ".encode()
        self._on_loss = on_loss
        self._echo = LineEcho()
        self._tokens, self._tokens_at, self._skipped = float(self.ECHO_BURST), time.monotonic(), 0
        self._capped = False
        self._wake = threading.Event()
        self._read_at, self._store_at = self._resume_point()
        self._thread = threading.Thread(target=self._ship, name="dstack-logs", daemon=True)
        self._thread.start()

    def _resume_point(self) -> Tuple[int, int]:
        try:
            read_at, store_at = (int(x) for x in self._state.read_text().split())
            return read_at, store_at
        except (OSError, ValueError):
            return 0, 0

    def _save(self) -> None:
        tmp = self._state.with_suffix(".tmp")
        tmp.write_text(f"{self._read_at} {self._store_at}")
        os.replace(tmp, self._state)

    def _ship(self) -> None:
        # The file is polled: soon after output (a first line reaches the client in
        # milliseconds), less and less often while the job is quiet.
        longest = max(self._settings.log_flush_interval, 0.1)
        pause = 0.005
        with open(self._spool, "rb") as spool:
            while True:
                finished = self._job.finished()  # before reading: what it wrote before is in the file
                spool.seek(self._read_at)
                data = spool.read(self._settings.log_chunk_bytes)
                cut = data.rfind(b"\n") + 1  # whole records only (the guard may be mid-write)
                if cut:
                    self._send(data[:cut])
                    pause = 0.005
                    continue
                if finished:
                    return
                self._wake.wait(pause)
                pause = min(pause * 1.5, longest)

    def _send(self, data: bytes) -> None:
        self._echo_lines(data)
        limit = self._settings.log_limit_bytes
        if not self._capped and limit and self._store_at + len(data) > limit:
            fits = data[: max(0, limit - self._store_at)]
            fits = fits[: fits.rfind(b"\n") + 1]  # whole records up to the limit
            if fits:
                self._store(fits)
            self._capped = True
            self._on_loss(
                f"output passed the log limit of {limit} bytes (log_limit_bytes): the rest is not"
                " stored (the Ray dashboard still shows it, thinned, in the node agent's log)"
            )
        elif not self._capped:
            self._store(data)
        self._read_at += len(data)
        self._save()

    def _store(self, data: bytes) -> None:
        delay, refusals = 0.2, 0
        while True:
            try:
                ray.get(self._controller.append_logs.remote(*self._key, self._store_at, data))
                self._store_at += len(data)
                return
            except ray.exceptions.RayActorError:
                time.sleep(delay)  # the Controller is restarting (or made again): keep the lines and retry
                delay = min(delay * 2, 5.0)
                self._controller = named_controller() or self._controller
            except Exception as e:  # the head refused the chunk (a full disk, ...)
                refusals += 1
                logger.warning("cannot store logs (%d/%d): %s", refusals, self.STORE_ATTEMPTS, e)
                if refusals >= self.STORE_ATTEMPTS:
                    # Never hold up the job: drop this chunk (the next one is stored where it
                    # would have been, so the stored log stays consistent) and say so.
                    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    self._on_loss(f"{len(data)} bytes of output could not be stored on the head and were dropped ({reason[:200]})")
                    return
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    ECHO_RATE = 1 << 20  # bytes per second echoed to the Ray log, on average...
    ECHO_BURST = 8 << 20  # ...and at most this much at once

    def _echo_lines(self, data: bytes) -> None:
        """The lines, prefixed, on the agent's stdout (the Ray dashboard shows them). A flood is
        thinned: Ray's log monitor would spend a core on it, and the stored log has every line."""
        now = time.monotonic()
        self._tokens = min(self.ECHO_BURST, self._tokens + (now - self._tokens_at) * self.ECHO_RATE)
        self._tokens_at = now
        if len(data) > self._tokens:
            self._skipped += len(data)
            self._echo = LineEcho()  # a piece of a skipped line must not join a later one
            return
        self._tokens -= len(data)
        lines = self._echo.lines(data)
        if self._skipped:
            note = f"({self._skipped} bytes of output not shown here: more than {self.ECHO_RATE >> 20} MiB/s; `dstack-ray logs` has every line)"
            lines.insert(0, note.encode())
            self._skipped = 0
        if not lines:
            return
        try:
            sys.stdout.buffer.write(b"".join(self._prefix + line + b"\n" for line in lines))
            sys.stdout.flush()
        except (OSError, ValueError):
            pass

    def join(self, timeout: float = 60.0) -> None:
        """Until everything the job wrote was shipped (the job must have finished)."""
        self._wake.set()  # look again now rather than after the current pause
        self._thread.join(timeout)


def run_dir_name(run_name: str, run_id: str) -> str:
    """The name of a run's directory under `<state dir>/runs` on every node it ran on."""
    name = f"{run_name}-{run_id[:8]}"
    if os.path.basename(name) != name or name.startswith("."):  # the head checks names; never a path here either
        raise ValueError(f"not a run name: {run_name!r}")
    return name


def _run_dir(assignment: NodeAssignment) -> Path:
    """This rank's private directory for the run on this node (kept after the run)."""
    root = private_dir(private_dir(assignment.settings.resolved_state_dir()) / "runs")
    run = root / run_dir_name(assignment.run_name, assignment.run_id)
    run.mkdir(exist_ok=True, mode=0o700)
    path = run / f"node-{assignment.rank}"
    path.mkdir(exist_ok=True, mode=0o700)
    return path


class _SupervisorLink:
    """The SupervisorHost as a job's agent thread sees it: the handle it was given, replaced by
    the named actor when that one is gone for good (the head restarted: its successor then
    answers for runs it no longer supervises with an order to kill the job)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __getattr__(self, method: str) -> Any:
        return getattr(self._handle, method)

    def reconnect(self) -> None:
        try:
            self._handle = ray.get_actor(SUPERVISOR_NAME, namespace=NAMESPACE)
        except ValueError:
            pass  # not there yet: the Controller creates it again


def _watch_stop(host: "_SupervisorLink", assignment: NodeAssignment, job: DetachedJob, state: Dict[str, Any]) -> None:
    """Long-poll the SupervisorHost for stop orders and pass each to the guard. The host keeps
    the orders it gave: a restarted agent asks again from the first and gets them again."""
    seen = 0
    while not job.finished():
        try:
            order: Optional[StopOrder] = ray.get(
                host.agent_wait_order.remote(assignment.run_id, assignment.attempt, assignment.rank, seen, 30.0)
            )
        except ray.exceptions.RayActorError:
            time.sleep(1)  # the host is restarting, or gone for good
            host.reconnect()
            continue
        if order is None:
            continue
        seen += 1
        state["stopped"] = True
        if order.abort:
            job.kill()
        else:
            job.stop(order.grace if order.grace is not None else assignment.settings.stop_grace_seconds)


_GAUGES: Dict[str, Any] = {}


def _gauge(name: str, description: str) -> Any:
    """ray.util.metrics gauges, created once per worker process, tagged by run, rank and GPU."""
    if name not in _GAUGES:
        from ray.util.metrics import Gauge

        _GAUGES[name] = Gauge(name, description=description, tag_keys=("run", "rank", "gpu"))
    return _GAUGES[name]


def _sample_gpus(host: Any, assignment: NodeAssignment, gpu_ids: List[str], done: threading.Event) -> None:
    """Every `metrics_interval`: sample this node's GPUs, export gauges, report to the Supervisor."""
    from dstack_ray.metrics.gpu import NoGpuMetrics, load_sampler

    key = (assignment.run_id, assignment.attempt, assignment.rank)
    try:
        sampler = load_sampler(assignment.gpu_sampler, assignment.spec.user_env)
    except NoGpuMetrics as e:
        host.agent_metrics_unavailable.remote(*key, str(e))
        return
    utilization = _gauge("dstack_gpu_utilization", "GPU utilization, percent")
    memory = _gauge("dstack_gpu_memory_used_bytes", "GPU memory used, bytes")
    while not done.is_set():
        try:
            samples = sampler.sample(gpu_ids)
        except NoGpuMetrics as e:
            host.agent_metrics_unavailable.remote(*key, str(e))
            return
        now = time.time()
        for sample in samples:
            sample.at = sample.at or now
            tags = {"run": assignment.run_name, "rank": str(assignment.rank), "gpu": sample.gpu}
            utilization.set(sample.utilization, tags=tags)
            memory.set(sample.memory_used, tags=tags)
        host.agent_metrics.remote(*key, [s.model_dump() for s in samples])
        done.wait(assignment.settings.metrics_interval)


def _start_sshd(assignment: NodeAssignment, raylet: int, staged: Optional[Staged]) -> Tuple[Optional[NodeSshd], Optional[int]]:
    """The node's sshd for a multi-node host-mode run (before the node reports ready, so its
    port goes out with the start order), in the job's view; (None, None) where there is none. A
    container runs the image's sshd itself (host networking): only its port is chosen here."""
    if assignment.ssh_key is None:
        return None, None
    if staged is None:
        return None, free_port()
    layout = staged.layout
    session = {
        **layout.activation(host_base_environment(os.environ).get("PATH", "")),
        "HOME": staged.home(),
        "DSTACK_RUN_NAME": assignment.run_name,
        "DSTACK_RUN_ID": assignment.run_id,
        "DSTACK_NODE_RANK": str(assignment.rank),
        "DSTACK_NODES_NUM": str(assignment.nodes_num),
        "DSTACK_MPI_HOSTFILE": str(layout.hostfile),
    }
    NodeSshd.stop_started(layout.ssh)  # one an agent started before it restarted
    sshd = NodeSshd(layout.ssh, assignment.ssh_key)
    try:
        port = sshd.start(session, raylet, view=staged.view_spec())
    except OSError as e:
        logger.warning("%s", e)
        return None, None
    return (sshd, port) if port is not None else (None, None)


def _sample_job(controller: Any, assignment: NodeAssignment, guard_pid: int, done: threading.Event) -> None:
    """Every `metrics_interval`: the CPU (percent of one core, as `top`) and resident memory of
    the job's processes, for `dstack-ray metrics` (stored as samples of kind `job`)."""
    key = (assignment.run_id, assignment.attempt, assignment.rank)
    shared = min(1.0, assignment.settings.metrics_interval / 4)  # one /proc scan for every job here
    last_cpu, last_at = tree_usage(guard_pid, shared)[0], time.monotonic()
    while not done.wait(assignment.settings.metrics_interval):
        cpu, rss = tree_usage(guard_pid, shared)
        now = time.monotonic()
        percent = max(0.0, (cpu - last_cpu) / max(now - last_at, 1e-6) * 100)
        last_cpu, last_at = cpu, now
        sample = {"kind": "job", "cpu_percent": round(percent, 1), "memory_bytes": rss, "at": time.time()}
        tags = {"run": assignment.run_name, "rank": str(assignment.rank), "gpu": ""}
        _gauge("dstack_job_cpu_percent", "CPU of a job's processes, percent of one core").set(percent, tags=tags)
        _gauge("dstack_job_memory_bytes", "Resident memory of a job's processes").set(rss, tags=tags)
        try:
            controller.record_metrics.remote(*key, [sample])
        except Exception:  # metrics must never disturb the job
            logger.debug("cannot record job metrics", exc_info=True)


def job_dir(assignment: NodeAssignment) -> Path:
    """Where a rank's attempt keeps its guard's files (output, orders, exit status)."""
    return _run_dir(assignment) / f"job-{assignment.attempt}"


def bundle_probe() -> Tuple[str, List[str]]:
    """Runs in a job's placement-group bundle: the node and the GPU ids Ray assigns there."""
    return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]


def publish_layout() -> None:
    """Probe how host-mode jobs see this node (exec/view.py) and publish it for plans."""
    found = node_layout()
    try:
        from ray.experimental import internal_kv

        node_id = ray.get_runtime_context().get_node_id()
        value = json.dumps({"layout": found.describe(), "job_view": found.view})
        internal_kv._internal_kv_put(LAYOUT_KV_PREFIX + node_id, value, overwrite=True, namespace=NAMESPACE)
    except Exception:  # a private API: plans then say the layout is decided on the node
        logger.debug("could not publish this node's layout", exc_info=True)


@ray.remote(num_cpus=0, max_retries=0)
def probe_layout() -> None:
    """Run on a node no job has run on yet (the Controller starts it once per node)."""
    publish_layout()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=10000)
class NodeAgent:
    """Runs the jobs placed on its node; one per node, started by the first job there.

    An async actor: `max_concurrency` bounds concurrent calls, not threads (a threaded actor
    would start that many threads at once). Each job's blocking work runs in a thread of a pool
    that grows with the number of jobs.
    """

    def __init__(self) -> None:
        self.node_id = ray.get_runtime_context().get_node_id()
        self.ip = ray.util.get_node_ip_address()
        # Our parent is the node's raylet: if it dies, the node is gone and so must the commands be.
        self.raylet = os.getppid()
        self._pool = ThreadPoolExecutor(max_workers=4096, thread_name_prefix="dstack-job")
        publish_layout()

    def __repr__(self) -> str:
        return f"NodeAgent({self.ip})"  # the Ray dashboard's name for this actor's log lines

    async def ping(self) -> Dict[str, Any]:
        return {"node_id": self.node_id, "pid": os.getpid()}

    async def remove_run(self, run_name: str, run_id: str, state_dir: str) -> bool:
        """Remove a deleted run's directories on this node (its jobs' output, working
        directories, home and shipped files); False if it had none here."""
        path = Path(state_dir) / "runs" / run_dir_name(run_name, run_id)
        if not path.is_dir():
            return False
        await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(shutil.rmtree, path, ignore_errors=True))
        if path.exists():
            logger.warning("could not remove all of %s (files a container made under another user?)", path)
        logger.info("removed the directories of deleted run %s", run_name)
        return True

    async def run_job(
        self,
        assignment: NodeAssignment,
        controller: Any,
        host: Any,
        payload: Optional[RunPayload],
        gpu_ids: List[str],
    ) -> NodeOutcome:
        """Run one rank of one attempt to its end (called again after a restart of this agent:
        then it follows the job it had started)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run_job, assignment, controller, host, payload, gpu_ids)

    def _run_job(
        self,
        assignment: NodeAssignment,
        controller: Any,
        host: Any,
        payload: Optional[RunPayload],
        gpu_ids: List[str],
    ) -> NodeOutcome:
        host = _SupervisorLink(host)
        started = DetachedJob.attach(job_dir(assignment), assignment.job_id)
        if started is not None:
            logger.info("%s rank %d: following the job started before this agent restarted", assignment.run_name, assignment.rank)
            return self._follow(assignment, controller, host, started, gpu_ids, cleanup_sshd=True)
        try:
            staged = _stage(assignment, payload, host)
        except SetupFailure as e:
            _forget_job_files(assignment)
            return NodeOutcome(error=e.message, error_reason=e.reason)
        sshd, ssh_port = _start_sshd(assignment, self.raylet, staged)
        try:
            return self._run(assignment, controller, host, payload, gpu_ids, ssh_port, staged)
        finally:
            if sshd is not None:
                sshd.stop()
            _forget_job_files(assignment)

    def _run(
        self,
        assignment: NodeAssignment,
        controller: Any,
        host: Any,
        payload: Optional[RunPayload],
        gpu_ids: List[str],
        ssh_port: Optional[int],
        staged: Optional[Staged],
    ) -> NodeOutcome:
        key = (assignment.run_id, assignment.attempt, assignment.rank)
        host.agent_ready.remote(*key, self.ip, self.node_id, gpu_ids, ssh_port)
        if assignment.nodes_num == 1:
            order: Optional[StartOrder] = StartOrder(ips=[self.ip], gpus_per_node=[assignment.gpus])
        else:
            order = ray.get(host.agent_wait_start.remote(*key))
        if order is None:
            return NodeOutcome(stopped=True)
        try:
            prepared = _prepare(assignment, payload, order, self.ip, gpu_ids, host, staged)
            job = DetachedJob.start(
                job_dir(assignment),
                prepared.argv,
                prepared.env,
                prepared.cwd,
                watch_pid=self.raylet,
                cleanup=prepared.cleanup,
                log_limit=_spool_limit(assignment.settings),
                view=prepared.view,
            )
        except SetupFailure as e:
            return NodeOutcome(error=e.message, error_reason=e.reason)
        except Exception as e:
            return NodeOutcome(error=f"{type(e).__name__}: {e}", error_reason=JobTerminationReason.EXECUTOR_ERROR)
        return self._follow(assignment, controller, host, job, gpu_ids)

    def _follow(
        self,
        assignment: NodeAssignment,
        controller: Any,
        host: Any,
        job: DetachedJob,
        gpu_ids: List[str],
        cleanup_sshd: bool = False,
    ) -> NodeOutcome:
        key = (assignment.run_id, assignment.attempt, assignment.rank)
        host.agent_running.remote(*key, job.pid)
        shipper = SpoolShipper(
            controller,
            key,
            job,
            assignment.settings,
            label=f"{assignment.run_name}:{assignment.rank}",
            on_loss=lambda message: _deliver(host.agent_event.remote(*key, message)),
        )
        state: Dict[str, Any] = {}
        threading.Thread(target=_watch_stop, args=(host, assignment, job, state), daemon=True).start()
        finished = threading.Event()
        if gpu_ids:
            threading.Thread(target=_sample_gpus, args=(host, assignment, gpu_ids, finished), daemon=True).start()
        threading.Thread(target=_sample_job, args=(controller, assignment, job.pid, finished), daemon=True).start()
        try:
            code = job.wait()
        finally:
            finished.set()
            shipper.join()
            if cleanup_sshd:
                _stop_orphaned_sshd(assignment)
                _forget_job_files(assignment)
        lost = not Path(f"/proc/{self.raylet}").exists() or os.getppid() != self.raylet
        return NodeOutcome(exit_code=code, stopped=state.get("stopped", False), started=True, node_lost=lost)


def _stop_orphaned_sshd(assignment: NodeAssignment) -> None:
    """The job's sshd, started by this agent before it restarted."""
    if assignment.ssh_key is not None and assignment.spec.container is None:
        NodeSshd.stop_started(HostLayout(_run_dir(assignment), assignment.attempt).ssh)


def _deliver(ref: Any) -> None:
    """Wait until an event reached the supervisor (before the job's outcome does, which would
    end the run and drop later events)."""
    try:
        ray.get(ref, timeout=30)
    except Exception:  # an event must never disturb the job
        logger.warning("could not deliver an event to the supervisor", exc_info=True)


def _spool_limit(settings: RuntimeSettings) -> int:
    """What a job may write to its output file on the node: the stored limit and some slack
    (the agent raises the event when the stored log reaches the limit)."""
    return settings.log_limit_bytes + 2 * settings.log_chunk_bytes if settings.log_limit_bytes else 0


def _forget_job_files(assignment: NodeAssignment) -> None:
    """What goes with the job: its SSH keys and its Python environment, as dstack's container
    does (what the run wrote to its working directory and home stays)."""
    if assignment.spec.container is None:
        layout = HostLayout(_run_dir(assignment), assignment.attempt)
        if assignment.ssh_key is not None:
            forget_keys(layout.home, layout.ssh)
        threading.Thread(target=shutil.rmtree, args=(layout.venv,), kwargs={"ignore_errors": True}, daemon=True).start()


def _prepare(
    assignment: NodeAssignment,
    payload: Optional[RunPayload],
    order: StartOrder,
    ip: str,
    gpu_ids: List[str],
    host: Any,
    staged: Optional[Staged],
) -> Prepared:
    groups, start = [], 0
    for size in assignment.group_sizes or [assignment.nodes_num]:
        groups.append(order.ips[start : start + size])
        start += size
    spec = assignment.spec.model_copy(
        update={"commands": [substitute_groups_ips(c, groups) for c in assignment.spec.commands]}
    )
    node = NodeContext(
        identity=JobIdentity(assignment.run_name, assignment.run_id, assignment.job_id, assignment.rank),
        cluster=ClusterInfo(order.ips, order.gpus_per_node),
        gpu_ids=gpu_ids,
        node_ip=ip,
        run_dir=_run_dir(assignment),
        attempt=assignment.attempt,
        ssh_key=assignment.ssh_key,
        ssh_ports=list(order.ssh_ports),
    )

    report = _reporter(assignment, host)
    if staged is not None:
        return prepare_host(spec, staged, payload, node, report, _venvs(assignment.settings))
    key = (assignment.run_id, assignment.attempt, assignment.rank)
    return prepare_container(
        spec,
        payload,
        node,
        report,
        assignment.container_runtime,
        on_pulling=lambda: host.agent_pulling.remote(*key),
    )


def _reporter(assignment: NodeAssignment, host: Any) -> Callable[[str], None]:
    key = (assignment.run_id, assignment.attempt, assignment.rank)
    return lambda message: host.agent_event.remote(*key, message)


def _venvs(settings: RuntimeSettings) -> VenvMaker:
    return venv_maker(settings.resolved_state_dir() / "python-envs", settings.python_downloads)


def _stage(assignment: NodeAssignment, payload: Optional[RunPayload], host: Any) -> Optional[Staged]:
    """A host-mode job's directories, repo, files and view (None for a container job)."""
    if assignment.spec.container is not None:
        return None
    state_dir = assignment.settings.resolved_state_dir()
    return stage_host(assignment.spec, payload, _run_dir(assignment), assignment.attempt, state_dir, _venvs(assignment.settings).root, _reporter(assignment, host))
