"""A job's guard in job-directory mode (`DetachedJob`): output records, orders, exit status,
and a job that outlives the process that started it (a node agent that is restarted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dstack_ray.exec.records import LineJoiner, parse_records
from dstack_ray.exec.process import DetachedJob
from tests.helpers import no_leftovers, wait_for


def lines_of(job_dir: Path) -> list:
    joiner = LineJoiner()
    records = parse_records((job_dir / "output").read_bytes(), rank=0)
    lines = [str(line) for line in map(joiner.feed, records) if line is not None]
    last = joiner.flush()
    return lines + ([str(last)] if last is not None else [])


def env(job_id: str) -> dict:
    return {**os.environ, "DSTACK_JOB_ID": job_id}


def test_output_records_and_exit_status(tmp_path):
    job = DetachedJob.start(tmp_path / "job", ["/bin/bash", "-c", "echo first; printf 'par'; sleep 0.2; echo tial; printf last; exit 3"], env("j1"), str(tmp_path))
    assert job.wait() == 3
    assert lines_of(tmp_path / "job") == ["first", "partial", "last"]
    assert (tmp_path / "job" / "exit").read_text() == "3"


def test_stop_order_through_the_fifo(tmp_path):
    job = DetachedJob.start(tmp_path / "job", ["/bin/bash", "-c", "trap 'echo got-int; exit 5' INT; echo up; sleep 31501 & wait"], env("j2"), str(tmp_path))
    assert wait_for(lambda: "up" in lines_of(tmp_path / "job"), 10)
    job.stop(5)
    assert job.wait() == 5
    assert lines_of(tmp_path / "job")[-1] == "got-int"
    assert no_leftovers("sleep 31501") == []


STARTER = """
import os, signal, sys
from pathlib import Path
from dstack_ray.exec.process import DetachedJob
job = DetachedJob.start(Path(sys.argv[1]), ["/bin/bash", "-c", "for i in $(seq 1 30); do echo tick-$i; sleep 0.1; done; exit 4"],
                        {**os.environ, "DSTACK_JOB_ID": "j3"}, None)
