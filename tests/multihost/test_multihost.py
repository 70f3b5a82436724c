"""dstack tasks across three separate hosts (see conftest.py): the seed's distributed recipes
(torchrun, MPI over SSH), files and repos on every host, logs, ports, stop, and losing a host.

Hosts: `head` (10.89.N.10), `worker1` (.11), `worker2` (.12); 1 CPU each.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from dstack_ray.models import JobStatus, JobTerminationReason, RunStatus, RunTerminationReason
from tests.helpers import local_torch_sources, wait_for
from tests.multihost.conftest import HEAD, RAY_BIN, REPO, SERVICE_PYTHON, SERVICE_PYTHON_ENV, VENV_BIN, WORKERS, wait_nodes

EXAMPLES = REPO / "examples"
CLI = [sys.executable, "-m", "dstack_ray_cli.main"]
SMALL = {"cpu": 1, "memory": "1GB"}


def example(file: str, **changes) -> dict:
    """An example configuration as a dict, with `changes` applied (e.g. `nodes=3`)."""
    data = yaml.safe_load((EXAMPLES / file).read_text())
    data.update(changes)
    return data


def example_file(file: str, **changes):
    """An example loaded from its file (relative `files` resolve next to it), with `changes`."""
    from dstack_ray import Client
    from dstack_ray.config import TaskConfiguration

    loaded = Client.load(EXAMPLES / file)
    changed = TaskConfiguration.model_validate({**loaded.model_dump(exclude_unset=True), **changes})
    changed.set_source(loaded.source_file, loaded._source_lines)
    return changed


def explain(run) -> str:
    """What a failed assertion shows: the run's events and each rank's last log lines."""
    events = "\n".join(f"  {message}" for _, message in run.events())
    logs = "\n".join(f"  [{job.rank}] {line}" for job in run.refresh().jobs for line in list(run.logs(rank=job.rank))[-8:])
    return f"{run.name}: {run.status.value} ({run.status_message})\nevents:\n{events}\nlogs:\n{logs}"


def cli(hosts, *args: str, timeout: float = 180, address: str = "", **popen) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200", **{SERVICE_PYTHON_ENV: SERVICE_PYTHON})
    return subprocess.run(
        [*CLI, *args, "--address", address or hosts.ray_address], env=env, capture_output=True, text=True, timeout=timeout, **popen
    )


# The command lines of the guard fork servers on a host (they name where dstack-ray was loaded from).
FORK_SERVERS = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
    except OSError:
        continue
    if "--fork-server" in cmd and int(pid) != os.getpid():
        print(cmd)
"""


def test_hosts_have_only_ray(three_hosts):
    """The hosts are a user's cluster: their Python has Ray and nothing of dstack-ray, and no uv."""
    for host in (HEAD, *WORKERS):
        probe = three_hosts.exec(host, "python", "-c", "import ray, sys; print(ray.__version__, sys.prefix)")
        assert probe.returncode == 0 and probe.stdout.split()[1] == str(RAY_BIN.parent), probe.stderr
        for module in ("dstack_ray", "croniter", "uv"):
            missing = three_hosts.exec(host, "python", "-c", f"import {module}")
            assert "ModuleNotFoundError" in missing.stderr, (host, module)
        assert three_hosts.exec(host, "sh", "-c", "command -v uv").returncode != 0


