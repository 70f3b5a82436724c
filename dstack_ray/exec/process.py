"""Running one command under the guard on a pty and reading its output line by line."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import termios
import threading
import time
from typing import Callable, Dict, List, Optional

from dstack_ray.exec.proc import processes_with

OutputCallback = Callable[[bytes], None]


def _quiet_tty(fd: int) -> None:
    """No echo, no `\\n` -> `\\r\\n` translation: the bytes the command writes are the log."""
    attrs = termios.tcgetattr(fd)
    attrs[1] &= ~termios.OPOST  # oflag
    attrs[3] &= ~(termios.ECHO | termios.ICANON)  # lflag
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class GuardedProcess:
    """A command started through `dstack_ray.exec.guard`, its output delivered to a callback.

    `watch_pid`: a process whose end means the node is gone (the raylet that started this
    worker); the guard then kills the command at once. `cleanup`: a command the guard runs
    after the command ended, however it ended (removing a container).

    `on_output` receives raw chunks in order (from a reader thread); `wait()` returns the exit
    status once the command and everything it started are gone and all output was delivered.
    """

    def __init__(
        self,
        argv: List[str],
        env: Dict[str, str],
        cwd: Optional[str],
        on_output: OutputCallback,
        use_pty: bool = True,
        watch_pid: Optional[int] = None,
        cleanup: Optional[List[str]] = None,
    ) -> None:
        self._on_output = on_output
        self._cleanup = cleanup
        # Every process of the command carries its job's id in its environment: if the guard is
        # killed outright, that is how what it started is found (see `wait`).
        job_id = env.get("DSTACK_JOB_ID")
        self._marker = f"DSTACK_JOB_ID={job_id}".encode() if job_id else None
        guard = [sys.executable, "-m", "dstack_ray.exec.guard"]
        if watch_pid is not None:
            guard += ["--watch-pid", str(watch_pid)]
        if cleanup:
            guard += ["--cleanup", json.dumps(cleanup)]
        if use_pty:
            master, slave = pty.openpty()
            _quiet_tty(slave)
            self._proc = subprocess.Popen(
                guard + ["--tty-fd", str(slave), *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                pass_fds=(slave,),
                start_new_session=True,
            )
            os.close(slave)
            self._output_fd = master
        else:
            read_end, write_end = os.pipe()
            self._proc = subprocess.Popen(
                guard + list(argv),
                stdin=subprocess.PIPE,
                stdout=write_end,
                stderr=write_end,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
            os.close(write_end)
            self._output_fd = read_end
        self.pid = self._proc.pid
        self._reader = threading.Thread(target=self._read, name="dstack-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                try:
                    chunk = os.read(self._output_fd, 65536)
                except OSError:  # EIO: the last writer of the pty is gone
                    break
                if not chunk:
                    break
                self._on_output(chunk)
        finally:
            os.close(self._output_fd)

    def _order(self, text: str) -> None:
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(text.encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the guard already exited

    def stop(self, grace_seconds: float) -> None:
        """SIGINT the command's process group; everything is killed after the grace period."""
        self._order(f"stop {grace_seconds:g}")

    def kill(self) -> None:
        self._order("kill")

    def poll(self) -> Optional[int]:
        return self._proc.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        code = self._proc.wait(timeout=timeout)
        if code < 0:  # the guard was killed by a signal: do what it could not
            self._kill_leftovers()
        self._reader.join(timeout=timeout)
        return code

    def _kill_leftovers(self) -> None:
        """SIGKILL every process of this job (by its environment) and run the cleanup."""
        if self._marker is not None:
            for _ in range(20):  # processes may fork while we look: repeat until none are left
                found = [pid for pid in processes_with(self._marker) if pid != os.getpid()]
                if not found:
                    break
                for pid in found:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.05)
        if self._cleanup:
            subprocess.run(self._cleanup, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)

