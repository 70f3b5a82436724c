"""The CLI as a user runs it: subprocesses against the embedded local Ray head (token auth on).

Everything the head writes goes to a temporary HOME; the head is stopped after the package.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import CLI, embedded_head


@pytest.fixture(scope="package")
def cli_env(tmp_path_factory):
    yield from embedded_head(tmp_path_factory.mktemp("home"), "test")


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
