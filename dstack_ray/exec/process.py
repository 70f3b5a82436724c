"""A job's command under the guard (`DetachedJob`): started through the node agent's guard fork
server, followed through the job's directory (output records, orders, exit status)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from dstack_ray.exec.proc import processes_with, sigkill

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding dstack_ray/


def guard_command() -> List[str]:
    """How to start the guard: Ray's Python in isolated mode without `site` (the guard needs only
    the standard library and two of our modules; skipping site-packages and the import hooks of
    an editable install saves a third of its start per job). The command line still names
    `dstack_ray.exec.guard`, which is how a guard is recognised in the process table."""
    boot = f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from dstack_ray.exec.guard import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-I", "-S", "-c", boot]


def _pidfd(pid: int) -> Optional[int]:
    """A descriptor that becomes readable when `pid` exits (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class _ForkServer:
    """This process's guard fork server (`guard.py --fork-server`), started on first use: job
    guards forked from it cost well under a millisecond instead of a new Python each (~12 ms of
    CPU). Its guards are not our children: a job is followed through its directory and pid."""

    _lock = threading.Lock()
    _server: Optional[subprocess.Popen] = None

    @classmethod
    def spawn(cls, argv: List[str], env: Dict[str, str], cwd: Optional[str], log: Path) -> int:
        request = json.dumps({"argv": argv, "env": env, "cwd": cwd, "log": str(log)}).encode() + b"\n"
        answer = ""
        with cls._lock:
            for _ in range(2):  # a server that died (killed, say) is replaced once
                server = cls._server
                if server is None or server.poll() is not None:
                    server = cls._server = subprocess.Popen(
                        [*guard_command(), "--fork-server"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                assert server.stdin is not None and server.stdout is not None
                try:
                    server.stdin.write(request)
                    server.stdin.flush()
                    answer = server.stdout.readline().decode().strip()
                except OSError as e:
                    answer = f"error {e}"
                if answer.isdigit():
                    return int(answer)
                if answer:  # it answered: the fork itself failed
                    break
                server.kill()
                server.wait()
        raise OSError(f"the guard fork server could not start a guard: {answer or 'it exited'}")


def kill_leftovers(marker: Optional[bytes], cleanup: Optional[List[str]]) -> None:
    """SIGKILL every process of a job whose guard was killed (found by `marker`, the
    `DSTACK_JOB_ID=...` every process of the job has in its environment) and run the cleanup."""
    if marker is not None:
        for _ in range(20):  # processes may fork while we look: repeat until none are left
            found = [pid for pid in processes_with(marker) if pid != os.getpid()]
            if not found:
                break
            sigkill(found)
            time.sleep(0.05)
    if cleanup:
        subprocess.run(cleanup, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)


class DetachedJob:
    """A job's command under a guard that does not depend on whoever started it (`--job-dir`):
    its output, orders and exit status live in the job's directory on the node, so a node
    agent that restarts finds the job there (`attach`) and carries on.

    Files in `job_dir`: `control` (FIFO: orders to the guard), `output` (log records),
    `guard.pid`, `exit` (the exit status, written last), `guard.log` (the guard's own errors).
    """

    def __init__(self, job_dir: Path, pid: int, marker: Optional[bytes] = None, cleanup: Optional[List[str]] = None) -> None:
        self.job_dir = job_dir
        self.pid = pid
        self._marker = marker
        self._cleanup = cleanup
        # Held open for writing orders: a FIFO keeps what is written while any end is open, so
        # an order given before the guard opened its end still reaches it.
        try:
            self._control: Optional[int] = os.open(job_dir / "control", os.O_RDWR | os.O_NONBLOCK)
        except OSError:
            self._control = None

    def __del__(self) -> None:
        if getattr(self, "_control", None) is not None:
            os.close(self._control)
            self._control = None

    @classmethod
    def start(
        cls,
        job_dir: Path,
        argv: List[str],
        env: Dict[str, str],
        cwd: Optional[str],
        watch_pid: Optional[int] = None,
        cleanup: Optional[List[str]] = None,
        log_limit: int = 0,
        view: Optional[dict] = None,
    ) -> "DetachedJob":
        job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        control = job_dir / "control"
        if not control.exists():
            os.mkfifo(control, 0o600)
        os.close(os.open(job_dir / "output", os.O_WRONLY | os.O_CREAT, 0o600))
        options = ["--job-dir", str(job_dir), "--log-limit", str(log_limit)]
        if watch_pid is not None:
            options += ["--watch-pid", str(watch_pid)]
        if cleanup:
            options += ["--cleanup", json.dumps(cleanup)]
        if view is not None:  # (paths only: the guard's command line is in `ps`)
            options += ["--view", json.dumps(view)]
        pid = _ForkServer.spawn(options + list(argv), env, cwd, job_dir / "guard.log")
        (job_dir / "guard.pid").write_text(str(pid))
        job_id = env.get("DSTACK_JOB_ID")
        return cls(job_dir, pid, f"DSTACK_JOB_ID={job_id}".encode() if job_id else None, cleanup)

    @classmethod
    def attach(cls, job_dir: Path, job_id: Optional[str] = None, cleanup: Optional[List[str]] = None) -> Optional["DetachedJob"]:
        """The job started earlier in `job_dir`, or None if it never started there."""
        try:
            pid = int((job_dir / "guard.pid").read_text())
        except (OSError, ValueError):
            return None
        return cls(job_dir, pid, f"DSTACK_JOB_ID={job_id}".encode() if job_id else None, cleanup)

    def _guard_alive(self) -> bool:
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{self.pid}/stat").read_bytes()
        except OSError:
            return False
        # Not a reused pid, not a zombie.
        return b"dstack_ray.exec.guard" in cmdline and stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"

    def exit_status(self) -> Optional[int]:
        try:
            return int((self.job_dir / "exit").read_text())
        except (OSError, ValueError):
            return None

    def finished(self) -> bool:
        return self.exit_status() is not None or not self._guard_alive()

    def wait(self, timeout: Optional[float] = None, poll: float = 0.1) -> int:
        """The command's exit status once the guard is done. A guard killed outright wrote no
        status: what it left is killed here and the status is 128 + 9. The guard's exit wakes
        this at once where Linux gives a pidfd for it (it is not our child); else it is polled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        exited = _pidfd(self.pid)
        pause = min(0.005, poll)
        try:
            while True:
                code = self.exit_status()
                if code is not None:
                    return code
                if not self._guard_alive():
                    code = self.exit_status()  # written just before it exited
                    if code is not None:
                        return code
                    kill_leftovers(self._marker, self._cleanup)
                    return 128 + signal.SIGKILL
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"the job in {self.job_dir} is still running")
                if exited is not None:  # (at most a second: the pid could be another's by now)
                    select.select([exited], [], [], min(1.0, left) if left is not None else 1.0)
                else:
                    time.sleep(pause if left is None else min(pause, left))
                    pause = min(pause * 2, poll)
        finally:
            if exited is not None:
                os.close(exited)

    def _order(self, text: str, patience: float = 10.0) -> None:
        """Write an order into the guard's FIFO. A full FIFO (the job can write into it too) is
        waited on while the guard drains it, `patience` seconds at most: an order is not lost
        to a flood."""
        data = b"\n" + text.encode() + b"\n"  # the first newline ends whatever else was written into the FIFO
        deadline = time.monotonic() + patience
        while self._control is not None and not self.finished():  # else the guard already exited
            try:
                os.write(self._control, data)  # a few bytes: written whole or not at all (PIPE_BUF)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.002)
            except OSError:
                return

    def stop(self, grace_seconds: float) -> None:
        """SIGINT the command's process group; everything is killed after the grace period."""
        self._order(f"stop {grace_seconds:g}")

    def kill(self) -> None:
        self._order("kill")
