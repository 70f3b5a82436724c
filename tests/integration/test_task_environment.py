"""A host-mode task's own environment on its node: Python, home, layout and SSH between nodes.

The simulated cluster's nodes share this host, which is the hard case: two ranks of a run, and
runs after runs, live side by side and must not see or change each other's files, nor the
environment Ray and dstack-ray run from.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import zipfile
from pathlib import Path

import pytest

from dstack_ray.config import ConfigurationError
from dstack_ray.exec.view import node_layout
from dstack_ray.models import RunStatus
from tests.helpers import no_leftovers, wait_for

SMALL = {"cpu": 1, "memory": "256MB"}


def site_packages_listing() -> dict:
    """Every file of the environment the Ray workers run from (this test's venv), with size and
    content hash; bytecode caches are left out (workers compile modules as they import them)."""
    root = Path(sys.prefix)
    listing = {}
    for directory, dirs, files in os.walk(root / "lib"):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = Path(directory, name)
            if path.is_symlink() or path.suffix == ".pyc":
                continue
            listing[str(path.relative_to(root))] = path.stat().st_size
    for name in os.listdir(root / "bin"):
        listing[f"bin/{name}"] = hashlib.sha256((root / "bin" / name).read_bytes()).hexdigest() if (root / "bin" / name).is_file() else ""
    return listing


def make_wheel(directory: Path, name: str = "dstack_ray_demo") -> Path:
    """A minimal pure-Python wheel (`import dstack_ray_demo` prints where it lives)."""
    wheel = directory / f"{name}-0.1-py3-none-any.whl"
    files = {
        f"{name}/__init__.py": b"import os\nWHERE = os.path.dirname(__file__)\n",
        f"{name}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{name}-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{name}-0.1.dist-info/RECORD,,")
        z.writestr(f"{name}-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def write_config(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.dstack.yml"
    path.write_text(body)
    return path


def test_pip_install_stays_in_the_jobs_own_venv(client, settings, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = make_wheel(wheels)
    uv_wheel = make_wheel(wheels, "dstack_ray_uvdemo")
    before = site_packages_listing()
    config = write_config(
        tmp_path,
        "pip",
        f"""
type: task
name: pip-venv
files:
  - wheels
commands:
  - pip install --quiet --no-index wheels/{wheel.name}
  - uv pip install --quiet --offline wheels/{uv_wheel.name}
  - python -c "import dstack_ray_uvdemo; print('uv-module=' + dstack_ray_uvdemo.WHERE)"
  - python -c "import dstack_ray_demo, sys, os; print('module=' + dstack_ray_demo.WHERE); print('prefix=' + sys.prefix)"
  - echo "venv=$VIRTUAL_ENV"
  - echo "pip=$(command -v pip)"
  - echo "pythonpath=${{PYTHONPATH:-unset}}"
  - echo "ray-vars=$(env | grep -c '^RAY_' || true)"
  - python -c "import ray" 2>/dev/null && echo ray-importable || echo ray-not-importable
resources:
  cpu: 1
  memory: 256MB
""",
    )
    run = client.apply(config)
    assert run.wait(120) == RunStatus.DONE, (run.events(), list(run.logs()))
    out = dict(line.split("=", 1) for line in run.logs() if "=" in line)
    runs_dir = str(Path(settings.state_dir) / "runs") + "/"
    assert out["prefix"].startswith(runs_dir) and out["prefix"].endswith("/venv")
    assert out["venv"] == out["prefix"]
    assert out["module"].startswith(out["prefix"] + "/lib/")
    assert out["uv-module"].startswith(out["prefix"] + "/lib/")  # uv on PATH installs into the job's venv too
    assert out["pip"] == out["prefix"] + "/bin/pip"
    assert out["pythonpath"] == "unset" and out["ray-vars"] == "0"
    assert "ray-not-importable" in list(run.logs())
    assert site_packages_listing() == before  # the environment Ray runs from is unchanged
    assert wait_for(lambda: not Path(out["prefix"]).exists(), 30)  # the job's venv goes with the job


def test_python_version_and_a_fresh_venv_per_run(client):
    wanted = f"{sys.version_info[0]}.{sys.version_info[1]}"
    runs = [
        client.apply(
            {
                "type": "task",
                "name": f"py-{i}",
                "python": wanted,
                "commands": ["python -c 'import sys; print(\"%d.%d\" % sys.version_info[:2]); print(sys.prefix)'", "pip list --format=freeze | cut -d= -f1 | sort | tr '\\n' ' '"],
                "resources": SMALL,
            }
        )
        for i in range(2)
    ]
    prefixes = set()
    for run in runs:
        assert run.wait(120) == RunStatus.DONE, run.events()
        lines = list(run.logs())
        assert len(lines) == 3, lines
        version, prefix, packages = lines
        assert version == wanted
        prefixes.add(prefix)
        assert packages.split() == ["pip"]  # nothing of Ray's environment
    assert len(prefixes) == 2


def test_unavailable_python_fails_naming_the_version(client):
    """No node here has 3.14 and the test cluster may not download Pythons."""
    run = client.apply({"type": "task", "name": "py-missing", "python": "3.14", "commands": ["true"], "resources": SMALL})
    assert run.wait(120) == RunStatus.FAILED
    job = run.jobs[0]
    assert job.termination_reason.value == "executor_error"
    assert "Python 3.14 is not available on node" in job.termination_message
    assert "downloads are off" in job.termination_message


def test_private_home_files_and_layout(client, settings, tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    real_home = Path(os.environ["HOME"])  # the Ray workers' home (the cluster fixture's)
    config = write_config(
        tmp_path,
        "home",
        """
type: task
name: home-files
nodes: 2
files:
  - notes.txt:~/notes/notes.txt
  - notes.txt:data/notes.txt
working_dir: ~/work
commands:
  - cat ~/notes/notes.txt
  - echo "home=$HOME"
  - echo "mode=$(stat -c %a $HOME)"
  - echo "pwd=$PWD"
  - echo "wd=$DSTACK_WORKING_DIR"
  - echo "data=$(cat $DSTACK_REPO_DIR/data/notes.txt)"
  - echo "repo-id=$DSTACK_REPO_ID"
  - echo "hostfile=$DSTACK_MPI_HOSTFILE"
resources:
  cpu: 1
  memory: 256MB
""",
    )
    run = client.apply(config)
    assert run.wait(120) == RunStatus.DONE, (run.events(), list(run.logs()))
    homes = set()
    for rank in (0, 1):
        lines = list(run.logs(rank=rank))
        assert lines[0] == "hello"
        out = dict(line.split("=", 1) for line in lines[1:])
        home = out["home"]
        on_node = next(Path(settings.state_dir, "runs").glob(f"home-files-*/node-{rank}/home"))
        homes.add(on_node)
        assert home == ("/root" if node_layout().view else str(on_node))  # dstack's home in the job's view
        assert (on_node / "notes" / "notes.txt").read_text() == "hello\n"
        assert out["mode"] == "700"
        assert out["pwd"] == home + "/work"
        assert out["wd"] == out["pwd"] and out["data"] == "hello"  # relative files: in the working dir
        assert out["repo-id"] == "none"
        assert out["hostfile"].startswith(str(on_node.parent))
    assert len(homes) == 2
    assert not (real_home / "notes").exists() and not (real_home / "work").exists()


def test_targets_outside_the_run_are_refused_before_submission(client, tmp_path):
    """Where no view can hold them (the kernel's directories; any absolute path where no node
    gives views: tests/unit/test_task_configuration.py)."""
    (tmp_path / "key").write_text("secret\n")
    config = write_config(tmp_path, "outside", "type: task\nname: outside\nfiles:\n  - key:/proc/dstack/id_rsa\ncommands: [\"true\"]\n")
    count = len(client.list_runs())
    with pytest.raises(ConfigurationError) as info:
        client.apply(config)
    (issue,) = info.value.issues
    assert issue.path == "files[0]" and issue.line == 4 and "/proc/dstack/id_rsa" in issue.message
    assert "`image:`" in issue.hint
    with pytest.raises(ConfigurationError, match="working_dir"):
        client.apply({"type": "task", "name": "outside-wd", "working_dir": "../app", "commands": ["true"]})
    assert len(client.list_runs()) == count  # nothing was submitted


def test_ssh_between_the_nodes_of_a_run(client, settings, gpu_nodes):
    probe = "for i in 0 1 2; do ssh node-$i 'echo rank=$DSTACK_NODE_RANK home=$HOME'; done"
    run = client.apply(
        {
            "type": "task",
            "name": "ssh-nodes",
            "nodes": 3,
            "startup_order": "workers-first",
            "stop_criteria": "master-done",
            "commands": [
                f'if [ "$DSTACK_NODE_RANK" = 0 ]; then {probe}; ssh "$DSTACK_MASTER_NODE_IP" true && echo by-ip; else sleep 120; fi'
            ],
            "resources": SMALL,
        }
    )
    assert run.wait(120) == RunStatus.DONE, (run.events(), list(run.logs()))
    lines = list(run.logs(rank=0))
    ranks = [line.split()[0] for line in lines if line.startswith("rank=")]
    assert ranks == ["rank=0", "rank=1", "rank=2"], lines
    homes = [line.split("home=")[1] for line in lines if "home=" in line]
    if node_layout().view:
        assert homes == ["/root"] * 3  # each session in its job's view
    else:
        assert [h.rsplit("/", 2)[-2] for h in homes] == ["node-0", "node-1", "node-2"]
    assert "by-ip" in lines
    run_dir = Path(settings.state_dir) / "runs"
    assert no_leftovers(f"{run_dir}/ssh-nodes-") == []  # no sshd of the run is left
    assert not list(run_dir.glob("ssh-nodes-*/node-*/home/.ssh/dstack_job*"))
    assert not list(run_dir.glob("ssh-nodes-*/node-*/attempt-*/ssh/host_key"))


def test_a_job_cannot_see_other_runs_or_the_heads_state(client, settings):
    """The review's reproduction: a job read another run's `~/.ssh/dstack_job` (and could log in
    to its sshd with it), wrote its control FIFO and read the head's database. In its view the
    state directory holds only its own directory."""
    if not node_layout().view:
        pytest.skip("this machine gives no private mount namespace (the README says what jobs then see)")
    victim = client.apply({"type": "task", "name": "victim", "nodes": 2, "commands": ["sleep 31360"], "resources": SMALL})
    runs = Path(settings.state_dir) / "runs"
    assert wait_for(lambda: list(runs.glob("victim-*/node-0/home/.ssh/dstack_job")), 60), victim.events()
    key = next(runs.glob("victim-*/node-0/home/.ssh/dstack_job"))
    control = next(runs.glob("victim-*/node-0/job-0/control"))
    snoop = client.apply(
        {
            "type": "task",
            "name": "snoop",
            "commands": [
                f"cat {key} 2>/dev/null && echo GOT-KEY || echo no-key",
                f"(echo kill > {control}) 2>/dev/null && echo WROTE-FIFO || echo no-fifo",
                f"cat {settings.state_dir}/state.db >/dev/null 2>&1 && echo GOT-DB || echo no-db",
                f"ls {runs}",
                "echo mine > $DSTACK_WORKING_DIR/mine.txt && cat $DSTACK_WORKING_DIR/mine.txt",
            ],
            "resources": SMALL,
        }
    )
    try:
        assert snoop.wait(60) == RunStatus.DONE, [m for _, m in snoop.events()]
        lines = list(snoop.logs())
        assert lines[:3] == ["no-key", "no-fifo", "no-db"], lines
        assert [line for line in lines[3:-1]] == [f"snoop-{snoop.id[:8]}"], lines  # `ls` of the runs: only its own
        assert lines[-1] == "mine"
        assert victim.refresh().status == RunStatus.RUNNING  # the FIFO was out of reach: no kill order
    finally:
        victim.stop(abort=True)
    assert victim.wait(60).is_finished()
    assert no_leftovers("sleep 31360") == []