def test_cli_from_this_machine_through_the_gcs_address_runs_on_three_hosts(three_hosts, client, tmp_path):
    """`dstack-ray apply --address head:6379` from a laptop: the client finds the cluster's Jobs
    API, ships dstack-ray with the service, and the run's jobs run the shipped code on every host
    (each host's guard fork server names Ray's runtime-env directory); uv came with it (the
    hosts had none); `ps`, `logs` and `stop` work the same way."""
    address = f"{three_hosts.head_ip}:6379"
    config = {
        "type": "task", "name": "mh-gcs", "nodes": 3, "resources": SMALL,
        "commands": ['echo "rank=$DSTACK_NODE_RANK of $DSTACK_NODES_NUM master=$DSTACK_MASTER_NODE_IP host=$(hostname)"', "uv --version", "sleep 31450"],
    }
    (tmp_path / "gcs.dstack.yml").write_text(yaml.safe_dump(config))
    applied = cli(three_hosts, "apply", "-f", str(tmp_path / "gcs.dstack.yml"), "-y", "-d", address=address, timeout=300)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    try:
        assert wait_for(lambda: len(three_hosts.processes_of("mh-gcs")) == 3, 120), cli(three_hosts, "ps", "-a", address=address).stdout
        for host, processes in three_hosts.processes_of("mh-gcs").items():
            servers = three_hosts.exec(host, sys.executable, "-c", FORK_SERVERS)
            assert servers.stdout.strip() and all("/runtime_resources/" in line for line in servers.stdout.splitlines()), (host, servers.stdout)
        listed = cli(three_hosts, "ps", address=address)
        assert listed.returncode == 0 and "mh-gcs" in listed.stdout and "running" in listed.stdout, listed.stdout + listed.stderr
        hosts_seen, masters = set(), set()
        for rank in range(3):
            # The job printed both lines before its `sleep`; they reach the head within a moment.
            shown = lambda: cli(three_hosts, "logs", "mh-gcs", "--job", str(rank), address=address)  # noqa: E731
            assert wait_for(lambda: len(shown().stdout.splitlines()) >= 2, 60), shown().stdout + shown().stderr
            logs = shown()
            assert logs.returncode == 0, logs.stderr
            first = logs.stdout.splitlines()[0]
            assert first.startswith(f"rank={rank} of 3 master="), first
            masters.add(first.split("master=")[1].split()[0])
            hosts_seen.add(first.rsplit("host=", 1)[1])
            assert logs.stdout.splitlines()[1].startswith("uv "), logs.stdout
        assert hosts_seen == {HEAD, *WORKERS} and len(masters) == 1 and masters <= set(three_hosts.ips.values())
    except BaseException:
        cli(three_hosts, "stop", "-x", "mh-gcs", "-y", address=address)  # a failure here must not leave it holding the hosts
        raise
    stopped = cli(three_hosts, "stop", "mh-gcs", "-y", address=address)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_for(lambda: three_hosts.processes_of("mh-gcs") == {}, 60)
    final = cli(three_hosts, "ps", "-a", address=address)
    assert "stopped" in final.stdout.splitlines()[1], final.stdout  # dstack says "stopped" for a stopped run


def test_distributed_example_spans_three_hosts(three_hosts, client):
    config = example("distributed.dstack.yml", nodes=3)
    # Before the example's own commands: its last one is a heredoc, which (commands are joined
    # with " && ", as dstack joins them) must stay last.
    config["commands"][:0] = [
        """python3 -c 'import os, json; print("vars " + json.dumps({k: os.environ[k] for k in ("DSTACK_NODES_IPS", "DSTACK_MASTER_NODE_IP", "DSTACK_NODE_RANK")}))'""",
        'echo "hostfile $(tr "\\n" , < $DSTACK_MPI_HOSTFILE)"',
        'echo "host $(hostname)"',
    ]
    run = client.apply(config)
    assert run.wait(180) == RunStatus.DONE, explain(run)
    import json

    ips = [job.node_ip for job in sorted(run.jobs, key=lambda j: j.rank)]
    assert sorted(ips) == sorted(three_hosts.ips.values())  # one rank per host
    seen_hosts = set()
    for rank in range(3):
        lines = list(run.logs(rank=rank))
        variables = json.loads(next(line for line in lines if line.startswith("vars "))[5:])
        assert variables["DSTACK_NODES_IPS"] == "\n".join(ips)  # newline-separated, rank order, as dstack
        assert variables["DSTACK_MASTER_NODE_IP"] == ips[0]
        assert variables["DSTACK_NODE_RANK"] == str(rank)
        assert f"hostfile {','.join(ips)}," in lines  # CPU nodes: one bare IP per line
        seen_hosts.add(next(line for line in lines if line.startswith("host "))[5:])
        assert any(line.startswith(f"rank {rank}/3 on ") for line in lines)
    assert seen_hosts == {HEAD, *WORKERS}
    master = list(run.logs(rank=0))
    assert "master got: rank 1 ready" in master and "master got: rank 2 ready" in master
    assert master[-1] == "all nodes joined"


