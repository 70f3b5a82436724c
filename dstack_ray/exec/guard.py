"""The process guard: runs one command so that no process of it outlives the run.

Started as
`python -m dstack_ray.exec.guard --job-dir D [--log-limit BYTES] [--watch-pid P]
[--cleanup JSON-ARGV] [--view JSON] COMMAND...` with the command's environment as its own, or
forked in that state by `python -m dstack_ray.exec.guard --fork-server` (how node agents start them: see
`_fork_server`). The guard
- becomes a child subreaper, so every descendant (even ones that daemonize) stays below it;
- starts the command in a new session on a terminal of its own (a pty, like dstack's runner);
- with `--view`, runs the command in the job's view of its node (exec/view.py, mountns.py);
- with `--watch-pid`, treats the end of that process (the node's raylet) like the end of the
  node: everything is killed at once;
- is independent of whoever started it, so that a job outlives a restart of its node agent:
  it appends the command's output as log records (`records.py`) to `D/output` (at most BYTES of
  them), reads orders from the FIFO `D/control` — `stop <grace-seconds>` (SIGINT to the
  command's process group, then SIGKILL after the grace period) and `kill` — and when
  everything is over writes the exit status to `D/exit`. A restarted agent finds all of it there;
- when the command exits, kills whatever it left behind, runs the cleanup command (e.g.
  `podman rm -f <container>`, which a container's processes need since they are not our
  descendants) and exits with the command's status (128 + N for a command killed by signal N).

It imports nothing heavy (not `typing`, `json` only for `--cleanup`) so that it starts in a few
milliseconds: every job starts one.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import pty
import select
import _signal as signal  # `signal` without its enum wrappers (~4 ms to import)
import sys
import termios
import time

from dstack_ray.exec import mountns
from dstack_ray.exec.proc import descendants, process_table, sigkill
from dstack_ray.exec.records import format_records

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


_subreaper = False


def _become_subreaper() -> None:
    global _subreaper
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        pass  # not Linux: the process group still covers the common cases


def _no_children() -> bool:
    """True when nothing at all runs below the guard: as a subreaper every orphaned descendant
    becomes its child, so no child means no descendant (and no /proc scan is needed)."""
    if not _subreaper:
        return False
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


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


def _kill_all(pgid: int | None) -> None:
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    for _ in range(50):  # new children may appear while we kill: repeat until none are left
        _reap()
        if _no_children():
            return
        pids = descendants(os.getpid())
        if not pids:
            return
        sigkill(pids)
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


def _spawn(argv: list[str], tty_fd: int, view: dict | None = None) -> int:
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
            fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(tty_fd, fd)
            os.close(tty_fd)
            # Every signal as a fresh process has it: Ray workers ignore some (SIGHUP, SIGXFSZ),
            # and an inherited "ignore" would survive the exec.
            for sig in signal.valid_signals():
                if sig not in (signal.SIGKILL, signal.SIGSTOP):
                    try:
                        signal.signal(sig, signal.SIG_DFL)
                    except (OSError, ValueError):
                        pass
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            if view is not None:
                try:
                    mountns.enter(view)
                except OSError as e:
                    os.write(2, f"dstack-ray: cannot make the job's view of its node: {e}\n".encode())
                    os._exit(127)
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


def main(argv: list[str]) -> int:
    if argv == ["--fork-server"]:
        return _fork_server()
    watch_pid: int | None = None
    job_dir: str | None = None
    log_limit = 0
    cleanup: list[str] = []
    view: dict | None = None
    options = ("--watch-pid", "--cleanup", "--job-dir", "--log-limit", "--view")
    while argv[:1] and argv[0] in options and len(argv) > 1:
        if argv[0] == "--watch-pid":
            watch_pid = int(argv[1])
        elif argv[0] == "--job-dir":
            job_dir = argv[1]
        elif argv[0] == "--log-limit":
            log_limit = int(argv[1])
        else:
            import json

            if argv[0] == "--view":
                view = json.loads(argv[1])
            else:
                cleanup = json.loads(argv[1])
        argv = argv[2:]
    if job_dir is None or not argv:
        print("usage: python -m dstack_ray.exec.guard --job-dir D [--log-limit BYTES] [--watch-pid P] [--cleanup ARGV] [--view JSON] COMMAND...", file=sys.stderr)
        return 2
    return _run_job(argv, job_dir, watch_pid, cleanup, log_limit, view)


class _Output:
    """The command's terminal output, as log records appended to the job's output file."""

    def __init__(self, master: int, path: str, limit: int) -> None:
        self.master = master
        os.set_blocking(master, False)
        self._file = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._written = os.fstat(self._file).st_size
        self._limit = limit

    BATCH = 256 * 1024

    def pump(self) -> bool:
        """Read what the command wrote; False once nobody holds the terminal any more. A terminal
        hands over at most 4 KiB per read: what is there is read in one go (the master is
        non-blocking) and written as one batch of records."""
        chunks, size, open_ = [], 0, True
        while size < self.BATCH:
            try:
                chunk = os.read(self.master, 65536)
            except BlockingIOError:
                break
            except OSError:  # EIO: the last writer of the terminal is gone
                open_ = False
                break
            if not chunk:
                open_ = False
                break
            chunks.append(chunk)
            size += len(chunk)
        if chunks:
            self._write(b"".join(chunks))
        return open_

    def _write(self, chunk: bytes) -> None:
        records = format_records(chunk)
        if self._limit and self._written + len(records) > self._limit:
            return  # over the limit: read (the command must not block) but keep nothing
        view = memoryview(records)
        while view:
            view = view[os.write(self._file, view) :]
        self._written += len(records)

    def drain(self, seconds: float = 2.0) -> None:
        """What is still in the terminal after the command's processes are gone."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready and not self.pump():
                return


