"""A host-mode job's view of its node (exec/view.py, exec/mountns.py): dstack's /workflow and
/root, absolute `files` targets in the view only, nothing of other runs, the head's database or
Ray's token. Needs a private mount namespace (root here); the user-namespace cases run the same
view as `nobody`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from dstack_ray.exec import mountns
from dstack_ray.exec.process import DetachedJob
from dstack_ray.config.layout import check_target
from dstack_ray.exec.view import JobView, node_layout, ray_token_dirs
from tests.unit.test_detached_job import env, lines_of

pytestmark = pytest.mark.skipif(not node_layout().view, reason="this machine gives no private mount namespace")

ENTER = "import json, os, sys; from dstack_ray.exec import mountns; mountns.enter(json.loads(sys.argv[1])); os.execvp(sys.argv[2], sys.argv[2:])"
REPO = str(Path(__file__).resolve().parents[2])


def _state(tmp_path: Path):
    state = tmp_path / "state"
    own = state / "runs" / "mine-1234abcd" / "node-0"
    other = state / "runs" / "theirs-5678abcd" / "node-0"
    for directory in (own / "attempt-0" / "workflow", own / "home", other / "home" / ".ssh", state / "python-envs" / "templates", tmp_path / "dot-ray"):
        directory.mkdir(parents=True)
    (other / "home" / ".ssh" / "dstack_job").write_text("THEIR PRIVATE KEY")
    (other / "sibling").write_text("x")
    (state / "state.db").write_text("every run's env values")
    (state / "python-envs" / "templates" / "pip.py").write_text("pip")
    (tmp_path / "dot-ray" / "auth_token").write_text("RAY TOKEN")
    return state, own


def _view(tmp_path: Path, user: bool = False) -> JobView:
    state, own = _state(tmp_path)
    return JobView(
        state, own, own / "attempt-0" / "workflow", own / "home", user=user, shared=state / "python-envs", hide=[str(tmp_path / "dot-ray")]
    )


def _run(view: JobView, script: str, as_nobody: bool = False) -> subprocess.CompletedProcess:
    spec = json.dumps(view.spec(view.workflow))
    prefix = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] if as_nobody else []
    argv = [*prefix, sys.executable, "-c", ENTER, spec, "/bin/sh", "-c", script]
    return subprocess.run(argv, cwd="/", capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": REPO})


def test_the_job_sees_its_own_directory_and_nothing_of_other_runs(tmp_path):
    view = _view(tmp_path)
    state = tmp_path / "state"
    result = _run(
        view,
        "pwd; echo written > here.txt; ls " + str(state / "runs") + "; "
        f"cat {state}/runs/theirs-5678abcd/node-0/home/.ssh/dstack_job 2>&1 || echo no-key; "
        f"cat {state}/state.db 2>&1 || echo no-db; "
        f"cat {tmp_path}/dot-ray/auth_token 2>&1 || echo no-token; "
        f"cat {state}/python-envs/templates/pip.py; echo; (echo x > {state}/python-envs/templates/pip.py) 2>/dev/null || echo read-only; "
        "test -r /etc/passwd && echo node-visible",
    )
    lines = result.stdout.split("\n")
    assert result.returncode == 0, result.stderr
    assert lines[0] == "/workflow"
    assert "THEIR PRIVATE KEY" not in result.stdout and "no-key" in lines
    assert "every run's env values" not in result.stdout and "no-db" in lines
    assert "RAY TOKEN" not in result.stdout and "no-token" in lines
    assert "pip" in lines and "read-only" in lines and "node-visible" in lines
    assert "mine-1234abcd" in lines and "theirs-5678abcd" not in lines  # `ls` of the runs: not even its name
    assert (view.workflow / "here.txt").read_text() == "written\n"
    assert (state / "state.db").exists() and (state / "runs" / "theirs-5678abcd" / "node-0" / "sibling").exists()  # the node's are untouched


def test_dstack_layout_workflow_and_root_are_the_jobs_and_the_nodes_root_is_untouched(tmp_path):
    view = _view(tmp_path)
    (view.home / ".ssh").mkdir()
    (view.home / ".ssh" / "id_rsa").write_text("STAND-IN KEY")
    (view.workflow / "examples").mkdir()
    (view.workflow / "examples" / "train.py").write_text("print('hi')")
    marker = f"dstack-ray-view-test-{uuid.uuid4().hex[:8]}"
    result = _run(view, f"cat /root/.ssh/id_rsa; echo; cat /workflow/examples/train.py; echo; touch /root/{marker}; ls {view.own}/attempt-0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["STAND-IN KEY", "print('hi')"]
    assert "workflow" in result.stdout  # the job's own directory is still where its venv names it
    assert (view.home / marker).exists() and not Path("/root", marker).exists()


def test_absolute_targets_are_in_the_view_only(tmp_path):
    view = _view(tmp_path)
    top = f"/dstack-ray-view-test-{uuid.uuid4().hex[:8]}"  # a top-level directory the node lacks
    deep = f"/opt/dstack-ray-view-test-{uuid.uuid4().hex[:8]}/data"  # below a directory the node has
    conf = f"/etc/dstack-ray-view-test-{uuid.uuid4().hex[:8]}.conf"  # a file next to the node's files
    for target, text in ((top, "top"), (deep, "deep")):
        staged = view.own / "attempt-0" / "view" / target.lstrip("/")
        staged.mkdir(parents=True)
        (staged / "f").write_text(text)
        view.placed[target] = staged
    staged_conf = view.own / "attempt-0" / "view" / conf.lstrip("/")
    staged_conf.parent.mkdir(parents=True, exist_ok=True)
    staged_conf.write_text("conf")
    view.placed[conf] = staged_conf
    result = _run(view, f"cat {top}/f {deep}/f {conf}; echo; echo more > {deep}/g; test -f /etc/passwd && test -d /opt && echo node-kept")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["topdeepconf", "node-kept"]
    assert (view.placed[deep] / "g").read_text() == "more\n"  # written where it was staged
    assert not any(os.path.exists(p) for p in (top, deep, os.path.dirname(deep), conf))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become another user")
def test_a_non_root_worker_gets_the_same_view_through_a_user_namespace():
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="dstack-ray-view-"))  # (pytest's own is root's only)
    try:
        _as_nobody(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _as_nobody(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    view = _view(tmp_path, user=True)
    subprocess.run(["chown", "-R", "65534:65534", str(tmp_path)], check=True)
    probe = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c", "from dstack_ray.exec import mountns; print(repr(mountns.probe(True)))"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": REPO},
    )
    if probe.stdout.strip() != "''":
        pytest.skip(f"unprivileged user namespaces are off here: {probe.stdout.strip()} {probe.stderr.strip()}")
    result = _run(view, f"pwd; id -u; cat {tmp_path}/state/state.db 2>&1 || echo no-db; touch /root/x && echo home-writable", as_nobody=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["/workflow", "65534"]  # the job keeps its uid
    assert "no-db" in result.stdout and "home-writable" in result.stdout
    assert (view.home / "x").exists()


def test_the_guard_runs_the_command_in_the_view_and_keeps_its_exit_status(tmp_path):
    view = _view(tmp_path)
    job = DetachedJob.start(tmp_path / "job", ["/bin/sh", "-c", "pwd; echo $HOME; exit 7"], {**env("v1"), "HOME": "/root"}, str(view.workflow), view=view.spec(view.workflow))
    assert job.wait() == 7
    assert lines_of(tmp_path / "job") == ["/workflow", "/root"]


def test_a_view_that_cannot_be_made_fails_the_job_with_the_reason(tmp_path):
    view = _view(tmp_path)
    view.placed["/etc/passwd/x"] = view.workflow  # below a file
    job = DetachedJob.start(tmp_path / "job", ["/bin/true"], env("v2"), str(view.workflow), view=view.spec(view.workflow))
    assert job.wait() == 127
    assert any("cannot make the job's view" in line for line in lines_of(tmp_path / "job"))


def test_targets_the_kernel_owns_are_refused():
    assert check_target("/proc/self/x") and check_target("/") and check_target("/dev/shm/x") and check_target("/sys")
    assert check_target("/opt/data") is None and check_target("/process") is None


def test_paths_as_the_job_sees_them(tmp_path):
    view = _view(tmp_path)
    view.placed["/opt/data"] = view.own / "attempt-0" / "view" / "opt" / "data"
    assert view.path(view.workflow) == "/workflow" and view.path(view.workflow / "src") == "/workflow/src"
    assert view.path(view.home / ".cache") == "/root/.cache"
    assert view.path(view.placed["/opt/data"] / "x") == "/opt/data/x"
    assert view.path(view.own / "attempt-0" / "venv") == str(view.own / "attempt-0" / "venv")


def test_the_ray_token_directories():
    assert "/secrets/ray" in ray_token_dirs({"RAY_AUTH_TOKEN_PATH": "/secrets/ray/token"})
    assert any(d.endswith("/.ray") for d in ray_token_dirs({}))


def test_a_directory_outside_the_state_directory_is_refused(tmp_path):
    view = JobView(tmp_path / "state", tmp_path / "elsewhere", tmp_path / "w", tmp_path / "h")
    with pytest.raises(ValueError, match="not inside the state directory"):
        view.spec(tmp_path / "w")


def test_the_probe_says_why_where_no_namespace_is_allowed():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    code = "import os; from dstack_ray.exec import mountns; mountns._c(); os.setgid(65534); os.setuid(65534); print(mountns.probe(False))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": REPO})
    assert "unshare" in result.stdout and "Operation not permitted" in result.stdout  # a mount namespace without a user namespace: refused to non-root


def _stage(tmp_path: Path, found, monkeypatch):
    """The seed's `files` block staged by the node (exec/prepare.py `stage_host`) with the
    node's layout as `found`."""
    from dstack_ray.exec import prepare
    from dstack_ray.exec.archive import PackedFile, pack

    def packed(target: str, name: str, text: str) -> PackedFile:
        local = tmp_path / "client" / name
        local.parent.mkdir(exist_ok=True)
        local.write_text(text)
        return PackedFile(path=target, local_path=str(local), sha256="-", data=pack(local))

    monkeypatch.setattr(prepare, "node_layout", lambda: found)
    state, own = _state(tmp_path)
    payload = prepare.RunPayload(files=[packed("examples", "examples", "ex"), packed("/root/.ssh/id_rsa", "id_rsa", "STAND-IN KEY"), packed("/opt/dstack-ray-seed/app.conf", "app.conf", "conf")])
    events: list = []
    spec = prepare.NodeSpec(commands=["true"], shell="/bin/sh")
    staged = prepare.stage_host(spec, payload, own, 0, state, state / "python-envs", events.append)
    return staged, events


