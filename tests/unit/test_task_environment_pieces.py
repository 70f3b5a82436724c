"""The pieces of a host-mode job's environment, without Ray: the cleaned environment, the job's
venv (real uv, no downloads), the layout's path confinement and the run's sshd (real sshd)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dstack_ray.exec.commands import clean_path, host_base_environment
from dstack_ray.exec.prepare import HostLayout
from dstack_ray.exec.pyenv import EnvironmentSetupError, VenvMaker
from dstack_ray.exec.ssh import NodeSshd, _session_env, forget_keys, new_run_key, write_client_files, write_wrappers
from tests.helpers import no_leftovers

CURRENT = f"{sys.version_info[0]}.{sys.version_info[1]}"


def python_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


# --- the worker's environment stays out ---------------------------------------------------------


def test_worker_python_environment_is_stripped():
    worker_bin = f"{sys.prefix}/bin"
    environ = {
        "PATH": f"{worker_bin}:/opt/other/venv/bin:/usr/bin::/bin:/usr/bin",
        "VIRTUAL_ENV": "/opt/other/venv",
        "PYTHONPATH": "/ray/site",
        "PYTHONHOME": "/ray",
        "RAY_RAYLET_PID": "1",
        "RAY_ADDRESS": "10.0.0.1:6379",
        "CONDA_PREFIX": "/opt/other/venv",
        "LANG": "C.UTF-8",
    }
    env = host_base_environment(environ)
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["LANG"] == "C.UTF-8"
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "RAY_RAYLET_PID", "RAY_ADDRESS", "CONDA_PREFIX"):
        assert key not in env
    # the guard of a container keeps its own Python environment
    assert host_base_environment(environ, keep_python=True)["PYTHONPATH"] == "/ray/site"


def test_clean_path_keeps_order_and_drops_duplicates_and_dot():
    assert clean_path("/a:/venv/bin::/b:/a:/venv", ["/venv"]) == "/a:/b"


# --- the job's venv -------------------------------------------------------------------------------


def test_fresh_venv_with_pip_and_nothing_else(tmp_path):
    maker = VenvMaker(tmp_path / "envs", downloads=False)
    venv = maker.create(None, tmp_path / "venv", "node")
    assert python_version(venv) == CURRENT
    out = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True, check=True)
    assert [line.split("==")[0] for line in out.stdout.split()] == ["pip"]
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()


def other_interpreter():
    """An installed Python of another minor version (pyenv's or the system's), if any."""
    for pattern in ("/root/.pyenv/versions/3.*/bin/python3.*", "/usr/bin/python3.*", "/usr/local/bin/python3.*"):
        for path in sorted(glob.glob(pattern)):
            name = Path(path).name
            if name.count(".") == 1 and name[len("python"):] != CURRENT and name[len("python3."):].isdigit() and int(name[len("python3."):]) >= 9:
                return path, name[len("python"):]
    return None


def test_python_version_is_found_on_path(tmp_path, monkeypatch):
    found = other_interpreter()
    path, version = found if found else (sys.executable, CURRENT)
    monkeypatch.setenv("PATH", f"{Path(path).parent}:{os.environ['PATH']}")
    venv = VenvMaker(tmp_path / "envs", downloads=False).create(version, tmp_path / "venv", "node")
    assert python_version(venv) == version


def test_missing_version_names_it_and_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EnvironmentSetupError) as info:
        VenvMaker(tmp_path / "envs", downloads=False).create("3.14", tmp_path / "venv", "10.0.0.7")
    message = str(info.value)
    assert message.startswith("Python 3.14 is not available on node 10.0.0.7 (uv (installed Pythons): ")
    assert "downloads are off on this cluster" in message and "use an `image`" in message
    assert not (tmp_path / "venv").exists()


def test_spares_make_later_jobs_fast_and_never_shared(tmp_path):
    maker = VenvMaker(tmp_path / "envs", downloads=False)
    first = maker.take(None, tmp_path / "job-1", "node")
    refill = maker._refilling[""]
    refill.join(60)
    started = time.monotonic()
    second = maker.take(None, tmp_path / "job-2", "node")
    took = time.monotonic() - started
    assert took < 0.2, took  # a rename, not a new venv (about 0.3 s)
    assert first != second and python_version(second) == CURRENT
    assert (second / "bin" / "pip").exists()
    maker._refilling[""].join(60)
    assert len(list((tmp_path / "envs" / "spares").glob("*/ready-*"))) == 1


# --- confinement ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "~/../x", "/", "x/../../../y", "~root", "/workflow/../x", "/root/../etc", "/rootkit/x", "/workflows"])
def test_layout_confines_every_target(tmp_path, path):
    layout = HostLayout(tmp_path / "node-0", 0)
    with pytest.raises(ValueError, match="outside the run's directories|`~username` paths are not supported"):
        layout.confine(path, layout.workflow)


def test_layout_places_home_and_relative_targets(tmp_path):
    layout = HostLayout(tmp_path / "node-0", 1)
    assert layout.confine("~/.ssh/id_rsa", layout.workflow) == layout.home / ".ssh" / "id_rsa"
    assert layout.confine("~", layout.workflow) == layout.home
    assert layout.confine("data/x", layout.workflow) == layout.workflow / "data" / "x"
    assert layout.confine("x", layout.home / "work") == layout.home / "work" / "x"



def test_dstacks_container_paths_map_to_the_jobs_directories(tmp_path):
    """The seed's `files` example (`~/.ssh/id_rsa:/root/.ssh/id_rsa`, `.:examples`) and dstack's
    `/workflow` paths: where dstack's container has them, the job's directories are."""
    layout = HostLayout(tmp_path / "node-0", 0)
    work = layout.workflow / "sub"
    assert layout.confine("/root/.ssh/id_rsa", work) == layout.home / ".ssh" / "id_rsa"
    assert layout.confine("/root", work) == layout.home
    assert layout.confine("/workflow/examples", work) == layout.workflow / "examples"  # not the working_dir's
    assert layout.confine("/workflow", work) == layout.workflow
    assert layout.confine("examples", work) == work / "examples"


# --- SSH ----------------------------------------------------------------------------------------------


def test_session_env_carries_no_user_values():
    line, = _session_env({"HOME": "/h", "PATH": "/p", "DSTACK_NODES_IPS": "a\nb", "SECRET": "x", "DSTACK_NODE_RANK": "1"})
    assert line == 'SetEnv "HOME=/h" "PATH=/p" "DSTACK_NODE_RANK=1"'


def test_run_sshd_serves_the_run_key_and_goes_away(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = new_run_key("test")
    assert "PRIVATE" not in repr(key) and "PRIVATE" not in str(key)
    sshd = NodeSshd(tmp_path / "ssh", key)
    port = sshd.start({"HOME": str(home), "PATH": "/usr/bin:/bin", "DSTACK_NODE_RANK": "3"}, None)
    try:
        assert port is not None
        write_client_files(home, key, ["127.0.0.1"], [port])
        write_wrappers(tmp_path / "bin", home)
        for target in ("127.0.0.1", "node-0"):
            out = subprocess.run(
                [str(tmp_path / "bin" / "ssh"), target, "echo $DSTACK_NODE_RANK $HOME"],
                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
            )
            assert (out.returncode, out.stdout.strip()) == (0, f"3 {home}"), out.stderr
        assert oct((home / ".ssh" / "dstack_job").stat().st_mode & 0o777) == "0o600"
        other = new_run_key("other")  # a client without the run's key is refused
        (tmp_path / "other").write_text(other.private)
        os.chmod(tmp_path / "other", 0o600)
        denied = subprocess.run(
            ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(tmp_path / "other"), "-o", "IdentitiesOnly=yes",
             "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "127.0.0.1", "true"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
        assert denied.returncode != 0
    finally:
        sshd.stop()
    assert no_leftovers(str(tmp_path / "ssh" / "sshd_config"), timeout=5) == []
    forget_keys(home, tmp_path / "ssh")
    assert not (home / ".ssh" / "dstack_job").exists() and not (tmp_path / "ssh" / "host_key").exists()


def test_job_venvs_are_copies_of_a_template_that_jobs_cannot_change(tmp_path):
    """Spares are copies of a per-version template (pip copied in on first use): a job that
    writes into its venv's files in place, uninstalls pip or edits its pyvenv.cfg changes only its
    own venv. (Hard links let a job's in-place write reach the template and every later job.)"""
    maker = VenvMaker(tmp_path / "envs", downloads=False)
    job = maker.take(None, tmp_path / "job-1", "node")
    maker._refilling[""].join(60)
    template = next((tmp_path / "envs" / "templates").iterdir())
    assert len(list(job.rglob("*"))) < 60 < len(list(template.rglob("*")))  # pip's 500 files are not copied yet
    out = subprocess.run([str(job / "bin" / "pip"), "--version"], capture_output=True, text=True, check=True)
    assert str(job) in out.stdout  # the first use copies pip in, then runs it
    for path in job.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert os.stat(path).st_nlink == 1, path  # nothing shared with the template or another job
    record = next(job.glob("lib/python3.*/site-packages/pip-*.dist-info/RECORD"))
    internal = next(job.glob("lib/python3.*/site-packages/pip/_internal/__init__.py"))
    for path in (record, internal):
        with open(path, "a") as f:  # what the review did: an in-place append
            f.write("\nprint('INJECTED by job 1')\n")
    assert "INJECTED" not in (template / internal.relative_to(job)).read_text()
    assert "INJECTED" not in (template / record.relative_to(job)).read_text()
    subprocess.run([str(job / "bin" / "python"), "-m", "pip", "uninstall", "-y", "-q", "pip"], capture_output=True)
    (job / "pyvenv.cfg").write_text("changed by the job\n")
    assert (template / internal.relative_to(job)).exists() and "changed" not in (template / "pyvenv.cfg").read_text()
    later = maker.take(None, tmp_path / "job-2", "node")
    out = subprocess.run([str(later / "bin" / "pip"), "--version"], capture_output=True, text=True, check=True)
    assert str(later) in out.stdout and "INJECTED" not in out.stdout + out.stderr


def test_the_first_uses_of_pip_at_once_all_work(tmp_path):
    """`python -m pip`, `pip` and `import pip` started together in a fresh copy: one links pip
    in under the lock, the others wait for it, and all of them run the real pip."""
    maker = VenvMaker(tmp_path / "envs", downloads=False)
    job = maker.take(None, tmp_path / "job", "node")
    python = str(job / "bin" / "python")
    commands = [
        [python, "-m", "pip", "--version"],
        [str(job / "bin" / "pip"), "--version"],
        [python, "-c", "import pip; print('pip', pip.__version__, pip.__file__)"],
        [str(job / "bin" / "pip3"), "list", "--format=freeze"],
    ] * 2
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    results = [(p.communicate(timeout=60), p.returncode) for p in processes]
    for (out, err), code in results:
        assert code == 0 and out.startswith("pip"), (out, err)
    assert all(str(job) in out for (out, _), _ in results[:3])
    assert "dstack-ray" not in (job / "lib").joinpath(next(job.glob("lib/python3.*")).name, "site-packages", "pip", "__init__.py").read_text()


def test_python_is_found_past_a_pyenv_shim_that_cannot_run_it(tmp_path, monkeypatch):
    """The review's node: `python3.12` on PATH is pyenv's shim, which exits 127 for a version that
    is not selected, while 3.12.1 is installed under pyenv's versions/. uv stopped at the shim."""
    from dstack_ray.exec.pyenv import find_python

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shims = tmp_path / "shims"
    shims.mkdir()
    shim = shims / f"python{version}"
    shim.write_text(f"#!/bin/sh\necho 'pyenv: python{version}: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    installed = tmp_path / "pyenv" / "versions" / f"{version}.1" / "bin"
    installed.mkdir(parents=True)
    (installed / f"python{version}").symlink_to(sys.executable)
    older = tmp_path / "pyenv" / "versions" / f"{version}.0" / "bin"
    older.mkdir(parents=True)
    (older / f"python{version}").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(shims))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    found, tried = find_python(version)
    assert found == str(installed / f"python{version}")  # the newest patch release, past the shim
    assert tried == [str(shim)]
    venv = VenvMaker(tmp_path / "envs", downloads=False).create(version, tmp_path / "venv", "node")
    assert python_version(venv) == version


def test_no_runnable_python_names_what_was_tried(tmp_path, monkeypatch):
    from dstack_ray.exec import pyenv

    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python3.13").write_text("#!/bin/sh\nexit 127\n")
    (shims / "python3.13").chmod(0o755)
    monkeypatch.setenv("PATH", str(shims))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setattr(pyenv, "find_uv", lambda: None)  # the node has no uv: our search is all there is
    with pytest.raises(EnvironmentSetupError) as info:
        VenvMaker(tmp_path / "envs", downloads=False).create("3.13", tmp_path / "venv", "10.0.0.7")
    assert f"tried: {shims}/python3.13" in str(info.value), str(info.value)
