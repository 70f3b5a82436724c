"""Node tools are optional: job venvs without uv, the run's SSH key without `cryptography`."""

from __future__ import annotations

import builtins
import subprocess
import sys
from pathlib import Path

import pytest

from dstack_ray.exec import pyenv, ssh


def test_without_uv_job_venvs_come_from_the_standard_library_and_install_into_themselves(tmp_path, monkeypatch):
    monkeypatch.setattr(pyenv, "find_uv", lambda: None)
    maker = pyenv.VenvMaker(tmp_path / "envs", downloads=False)
    first = maker.take(None, tmp_path / "job-1", "node-a")
    for thread in list(maker._refilling.values()):
        thread.join(120)
    second = maker.take(None, tmp_path / "job-2", "node-a")  # a renamed spare: made at another path
    for venv in (first, second):
        shown = subprocess.run(
            ["bash", "-c", f". {venv}/bin/activate && echo $VIRTUAL_ENV && python -c 'import sys; print(sys.prefix)' && pip --version"],
            capture_output=True, text=True, timeout=120,
        )
        lines = shown.stdout.splitlines()
        assert shown.returncode == 0, shown.stderr
        assert lines[0] == str(venv) and lines[1] == str(venv) and f"from {venv}/lib/" in lines[2], lines
    script = (second / "bin" / "pip").read_text()
    assert str(tmp_path / "envs") not in script and "making-" not in script  # no path of where it was made
    pyenv.link_uv(second / "bin")
    assert not (second / "bin" / "uv").exists()  # no uv on the node: none in the job either


def test_without_uv_a_python_version_comes_from_path_or_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pyenv, "find_uv", lambda: None)
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python3.99").write_text("#!/bin/sh\nexit 127\n")  # pyenv's shim of a version that is not selected
    (shims / "python3.99").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:/usr/bin:/bin")
    with pytest.raises(pyenv.EnvironmentSetupError, match=r"Python 3\.99 is not available on node n: it has no uv .* no runnable python3\.99 \(tried: .*shims/python3\.99\)"):
        pyenv.VenvMaker(tmp_path / "envs", downloads=True).create("3.99", tmp_path / "v", "n")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    made = pyenv.VenvMaker(tmp_path / "envs", downloads=False).create(version, tmp_path / "w", "n")
    assert (made / "bin" / "python").exists()


def test_the_run_key_is_made_with_ssh_keygen_without_cryptography(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_cryptography(name, *args, **kwargs):
        if name.startswith("cryptography"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cryptography)
    key = ssh.new_run_key("dstack-ray:run:0")
    assert key.private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.public.startswith("ssh-ed25519 ") and key.public.endswith(" dstack-ray:run:0")
    (tmp_path / "k").write_text(key.private)
    (tmp_path / "k").chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(tmp_path / "k")], capture_output=True, text=True, timeout=30)
    assert derived.stdout.split()[:2] == key.public.split()[:2]