def quiet_tty(fd: int) -> None:
    """No echo, no `\\n` -> `\\r\\n` translation: the bytes the command writes are the log."""
    attrs = termios.tcgetattr(fd)
    attrs[1] &= ~termios.OPOST  # oflag
    attrs[3] &= ~(termios.ECHO | termios.ICANON)  # lflag
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _run_job(argv: list[str], job_dir: str, watch_pid: int | None, cleanup: list[str], log_limit: int, view: dict | None = None) -> int:
    master, slave = pty.openpty()
    quiet_tty(slave)
    control = os.open(os.path.join(job_dir, "control"), os.O_RDWR | os.O_NONBLOCK)
    output = _Output(master, os.path.join(job_dir, "output"), log_limit)
    code = 255
    try:
        code = _supervise(argv, slave, watch_pid, orders_fd=control, output=output, view=view)
    except BaseException:
        _kill_all(None)
        raise
    finally:
        _run_cleanup(cleanup)
        exit_file = os.path.join(job_dir, "exit")
        with open(exit_file + ".tmp", "w") as f:
            f.write(str(code))
        os.replace(exit_file + ".tmp", exit_file)
    return code


def _fork_server() -> int:
    """Start job guards by forking this process, in which Python and the guard are loaded
    already (a fork costs well under a millisecond; a new `python` and its imports ~12 ms of CPU,
    for every job). A node agent keeps one and writes one request per line on its stdin:
    `{"argv": guard arguments, "env": ..., "cwd": ..., "log": the guard's own log file}`; the
    answer is the new guard's pid (or `error <text>`) on a line of stdout. End of stdin (the agent
    is gone) ends the server; the guards it started go on (they depend on nobody)."""
    import json

    def reap(*_: object) -> None:  # (not `_reap`: every later guard would inherit its statuses)
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    return
            except ChildProcessError:
                return

    signal.signal(signal.SIGCHLD, reap)  # a guard that ended is collected at once
    requests = os.fdopen(0, "rb")
    for line in requests:
        try:
            request = json.loads(line)
            pid = os.fork()
        except (ValueError, OSError) as e:
            os.write(1, f"error {e}\n".encode())
            continue
        if pid == 0:
            os._exit(_forked_guard(request))
        os.write(1, f"{pid}\n".encode())
    return 0


