"""Running a node's commands in a container with the node's podman or docker CLI.

The container gets host networking (so ranks reach each other on node IPs), the run's env
(`--env NAME` with the value in the CLI's environment: values never appear in process lists),
the GPUs Ray assigned, and the
working directory and files copied in before it starts. It is named after the run, attempt and
rank, and the guard removes it however the command ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence

from pydantic import BaseModel, Field

DEFAULT_WORKING_DIR = "/workflow"
CONTAINER_HOSTFILE = "/dstack/mpi/hostfile"
DIND_IMAGE = "dstackai/dind"
COMMAND_TIMEOUT = 600


class ContainerError(Exception):
    """The container could not be created or started (dstack: creating_container_error)."""


class InstanceMount(BaseModel):
    instance_path: str
    path: str
    optional: bool = False


class ContainerSpec(BaseModel):
    """The container side of a task: what dstack's runner would do with the same fields."""

    image: str
    user: Optional[str] = None
    privileged: bool = False
    docker: bool = False
    shm_size_gb: Optional[float] = None
    registry_username: Optional[str] = None
    registry_password: Optional[str] = None
    mounts: List[InstanceMount] = Field(default_factory=list)
    runtime: Optional[str] = None  # podman or docker; None: whichever this node has


class ImageConfig(BaseModel):
    working_dir: str = ""
    user: str = ""
    env: Dict[str, str] = Field(default_factory=dict)
    entrypoint: List[str] = Field(default_factory=list)
    cmd: List[str] = Field(default_factory=list)


