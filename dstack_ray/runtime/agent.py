"""The NodeAgent: a Ray task that runs one rank of a run inside its placement-group bundle.

It is a task, not an actor, so that Ray reuses warm worker processes: starting a node costs
milliseconds instead of the ~1 s a new actor process takes (see bench/submit_latency.py). The
Supervisor talks to it through the SupervisorHost (long-polls for start and stop orders); logs
go straight to the Controller. The agent reports its node, runs the command under the guard,
streams every output line, and returns how the command ended.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
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
    prepare_container,
    prepare_host,
)
from dstack_ray.exec.proc import tree_usage
from dstack_ray.exec.process import GuardedProcess
from dstack_ray.exec.pyenv import venv_maker
from dstack_ray.exec.ssh import NodeSshd, RunKey, forget_keys, free_port
from dstack_ray.runtime.settings import RuntimeSettings, private_dir

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


class StartOrder(BaseModel):
    ips: List[str]
    gpus_per_node: List[int]
    ssh_ports: List[Optional[int]] = []  # per rank; None where the node runs no sshd


class NodeOutcome(BaseModel):
    """How a rank ended, as the agent saw it."""

    exit_code: Optional[int] = None
    stopped: Optional[str] = None  # the stop order that ended it, if any
    error: Optional[str] = None  # the agent could not run the command
    error_reason: Optional[str] = None  # the JobTerminationReason of that error
    node_lost: bool = False  # the node's raylet died while the command ran
    started: bool = False


def _timestamp() -> bytes:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


class LogShipper:
    """Turns output chunks into timestamped lines and sends them, in order, to the Controller.

    Every line is also echoed on this worker's stdout, which the Ray dashboard shows. A chunk is
    sent as soon as the previous send finished and the flush interval passed, so the first line
    of a run goes out at once.
    """

    MAX_PARTIAL = 64 * 1024
    STORE_ATTEMPTS = 5  # a chunk the head refuses this often (disk full...) is dropped, with an event

    def __init__(
        self,
        controller: Any,
        run_id: str,
        attempt: int,
        rank: int,
        settings: RuntimeSettings,
        on_loss: Callable[[str], None] = lambda message: None,
    ) -> None:
        self._controller = controller
        self._on_loss = on_loss
        self._limit = settings.log_limit_bytes
        self._capped = False
        self._key = (run_id, attempt, rank)
        self._interval = settings.log_flush_interval
        self._chunk = settings.log_chunk_bytes
        self._partial = b""
        self._pending = bytearray()
        self._offset = 0
        self._closed = False
        self._cond = threading.Condition()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._ship, name="dstack-logs", daemon=True)
        self._thread.start()

    def write(self, chunk: bytes) -> None:
        """Complete lines become line records; what follows the last newline goes out at once
        as a partial record (`<stamp>\\t<bytes>`), byte for byte, so `\\r` redraws (progress
        bars) show live; the rest of that line comes in later records and readers join them."""
        lines = chunk.split(b"\n")
        tail = lines.pop()
        self._echo(list(lines), tail)
        stamp = _timestamp()
        formatted = b"".join(stamp + b" " + line.rstrip(b"\r") + b"\n" for line in lines)
        if tail:
            formatted += stamp + b"\t" + tail + b"\n"
        if formatted:
            self._add(formatted)

    def _echo(self, lines: List[bytes], tail: bytes) -> None:
        """Complete lines on this worker's stdout, for the Ray dashboard (line-based)."""
        if lines:
            lines[0] = self._partial + lines[0]
            self._partial = b""
        self._partial += tail
        if len(self._partial) > self.MAX_PARTIAL:
            lines.append(self._partial)
            self._partial = b""
        if not lines:
            return
        try:
            sys.stdout.buffer.write(b"".join(line + b"\n" for line in lines))
            sys.stdout.flush()
        except (OSError, ValueError):
            pass

    def _add(self, formatted: bytes) -> None:
        with self._cond:
            self._pending += formatted
            # Back-pressure: a command that writes faster than the head can store waits.
            while len(self._pending) > 16 * self._chunk and self._error is None:
                self._cond.wait(0.5)
            self._cond.notify()

    def _ship(self) -> None:
        last_send = 0.0
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                delay = self._interval - (time.monotonic() - last_send)
                if delay > 0 and not self._closed and len(self._pending) < self._chunk:
                    self._cond.wait(delay)
                data = bytes(self._pending[: self._chunk])
                del self._pending[: len(data)]
                self._cond.notify_all()
            self._send(data)
            last_send = time.monotonic()

    def _send(self, data: bytes) -> None:
        if self._capped:
            return
        if self._limit and self._offset + len(data) > self._limit:
            self._capped = True
            self._on_loss(
                f"output passed the log limit of {self._limit} bytes (log_limit_bytes): the rest is not"
                " stored (the Ray dashboard still shows it in this node's task log)"
            )
            return
        delay, refusals = 0.2, 0
        while True:
            try:
                ray.get(self._controller.append_logs.remote(*self._key, self._offset, data))
                self._offset += len(data)
                return
            except ray.exceptions.RayActorError:
                time.sleep(delay)  # the Controller is restarting: keep the lines and retry
                delay = min(delay * 2, 5.0)
            except Exception as e:  # the head refused the chunk (a full disk, ...)
                refusals += 1
                logger.warning("cannot store logs (%d/%d): %s", refusals, self.STORE_ATTEMPTS, e)
                if refusals >= self.STORE_ATTEMPTS:
                    # Never block the command: drop this chunk (the next one is written where
                    # it would have been, so the stored log stays consistent) and say so.
                    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    self._on_loss(f"{len(data)} bytes of output could not be stored on the head and were dropped ({reason[:200]})")
                    return
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self, timeout: float = 60.0) -> None:
        """Send everything pending (a last line without newline is already a partial record,
        which readers take as the final line), then stop."""
        if self._partial:
            self._echo([b""], b"")
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)


