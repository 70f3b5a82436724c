"""Helpers shared by the Ray-backed test packages."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional


def processes_matching(marker: str) -> List[str]:
    """Command lines of live processes containing `marker` (the process-table check)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in cmdline and " Z " not in state:
            found.append(f"{entry.name}: {cmdline}")
    return found


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def no_leftovers(marker: str, timeout: float = 15.0) -> List[str]:
    """Wait until nothing matching `marker` runs; returns what is still there after `timeout`."""
    wait_for(lambda: not processes_matching(marker), timeout)
    return processes_matching(marker)


FAST_HEALTH_CHECKS = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
    "health_check_timeout_ms": 500,
    "health_check_initial_delay_ms": 0,
}


def isolate_home() -> Optional[str]:
    """Point HOME at an empty directory (returns the old one).

    Commands run as `bash -i`, which sources ~/.bashrc; this machine's (pyenv init) prints
    errors when several ranks start at once. pyenv itself keeps working through PYENV_ROOT.
    """
    previous = os.environ.get("HOME")
    if previous and "PYENV_ROOT" not in os.environ and Path(previous, ".pyenv").is_dir():
        os.environ["PYENV_ROOT"] = str(Path(previous, ".pyenv"))
    os.environ["HOME"] = tempfile.mkdtemp(prefix="dstack-ray-home-")
    return previous


def simulated_cluster(nodes: int, **node_args):
    """A `ray.cluster_utils.Cluster` with a CPU-less head and `nodes` workers, connected to.

    A generator for package-scoped fixtures: yields the cluster, shuts it down afterwards.
    """
    import ray
    from ray.cluster_utils import Cluster

    previous_home = isolate_home()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS},
    )
    for _ in range(nodes):
        cluster.add_node(**node_args)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if previous_home is not None:
            os.environ["HOME"] = previous_home


def local_torch_sources() -> dict:
    """uv settings that install torch (a CPU build) from this machine's own package sources, so
    a test's `uv pip install torch` sends no traffic past this host: the directory holding a
    torch wheel (pip's `find-links`) and a `file://` package index for its dependencies (pip's
    index settings), from the environment and pip's configuration files."""
    import configparser
    import pwd
    import shlex

    home = pwd.getpwuid(os.getuid()).pw_dir
    links = shlex.split(os.environ.get("PIP_FIND_LINKS", ""))
    indexes = shlex.split(os.environ.get("PIP_INDEX_URL", "") + " " + os.environ.get("PIP_EXTRA_INDEX_URL", ""))
    for path in ("/etc/pip.conf", f"{home}/.config/pip/pip.conf", f"{home}/.pip/pip.conf"):
        config = configparser.ConfigParser()
        try:
            config.read(path)
        except configparser.Error:
            continue
        if config.has_section("global"):
            links += config.get("global", "find-links", fallback="").split()
            indexes += config.get("global", "index-url", fallback="").split()
            indexes += config.get("global", "extra-index-url", fallback="").split()
    wheel_dirs = [d for d in links if list(Path(d).glob("torch-*.whl"))]
    local_indexes = [i for i in indexes if i.startswith("file://") and not Path(i[7:], "torch").exists()]
    if not wheel_dirs or not local_indexes:
        import pytest

        pytest.fail(
            "this test installs torch offline: it needs a torch wheel in a pip `find-links` directory "
            f"(found: {links or 'none'}) and a local `file://` index for its dependencies (found: {indexes or 'none'})"
        )
    return {"UV_FIND_LINKS": wheel_dirs[0], "UV_INDEX_URL": local_indexes[0]}


CLI = [sys.executable, "-m", "dstack_ray_cli.main"]


def embedded_head(home: Path, name: str):
    """The CLI's environment with the embedded local head started in a private `home` (4 CPUs,
    token auth on), for a package-scoped fixture: yields the environment, stops the head."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),
        DSTACK_RAY_STATE_DIR=str(home / ".dstack-ray"),
        DSTACK_RAY_TEMP_DIR=f"/tmp/dstack-ray-{name}-{os.getpid()}",
        COLUMNS="200",
        RAY_USAGE_STATS_ENABLED="0",
    )
    started = subprocess.run([*CLI, "server", "start", "--num-cpus", "4"], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield env
    finally:
        subprocess.run([*CLI, "server", "stop"], env=env, capture_output=True, text=True, timeout=120)


class AttachedApply:
    """`dstack-ray apply ARGS` left attached, as a user runs it: its stdout (the job's log) goes
    to `out` (a file, so a full pipe never blocks it), its stderr lines are read as they come."""

    def __init__(self, args: List[str], env: dict, cwd: Path, out: Path) -> None:
        self._output = open(out, "w")
        self.out = out
        self.process = subprocess.Popen([*CLI, "apply", *args], env=env, cwd=cwd, stdin=subprocess.PIPE,
                                        stdout=self._output, stderr=subprocess.PIPE, text=True)
        self._lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(line) for line in self.process.stderr], daemon=True).start()
        self.said: List[str] = []

    def wait_for_line(self, text: str, timeout: float) -> bool:
        """Whether apply printed a line holding `text` within `timeout` (False once it exited)."""
        deadline = time.time() + timeout
        while time.time() < deadline and not any(text in line for line in self.said):
            try:
                self.said.append(self._lines.get(timeout=1))
            except queue.Empty:
                if self.process.poll() is not None:
                    break
        return any(text in line for line in self.said)

    def stop_the_run(self, timeout: float = 180) -> str:
        """Ctrl+C, then "y" to "Stop the run before detaching?"; what apply wrote to stdout."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.stdin.write("y\n")
            self.process.stdin.close()
            self.process.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self._output.close()
        time.sleep(0.5)
        while not self._lines.empty():
            self.said.append(self._lines.get())
        return self.out.read_text()