def test_torchrun_all_reduce_across_three_hosts(three_hosts, client):
    """The torchrun example with torch.distributed (gloo on these CPU hosts). Each host installs
    torch into the job's own venv from this machine's local wheel (~190 MB download, 750 MB
    installed, ~3.5 s with uv)."""
    run = client.apply(example_file("torchrun.dstack.yml", nodes=3), env=local_torch_sources())
    assert run.wait(420) == RunStatus.DONE, explain(run)
    hosts_seen = set()
    for rank in range(3):
        lines = list(run.logs(rank=rank))
        met = next(line for line in lines if line.startswith(f"rank {rank}/3 on "))
        print(met)  # the evidence: e.g. "rank 1/3 on worker1: all-reduce of the ranks = 3 (expected 3)"
        assert met.endswith(": all-reduce of the ranks = 3 (expected 3)"), lines
        hosts_seen.add(met.split(" on ")[1].split(":")[0])
        assert f"rank {rank}: weights in sync across 3 ranks: True" in lines
    assert hosts_seen == {HEAD, *WORKERS}
    assert any(line.startswith("step 20 loss ") for line in run.logs(rank=0))
    assert three_hosts.no_processes_of(run.name) == {}


def test_mpi_recipe_reaches_every_host(three_hosts, client):
    """workers-first, master-done, `mpirun --hostfile $DSTACK_MPI_HOSTFILE` over the run's SSH."""
    run = client.apply(example("mpi.dstack.yml", nodes=3))
    assert run.wait(180) == RunStatus.DONE, explain(run)
    master = list(run.logs(rank=0))
    print(master)  # the evidence: the hostfile, then the three hostnames mpirun printed
    assert master[:3] == [job.node_ip for job in sorted(run.jobs, key=lambda j: j.rank)]
    assert sorted(master[3:]) == sorted([HEAD, *WORKERS])
    # master-done: the workers' `sleep infinity` was stopped, the run is still a success.
    assert run.termination_reason == RunTerminationReason.ALL_JOBS_DONE
    assert three_hosts.no_processes_of(run.name) == {}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_files_and_local_repo_arrive_on_every_host(three_hosts, client, tmp_path):
    """The files-and-repos example at the top of a clone whose remote every host can reach."""
    origin = three_hosts.shared / f"origin-{time.monotonic_ns()}.git"
    git(three_hosts.shared, "init", "-q", "--bare", "-b", "main", str(origin))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(origin), str(work))
    for key, value in (("user.email", "t@example.com"), ("user.name", "t"), ("commit.gpgsign", "false")):
        git(work, "config", key, value)
    (work / "model.py").write_text("print('committed')\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "first commit")
    git(work, "push", "-q", "origin", "HEAD:main")
    git(work, "branch", "-q", "--set-upstream-to=origin/main")
    (work / "model.py").write_text("print('changed locally')\n")  # uncommitted: travels as a diff
    shutil.copy(EXAMPLES / "files-and-repos.dstack.yml", work)
    (work / "data").mkdir()
    (work / "data" / "sample.bin").write_bytes(os.urandom(200_000))
    (work / "settings.toml").write_text("lr = 0.1\n")
    (work / ".gitignore").write_text("data/\nsettings.toml\n")
    config = yaml.safe_load((work / "files-and-repos.dstack.yml").read_text())
    config["nodes"] = 3
    config["commands"].append("python model.py")
    (work / "three.dstack.yml").write_text(yaml.safe_dump(config))

    run = client.apply(work / "three.dstack.yml")
    assert run.wait(180) == RunStatus.DONE, explain(run)
    expected = {
        "data/sample.bin": hashlib.sha256((work / "data" / "sample.bin").read_bytes()).hexdigest(),
        "settings.toml": hashlib.sha256(b"lr = 0.1\n").hexdigest(),
    }
    commit = git(work, "rev-parse", "--short", "HEAD")
    for rank in range(3):
        lines = list(run.logs(rank=rank))
        assert lines[0] == f"node {rank} - repo at {commit} (first commit)", lines
        sums = {line.split()[1]: line.split()[0] for line in lines[1:3]}
        assert sums["data/sample.bin"] == expected["data/sample.bin"]
        settings = next(path for path in sums if path.endswith("/.config/demo/settings.toml"))
        assert sums[settings] == expected["settings.toml"]
        assert lines[-1] == "changed locally"
    assert {job.node_ip for job in run.jobs} == set(three_hosts.ips.values())


def test_logs_of_every_rank_are_complete_and_in_order(three_hosts, client):
    run = client.apply(
        {
            "type": "task",
            "name": "mh-logs",
            "nodes": 3,
            "commands": ['for i in $(seq 1 400); do echo "rank $DSTACK_NODE_RANK line $i $(hostname)"; done'],
            "resources": SMALL,
        }
    )
    assert run.wait(120) == RunStatus.DONE, explain(run)
    hosts_seen = set()
    for rank in range(3):
        lines = list(run.logs(rank=rank))
        host = lines[0].split()[-1]
        hosts_seen.add(host)
        assert lines == [f"rank {rank} line {i} {host}" for i in range(1, 401)]
    assert hosts_seen == {HEAD, *WORKERS}
    # The CLI shows every rank too.
    logs = cli(three_hosts, "logs", "mh-logs", "--job", "2")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines()[-1].startswith("rank 2 line 400 ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch_through(local: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_attach_forwards_to_a_web_app_on_a_worker_host(three_hosts, client):
    """The web-app example, given more memory than the head has so that it lands on a worker;
    `attach -p` on this machine reaches it directly and through the service's relay."""
    config = example("web-app.dstack.yml", name="mh-web")
    config["resources"]["memory"] = "4GB.."
    run = client.apply(config)
    assert wait_for(lambda: run.refresh().status == RunStatus.RUNNING, 120)
    worker = next(h for h, ip in three_hosts.ips.items() if ip == run.jobs[0].node_ip)
    assert worker in WORKERS
    try:
        for relay in ("", "always"):
            local = free_port()
            env = dict(os.environ, COLUMNS="200", DSTACK_RAY_PORT_RELAY=relay, **{SERVICE_PYTHON_ENV: SERVICE_PYTHON})
            attach = subprocess.Popen(
                [*CLI, "attach", "mh-web", "-p", f"{local}:8000", "--address", three_hosts.ray_address],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            try:
                page = fetch_through(local)
                assert f"Hello from mh-web on {worker}" in page
            finally:
                attach.terminate()
                attach.communicate(timeout=60)
    finally:
        run.stop()
    assert run.wait(60) == RunStatus.TERMINATED
    assert three_hosts.no_processes_of("mh-web") == {}


def three_node_sleeper(name: str, seconds: int) -> dict:
    return {"type": "task", "name": name, "nodes": 3, "commands": [f"echo up on $(hostname)", f"sleep {seconds}"], "resources": SMALL}


def test_stop_and_abort_leave_nothing_on_any_host(three_hosts, client):
    for name, abort in (("mh-stop", False), ("mh-abort", True)):
        run = client.apply(three_node_sleeper(name, 31420))
        assert wait_for(lambda: run.refresh().jobs and all(j.status == JobStatus.RUNNING for j in run.jobs), 120)
        assert wait_for(lambda: len(three_hosts.processes_of(name)) == 3, 60)  # something to stop on every host
        stopped = cli(three_hosts, "stop", *(["-x"] if abort else []), name, "-y")
        assert stopped.returncode == 0, stopped.stderr
        assert run.wait(60) == RunStatus.TERMINATED
        assert three_hosts.no_processes_of(name) == {}, name


def test_cli_inside_the_head_host(three_hosts, client):
    """A user on the head node runs the CLI against `head:6379` (the GCS, not Ray Client)."""
    dstack_ray = str(VENV_BIN / "dstack-ray")
    applied = three_hosts.exec(
        HEAD, dstack_ray, "apply", "-f", str(EXAMPLES / "hello.dstack.yml"), "-n", "mh-hello", "--address", "head:6379", "-y",
        env={"COLUMNS": "200"}, timeout=180,
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Hello from dstack-ray: node 0 of 1" in applied.stdout
    assert "Run mh-hello is done" in applied.stdout + applied.stderr
    listed = three_hosts.exec(HEAD, dstack_ray, "ps", "-a", "--address", "head:6379", env={"COLUMNS": "200"})
    assert listed.returncode == 0 and "mh-hello" in listed.stdout


def test_python_api_inside_a_ray_application(three_hosts, client):
    """examples/ray_app.py, run as an application on the head host (`ray.init("auto")`)."""
    result = three_hosts.exec(HEAD, sys.executable, str(EXAMPLES / "ray_app.py"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "prepared shard-0, shard-1"
    assert any(line.startswith("[0] node 0 of 2 on ") and line.endswith(" processes shard-0") for line in lines)
    assert any(line.startswith("[1] node 1 of 2 on ") and line.endswith(" processes shard-1") for line in lines)
    assert lines[-1] == "run from-ray-app: done"


def test_gpu_example_has_no_offers_on_cpu_hosts(three_hosts, client):
    """The single-node training example asks for a 16 GB GPU: the plan here says no offers."""
    plan = client.plan(client.load(EXAMPLES / "single-node-training.dstack.yml"))
    assert plan.no_capacity


def test_a_host_that_joins_after_the_service_started_runs_the_shipped_code(three_hosts, client):
    """A fourth Ray-only host joins once the service runs (as a node the autoscaler adds): Ray
    installs the service's runtime environment there too, and a 4-node run's rank on it runs
    dstack-ray's shipped code."""
    three_hosts.join("worker3")
    try:
        wait_nodes(three_hosts)
        run = client.apply({"type": "task", "name": "mh-late", "nodes": 4, "resources": SMALL, "commands": ["echo on $(hostname)", "sleep 31470"]})
        assert wait_for(lambda: len(three_hosts.processes_of("mh-late")) == 4, 180), explain(run)
        servers = three_hosts.exec("worker3", sys.executable, "-c", FORK_SERVERS)
        assert servers.stdout.strip() and all("/runtime_resources/" in line for line in servers.stdout.splitlines()), servers.stdout
        assert wait_for(lambda: all(list(run.logs(rank=r)) for r in range(4)), 60), explain(run)  # the first lines arrived
        assert sorted(list(run.logs(rank=r))[0] for r in range(4)) == sorted(f"on {h}" for h in (HEAD, *WORKERS, "worker3"))
        run.stop()
        assert run.wait(60) == RunStatus.TERMINATED
    finally:
        three_hosts.leave("worker3")
        wait_nodes(three_hosts)


# A Client that is a Ray driver (through Ray Client) of a cluster without a dashboard.
DRIVER = """
import sys
from dstack_ray import Client
client = Client(address=sys.argv[1])
run = client.apply({"type": "task", "name": "alone", "resources": {"cpu": 1, "memory": "1GB"}, "commands": [
    "python -c 'import sys; print(\\"prefix\\", sys.prefix)'", "pip --version", "command -v uv || echo no uv"]})
print("status", run.wait(300).value)
for line in run.logs():
    print("log", line)
"""


def test_a_cluster_without_a_dashboard_gets_dstack_ray_from_a_ray_client_driver(three_hosts):
    """A one-host Ray-only cluster whose head runs no dashboard: no Jobs API, so the Client is a
    Ray driver (`ray://`). `ray.init` ships dstack-ray; a task checks the cluster's Python first
    and what it lacks is shipped with a second connection (here DSTACK_RAY_NEEDS asks for
    hypothesis, which the host lacks and this client has); the job's venv is made without uv."""
    three_hosts.start_alone("alone")
    try:
        address = f"ray://{three_hosts.ips['alone']}:10001"
        env = dict(os.environ, DSTACK_RAY_NEEDS="hypothesis>=6.0", DSTACK_RAY_STATE_DIR=str(three_hosts.workdir / "driver-state"))
        deadline = time.monotonic() + 120
        while True:  # its client server takes a few seconds to listen
            result = subprocess.run([sys.executable, "-c", DRIVER, address], env=env, capture_output=True, text=True, timeout=600, cwd="/")
            if "Connection refused" not in result.stderr or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        lines = result.stdout.splitlines()
        assert "status done" in lines, result.stdout
        prefix = next(line for line in lines if line.startswith("log prefix "))
        assert "/runs/alone-" in prefix and prefix.endswith("/venv")  # the job's own venv
        assert any(line.startswith("log pip ") and "/runs/alone-" in line for line in lines), lines
        assert "log no uv" in lines
    finally:
        three_hosts.alone.discard("alone")
        three_hosts.leave("alone")


APPLICATION = """
import ray
ray.init("auto")
from dstack_ray import Client
run = Client().apply({"type": "task", "name": "from-app", "resources": {"cpu": 1, "memory": "1GB"}, "commands": ["echo hello from the application run"]})
print("status", run.wait(300).value)
for line in run.logs():
    print("log", line)
"""


def test_a_ray_application_on_a_cluster_without_a_dashboard_ships_dstack_ray_with_the_controller(three_hosts):
    """A Ray application (with dstack-ray in its own Python) on a one-host Ray-only cluster
    without a dashboard: no service can be started, so the application makes the Controller —
    with dstack-ray's code bundle in the cluster's package store as the Controller's runtime
    environment, which everything it starts inherits (the nodes' Python has no dstack-ray)."""
    three_hosts.start_alone("alone2")
    try:
        deadline = time.monotonic() + 120
        while True:  # its GCS takes a few seconds
            result = three_hosts.exec("alone2", sys.executable, "-c", APPLICATION, timeout=600)
            if result.returncode == 0 or time.monotonic() > deadline or "ConnectionError" not in result.stderr:
                break
            time.sleep(3)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        assert "status done" in result.stdout.splitlines() and "log hello from the application run" in result.stdout.splitlines(), result.stdout
    finally:
        three_hosts.alone.discard("alone2")
        three_hosts.leave("alone2")


# Losing a host (last: they replace the host they kill). The first attempt sleeps; an attempt
# after an interruption finishes at once.
RESUMABLE = 'case "$DSTACK_WORKING_DIR" in */attempt-0/*) echo "first on $(hostname)"; sleep 31430;; *) echo "resumed on $(hostname)";; esac'


def kill_a_worker_running(run, hosts) -> str:
    """Kill a worker host that runs one of the run's jobs; returns its name."""
    by_ip = {ip: host for host, ip in hosts.ips.items()}
    victim = next(by_ip[job.node_ip] for job in run.jobs if by_ip[job.node_ip] in WORKERS)
    hosts.kill(victim)
    return victim


def test_host_loss_with_retry_resumes_on_the_remaining_hosts(three_hosts, client):
    run = client.apply(
        {"type": "task", "name": "mh-resume", "nodes": 2, "commands": [RESUMABLE], "retry": {"on_events": ["interruption"]}, "resources": SMALL}
    )
    assert wait_for(lambda: run.refresh().jobs and all(j.status == JobStatus.RUNNING for j in run.jobs), 120)
    assert wait_for(lambda: len(three_hosts.processes_of("mh-resume")) == 2, 60)
    victim = kill_a_worker_running(run, three_hosts)
    assert run.wait(180) == RunStatus.DONE, explain(run)
    assert run.record.attempt == 1
    history = run.jobs_history()
    assert {j.termination_reason for j in history if j.attempt == 0} >= {JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY}
    assert three_hosts.ips[victim] not in {job.node_ip for job in run.jobs}
    resumed_on = {list(run.logs(rank=r))[-1] for r in range(2)}
    assert resumed_on == {f"resumed on {h}" for h in (HEAD, *WORKERS) if h != victim}
    assert three_hosts.no_processes_of("mh-resume") == {}


def test_host_loss_without_retry_fails(three_hosts, client):
    run = client.apply({"type": "task", "name": "mh-lost", "nodes": 2, "commands": [RESUMABLE], "resources": SMALL})
    assert wait_for(lambda: run.refresh().jobs and all(j.status == JobStatus.RUNNING for j in run.jobs), 120)
    assert wait_for(lambda: len(three_hosts.processes_of("mh-lost")) == 2, 60)
    kill_a_worker_running(run, three_hosts)
    assert run.wait(120) == RunStatus.FAILED, explain(run)
    assert run.record.attempt == 0
    assert any(j.termination_reason is not None and j.termination_reason.value == "interrupted_by_no_capacity" for j in run.jobs)
    assert three_hosts.no_processes_of("mh-lost") == {}  # the surviving host's job was stopped too


def test_a_service_of_another_version_is_replaced_by_server_upgrade(three_hosts, client, tmp_path, monkeypatch):
    """One dstack-ray version per cluster. A service (and actors) of "0.0.9" — this client's code
    with another version, shipped the same way — runs a run; this client refuses to use it and
    says how to replace it; `server upgrade` refuses while the run is active, then replaces the
    service (and the old version's Controller and node agents) once it ended; the run's records
    stay. Last in the tier: it replaces the Controller the `client` fixture holds."""
    from dstack_ray import Client, __version__
    from dstack_ray.service import client as service
    from dstack_ray.service import ship

    address = f"{three_hosts.head_ip}:6379"
    assert service.replace_service(address, None)  # this version's service, idle
    this_version = ship.code_bundle

    def older() -> ship.Bundle:
        bundle = this_version()
        init = tmp_path / "__init__.py"
        init.write_text(bundle.files["dstack_ray/__init__.py"].read_text().replace(f'__version__ = "{__version__}"', '__version__ = "0.0.9"'))
        bundle.files["dstack_ray/__init__.py"] = init
        return bundle

    monkeypatch.setattr(ship, "code_bundle", older)
    dashboard = service._dashboard_for(address)
    old_url = service.ensure_service(dashboard.url, host=three_hosts.head_ip, bind="0.0.0.0", port=8270, python=SERVICE_PYTHON, token=None)
    monkeypatch.undo()
    assert service.health(old_url, None)["version"] == "0.0.9"
    run = Client(address=old_url).apply({"type": "task", "name": "mh-old", "commands": ["echo old", "sleep 31460"], "resources": SMALL})
    assert wait_for(lambda: run.refresh().status == RunStatus.RUNNING, 120), explain(run)

    refused = cli(three_hosts, "ps", address=address)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "runs dstack-ray 0.0.9" in refused.stderr and f"server upgrade --address {address}" in refused.stderr, refused.stderr
    busy = cli(three_hosts, "server", "upgrade", address=address)
    assert busy.returncode == 1 and "1 run is active" in busy.stderr and "mh-old" in busy.stderr, busy.stdout + busy.stderr
    run.stop()
    assert run.wait(60) == RunStatus.TERMINATED

    upgraded = cli(three_hosts, "server", "upgrade", address=address, timeout=300)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert "(dstack-ray 0.0.9)" in upgraded.stdout and f"dstack-ray service {__version__} answers" in upgraded.stdout
    assert service.health(old_url, None)["version"] == __version__
    listed = cli(three_hosts, "ps", "-a", address=address)
    assert listed.returncode == 0 and "mh-old" in listed.stdout, listed.stdout + listed.stderr  # its records stay
    (tmp_path / "new.dstack.yml").write_text(yaml.safe_dump({"type": "task", "name": "mh-new", "commands": ["echo new on $(hostname)"], "resources": SMALL}))
    applied = cli(three_hosts, "apply", "-f", str(tmp_path / "new.dstack.yml"), "-y", address=address, timeout=300)
    assert applied.returncode == 0 and "new on " in applied.stdout, applied.stdout + applied.stderr
    assert three_hosts.no_processes_of("mh-old") == {}
