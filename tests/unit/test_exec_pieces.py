"""What a node runs: dstack's command joining, hostfile, environment, container arguments."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dstack_ray.exec.commands import (
    ClusterInfo,
    JobIdentity,
    JobPaths,
    command_argv,
    dstack_variables,
    host_base_environment,
    job_environment,
    join_commands,
    mpi_hostfile,
)
from dstack_ray.exec.container import container_argv, container_name, container_path, registry_of
from dstack_ray.exec.process import DetachedJob
from tests.helpers import processes_matching, wait_for


def test_join_commands_like_dstack():
    assert join_commands(["  a  ", "b &", "c"]) == "a && { b & } && c"
    assert command_argv("/bin/bash", ["echo hi", "x"], None) == ["/bin/bash", "-i", "-c", "echo hi && x"]
    assert command_argv("/bin/sh", ["a", "b"], "python -m app --flag") == ["python", "-m", "app", "--flag", "a", "b"]
    assert command_argv("/bin/sh", [], None) == []


def test_mpi_hostfile():
    assert mpi_hostfile(["10.0.0.1", "10.0.0.2"], [8, 8]) == "10.0.0.1 slots=8\n10.0.0.2 slots=8\n"
    assert mpi_hostfile(["10.0.0.1", "10.0.0.2"], [0, 0]) == "10.0.0.1\n10.0.0.2\n"  # no slots=0 (dstack #3434)
    assert mpi_hostfile(["10.0.0.1", ""], [1, 1]) == ""


def test_environment_precedence_and_cuda():
    system = dstack_variables(
        JobIdentity("r", "rid", "jid", 1),
        ClusterInfo(["10.0.0.1", "10.0.0.2"], [2, 4]),
        JobPaths("/w", "/w/repo", "/h"),
    )
    assert system["DSTACK_NODES_IPS"] == "10.0.0.1\n10.0.0.2" and system["DSTACK_MASTER_NODE_IP"] == "10.0.0.1"
    assert system["DSTACK_GPUS_PER_NODE"] == "4" and system["DSTACK_GPUS_NUM"] == "6" and system["DSTACK_NODE_RANK"] == "1"
    base = host_base_environment({"PATH": "/bin", "RAY_RAYLET_PID": "1", "CUDA_VISIBLE_DEVICES": "", "BASH_FUNC_x%%": "()", "DSTACK_RAY_STATE_DIR": "/s"})
    assert base == {"PATH": "/bin"}
    env = job_environment(base, system, {"DSTACK_NODE_RANK": "user", "PAGER": "less"}, ["2", "3"])
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["DSTACK_NODE_RANK"] == "user" and env["PAGER"] == "less"
    assert "CUDA_VISIBLE_DEVICES" not in job_environment({"CUDA_VISIBLE_DEVICES": ""}, system, {}, [])
    assert job_environment({}, system, {}, [])["GIT_PAGER"] == "cat"


def test_container_helpers():
    assert container_name("my run", 2, 0) == "dstack-my-run-2-0"
    assert registry_of("ghcr.io/org/image:1") == "ghcr.io"
    assert registry_of("localhost:5000/x") == "localhost:5000"
    assert registry_of("pytorch/pytorch") == "docker.io" and registry_of("ubuntu") == "docker.io"
    assert container_path("data", "/workflow", "/root") == "/workflow/data"
    assert container_path("~/.cache/x", "/workflow", "/home/app") == "/home/app/.cache/x"
    assert container_path("/opt/x", "/workflow", "/root") == "/opt/x"
    assert container_argv("/bin/sh", ["docker ps"], None, docker=True) == ["/bin/sh", "-i", "-c", "start-dockerd && docker ps"]


def _output(job_dir: Path) -> str:
    from dstack_ray.exec.records import parse_records

    return "\n".join(parse_records((job_dir / "output").read_bytes(), rank=0))


def test_guard_kills_everything_the_command_left(tmp_path):
    marker = f"sleep 3139{os.getpid() % 10}"
    job = DetachedJob.start(tmp_path / "job", ["/bin/bash", "-c", f"({marker} &); setsid {marker} & echo done"], dict(os.environ), "/tmp")
    assert job.wait(30) == 0
    assert "done" in _output(tmp_path / "job")
    time.sleep(0.3)
    assert processes_matching(marker) == []


def test_guard_stop_then_kill_and_cleanup(tmp_path):
    cleaned = tmp_path / "cleaned"
    job = DetachedJob.start(
        tmp_path / "job", ["/bin/bash", "-c", "trap '' INT; echo up; while true; do sleep 0.1; done"],
        dict(os.environ), "/tmp", cleanup=["touch", str(cleaned)],
    )
    assert wait_for(lambda: "up" in _output(tmp_path / "job"), 10)
    started = time.monotonic()
    job.stop(1)
    assert job.wait(30) == 137  # ignored SIGINT: killed after the grace period
    assert 0.9 < time.monotonic() - started < 10
    assert cleaned.exists()


# --- live output: partial records and the line view ---------------------------------------------------


def test_partial_lines_are_records_of_their_own_and_readers_join_them():
    from dstack_ray.exec.records import LineJoiner, parse_records
    from dstack_ray.exec.records import LineEcho, format_records

    shipped = [format_records(chunk) for chunk in [b"first\nsec", b"ond\n\r 10%", b"\r 50%", b"\r100%\ndone"]]
    # The agent's echo (the Ray dashboard's log) shows whole lines.
    echo = LineEcho()
    assert [line for records in shipped for line in echo.lines(records)] == [b"first", b"second", b"\r 10%\r 50%\r100%"]
    records = parse_records(b"".join(shipped), rank=0)
    assert [(str(r), r.partial) for r in records] == [
        ("first", False), ("sec", True), ("ond", False), ("\r 10%", True), ("\r 50%", True), ("\r100%", False), ("done", True),
    ]
    joiner = LineJoiner()
    lines = [str(line) for line in map(joiner.feed, records) if line is not None] + [str(joiner.flush())]
    assert lines == ["first", "second", "\r 10%\r 50%\r100%", "done"]


def test_a_big_chunk_of_records_is_parsed_in_pieces_that_end_with_a_record():
    """A reader turns at most ~256 KiB of records into LogLines at a time (a 4 MiB chunk as
    LogLines at once grew `logs -f` by ~50 MiB)."""
    from dstack_ray.exec.records import pieces

    data = b"".join(b"%05d\n" % i for i in range(1000))
    for size in (1, 6, 7, 100, 10**6):
        parts = list(pieces(data, size))
        assert b"".join(parts) == data and all(p.endswith(b"\n") and len(p) <= size + 6 for p in parts)
    assert len(list(pieces(data, 600))) == 10 and list(pieces(b"")) == []
