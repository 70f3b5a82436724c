"""A plain `ray start --head` as a user runs it: Ray's defaults (its dashboard on 127.0.0.1,
token authentication off), nothing of dstack-ray's local head. One cluster per test module,
stopped at the module's end (by its own temp directory: another Ray on this machine stays)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from dstack_ray.local_head import _head_processes

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
CLI = [sys.executable, "-m", "dstack_ray_cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_ip() -> str:
    """This machine's own address (traffic to it stays on the machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: it only picks the outgoing interface
        return s.getsockname()[0]


@dataclass
class PlainHead:
    host: str
    gcs_port: int
    dashboard_port: int
    service_port: int
    temp_dir: str
    env: Dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.gcs_port}"

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args, "--address", self.address], env=self.env, capture_output=True, text=True, timeout=timeout)


def plain_head(tmp_path: Path, *extra: str, host: str = "127.0.0.1"):
    """Start `ray start --head` (extra arguments appended), yield a PlainHead, stop it."""
    temp_dir = tempfile.mkdtemp(prefix="dstack-ray-plain-")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DSTACK_RAY_"))}
    head = PlainHead(host, free_port(), free_port(), free_port(), temp_dir)
    env.update(
        HOME=str(home),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_API_SERVER_ADDRESS=f"http://{host}:{head.dashboard_port}",
        DSTACK_RAY_SERVICE_PORT=str(head.service_port),
        DSTACK_RAY_STATE_DIR=str(home / ".dstack-ray"),
        DSTACK_RAY_SERVICE_PYTHON=sys.executable,  # the head's Python with Ray (`python` on PATH has none here)
        COLUMNS="200",
    )
    head.env = env
    started = subprocess.run(
        [*RAY, "start", "--head", f"--port={head.gcs_port}", f"--dashboard-port={head.dashboard_port}", f"--temp-dir={temp_dir}",
         f"--node-ip-address={host}", "--num-cpus=2", "--disable-usage-stats", *extra],
        env=env, capture_output=True, text=True, timeout=180,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield head
    finally:
        _stop(temp_dir, head.gcs_port)


def _stop(temp_dir: str, gcs_port: int) -> None:
    pids: List[int] = _head_processes(temp_dir, gcs_port)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


def listening(port: int) -> List[str]:
    """The addresses this machine listens on at `port`."""
    from dstack_ray.service.exposure import _listening

    return _listening(port)
