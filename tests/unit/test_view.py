"""A host-mode job's view of its node (exec/view.py): its own directory, nothing of other runs,
the head's database or Ray's token. Needs a private mount namespace (root here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dstack_ray.exec.view import in_view, namespace_prefix, ray_token_dirs

pytestmark = pytest.mark.skipif(namespace_prefix() is None, reason="this machine gives no private mount namespace")


def _state(tmp_path: Path):
    state = tmp_path / "state"
    own = state / "runs" / "mine-1234abcd" / "node-0"
    other = state / "runs" / "theirs-5678abcd" / "node-0"
    for directory in (own / "attempt-0" / "workflow", other / "home" / ".ssh", state / "python-envs" / "templates", tmp_path / "dot-ray"):
        directory.mkdir(parents=True)
    (other / "home" / ".ssh" / "dstack_job").write_text("THEIR PRIVATE KEY")
    (other / "sibling").write_text("x")
    (state / "state.db").write_text("every run's env values")
    (state / "python-envs" / "templates" / "pip.py").write_text("pip")
    (tmp_path / "dot-ray" / "auth_token").write_text("RAY TOKEN")
    return state, own, other


def _run(tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    state, own, _ = _state(tmp_path)
    cwd = str(own / "attempt-0" / "workflow")
    argv = in_view(["/bin/sh", "-c", script], state, own, cwd, shared=state / "python-envs", hide=[str(tmp_path / "dot-ray")])
    assert argv is not None
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)


def test_the_job_sees_its_own_directory_and_nothing_of_other_runs(tmp_path):
    result = _run(
        tmp_path,
        "pwd; echo written > here.txt; ls ../..; "
        "cat ../../../../theirs-5678abcd/node-0/home/.ssh/dstack_job 2>&1 || echo no-key; "
        "ls ../../../.. ; cat ../../../../../state.db 2>&1 || echo no-db; "
        f"cat {tmp_path}/dot-ray/auth_token 2>&1 || echo no-token; "
        "cat ../../../../../python-envs/templates/pip.py; echo; (echo x > ../../../../../python-envs/templates/pip.py) 2>/dev/null || echo read-only; "
        "test -r /etc/passwd && echo node-visible",
    )
    lines = result.stdout.split("\n")
    assert result.returncode == 0, result.stderr
    assert lines[0].endswith("state/runs/mine-1234abcd/node-0/attempt-0/workflow")
    assert "THEIR PRIVATE KEY" not in result.stdout and "no-key" in lines
    assert "every run's env values" not in result.stdout and "no-db" in lines
    assert "RAY TOKEN" not in result.stdout and "no-token" in lines
    assert "pip" in lines and "read-only" in lines and "node-visible" in lines
    assert "mine-1234abcd" in lines and "theirs-5678abcd" not in lines  # `ls` of the runs: not even its name
    state = tmp_path / "state"
    assert (state / "runs" / "mine-1234abcd" / "node-0" / "attempt-0" / "workflow" / "here.txt").read_text() == "written\n"
    assert (state / "state.db").exists() and (state / "runs" / "theirs-5678abcd" / "node-0" / "sibling").exists()  # the node's are untouched


def test_the_job_keeps_its_exit_status_and_arguments(tmp_path):
    result = _run(tmp_path, 'printf "%s|" "$0" "$@"; exit 7')
    assert result.returncode == 7


def test_the_ray_token_directories():
    assert "/secrets/ray" in ray_token_dirs({"RAY_AUTH_TOKEN_PATH": "/secrets/ray/token"})
    assert any(d.endswith("/.ray") for d in ray_token_dirs({}))


def test_a_directory_outside_the_state_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not inside the state directory"):
        in_view(["true"], tmp_path / "state", tmp_path / "elsewhere", str(tmp_path))
