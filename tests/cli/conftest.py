"""The CLI as a user runs it: subprocesses against the embedded local Ray head (token auth on).

Everything the head writes goes to a temporary HOME; the head is stopped after the package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "dstack_ray_cli.main"]


@pytest.fixture(scope="package")
def cli_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),
        DSTACK_RAY_STATE_DIR=str(home / ".dstack-ray"),
        DSTACK_RAY_TEMP_DIR=f"/tmp/dstack-ray-test-{os.getpid()}",
        COLUMNS="200",
        RAY_USAGE_STATS_ENABLED="0",
    )
    started = subprocess.run([*CLI, "server", "start", "--num-cpus", "4"], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    yield env
    subprocess.run([*CLI, "server", "stop"], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def cli(cli_env, tmp_path):
    """Run `dstack-ray ARGS...` in tmp_path; returns the CompletedProcess."""

    def run(*args: str, input: str | None = None, timeout: float = 180, check_rc: int | None = None):
        result = subprocess.run(
            [*CLI, *args], env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, input=input
        )
        if check_rc is not None:
            assert result.returncode == check_rc, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    run.env = cli_env
    run.cwd = tmp_path
    return run


def write_task(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.dstack.yml"
    path.write_text(body)
    return path
