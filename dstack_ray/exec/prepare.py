"""Getting a node ready to run its commands: working directory, repo, files, Python, container.

The result is what the guard runs (argv, env, cwd, and a cleanup command for containers). A
failure says which dstack termination reason it is: a repo that cannot be set up is
`container_exited_with_error`, a container that cannot be created `creating_container_error`,
anything else `executor_error`.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field

from dstack_ray.exec.archive import PackedFile, resolve_destination, unpack
from dstack_ray.exec.commands import (
    NON_INTERACTIVE,
    ClusterInfo,
    JobIdentity,
    JobPaths,
    command_argv,
    dstack_variables,
    host_base_environment,
    job_environment,
    mpi_hostfile,
)
from dstack_ray.exec.container import (
    CONTAINER_HOSTFILE,
    DEFAULT_WORKING_DIR,
    Container,
    ContainerError,
    ContainerSpec,
    container_argv,
    container_name,
    container_path,
    find_runtime,
    staging_dir,
)
from dstack_ray.exec.pyenv import EnvironmentSetupError, activation, ensure_venv, find_nvcc
from dstack_ray.exec.repo import RepoError, RepoPayload, materialize_repo

Report = Callable[[str], None]


class RunPayload(BaseModel):
    """Everything shipped from the client for the run's nodes (through Ray's object store)."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    files: List[PackedFile] = Field(default_factory=list)
    repo: Optional[RepoPayload] = None


class NodeSpec(BaseModel):
    """How one node runs its commands (from the task configuration)."""

    commands: List[str]
    shell: str
    entrypoint: Optional[str] = None
    working_dir: Optional[str] = None
    user_env: Dict[str, str] = Field(default_factory=dict)
    python: Optional[str] = None
    nvcc: bool = False
    container: Optional[ContainerSpec] = None


class SetupFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # a JobTerminationReason value
        self.message = message


@dataclass
class Prepared:
    argv: List[str]
    env: Dict[str, str]
    cwd: str
    cleanup: Optional[List[str]] = None


@dataclass
class NodeContext:
    identity: JobIdentity
    cluster: ClusterInfo
    gpu_ids: List[str]
    node_ip: str
    run_dir: Path  # this run's private directory on this node (per rank)
    attempt: int


def _apply_repo_and_files(payload: Optional[RunPayload], place: Callable[[str], Path], report: Report) -> Path:
    """Repo first, then files (dstack's order); `place` maps a path as written in the task
    (relative, `~/...` or absolute) to where it goes on this node. Returns the repo directory."""
    repo_dir = place(".")
    if payload is not None and payload.repo is not None:
        target = place(payload.repo.path)
        try:
            repo_dir = materialize_repo(payload.repo.model_copy(update={"path": str(target)}), target.parent, report)
        except RepoError as e:
            raise SetupFailure("container_exited_with_error", str(e)) from None
    for packed in payload.files if payload else []:
        try:
            unpack(packed.data, place(packed.path))
        except (OSError, ValueError, tarfile.TarError) as e:
            raise SetupFailure("executor_error", f"Failed to set up the files ({packed.path}): {e}") from None
    return repo_dir


def prepare_host(spec: NodeSpec, payload: Optional[RunPayload], node: NodeContext, report: Report) -> Prepared:
    """Run on the node itself: the run's directory (or `working_dir`) as the working directory."""
    if spec.working_dir:
        working_dir = Path(os.path.expanduser(spec.working_dir))
    else:
        working_dir = node.run_dir / f"attempt-{node.attempt}"  # fresh, like dstack's container per attempt
    working_dir.mkdir(parents=True, exist_ok=True)
    repo_dir = _apply_repo_and_files(payload, lambda path: resolve_destination(path, working_dir, Path.home()), report)
    hostfile = node.run_dir / "mpi" / "hostfile"
    hostfile.parent.mkdir(parents=True, exist_ok=True)
    hostfile.write_text(mpi_hostfile(node.cluster.ips, node.cluster.gpus_per_node))
    commands = list(spec.commands)
    extra: Dict[str, str] = {}
    try:
        if spec.python:
            venv = ensure_venv(spec.python, node.run_dir.parent / f"venv-{spec.python}", node.node_ip)
            commands.insert(0, activation(venv))
            extra["DSTACK_VENV_DIR"] = str(venv)
        if spec.nvcc:
            nvcc, version = find_nvcc(node.node_ip)
            report(f"nvcc: {version}")
            extra["PATH"] = f"{nvcc.parent}:{os.environ.get('PATH', '')}"
    except EnvironmentSetupError as e:
        raise SetupFailure("executor_error", str(e)) from None
    argv = command_argv(spec.shell, commands, spec.entrypoint)
    paths = JobPaths(working_dir=str(working_dir), repo_dir=str(repo_dir), hostfile=str(hostfile))
    system = {**dstack_variables(node.identity, node.cluster, paths), **extra}
    env = job_environment(host_base_environment(os.environ), system, spec.user_env, node.gpu_ids)
    return Prepared(argv=argv, env=env, cwd=str(working_dir))


def prepare_container(
    spec: NodeSpec,
    payload: Optional[RunPayload],
    node: NodeContext,
    report: Report,
    runtime_preference: Optional[str],
    on_pulling: Callable[[], None],
) -> Prepared:
    """Create the container (pulled, logged in, files copied in); the guard starts it."""
    assert spec.container is not None
    try:
        runtime = find_runtime(runtime_preference or spec.container.runtime)
        private = node.run_dir / "private"
        private.mkdir(parents=True, exist_ok=True, mode=0o700)
        container = Container(runtime, spec.container, container_name(node.identity.run_name, node.attempt, node.identity.rank), private)
        if not container.image_present():
            on_pulling()
            report(f"pulling {spec.container.image}")
            container.login()  # credentials are only needed to pull
            container.pull()
        image = container.inspect()
    except ContainerError as e:
        raise SetupFailure("creating_container_error", str(e)) from None
    working_dir = spec.working_dir or image.working_dir or DEFAULT_WORKING_DIR
    home = container.home(image) if any(f.path.startswith("~") for f in (payload.files if payload else [])) else "/root"
    staging = staging_dir(node.run_dir)
    try:
        (staging / working_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)

        def place(path: str) -> Path:
            return staging / container_path(path, working_dir, home).lstrip("/")

        staged_repo = _apply_repo_and_files(payload, place, report)
        repo_dir = "/" + str(staged_repo.relative_to(staging))
        hostfile = node.run_dir / "mpi" / "hostfile"
        hostfile.parent.mkdir(parents=True, exist_ok=True)
        hostfile.write_text(mpi_hostfile(node.cluster.ips, node.cluster.gpus_per_node))
        paths = JobPaths(working_dir=working_dir, repo_dir=repo_dir, hostfile=CONTAINER_HOSTFILE)
        env = {**NON_INTERACTIVE, **dstack_variables(node.identity, node.cluster, paths), **spec.user_env}
        argv = container_argv(spec.shell, spec.commands, spec.entrypoint, spec.container.docker)
        try:
            container.create(argv, env, working_dir, node.gpu_ids, hostfile)
            container.copy_in(staging)
        except ContainerError as e:
            container.remove()
            raise SetupFailure("creating_container_error", str(e)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    guard_env = host_base_environment(os.environ)
    return Prepared(argv=container.start_command(), env=guard_env, cwd=str(node.run_dir), cleanup=container.remove_command())