def find_runtime(preferred: Optional[str]) -> str:
    """The container CLI to use on this node, or ContainerError naming what is missing."""
    candidates = [preferred] if preferred else ["podman", "docker"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    wanted = preferred or "podman or docker"
    raise ContainerError(
        f"the task needs a container runtime ({wanted}) but this node has none on PATH;"
        " install one, or remove `image` to run on the host"
    )


def container_name(run_name: str, attempt: int, rank: int) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", f"dstack-{run_name}-{attempt}-{rank}")


def registry_of(image: str) -> str:
    """The registry host of an image reference (Docker Hub when the first part is no host)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _is_podman(runtime: str) -> bool:
    return Path(runtime).name.startswith("podman")


class Container:
    """One container of one rank: login, pull, inspect, create, copy files in, start command."""

    def __init__(self, runtime: str, spec: ContainerSpec, name: str, private_dir: Path) -> None:
        self.runtime = runtime
        self.spec = spec
        self.name = name
        self.private_dir = private_dir  # 0700, per rank: auth and env files live here
        self.podman = _is_podman(runtime)
        self._auth: List[str] = []

    def _run(self, args: Sequence[str], input: Optional[str] = None, what: str = "", env: Optional[Dict[str, str]] = None) -> str:
        try:
            result = subprocess.run(
                [self.runtime, *self._auth_prefix(), *args],
                input=input,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                env={**os.environ, **env} if env else None,
            )
        except subprocess.TimeoutExpired:
            raise ContainerError(f"{what or args[0]} timed out after {COMMAND_TIMEOUT}s") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ContainerError(f"{what or args[0]} failed: {detail[-1] if detail else f'exit {result.returncode}'}")
        return result.stdout

    def _auth_prefix(self) -> List[str]:
        # docker keeps credentials per config directory; podman takes --authfile per command.
        return self._auth if not self.podman else []

    def _authfile(self) -> List[str]:
        return self._auth if self.podman else []

    def login(self) -> None:
        """Log in with the task's registry_auth; the password goes through stdin only."""
        if not self.spec.registry_username:
            return
        registry = registry_of(self.spec.image)
        if self.podman:
            self._auth = ["--authfile", str(self.private_dir / "auth.json")]
            args = ["login", *self._auth, "--username", self.spec.registry_username, "--password-stdin", registry]
        else:
            self._auth = ["--config", str(self.private_dir / "docker")]
            args = ["login", "--username", self.spec.registry_username, "--password-stdin", registry]
        self._run(args, input=self.spec.registry_password or "", what=f"login to {registry}")

    def forget_credentials(self) -> None:
        """Remove what `login` stored on the node (the registry password, base64-encoded)."""
        (self.private_dir / "auth.json").unlink(missing_ok=True)
        shutil.rmtree(self.private_dir / "docker", ignore_errors=True)
        self._auth = []

    def image_present(self) -> bool:
        check = ["image", "exists", self.spec.image] if self.podman else ["image", "inspect", self.spec.image]
        try:
            self._run(check)
            return True
        except ContainerError:
            return False

    def pull(self) -> None:
        self._run(["pull", *self._authfile(), self.spec.image], what=f"pulling {self.spec.image}")

    def inspect(self) -> ImageConfig:
        raw = self._run(["image", "inspect", "--format", "{{json .Config}}", self.spec.image], what="image inspect")
        config = json.loads(raw or "{}") or {}
        env = dict(item.split("=", 1) for item in (config.get("Env") or []) if "=" in item)
        return ImageConfig(
            working_dir=config.get("WorkingDir") or "",
            user=config.get("User") or "",
            env=env,
            entrypoint=config.get("Entrypoint") or [],
            cmd=config.get("Cmd") or [],
        )

    def runs(self, script: str) -> bool:
        """Whether `/bin/sh -c script` succeeds in a throwaway container of the image."""
        try:
            self._run(["run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", self.spec.image, "-c", script])
            return True
        except ContainerError:
            return False

    def home(self, image: ImageConfig) -> str:
        """The run user's home in the image: $HOME, else /etc/passwd, else /root."""
        if image.env.get("HOME"):
            return image.env["HOME"]
        user = (self.spec.user or image.user or "root").split(":")[0]
        if user in ("root", "0"):
            return "/root"
        try:
            passwd = self._run(["run", "--rm", "--network", "none", "--entrypoint", "cat", self.spec.image, "/etc/passwd"])
        except ContainerError:
            return "/"
        for line in passwd.splitlines():
            fields = line.split(":")
            if len(fields) >= 6 and user in (fields[0], fields[2]):
                return fields[5]
        return "/"

    def create(
        self,
        argv: List[str],
        env: Dict[str, str],
        working_dir: str,
        gpu_ids: Sequence[str],
        hostfile: Path,
    ) -> None:
        """Create the container (not started); `argv` empty means the image's ENTRYPOINT/CMD."""
        self.remove()  # a container left by a lost earlier agent of the same rank
        args = [
            "create",
            *self._authfile(),
            "--name", self.name,
            "--network", "host",
            "--tty",
            # `--env NAME` takes the value from the CLI's own environment: values keep their
            # newlines (an env file cannot) and never appear in a process list.
            *(f"--env={key}" for key in env),
            "--workdir", working_dir,
            "--volume", f"{hostfile}:{CONTAINER_HOSTFILE}:ro",
        ]
        if self.spec.user:
            args += ["--user", self.spec.user]
        if self.spec.privileged or self.spec.docker:
            args.append("--privileged")
        if self.spec.shm_size_gb:
            args += ["--shm-size", f"{int(self.spec.shm_size_gb * 1024)}m"]
        for gpu in gpu_ids:
            args += ["--device", f"nvidia.com/gpu={gpu}"] if self.podman else []
        if gpu_ids and not self.podman:
            args += ["--gpus", f'"device={",".join(gpu_ids)}"']
        for mount in self.spec.mounts:
            source = Path(mount.instance_path)
            if not source.exists():
                if mount.optional:
                    continue
                source.mkdir(parents=True, exist_ok=True)
            args += ["--volume", f"{source}:{mount.path}"]
        if argv:
            # A plain path: podman also reads JSON here, docker does not (it would take
            # `["/bin/sh"]` as the program's name).
            args += ["--entrypoint", argv[0]]
        args.append(self.spec.image)
        args += argv[1:]
        self._run(args, what="creating the container", env=env)

    def copy_in(self, staging: Path) -> None:
        """Copy a staging tree that mirrors container paths (`staging/workflow/...`) into `/`."""
        if any(staging.iterdir()):
            self._run(["cp", f"{staging}/.", f"{self.name}:/"], what="copying files into the container")

    def start_command(self) -> List[str]:
        """What the guard runs: attach to the container until it exits (signals are proxied)."""
        return [self.runtime, "start", "--attach", self.name]

    def remove_command(self) -> List[str]:
        return [self.runtime, "rm", "--force", "--time", "0", self.name] if self.podman else [self.runtime, "rm", "--force", self.name]

    def remove(self) -> None:
        subprocess.run(self.remove_command(), capture_output=True, timeout=COMMAND_TIMEOUT)


def container_argv(shell: str, commands: List[str], entrypoint: Optional[str], docker: bool) -> List[str]:
    """dstack's command in a container: entrypoint + commands, or `shell -i -c joined`; with
    `docker: true` the DinD image's `start-dockerd` runs first."""
    from dstack_ray.exec.commands import command_argv

    if docker:
        commands = ["start-dockerd", *commands]
    return command_argv(shell, commands, entrypoint)


def container_path(path: str, working_dir: str, home: str) -> str:
    """A `files` destination inside the container: `~` = home, relative = working dir."""
    if path == "~" or path.startswith("~/"):
        return str(PurePosixPath(home) / path[2:]) if path != "~" else home
    if PurePosixPath(path).is_absolute():
        return path
    return str(PurePosixPath(working_dir) / path)


def staging_dir(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="stage-", dir=parent))

