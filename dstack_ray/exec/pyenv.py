"""`python:` and `nvcc:` for tasks that run on the host (no `image`).

dstack's base image creates a virtual environment with the requested Python; on a Ray node we
create one in the run's directory (with uv when the node has it, else `pythonX.Y -m venv`) and
activate it before the commands. `nvcc: true` requires the CUDA compiler on the node.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

VENV_TIMEOUT = 300


class EnvironmentSetupError(Exception):
    """The node cannot provide what the task asks for; the message says what to install."""


def _version_of(python: Path) -> Optional[str]:
    try:
        out = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def ensure_venv(version: str, directory: Path, node: str) -> Path:
    """A virtual environment with Python `version` at `directory` (reused when it matches)."""
    python = directory / "bin" / "python"
    if python.exists() and _version_of(python) == version:
        return directory
    errors: List[str] = []
    uv = shutil.which("uv")
    if uv:
        result = subprocess.run(
            [uv, "venv", "--quiet", "--seed", "--python", version, str(directory)],
            capture_output=True, text=True, timeout=VENV_TIMEOUT,
        )
        if result.returncode == 0 and _version_of(python) == version:
            return directory
        errors.append("uv: " + (result.stderr.strip().splitlines() or ["failed"])[-1])
    interpreter = shutil.which(f"python{version}")
    if interpreter and _version_of(Path(interpreter)) == version:
        result = subprocess.run(
            [interpreter, "-m", "venv", "--clear", str(directory)],
            capture_output=True, text=True, timeout=VENV_TIMEOUT,
        )
        if result.returncode == 0:
            return directory
        errors.append(f"python{version} -m venv: " + (result.stderr.strip().splitlines() or ["failed"])[-1])
    else:
        errors.append(f"no python{version} on PATH")
    raise EnvironmentSetupError(
        f"Python {version} is not available on node {node} ({'; '.join(errors)});"
        f" install python{version} or uv there, or use an `image` with it"
    )


def activation(venv: Path) -> str:
    return f". {venv}/bin/activate"


def find_nvcc(node: str) -> Tuple[Path, str]:
    """The CUDA compiler and its version line, or EnvironmentSetupError."""
    candidates = [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            try:
                out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                continue
            lines = [line for line in out.stdout.splitlines() if line.strip()]
            return Path(candidate), (lines[-1] if lines else "unknown version")
    raise EnvironmentSetupError(
        f"`nvcc: true` needs the CUDA compiler, but node {node} has no nvcc on PATH or in"
        " /usr/local/cuda/bin; install the CUDA toolkit there, or use an `image` with it"
    )
