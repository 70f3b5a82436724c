"""Three separate hosts on this one machine, and a Ray cluster across them.

Each host is a podman container whose filesystem is a copy-on-write view of this machine's
(`--rootfs /:O`: Python and apt packages are all there, no image needed) with its own hostname,
IP address, process table and writable files. The hosts are a user's cluster: their Ray runs
from a Python that has `ray[default]` and nothing of dstack-ray (a venv the tier makes), with no
uv on PATH, in `/` (not the checkout); every piece of dstack-ray that runs there was shipped by
the client through Ray's runtime environments. A Ray head runs in one, workers in two others
(1 CPU each); the tests' client connects from this machine through Ray Client
(`ray://<head>:10001`) or the Jobs API (the CLI with `head:6379`). Each host's `~/.dstack-ray` is an empty directory of its own (the view
would otherwise carry this machine's). The tier sends traffic only to the containers it creates
and removes them and their network on every path, also what a killed earlier session left.
See reference/build-machine.md ("Separate hosts on one machine").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

import pytest

PREFIX = "dstack-mh"
HEAD = "head"
WORKERS = ("worker1", "worker2")
# The head notices a dead host within ~2 s instead of ~25 s.
HEALTH_CHECKS = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
    "health_check_timeout_ms": 500,
    "health_check_initial_delay_ms": 0,
}
VENV_BIN = Path(sys.executable).parent  # this machine's install (the client's)
# The hosts' Ray-only Python (made once per machine and Ray version; see ray_only_python).
RAY_ONLY = Path(os.environ.get("DSTACK_RAY_TEST_RAY_ONLY_DIR", "/var/tmp/dstack-ray-test-ray-only"))
RAY_VERSION = os.environ.get("DSTACK_RAY_TEST_HOST_RAY") or metadata.version("ray")
RAY_BIN = RAY_ONLY / f"ray-{RAY_VERSION}" / "bin"
# The hosts' `python` is not the one with Ray: the service job started on the head names it.
SERVICE_PYTHON_ENV = "DSTACK_RAY_SERVICE_PYTHON"
SERVICE_PYTHON = str(RAY_BIN / "python")
REPO = Path(__file__).resolve().parents[2]
HOST_PATH = f"{RAY_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Lists the live processes of a run in one container: by its environment (DSTACK_RUN_NAME, as
# every command and guard has) or by its run directory in the command line (sshd, guard).
_PROCESS_SCAN = r"""
import os, sys
name = sys.argv[1]
marks = [b"DSTACK_RUN_NAME=" + name.encode() + b"\0", b"/runs/" + name.encode() + b"-"]
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read() + b"\0"
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        continue
    if state != "Z" and (b"\0" + marks[0] in b"\0" + env or marks[1] in cmd):
        print(pid, cmd.replace(b"\0", b" ").decode(errors="replace"))
