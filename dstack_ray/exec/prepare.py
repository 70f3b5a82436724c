"""Getting a node ready to run its commands: working directory, repo, files, Python, container.

The result is what the guard runs (argv, env, cwd, and a cleanup command for containers). A
failure says which dstack termination reason it is: a repo that cannot be set up is
`container_exited_with_error`, a container that cannot be created `creating_container_error`,
anything else `executor_error`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field

from dstack_ray.config.layout import as_host_path, check_target
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
from dstack_ray.exec.pyenv import EnvironmentSetupError, VenvMaker, activation_env, find_nvcc, link_uv
from dstack_ray.exec.repo import RepoError, RepoPayload, materialize_repo
from dstack_ray.exec.ssh import HAS_SSHD_CHECK, RunKey, stage_container_sshd, with_sshd, write_client_files, write_wrappers
from dstack_ray.exec.view import JobView, node_layout, ray_token_dirs, tools_in_home
from dstack_ray.models.runs import JobTerminationReason

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
    """The node cannot set the job up; `reason` is how the job ends."""

    def __init__(self, reason: JobTerminationReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Prepared:
    argv: List[str]
    env: Dict[str, str]
    cwd: str
    cleanup: Optional[List[str]] = None
    view: Optional[dict] = None  # the job's view of its node (`JobView.spec`), None: the node as it is


@dataclass
class NodeContext:
    identity: JobIdentity
    cluster: ClusterInfo
    gpu_ids: List[str]
    node_ip: str
    run_dir: Path  # this run's private directory on this node (per rank)
    attempt: int
    ssh_key: Optional[RunKey] = None  # multi-node runs: the attempt's key pair
    ssh_ports: List[Optional[int]] = field(default_factory=list)  # per rank, from the start order


def _apply_repo_and_files(payload: Optional[RunPayload], place: Callable[[str], Path], report: Report) -> Path:
    """Repo first, then files (dstack's order); `place` maps a path as written in the task
    (relative, `~/...` or absolute) to where it goes on this node. Returns the repo directory."""
    repo_dir = place(".")
    if payload is not None and payload.repo is not None:
        try:
            target = place(payload.repo.path)
            repo_dir = materialize_repo(payload.repo.model_copy(update={"path": str(target)}), target.parent, report)
        except (RepoError, ValueError) as e:
            raise SetupFailure(JobTerminationReason.CONTAINER_EXITED_WITH_ERROR, str(e)) from None
    for packed in payload.files if payload else []:
        try:
            unpack(packed.data, place(packed.path))
        except (OSError, ValueError, tarfile.TarError) as e:
            raise SetupFailure(JobTerminationReason.EXECUTOR_ERROR, f"Failed to set up the files ({packed.path}): {e}") from None
    return repo_dir


@dataclass
class HostLayout:
    """Where a host-mode job lives on its node; nothing of the job is written elsewhere.

    `run_dir/home` is the run's private HOME (0700, kept across attempts); each attempt gets a
    fresh `attempt-N/` with `workflow/` (the working directory: repo and relative `files`,
    dstack's `/workflow`), `venv/` (the job's Python), `bin/` (ssh wrappers), `mpi/hostfile`
    and `ssh/` (the node's sshd for the run).
    """

    run_dir: Path
    attempt: int

    @property
    def home(self) -> Path:
        return self.run_dir / "home"

    @property
    def attempt_dir(self) -> Path:
        return self.run_dir / f"attempt-{self.attempt}"

    @property
    def workflow(self) -> Path:
        return self.attempt_dir / "workflow"

    @property
    def venv(self) -> Path:
        return self.attempt_dir / "venv"

    @property
    def bin(self) -> Path:
        return self.attempt_dir / "bin"

    @property
    def hostfile(self) -> Path:
        return self.attempt_dir / "mpi" / "hostfile"

    @property
    def ssh(self) -> Path:
        return self.attempt_dir / "ssh"

    def activation(self, base_path: str) -> Dict[str, str]:
        """The job's venv activated, the ssh wrappers next: the environment of its commands
        and of SSH sessions into the node."""
        return activation_env(self.venv, f"{self.bin}:{base_path}")

    @property
    def placed(self) -> Path:
        """Where absolute targets of a job's view are staged (mounted at their paths in the view)."""
        return self.attempt_dir / "view"

    def confine(self, path: str, working_dir: Path, placed: Optional[Dict[str, Path]] = None) -> Path:
        """A path as written in the task (`files`, `repos[].path`, `working_dir`): `~/x` and
        dstack's `/root/x` in the run's home, relative and dstack's `/workflow/x` in
        `working_dir`. With a view (`placed` given), another absolute path is staged below
        `self.placed` and noted in `placed` (target -> staged path) for the view to mount.
        Anything else landing outside the home and the workflow directory (absolute without a
        view, `..`, `~user`) is refused; the client refuses it before submission where it
        knows, this is the node's own check."""
        host = as_host_path(path)
        base = self.workflow if host != path and not host.startswith("~") else working_dir  # /workflow/x: not the working_dir's
        target = resolve_destination(host, base, self.home)
        if _inside(target, self.workflow) or _inside(target, self.home):
            return target
        if placed is not None and host.startswith("/"):
            clean = os.path.normpath(host)
            why = check_target(clean)
            if why:
                raise ValueError(f"{path}: {why}")
            placed[clean] = self.placed / clean.lstrip("/")
            return placed[clean]
        raise ValueError(
            f"{path}: outside the run's directories (the working directory and `~`)"
            " and this node gives jobs no private view; use `image:` to write there"
        )

    def create(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.home, 0o700)
        self.attempt_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.workflow.mkdir(exist_ok=True)
        self.hostfile.parent.mkdir(exist_ok=True)


def _inside(path: Path, root: Path) -> bool:
    return path == root or str(path).startswith(f"{root}/")


@dataclass
class Staged:
    """A host-mode job's directories, repo and files on its node, made before its sshd starts
    (so that the sshd's sessions get the same view as the job)."""

    layout: HostLayout
    working_dir: Path
    repo_dir: Path
    view: Optional[JobView]  # None: the node gives jobs no view (today's layout)

    def view_spec(self) -> Optional[dict]:
        return self.view.spec(self.working_dir) if self.view is not None else None

    def home(self) -> str:
        """HOME as the job sees it."""
        return "/root" if self.view is not None else str(self.layout.home)


def stage_host(spec: NodeSpec, payload: Optional[RunPayload], run_dir: Path, attempt: int, state_dir: Optional[Path], shared: Optional[Path], report: Report) -> Staged:
    """The job's directories with its repo and files, and its view where the node allows one."""
    layout = HostLayout(run_dir, attempt)
    layout.create()
    found = node_layout() if state_dir is not None else None
    view = None
    if found is not None and found.view:
        keep = tools_in_home(host_base_environment(os.environ), sys.base_prefix)
        view = JobView(state_dir, run_dir, layout.workflow, layout.home, user=found.user, shared=shared, hide=ray_token_dirs(), keep=keep)
    elif found is not None:
        report(f"layout: {found.describe()}; the job can see other runs' files (use `image:` to keep runs apart)")
    placed = view.placed if view is not None else None
    try:
        working_dir = layout.confine(spec.working_dir, layout.workflow, placed) if spec.working_dir else layout.workflow
        working_dir.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:
        raise SetupFailure(JobTerminationReason.EXECUTOR_ERROR, f"working_dir: {e}") from None
    repo_dir = _apply_repo_and_files(payload, lambda path: layout.confine(path, working_dir, placed), report)
    return Staged(layout, working_dir, repo_dir, view)


def prepare_host(spec: NodeSpec, staged: Staged, payload: Optional[RunPayload], node: NodeContext, report: Report, venvs: VenvMaker) -> Prepared:
    """Run on the node itself, in the job's own directories, Python and home (its view)."""
    layout, working_dir, view = staged.layout, staged.working_dir, staged.view
    layout.hostfile.write_text(mpi_hostfile(node.cluster.ips, node.cluster.gpus_per_node))
    base = host_base_environment(os.environ)
    try:
        venvs.take(spec.python, layout.venv, node.node_ip)
        link_uv(layout.bin)
        extra = layout.activation(base.get("PATH", ""))
        if spec.nvcc:
            nvcc, version = find_nvcc(node.node_ip, base.get("PATH"))
            report(f"nvcc: {version}")
            extra["PATH"] = f"{extra['PATH']}:{nvcc.parent}"
    except (EnvironmentSetupError, OSError, subprocess.SubprocessError) as e:
        raise SetupFailure(JobTerminationReason.EXECUTOR_ERROR, str(e)) from None
    if node.ssh_key is not None and any(node.ssh_ports):
        write_client_files(layout.home, node.ssh_key, node.cluster.ips, node.ssh_ports)
        write_wrappers(layout.bin, layout.home)
    argv = command_argv(spec.shell, spec.commands, spec.entrypoint)
    seen = view.path if view is not None else str
    paths = JobPaths(
        working_dir=seen(working_dir),
        repo_dir=seen(staged.repo_dir),
        hostfile=str(layout.hostfile),
        repo_id=_repo_id(payload),
    )
    system = {**dstack_variables(node.identity, node.cluster, paths), **extra}
    env = job_environment(base, system, spec.user_env, node.gpu_ids, home=staged.home())
    return Prepared(argv=argv, env=env, cwd=str(working_dir), view=staged.view_spec())


def _repo_id(payload: Optional[RunPayload]) -> str:
    return payload.repo.repo_id if payload is not None and payload.repo is not None else "none"


def staged_path(staging: Path, path: str, working_dir: str, home: str) -> Path:
    """Where a container path (`files`, repo; `~` = the image user's `home`, relative = in
    `working_dir`) is staged on the host before it is copied in. `..` in the path, or in a
    crafted image HOME or WorkingDir, cannot leave the staging directory."""
    target = Path(os.path.normpath(staging / container_path(path, working_dir, home).lstrip("/")))
    if not _inside(target, staging):
        raise ValueError(f"{path}: leads outside the container's filesystem")
    return target


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
            try:
                container.login()  # credentials are only needed to pull
                container.pull()
            finally:
                container.forget_credentials()
        image = container.inspect()
    except ContainerError as e:
        raise SetupFailure(JobTerminationReason.CREATING_CONTAINER_ERROR, str(e)) from None
    wanted = [f.path for f in (payload.files if payload else [])] + [spec.working_dir or ""]
    rank = node.identity.rank
    ssh_port = node.ssh_ports[rank] if node.ssh_key is not None and rank < len(node.ssh_ports) else None
    if ssh_port is not None and not container.runs(HAS_SSHD_CHECK):
        report("SSH between nodes is unavailable: the image has no sshd")
        ssh_port = None
    home = container.home(image) if ssh_port is not None or any(p.startswith("~") for p in wanted) else "/root"
    if spec.working_dir:
        # `~` is the image user's home; a relative value is dstack's legacy form, below /workflow.
        working_dir = container_path(spec.working_dir, DEFAULT_WORKING_DIR, home)
    else:
        working_dir = image.working_dir or DEFAULT_WORKING_DIR
    staging = staging_dir(node.run_dir)
    try:
        (staging / working_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)

        def place(path: str) -> Path:
            return staged_path(staging, path, working_dir, home)

        staged_repo = _apply_repo_and_files(payload, place, report)
        repo_dir = "/" + str(staged_repo.relative_to(staging))
        hostfile = node.run_dir / "mpi" / "hostfile"
        hostfile.parent.mkdir(parents=True, exist_ok=True)
        hostfile.write_text(mpi_hostfile(node.cluster.ips, node.cluster.gpus_per_node))
        paths = JobPaths(working_dir=working_dir, repo_dir=repo_dir, hostfile=CONTAINER_HOSTFILE, repo_id=_repo_id(payload))
        env = {**NON_INTERACTIVE, **dstack_variables(node.identity, node.cluster, paths), **spec.user_env}
        argv = container_argv(spec.shell, spec.commands, spec.entrypoint, spec.container.docker)
        if ssh_port is not None and node.ssh_key is not None:
            stage_container_sshd(staging, node.ssh_key, ssh_port)
            user = (spec.container.user or image.user or "root").split(":")[0]
            write_client_files(place("~"), node.ssh_key, node.cluster.ips, node.ssh_ports, seen_home=home, user=user)
            argv = with_sshd(argv or image.entrypoint + image.cmd)
        try:
            container.create(argv, env, working_dir, node.gpu_ids, hostfile)
            container.copy_in(staging)
        except ContainerError as e:
            container.remove()
            raise SetupFailure(JobTerminationReason.CREATING_CONTAINER_ERROR, str(e)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    guard_env = host_base_environment(os.environ, keep_python=True)
    return Prepared(argv=container.start_command(), env=guard_env, cwd=str(node.run_dir), cleanup=container.remove_command())