print(job.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the agent dies outright
"""


def test_the_job_outlives_the_process_that_started_it(tmp_path):
    starter = subprocess.run([sys.executable, "-c", STARTER, str(tmp_path / "job")], capture_output=True, text=True, timeout=60)
    assert starter.returncode == -signal.SIGKILL
    job = DetachedJob.attach(tmp_path / "job", job_id="j3")
    assert job is not None and job.pid == int(starter.stdout.split()[0])
    assert not job.finished()
    assert job.wait() == 4
    assert lines_of(tmp_path / "job") == [f"tick-{i}" for i in range(1, 31)]  # none lost, none twice


def test_a_guard_killed_outright_leaves_nothing(tmp_path):
    job = DetachedJob.start(tmp_path / "job", ["/bin/bash", "-c", "echo up; sleep 31502"], env("j4"), str(tmp_path))
    assert wait_for(lambda: "up" in lines_of(tmp_path / "job"), 10)
    os.kill(job.pid, signal.SIGKILL)
    assert job.wait() == 128 + 9
    assert no_leftovers("sleep 31502") == []


def test_output_past_the_limit_is_not_kept_and_the_command_is_not_blocked(tmp_path):
    job = DetachedJob.start(tmp_path / "job", ["/bin/bash", "-c", "head -c 3000000 /dev/zero | tr '\\0' x | fold -w 100; echo end"], env("j5"), str(tmp_path), log_limit=100_000)
    started = time.monotonic()
    assert job.wait() == 0
    assert time.monotonic() - started < 30
    assert (tmp_path / "job" / "output").stat().st_size <= 100_000


def test_attach_finds_nothing_where_no_job_started(tmp_path):
    assert DetachedJob.attach(tmp_path / "nothing") is None


def test_an_order_given_before_the_guard_is_up_still_reaches_it(tmp_path):
    job = DetachedJob.start(tmp_path / "job", ["/bin/bash", "-c", "sleep 31503"], env("j6"), str(tmp_path))
    job.kill()  # at once: the guard is still starting and has not opened its end of the FIFO
    try:
        assert job.wait(timeout=10) == 128 + 9
    finally:
        if not job.finished():  # the order was lost: end it here
            os.kill(job.pid, signal.SIGKILL)
            job.wait()
    assert no_leftovers("sleep 31503") == []


def test_the_guard_starts_without_costly_imports():
    """Every job starts a guard: it must not import what costs milliseconds of CPU per job
    (`typing`, `threading`, `enum` through `signal`, `datetime`; `json` only for a cleanup)."""
    from dstack_ray.exec.process import _PACKAGE_ROOT

    boot = f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); import dstack_ray.exec.guard; print(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-I", "-S", "-c", boot], capture_output=True, text=True, check=True, timeout=30).stdout.split())
    assert "dstack_ray.exec.guard" in loaded
    assert loaded & {"typing", "threading", "enum", "signal", "datetime", "json", "re"} == set()


def test_a_guard_forked_by_the_fork_server_runs_as_one_started_afresh(tmp_path):
    """Guards are forked from the agent's fork server (a Python with the guard loaded): each one
    still gets the job's environment and directory only, a session of its own, and its own log;
    and it is not a child of the agent (it must outlive it)."""
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": os.defpath, "ONLY_THIS": "yes", "DSTACK_JOB_ID": "j9"}
    job = DetachedJob.start(tmp_path / "job", ["/bin/sh", "-c", 'echo "$ONLY_THIS ${HOME:-no-home} $(pwd)"; sleep 0.3'], env, str(work))
    session = lambda: int(Path(f"/proc/{job.pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    assert wait_for(lambda: session() == job.pid, 10)  # the session it leads (once it runs)
    with pytest.raises(ChildProcessError):  # not a child of the process that started it
        os.waitpid(job.pid, os.WNOHANG)
    assert job.wait(30) == 0
    assert lines_of(tmp_path / "job") == [f"yes no-home {work}"]
    assert (tmp_path / "job" / "guard.log").exists()


def test_a_fork_server_that_died_is_replaced(tmp_path):
    from dstack_ray.exec.process import _ForkServer

    DetachedJob.start(tmp_path / "first", ["/bin/true"], env("j10"), None).wait(30)
    old = _ForkServer._server
    os.kill(old.pid, signal.SIGKILL)
    old.wait()
    job = DetachedJob.start(tmp_path / "second", ["/bin/sh", "-c", "echo again"], env("j11"), None)
    assert job.wait(30) == 0 and lines_of(tmp_path / "second") == ["again"]
    assert _ForkServer._server.pid != old.pid


def test_order_lines_are_bounded_and_read_once():
    """The guard keeps at most an order's worth of bytes: an over-long line (the review wrote
    2.7 MiB without a newline into the FIFO: 2.8 s of the guard's CPU, its memory doubled) is
    dropped to its newline and the orders after it still work."""
    from dstack_ray.exec.guard import _Orders

    orders = _Orders()
    assert orders.feed(b"sto") == [] and orders.feed(b"p 2\nkill\n") == [("stop", 2.0), ("kill", 0.0)]
    assert orders.feed(b"x" * (1 << 20)) == [] and len(orders._partial) == 0
    assert orders.feed(b"y" * (1 << 20)) == [] and len(orders._partial) == 0
    assert orders.feed(b"kill\nstop 1\n") == [("stop", 1.0)]  # "…yyykill" was the over-long line's end
    assert orders.feed(b"nonsense\n\nstop -1\nstop 3") == [] and orders.feed(b"\n") == [("stop", 3.0)]
    assert orders.feed(b"stop " + b"0" * 80 + b"1\nkill\n") == [("kill", 0.0)]  # too long, even split over chunks


def test_a_flood_of_bytes_into_the_fifo_does_not_stop_the_guard_obeying(tmp_path):
    job = DetachedJob.start(tmp_path / "job", ["/bin/bash", "-c", "trap 'echo got-int; exit 5' INT; echo up; sleep 31502 & wait"], env("j9"), str(tmp_path))
    assert wait_for(lambda: "up" in lines_of(tmp_path / "job"), 10)
    fd = os.open(tmp_path / "job" / "control", os.O_WRONLY | os.O_NONBLOCK)
    written, started = 0, time.monotonic()
    try:
        while written < (8 << 20) and time.monotonic() - started < 20:
            try:
                written += os.write(fd, b"z" * 65536)
            except BlockingIOError:
                time.sleep(0.001)
    finally:
        os.close(fd)
    job.stop(5)
    try:
        assert job.wait(timeout=30) == 5 and written >= 8 << 20
    finally:
        job.kill()
        assert no_leftovers("sleep 31502") == []
