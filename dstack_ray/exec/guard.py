"""The process guard: runs one command so that no process of it outlives the run.

Started by a NodeAgent as
`python -m dstack_ray.exec.guard [--tty-fd N] [--watch-pid P] [--cleanup JSON-ARGV] COMMAND...`
with the command's environment as its own. The guard
- becomes a child subreaper, so every descendant (even ones that daemonize) stays below it;
- starts the command in a new session on the terminal whose slave end it received as fd N
  (a pty, like dstack's runner), or on its own stdout/stderr without `--tty-fd`;
- with `--watch-pid`, treats the end of that process (the node's raylet) like the end of the
  node: everything is killed at once;
- reads its stdin for orders: `stop <grace-seconds>` (SIGINT to the command's process group,
  then SIGKILL after the grace period) and `kill`; end of stdin means the agent is gone, and
  everything is killed at once;
- when the command exits, kills whatever it left behind, runs the cleanup command (e.g.
  `podman rm -f <container>`, which a container's processes need since they are not our
  descendants) and exits with the command's status (128 + N for a command killed by signal N).

It imports nothing heavy so that it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import signal
import sys
import termios
import time
from typing import List, Optional

from dstack_ray.exec.proc import descendants, process_table

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except OSError:
        pass  # not Linux: the process group still covers the common cases


def _interrupt(pgid: int) -> None:
    """SIGINT like Ctrl+C, to every process group of the command: an interactive shell runs
    each foreground job in a group of its own."""
    table = process_table()
    groups = {pgid} | {table[pid].group for pid in descendants(os.getpid(), table) if pid in table}
    groups.discard(os.getpgrp())
    for group in groups:
        try:
            os.killpg(group, signal.SIGINT)
        except OSError:
            pass


def _kill_all(pgid: Optional[int]) -> None:
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    for _ in range(50):  # new children may appear while we kill: repeat until none are left
        pids = descendants(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap()
        time.sleep(0.02)


_exit_statuses: dict[int, int] = {}


def _reap() -> None:
    """Collect every exited child (orphans included), remembering each wait status."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _exit_statuses[pid] = wait_status


def _spawn(argv: List[str], tty_fd: Optional[int]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            # If the guard itself is killed (SIGKILL), the command goes with it; the agent then
            # ends what the command started (see process.py).
            try:
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            except OSError:
                pass
            os.setsid()
            if tty_fd is not None:
                fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)
                for fd in (0, 1, 2):
                    os.dup2(tty_fd, fd)
                os.close(tty_fd)
            else:
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            # Every signal as a fresh process has it: Ray workers ignore some (SIGHUP, SIGXFSZ),
            # and an inherited "ignore" would survive the exec.
            for sig in signal.valid_signals():
                if sig not in (signal.SIGKILL, signal.SIGSTOP):
                    try:
                        signal.signal(sig, signal.SIG_DFL)
                    except (OSError, ValueError):
                        pass
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.execvpe(argv[0], argv, os.environ)
        except BaseException as e:  # exec failed: say why on the output the agent reads
            try:
                os.write(2, f"dstack-ray: cannot run {argv[0]}: {e}\n".encode())
            finally:
                os._exit(127)
    return pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def _status(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def main(argv: List[str]) -> int:
    tty_fd: Optional[int] = None
    watch_pid: Optional[int] = None
    cleanup: List[str] = []
    while argv[:1] in (["--tty-fd"], ["--watch-pid"], ["--cleanup"]) and len(argv) > 1:
        if argv[0] == "--tty-fd":
            tty_fd = int(argv[1])
        elif argv[0] == "--watch-pid":
            watch_pid = int(argv[1])
        else:
            cleanup = json.loads(argv[1])
        argv = argv[2:]
    try:
        return _supervise(argv, tty_fd, watch_pid)
    except BaseException:
        _kill_all(None)  # a guard that fails must not leave the command running
        raise
    finally:
        _run_cleanup(cleanup)


def _run_cleanup(cleanup: List[str]) -> None:
    if not cleanup:
        return
    try:
        pid = os.fork()
        if pid == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.execvp(cleanup[0], cleanup)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _parse_order(line: bytes) -> Optional[tuple[str, float]]:
    """`stop [grace-seconds]` or `kill`; None for anything else."""
    words = line.decode(errors="replace").split()
    if words == ["kill"]:
        return ("kill", 0.0)
    if words[:1] == ["stop"] and len(words) <= 2:
        try:
            grace = float(words[1]) if len(words) > 1 else 10.0
        except ValueError:
            return None
        if 0 <= grace < float("inf"):
            return ("stop", grace)
    return None


def _supervise(argv: List[str], tty_fd: Optional[int], watch_pid: Optional[int]) -> int:
    if not argv:
        print("usage: python -m dstack_ray.exec.guard [--tty-fd N] [--watch-pid P] [--cleanup ARGV] COMMAND...", file=sys.stderr)
        return 2
    _become_subreaper()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    child = _spawn(argv, tty_fd)
    if tty_fd is not None:
        os.close(tty_fd)
    pgid = child
    kill_at: Optional[float] = None
    orders = b""
    stdin_open = True
    while True:
        _reap()  # the command, and orphans reparented to us
        if child in _exit_statuses:
            _kill_all(pgid)
            return _status(_exit_statuses[child])
        if watch_pid is not None and not _alive(watch_pid):
            watch_pid = None
            stdin_open = False
            _kill_all(pgid)
            continue
        if kill_at is not None and time.monotonic() >= kill_at:
            _kill_all(pgid)
            kill_at = None
        timeout = 0.2 if kill_at is None else max(0.0, min(0.2, kill_at - time.monotonic()))
        if not stdin_open:
            time.sleep(timeout)
            continue
        ready, _, _ = select.select([0], [], [], timeout)
        if not ready:
            continue
        chunk = os.read(0, 1024)
        if not chunk:  # the agent is gone: nobody may be left running
            stdin_open = False
            _kill_all(pgid)
            continue
        orders += chunk
        while b"\n" in orders:
            line, orders = orders.split(b"\n", 1)
            order = _parse_order(line)
            if order is None:
                continue  # not an order: ignore it rather than fail with the command running
            if order[0] == "stop":
                _interrupt(pgid)
                kill_at = time.monotonic() + order[1]
            else:
                _kill_all(pgid)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