def test_the_seed_files_block_on_a_node_with_views(tmp_path, monkeypatch):
    from dstack_ray.exec.view import NodeLayout

    staged, events = _stage(tmp_path, NodeLayout(True), monkeypatch)
    assert events == [] and staged.view is not None and staged.home() == "/root"
    assert (staged.layout.home / ".ssh" / "id_rsa").read_text() == "STAND-IN KEY"
    assert (staged.layout.workflow / "examples").read_text() == "ex"
    conf = staged.view.placed["/opt/dstack-ray-seed/app.conf"]
    assert conf.read_text() == "conf" and staged.layout.placed in conf.parents
    spec = staged.view_spec()
    assert spec["cwd"] == "/workflow" and ["/opt/dstack-ray-seed/app.conf", str(conf)] in spec["binds"]
    result = _run(staged.view, "cat /root/.ssh/id_rsa /workflow/examples /opt/dstack-ray-seed/app.conf")
    assert result.stdout == "STAND-IN KEYexconf", result.stderr
    assert not os.path.exists("/opt/dstack-ray-seed")


def test_the_seed_files_block_on_a_node_without_views(tmp_path, monkeypatch):
    """dstack's paths still work (mapped into the run's directories); other absolute targets are
    refused naming the path; the job's events say which layout it got."""
    from dstack_ray.exec import prepare
    from dstack_ray.exec.view import NodeLayout

    with pytest.raises(prepare.SetupFailure) as info:
        _stage(tmp_path, NodeLayout(False, why="no private mount namespace: unshare: Operation not permitted"), monkeypatch)
    assert "/opt/dstack-ray-seed/app.conf" in info.value.message and "no private view" in info.value.message


def test_dstack_paths_map_into_the_run_without_views(tmp_path, monkeypatch):
    from dstack_ray.exec import prepare
    from dstack_ray.exec.view import NodeLayout

    monkeypatch.setattr(prepare, "node_layout", lambda: NodeLayout(False, why="no private mount namespace: test"))
    state, own = _state(tmp_path)
    events: list = []
    staged = prepare.stage_host(prepare.NodeSpec(commands=["true"], shell="/bin/sh", working_dir="/workflow/src"), None, own, 0, state, None, events.append)
    assert staged.view is None and staged.view_spec() is None and staged.home() == str(staged.layout.home)
    assert staged.working_dir == staged.layout.workflow / "src"
    assert events and events[0].startswith("layout: the run's directories on the node (no private mount namespace: test)")
    assert staged.layout.confine("/root/.ssh/id_rsa", staged.working_dir) == staged.layout.home / ".ssh" / "id_rsa"
