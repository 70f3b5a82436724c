"""What a node runs and with which environment: dstack's command joining and DSTACK_* variables."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

# Set by Ray for its worker processes; a user's command must not inherit them (a `ray` call in a
# task would otherwise attach to the worker's raylet). CUDA_VISIBLE_DEVICES is set explicitly.
_WORKER_ONLY_PREFIXES = ("RAY_", "__RAY", "DSTACK_RAY_", "BASH_FUNC_")
_WORKER_ONLY = {"CUDA_VISIBLE_DEVICES", "PYTHONPATH_RAY", "OMP_NUM_THREADS"}
# The Python environment Ray and dstack-ray run from: a task gets its own instead.
_WORKER_PYTHON = {
    "VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "PYTHONPATH", "PYTHONHOME", "PYTHONEXECUTABLE",
    "PYTHONSTARTUP", "PYTHONUSERBASE", "__PYVENV_LAUNCHER__", "CONDA_PREFIX", "CONDA_DEFAULT_ENV",
    "CONDA_PYTHON_EXE", "CONDA_SHLVL", "CONDA_EXE", "_CE_CONDA", "_CE_M", "UV_PROJECT_ENVIRONMENT",
}


def join_commands(commands: Sequence[str]) -> str:
    """dstack's rule: strip each, wrap a trailing-`&` command as `{ cmd & }`, join with ` && `."""
    parts = []
    for command in commands:
        command = command.strip()
        if command.endswith("&"):
            command = "{ %s }" % command
        parts.append(command)
    return " && ".join(parts)


def command_argv(shell: str, commands: Sequence[str], entrypoint: Optional[str]) -> List[str]:
    """The argv dstack would run: `entrypoint + commands` (docker-like) or `shell -i -c joined`.

    With an image and neither commands nor entrypoint the image's own ENTRYPOINT/CMD run, which
    the container runtime handles: that case returns [].
    """
    if entrypoint is not None:
        return shlex.split(entrypoint) + list(commands)
    if commands:
        return [shell, "-i", "-c", join_commands(commands)]
    return []


def mpi_hostfile(ips: Sequence[str], gpus_per_node: Sequence[int]) -> str:
    """`<ip> slots=<gpus>` per node in rank order, a bare IP for CPU nodes; empty if an IP is unknown."""
    if any(not ip for ip in ips):
        return ""
    lines = [f"{ip} slots={gpus}" if gpus > 0 else ip for ip, gpus in zip(ips, gpus_per_node)]
    return "\n".join(lines) + "\n"


@dataclass
class ClusterInfo:
    """What every node of an attempt knows about the others, in rank order."""

    ips: List[str]
    gpus_per_node: List[int]

    @property
    def master_ip(self) -> str:
        return self.ips[0] if self.ips else ""


@dataclass
class JobIdentity:
    run_name: str
    run_id: str
    job_id: str
    rank: int


@dataclass
class JobPaths:
    working_dir: str
    repo_dir: str
    hostfile: str
    repo_id: str = "none"  # dstack's DEFAULT_VIRTUAL_REPO_ID when the run has no repo


def dstack_variables(
    identity: JobIdentity, cluster: ClusterInfo, paths: JobPaths
) -> Dict[str, str]:
    """Exactly dstack's system variables for one job."""
    return {
        "DSTACK_RUN_NAME": identity.run_name,
        "DSTACK_RUN_ID": identity.run_id,
        "DSTACK_JOB_ID": identity.job_id,
        "DSTACK_NODE_RANK": str(identity.rank),
        "DSTACK_NODES_NUM": str(len(cluster.ips)),
        "DSTACK_NODES_IPS": "\n".join(cluster.ips),
        "DSTACK_MASTER_NODE_IP": cluster.master_ip,
        "DSTACK_GPUS_PER_NODE": str(cluster.gpus_per_node[identity.rank]),
        "DSTACK_GPUS_NUM": str(sum(cluster.gpus_per_node)),
        "DSTACK_MPI_HOSTFILE": paths.hostfile,
        "DSTACK_WORKING_DIR": paths.working_dir,
        "DSTACK_REPO_DIR": paths.repo_dir,
        "DSTACK_REPO_ID": paths.repo_id,
    }


def worker_prefixes(environ: Mapping[str, str]) -> List[str]:
    """Directories of the worker's own Python environment (a venv or a conda env, never the
    system's): their entries leave a task's PATH."""
    prefixes = []
    if sys.prefix != sys.base_prefix:
        prefixes.append(sys.prefix)
    for key in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        value = environ.get(key)
        if value and value != sys.base_prefix:
            prefixes.append(value)
    return [os.path.normpath(p) for p in prefixes]


def clean_path(path: str, prefixes: Sequence[str]) -> str:
    """PATH without entries inside `prefixes` (and without empty entries, which mean `.`)."""
    kept = []
    for entry in path.split(":"):
        normalized = os.path.normpath(entry) if entry else ""
        if not entry or any(normalized == p or normalized.startswith(p + "/") for p in prefixes):
            continue
        if entry not in kept:
            kept.append(entry)
    return ":".join(kept)


def host_base_environment(environ: Mapping[str, str], *, keep_python: bool = False) -> Dict[str, str]:
    """The node process environment without what Ray sets for its own workers and (unless
    `keep_python`, for the guard of a container) without the worker's Python environment."""
    env = {
        key: value
        for key, value in environ.items()
        if not key.startswith(_WORKER_ONLY_PREFIXES) and key not in _WORKER_ONLY
    }
    if keep_python:
        return env
    prefixes = worker_prefixes(environ)
    for key in _WORKER_PYTHON:
        env.pop(key, None)
    env["PATH"] = clean_path(environ.get("PATH", os.defpath), prefixes)
    return env


# Commands run on a pty nobody reads interactively: pagers must not wait for a keypress.
NON_INTERACTIVE = {"PAGER": "cat", "GIT_PAGER": "cat"}


def job_environment(
    base: Mapping[str, str],
    system: Mapping[str, str],
    user_env: Mapping[str, str],
    gpu_ids: Sequence[str],
    home: Optional[str] = None,
) -> Dict[str, str]:
    """Base (host) env, then DSTACK_* variables, then the user's `env` (the user wins), except
    for CUDA_VISIBLE_DEVICES: it is always the GPUs Ray assigned, so a job never uses a GPU
    another job holds; a job without GPUs gets none at all (never the empty string Ray gives
    CPU-only workers, nor a value from `env`).
    """
    env = {**NON_INTERACTIVE, **base}
    if home:
        env["HOME"] = home
    env.update(system)
    env.update(user_env)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    return env