def _run_dir(assignment: NodeAssignment) -> Path:
    """This rank's private directory for the run on this node (kept after the run)."""
    root = private_dir(private_dir(assignment.settings.resolved_state_dir()) / "runs")
    run = root / f"{assignment.run_name}-{assignment.run_id[:8]}"
    run.mkdir(exist_ok=True, mode=0o700)
    path = run / f"node-{assignment.rank}"
    path.mkdir(exist_ok=True, mode=0o700)
    return path


def _watch_stop(host: Any, assignment: NodeAssignment, process: GuardedProcess, state: Dict[str, Any]) -> None:
    """Long-poll the SupervisorHost for a stop order and pass it to the guard."""
    while process.poll() is None:
        try:
            order = ray.get(
                host.agent_wait_order.remote(assignment.run_id, assignment.attempt, assignment.rank, 30.0)
            )
        except ray.exceptions.RayActorError:
            return  # the host is gone: Ray ends this task too, and the guard kills the command
        if order is None:
            continue
        state["stopped"] = order["reason"]
        if order.get("abort"):
            process.kill()
        else:
            process.stop(order.get("grace", assignment.settings.stop_grace_seconds))
        return


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
        sampler = load_sampler(assignment.gpu_sampler)
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


def _start_sshd(assignment: NodeAssignment, raylet: int) -> Tuple[Optional[NodeSshd], Optional[int]]:
    """The node's sshd for a multi-node host-mode run (before the node reports ready, so its
    port goes out with the start order); (None, None) where there is none. A container runs the
    image's sshd itself (host networking): only its port is chosen here."""
    if assignment.ssh_key is None:
        return None, None
    if assignment.spec.container is not None:
        return None, free_port()
    layout = HostLayout(_run_dir(assignment), assignment.attempt)
    layout.create()
    session = {
        **layout.activation(host_base_environment(os.environ).get("PATH", "")),
        "HOME": str(layout.home),
        "DSTACK_RUN_NAME": assignment.run_name,
        "DSTACK_RUN_ID": assignment.run_id,
        "DSTACK_NODE_RANK": str(assignment.rank),
        "DSTACK_NODES_NUM": str(assignment.nodes_num),
        "DSTACK_MPI_HOSTFILE": str(layout.hostfile),
    }
    sshd = NodeSshd(layout.ssh, assignment.ssh_key)
    try:
        port = sshd.start(session, raylet, lambda chunk: logger.info("sshd: %s", chunk.decode(errors="replace").rstrip()))
    except OSError as e:
        logger.warning("%s", e)
        return None, None
    return (sshd, port) if port is not None else (None, None)


