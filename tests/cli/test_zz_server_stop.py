"""Last in the tier: `server stop` ends every process of the local head (the tier's own head)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict


def _processes() -> Dict[int, bytes]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
    return found


def test_server_stop_leaves_no_process_of_the_head(cli):
    """Ray's client-server proxy (left without a parent by `ray start`) and the dashboard and
    runtime-env agents (renamed by Ray, left behind by a killed raylet) went on running after
    `server stop`, one agent at ~50 % of a core."""
    head = json.loads((Path(cli.env["DSTACK_RAY_STATE_DIR"]) / "local-head.json").read_text())
    gcs_port = head["address"].rsplit(":", 1)[1].encode()
    before = _processes()
    of_head = {pid for pid, cmd in before.items() if head["temp_dir"].encode() in cmd or b"--address=" in cmd and cmd.split(b"--address=")[1].split(b"\0")[0].endswith(b":" + gcs_port)}
    agents = {pid for pid, cmd in before.items() if cmd.startswith((b"ray::DashboardAgent", b"ray::RuntimeEnvAgent"))}
    assert of_head and agents
    stopped = cli("server", "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 30
    while True:
        left = {pid: cmd[:120] for pid, cmd in _processes().items() if pid in of_head | agents}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == {}
