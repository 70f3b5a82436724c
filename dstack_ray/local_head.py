"""The embedded local Ray head that dstack-ray starts when no cluster address is given.

Like `dstack server`, it outlives the command that started it, so `apply -d` in one shell and
`ps`/`logs`/`stop` in another reach the same runs. It uses its own ports and temp directory, so a
user's own Ray on this machine is left alone. Ray's token authentication is on (a token is
generated in ~/.ray/auth_token when there is none) unless RAY_AUTH_MODE says otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

from dstack_ray.runtime.settings import default_state_dir
from dstack_ray.service.client import auth_token_path
from dstack_ray.paths import private_dir

GCS_PORT = 6391
DASHBOARD_PORT = 8265
CLIENT_PORT = 23100  # outside Ray's worker port range (10002-19999)
AGENT_PORT = 52366


class LocalHeadError(Exception):
    """The local head could not be started or reached; the message says what to do."""


@dataclass
class LocalHead:
    address: str  # GCS address for ray.init
    dashboard_url: str
    temp_dir: str
    started_at: float
    auth: bool = True  # Ray's token authentication is on
    service: Optional[str] = None  # the dstack-ray service's URL, once started

    @property
    def gcs_port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


RAY_CLI = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"]


def ensure_auth_token() -> None:
    """Ray's token authentication needs a token: make one with Ray's own tool if none exists.
    Ray writes it readable by everyone; only its owner may read it (and its directory)."""
    path = auth_token_path()
    if not os.environ.get("RAY_AUTH_TOKEN") and not path.exists():
        subprocess.run(
            [*RAY_CLI, "get-auth-token", "--generate"],
            stdout=subprocess.DEVNULL,  # it prints the token: keep it out of every log
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=60,
        )
    if path.exists() and path.stat().st_uid == os.getuid():
        os.chmod(path, 0o600)
        if path.parent.stat().st_uid == os.getuid():
            os.chmod(path.parent, 0o700)


def _info_file() -> Path:
    return default_state_dir() / "local-head.json"


def _temp_dir() -> Optional[str]:
    """The configured temp directory; None: a new, unpredictable one is made at start."""
    return os.environ.get("DSTACK_RAY_TEMP_DIR") or None


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _free_port(preferred: int) -> int:
    for port in range(preferred, preferred + 50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise LocalHeadError(f"no free port near {preferred} on 127.0.0.1 for the local Ray head")


def token_of(head: LocalHead) -> Optional[str]:
    from dstack_ray.service.client import auth_token

    return auth_token() if head.auth else None


def _answering(head: LocalHead) -> Optional[str]:
    """The head's recorded service URL, if that service answers (VersionMismatch if it runs
    another dstack-ray: `server upgrade` replaces it)."""
    from dstack_ray.service.client import check_version, health

    answer = health(head.service, token_of(head)) if head.service else None
    if answer is None:
        return None
    check_version(f"the dstack-ray service at {head.service}", answer.get("version"), answer.get("api_version"))
    return head.service


def answering_service() -> Optional[str]:
    """The local head's service URL if it answers: the quick check (no look for the head's
    processes) every command that has no address makes first."""
    try:
        head = LocalHead(**json.loads(_info_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return _answering(head)


def head_at(address: str) -> Optional[LocalHead]:
    """The running local head, if a Ray address names it (by its GCS port)."""
    head = status()
    target = address.split("://", 1)[-1]
    return head if head is not None and target.rsplit(":", 1)[-1] == str(head.gcs_port) else None


def status() -> Optional[LocalHead]:
    """The running local head, or None (a stale record is removed)."""
    path = _info_file()
    try:
        head = LocalHead(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _port_open(head.gcs_port) and _head_processes(head.temp_dir, head.gcs_port):
        return head
    path.unlink(missing_ok=True)
    return None


def start(num_cpus: Optional[int] = None, num_gpus: Optional[int] = None, timeout: float = 90, auth: bool = True) -> LocalHead:
    """Start the local head (or return the running one). Ray's token authentication is on:
    Ray binds some of the head's ports to the machine's address even when asked for loopback
    (see the README), so only `auth=False` (`server start --no-auth`) turns it off."""
    running = status()
    if running is not None:
        return running
    # A fresh private directory: its path is how `stop` finds the head's processes, so no
    # other process can carry it by chance (a predictable /tmp path could be planted).
    temp_dir = _temp_dir() or tempfile.mkdtemp(prefix="dstack-ray-")
    gcs_port = _free_port(GCS_PORT)
    dashboard_port = _free_port(DASHBOARD_PORT)
    args = [
        "start",
        "--head",
        f"--port={gcs_port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={_free_port(CLIENT_PORT)}",
        f"--dashboard-agent-listen-port={_free_port(AGENT_PORT)}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    log = private_dir(default_state_dir()) / "local-head.log"
    env = dict(os.environ)
    if auth:
        ensure_auth_token()
        env["RAY_AUTH_MODE"] = "token"
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    with open(log, "ab") as out:
        proc = subprocess.run(
            [*RAY_CLI, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            env=env,
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise LocalHeadError("the local Ray head did not start: " + " | ".join(tail) + f" (full log: {log})")
    head = LocalHead(
        address=f"127.0.0.1:{gcs_port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        temp_dir=temp_dir,
        started_at=time.time(),
        auth=auth,
    )
    _save(head)
    service_url(head)
    return head


def _save(head: LocalHead) -> None:
    _info_file().write_text(json.dumps(asdict(head)))


def service_url(head: LocalHead) -> str:
    """The URL of the local head's dstack-ray service, started (as a Ray Job on the head,
    listening on loopback only) when it does not answer."""
    from dstack_ray.service import DEFAULT_SERVICE_PORT, SERVICE_PYTHON_ENV
    from dstack_ray.service.client import ensure_service

    answering = _answering(head)
    if answering:
        return answering
    head.service = ensure_service(
        head.dashboard_url,
        host="127.0.0.1",
        bind="127.0.0.1",
        port=_free_port(DEFAULT_SERVICE_PORT),
        python=os.environ.get(SERVICE_PYTHON_ENV) or sys.executable,  # the head runs this Python
        token=token_of(head),
        shipped=False,  # ... and this install: nothing to ship
    )
    _save(head)
    return head.service


def _head_processes(temp_dir: Optional[str], gcs_port: Optional[int] = None) -> List[int]:
    """PIDs of this user's Ray processes of the head that uses `temp_dir` (and nothing else):
    an argument of theirs is that directory or a path inside it, or (`gcs_port`) they were
    started to talk to the head's GCS (`--address=<host>:<port>`: Ray Client's proxy, which
    `ray start` leaves without a parent), and every process below those (the dashboard agent
    and runtime-env agent, whose names Ray rewrites and which a killed raylet leaves behind)."""
    if not temp_dir:
        return []
    root = temp_dir.rstrip("/").encode()
    address = b":%d" % gcs_port if gcs_port else None
    matched, parents = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(_names_dir(argument, root) for argument in arguments) or (
            address is not None and any(a.startswith(b"--address=") and a.endswith(address) for a in arguments)
            and any(b"ray" in a for a in arguments[:3])
        ):
            matched.add(int(entry.name))
    found, grew = set(matched), True
    while grew:  # descendants
        below = {pid for pid, parent in parents.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return sorted(found)


def _names_dir(argument: bytes, root: bytes) -> bool:
    """`root`, a path below it, or an option set to one (`--temp-dir=root`)."""
    value = argument.split(b"=", 1)[1] if argument.startswith(b"--") and b"=" in argument else argument
    return value == root or value.startswith(root + b"/")


def stop(timeout: float = 20) -> bool:
    """Stop the local head's processes (only ours: another Ray on this machine stays up)."""
    head = status()
    temp_dir = head.temp_dir if head else _temp_dir()
    pids = _head_processes(temp_dir, head.gcs_port if head else None)
    if not pids:
        _info_file().unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, timeout / 2), (signal.SIGKILL, timeout / 2)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            if not pids:
                break
            time.sleep(0.2)
        if not pids:
            break
    if head is not None and head.service:
        _wait_closed(int(head.service.rsplit(":", 1)[1]), timeout)
    _info_file().unlink(missing_ok=True)
    return True


def _wait_closed(port: int, timeout: float) -> None:
    """The service (a Ray Job's driver) ends by itself once the head's GCS is gone: wait for it."""
    deadline = time.time() + timeout
    while _port_open(port) and time.time() < deadline:
        time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