def _sample_job(controller: Any, assignment: NodeAssignment, guard_pid: int, done: threading.Event) -> None:
    """Every `metrics_interval`: the CPU (percent of one core, as `top`) and resident memory of
    the job's processes, for `dstack-ray metrics` (stored as samples of kind `job`)."""
    key = (assignment.run_id, assignment.attempt, assignment.rank)
    last_cpu, last_at = tree_usage(guard_pid)[0], time.monotonic()
    while not done.wait(assignment.settings.metrics_interval):
        cpu, rss = tree_usage(guard_pid)
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


def run_node(assignment: NodeAssignment, controller: Any, host: Any, payload: Optional[RunPayload] = None) -> NodeOutcome:
    """The body of the NodeAgent task for one rank of one attempt."""
    key = (assignment.run_id, assignment.attempt, assignment.rank)
    ip = ray.util.get_node_ip_address()
    node_id = ray.get_runtime_context().get_node_id()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    # Our parent is the node's raylet: if it dies, the node is gone and so must the command be.
    raylet = os.getppid()
    sshd, ssh_port = _start_sshd(assignment, raylet)
    try:
        return _run(assignment, controller, host, payload, key, ip, node_id, gpu_ids, raylet, ssh_port)
    finally:
        if sshd is not None:
            sshd.stop()
        if assignment.spec.container is None:
            layout = HostLayout(_run_dir(assignment), assignment.attempt)
            if assignment.ssh_key is not None:
                forget_keys(layout.home, layout.ssh)
            # The job's Python environment goes with the job, as dstack's container does (what
            # the run wrote to its working directory and home stays).
            threading.Thread(target=shutil.rmtree, args=(layout.venv,), kwargs={"ignore_errors": True}, daemon=True).start()


def _run(
    assignment: NodeAssignment,
    controller: Any,
    host: Any,
    payload: Optional[RunPayload],
    key: Tuple[str, int, int],
    ip: str,
    node_id: str,
    gpu_ids: List[str],
    raylet: int,
    ssh_port: Optional[int],
) -> NodeOutcome:
    host.agent_ready.remote(*key, ip, node_id, gpu_ids, ssh_port)
    if assignment.nodes_num == 1:
        order: Optional[StartOrder] = StartOrder(ips=[ip], gpus_per_node=[assignment.gpus])
    else:
        reply = ray.get(host.agent_wait_start.remote(*key))
        order = StartOrder.model_validate(reply) if reply else None
    if order is None:
        return NodeOutcome(stopped="cancelled")
    shipper = LogShipper(controller, *key, assignment.settings, on_loss=lambda message: host.agent_event.remote(*key, message))
    try:
        prepared = _prepare(assignment, payload, order, ip, gpu_ids, host)
        process = GuardedProcess(
            prepared.argv, prepared.env, prepared.cwd, shipper.write, watch_pid=raylet, cleanup=prepared.cleanup
        )
    except SetupFailure as e:
        shipper.close()
        return NodeOutcome(error=e.message, error_reason=e.reason)
    except Exception as e:
        shipper.close()
        return NodeOutcome(error=f"{type(e).__name__}: {e}", error_reason="executor_error")
    host.agent_running.remote(*key, process.pid)
    state: Dict[str, Any] = {}
    watcher = threading.Thread(target=_watch_stop, args=(host, assignment, process, state), daemon=True)
    watcher.start()
    finished = threading.Event()
    if gpu_ids:
        threading.Thread(target=_sample_gpus, args=(host, assignment, gpu_ids, finished), daemon=True).start()
    threading.Thread(target=_sample_job, args=(controller, assignment, process.pid, finished), daemon=True).start()
    code = process.wait()
    finished.set()
    shipper.close()
    lost = not Path(f"/proc/{raylet}").exists() or os.getppid() != raylet
    return NodeOutcome(exit_code=code, stopped=state.get("stopped"), started=True, node_lost=lost)


def _prepare(
    assignment: NodeAssignment,
    payload: Optional[RunPayload],
    order: StartOrder,
    ip: str,
    gpu_ids: List[str],
    host: Any,
) -> Prepared:
    key = (assignment.run_id, assignment.attempt, assignment.rank)
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

    def report(message: str) -> None:
        host.agent_event.remote(*key, message)

    if spec.container is None:
        settings = assignment.settings
        venvs = venv_maker(settings.resolved_state_dir() / "python-envs", settings.python_downloads)
        return prepare_host(spec, payload, node, report, venvs)
    return prepare_container(
        spec,
        payload,
        node,
        report,
        assignment.container_runtime,
        on_pulling=lambda: host.agent_pulling.remote(*key),
    )