"""


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result


def _used_subnets() -> set:
    """The /24 prefixes this machine already routes (never reuse one for the test network)."""
    used = set()
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        destination = line.split()[1]
        octets = [str(int(destination[i : i + 2], 16)) for i in (6, 4, 2)]
        used.add(".".join(octets))
    return used


def _remove_stale() -> None:
    """Containers and networks of this tier left by a session that did not end (killed pytest)."""
    for kind in ("ps -a", "network ls"):
        listed = podman(*kind.split(), "--format", "{{.Names}}" if kind == "ps -a" else "{{.Name}}", check=False).stdout
        for name in listed.split():
            if not name.startswith(PREFIX + "-"):
                continue
            pid = name.split("-")[2]
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                continue  # a live session's
            if kind == "ps -a":
                podman("rm", "-f", "-t", "0", name, check=False)
            else:
                podman("network", "rm", "-f", name, check=False)


class Hosts:
    """The tier's containers: start, kill and replace hosts, run commands in them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.network = f"{PREFIX}-{os.getpid()}"
        self.prefix = next(f"10.89.{n}" for n in range(77, 250) if f"10.89.{n}" not in _used_subnets())
        self.ips = {HEAD: f"{self.prefix}.10", **{w: f"{self.prefix}.{11 + i}" for i, w in enumerate(WORKERS)}}
        self.started: List[str] = []
        self.alone: set = set()  # hosts that are clusters of their own
        # Mounted at the same path on every host (as NFS would be): git remotes for repo tests.
        self.shared = workdir / "shared"
        self.shared.mkdir()

    @property
    def head_ip(self) -> str:
        return self.ips[HEAD]

    @property
    def ray_address(self) -> str:
        return f"ray://{self.head_ip}:10001"

    def container(self, host: str) -> str:
        return f"{self.network}-{host}"

    def create_network(self) -> None:
        podman("network", "create", "--subnet", f"{self.prefix}.0/24", self.network)

    def start(self, host: str) -> None:
        """Start `host` (a fresh container: a replaced host has an empty state directory). The
        head is the small host (3 GiB of Ray memory, the workers 6 GiB): a task asking for more
        lands on a worker."""
        state = self.workdir / f"state-{host}-{time.monotonic_ns()}"
        state.mkdir(parents=True)
        ray = [str(RAY_BIN / "ray"), "start", "--block", "--num-cpus", "1", "--object-store-memory", str(100 * 1024**2),
               "--node-ip-address", self.ips[host], "--memory", str((3 if host == HEAD else 6) * 1024**3)]
        if host == HEAD:
            # The dashboard (its Jobs API) is how a client finds or starts the dstack-ray service.
            ray += ["--head", "--port", "6379", "--ray-client-server-port", "10001", "--include-dashboard", "true",
                    "--dashboard-host", "0.0.0.0", "--system-config", json.dumps(HEALTH_CHECKS)]
        elif host in self.alone:  # a cluster of its own, without a dashboard (no Jobs API)
            ray += ["--head", "--port", "6379", "--ray-client-server-port", "10001", "--include-dashboard", "false"]
        else:
            ray += ["--address", f"{self.head_ip}:6379"]
        hosts = [arg for name, ip in self.ips.items() for arg in ("--add-host", f"{name}:{ip}")]
        pairs = ("RAY_AUTH_MODE=disabled", "RAY_USAGE_STATS_ENABLED=0", "RAY_DEDUP_LOGS=0", f"{SERVICE_PYTHON_ENV}={SERVICE_PYTHON}",
                 f"PATH={HOST_PATH}", f"VIRTUAL_ENV={RAY_BIN.parent}")
        env = [arg for pair in pairs for arg in ("-e", pair)]
        podman(
            "run", "-d", "--name", self.container(host), "--hostname", host, "--network", self.network,
            "--ip", self.ips[host], *hosts, *env, "--shm-size", "512m",
            "-v", f"{state}:/root/.dstack-ray", "-v", f"{self.shared}:{self.shared}", "-w", "/",
            *HIDDEN_TOOLS, "--rootfs", "/:O", *ray,
        )
        self.started.append(self.container(host))

    def join(self, host: str) -> None:
        """A new host joins the cluster (as one the autoscaler launches would), after the rest."""
        self.ips[host] = f"{self.prefix}.{10 + len(self.ips)}"
        self.start(host)

    def start_alone(self, host: str) -> None:
        """A host that is a one-node Ray cluster of its own, whose head runs no dashboard."""
        self.alone.add(host)
        self.join(host)

    def leave(self, host: str) -> None:
        """A host that joined is gone for good (the autoscaler removed it)."""
        self.kill(host)
        del self.ips[host]

    def kill(self, host: str) -> None:
        """The host dies at once (power loss): every process in it is gone."""
        podman("rm", "-f", "-t", "0", self.container(host))

    def exec(self, host: str, *argv: str, timeout: float = 120, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        flags = [arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={v}")]
        return podman("exec", "-w", "/", *flags, self.container(host), *argv, timeout=timeout, check=False)

    def alive(self) -> List[str]:
        listed = podman("ps", "--format", "{{.Names}}").stdout.split()
        return [h for h in self.ips if self.container(h) in listed]

    def processes_of(self, run_name: str) -> Dict[str, List[str]]:
        """Live processes of a run on every live host: {host: ["pid cmdline", ...]}."""
        found = {}
        for host in self.alive():
            out = self.exec(host, sys.executable, "-c", _PROCESS_SCAN, run_name, timeout=60)
            lines = [line for line in out.stdout.splitlines() if line.strip()]
            if lines:
                found[host] = lines
        return found

    def no_processes_of(self, run_name: str, timeout: float = 30) -> Dict[str, List[str]]:
        deadline = time.monotonic() + timeout
        while True:
            left = self.processes_of(run_name)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(1)

    def remove_all(self) -> None:
        """Every container of this tier (also one whose start failed half-way), then the network."""
        listed = podman("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        for name in set(self.started) | {n for n in listed if n.startswith(self.network + "-")}:
            podman("rm", "-f", "-t", "0", name, check=False)
        podman("network", "rm", "-f", self.network, check=False)


# uv is not on the hosts (a user's Ray image has none): this machine's copies are covered.
HIDDEN_TOOLS = [arg for tool in ("/usr/local/bin/uv", "/usr/local/bin/uvx") if Path(tool).exists() for arg in ("-v", f"/dev/null:{tool}")]


def ray_only_python() -> Path:
    """A Python with `ray[default]` (the client's Ray version, or $DSTACK_RAY_TEST_HOST_RAY) and
    nothing of dstack-ray, made once per machine with uv (~2 s from its cache). Ray's scripts
    name the venv's path, so it is made where it stays; `ready` marks a finished one."""
    venv, ready = RAY_BIN.parent, RAY_BIN.parent / "ready"
    if ready.exists():
        return RAY_BIN
    from uv import find_uv_bin

    shutil.rmtree(venv, ignore_errors=True)
    base = os.path.realpath(sys.executable)  # this machine's interpreter, under the client's venv
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for argv in (
        [find_uv_bin(), "venv", "--quiet", "--python", base, str(venv)],
        [find_uv_bin(), "pip", "install", "--quiet", "--python", str(RAY_BIN / "python"), f"ray[default]=={RAY_VERSION}"],
        [str(RAY_BIN / "python"), "-m", "compileall", "-q", "-j", "0", str(venv / "lib")],  # as pip would
    ):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
        if result.returncode != 0 and "compileall" not in argv:
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(f"cannot make the hosts' Ray-only Python: {result.stderr.strip()[-500:]}")
    ready.touch()
    return RAY_BIN


def _podman_ready() -> bool:
    return shutil.which("podman") is not None and shutil.which("runc") is not None


def alive_node_ips() -> List[str]:
    import ray

    return sorted(n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive"))


def wait_nodes(hosts: "Hosts", timeout: float = 120) -> None:
    """Until Ray sees exactly one live node per host (a killed host's node may still be listed
    as alive for a moment next to its replacement)."""
    wanted = sorted(hosts.ips.values())
    deadline = time.monotonic() + timeout
    while alive_node_ips() != wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test cluster has live nodes {alive_node_ips()}, not {wanted}, after {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="package")
def hosts(tmp_path_factory):
    if not _podman_ready():
        pytest.skip("podman and runc are not installed (scripts/install-system.sh installs them as root)")
    conf = tmp_path_factory.mktemp("podman-mh") / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n')
    previous_conf = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(conf)
    _remove_stale()
    ray_only_python()
    tier = Hosts(tmp_path_factory.mktemp("hosts"))
    try:
        tier.create_network()
        tier.start(HEAD)
        for worker in WORKERS:
            tier.start(worker)
        yield tier
    finally:
        tier.remove_all()
        if previous_conf is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = previous_conf


@pytest.fixture(scope="package")
def client(hosts):
    """A Client on this machine connected through Ray Client once all three hosts are up. The
    cluster's service is started first, as the first `apply` of a user does (through the Jobs
    API, shipping dstack-ray and uv): the Client then uses the service's Controller."""
    import ray

    from dstack_ray import Client
    from dstack_ray.runtime.settings import RuntimeSettings
    from dstack_ray.service.client import service_for_ray_address

    deadline = time.monotonic() + 120
    while True:  # the head's dashboard takes a few seconds to answer
        try:
            started = time.monotonic()
            url = service_for_ray_address(f"{hosts.head_ip}:6379", None, python=SERVICE_PYTHON)
            if url is None:
                raise RuntimeError("the head's dashboard does not answer yet")
            print(f"the service started at {url} in {time.monotonic() - started:.1f} s (upload and install included)")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    while True:  # the head's client server takes a few seconds to listen
        try:
            client = Client(
                address=hosts.ray_address,
                settings=RuntimeSettings(stop_grace_seconds=2, retry_delays=[0.5, 1, 1], python_downloads=False),
            )
            break
        except Exception:
            ray.shutdown()
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    try:
        wait_nodes(hosts)
        yield client
    finally:
        ray.shutdown()


@pytest.fixture
def three_hosts(hosts, client):
    """Three live hosts before and after the test: a test that kills one gets it replaced."""
    yield hosts
    for host in (HEAD, *WORKERS):
        if host not in hosts.alive():
            hosts.start(host)
    wait_nodes(hosts)