def _forked_guard(request: dict) -> int:
    """In the child of the fork server: become what `python -m dstack_ray.exec.guard ARGV` with
    that environment, directory and output would be (a session of its own), and run."""
    code = 255
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 16)  # the server's own descriptors (its request pipe) stay out
        if request.get("cwd"):
            os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = main(request["argv"])
    except BaseException as e:
        try:
            os.write(2, f"dstack-ray guard: {type(e).__name__}: {e}\n".encode())
        except OSError:
            pass  # not even its log can be written: the exit status (255, no `exit` file) says it
    return code


def _run_cleanup(cleanup: list[str]) -> None:
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


def _parse_order(line: bytes) -> tuple[str, float] | None:
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


def _drain(fd: int, most: int = 1 << 20) -> bytes:
    """What the FIFO holds now (up to `most` bytes): emptied at once, so that an order written
    after a flood finds room. (The guard holds the FIFO open for writing too: it never ends.)"""
    chunks: list[bytes] = []
    size = 0
    while size < most:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class _Orders:
    """Order lines as they arrive from the FIFO, in chunks. An order is a few bytes: a line
    longer than MAX_LINE is dropped whole (up to its newline) rather than kept, and each chunk
    is scanned once, so whatever a job writes into the FIFO costs it, not the guard."""

    MAX_LINE = 64

    def __init__(self) -> None:
        self._partial = b""
        self._dropping = False  # inside an over-long line: skip to its end

    def feed(self, chunk: bytes) -> list[tuple[str, float]]:
        orders = []
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            line, self._partial = self._partial + piece, b""
            if not self._dropping and len(line) <= self.MAX_LINE:
                order = _parse_order(line)
                if order is not None:  # not an order: ignored rather than fail with the command running
                    orders.append(order)
            self._dropping = False
        if self._dropping or len(self._partial) + len(rest) > self.MAX_LINE:
            self._partial, self._dropping = b"", True
        else:
            self._partial += rest
        return orders


def _supervise(argv: list[str], tty_fd: int, watch_pid: int | None, orders_fd: int, output: _Output, view: dict | None = None) -> int:
    """Run the command to its end on the terminal `tty_fd`, following orders from `orders_fd`
    (the job's FIFO) and pumping the terminal's `output` into the job's log."""
    _become_subreaper()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    child = _spawn(argv, tty_fd, view)
    os.close(tty_fd)
    pgid = child
    kill_at: float | None = None
    orders = _Orders()
    orders_open = True
    terminal_open = True
    while True:
        _reap()  # the command, and orphans reparented to us
        if child in _exit_statuses:
            _kill_all(pgid)
            output.drain()
            return _status(_exit_statuses[child])
        if watch_pid is not None and not _alive(watch_pid):
            watch_pid = None
            orders_open = False
            _kill_all(pgid)
            continue
        if kill_at is not None and time.monotonic() >= kill_at:
            _kill_all(pgid)
            kill_at = None
        timeout = 0.2 if kill_at is None else max(0.0, min(0.2, kill_at - time.monotonic()))
        watched = ([orders_fd] if orders_open else []) + ([output.master] if terminal_open else [])
        if not watched:
            time.sleep(timeout)
            continue
        ready, _, _ = select.select(watched, [], [], timeout)
        if output.master in ready:
            terminal_open = output.pump()
        if orders_fd not in ready:
            continue
        for order in orders.feed(_drain(orders_fd)):
            if order[0] == "stop":
                _interrupt(pgid)
                kill_at = time.monotonic() + order[1]
            else:
                _kill_all(pgid)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
