"""`type: task`: the configuration model, field for field as dstack defines it."""

from __future__ import annotations

import enum
import re
import shlex
from collections import Counter
from pathlib import PurePosixPath
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from typing_extensions import Annotated

from dstack_ray.config.common import CoreModel
from dstack_ray.config.env import Env
from dstack_ray.config.errors import short_repr
from dstack_ray.config.files import FilePathMapping
from dstack_ray.config.ports import PortMappingOrShorthand
from dstack_ray.config.profiles import ProfileParams
from dstack_ray.config.repos import RepoSpec
from dstack_ray.config.resources import ResourcesSpec
from dstack_ray.config.volumes import MountPointOrShorthand

GROUP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
RUN_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,40}$")
DEFAULT_GROUP_NAME = "0"
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 100, 0


class PythonVersion(str, enum.Enum):
    PY39 = "3.9"
    PY310 = "3.10"
    PY311 = "3.11"
    PY312 = "3.12"
    PY313 = "3.13"
    PY314 = "3.14"


class RegistryAuth(CoreModel):
    """Credentials for pulling a private image. Never printed: see `masked()`."""

    model_config = ConfigDict(frozen=True)

    username: Annotated[str, Field(description="The username")]
    password: Annotated[str, Field(description="The password or access token")]

    def __repr__(self) -> str:
        return f"RegistryAuth(username={self.username!r}, password='***')"

    __str__ = __repr__


def check_unix_user(value: str) -> str:
    """`user[:group]` with names or non-negative ids, as docker takes it."""
    parts = value.split(":")
    problem = None
    if len(parts) > 2:
        problem = "too many parts"
    elif not parts[0]:
        problem = "empty user name or id"
    elif any(part.startswith("-") and not part.lstrip("-").isdigit() for part in parts):
        problem = "a name cannot start with `-`"
    elif parts[0].lstrip("-").isdigit() and int(parts[0]) < 0:
        problem = f"negative uid {parts[0]}"
    elif len(parts) == 2 and not parts[1]:
        problem = "empty group name or id"
    elif len(parts) == 2 and parts[1].lstrip("-").isdigit() and int(parts[1]) < 0:
        problem = f"negative gid {parts[1]}"
    if problem:
        raise ValueError(f"invalid user format: {problem} (use `user[:group]`, names or ids)")
    return value


class NodeGroup(CoreModel):
    name: Annotated[
        Optional[str], Field(description="The group name; defaults to its index ('0', '1', ...)")
    ] = None
    nodes: Annotated[int, Field(description="The number of nodes in this group", ge=1)] = 1
    resources: Annotated[
        ResourcesSpec,
        Field(description="Resources per node of this group (not inherited from the top level)"),
    ] = ResourcesSpec()
    commands: Annotated[List[str], Field(description="The commands nodes of this group run")] = []
    ports: Annotated[
        List[PortMappingOrShorthand], Field(description="Ports to expose for this group")
    ] = []

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not GROUP_NAME_RE.match(value):
            raise ValueError(f"Node group name should match regex '{GROUP_NAME_RE.pattern}'")
        return value


class TaskConfiguration(ProfileParams):
    """A dstack task. Field names, defaults and rules are dstack's."""

    type: Literal["task"] = "task"
    name: Annotated[Optional[str], Field(description="The run name; generated when unset")] = None
    image: Annotated[Optional[str], Field(description="The container image to run commands in")] = None
    user: Annotated[
        Optional[str], Field(description="The user in the container, `user[:group]`")
    ] = None
    privileged: Annotated[bool, Field(description="Run the container privileged")] = False
    entrypoint: Annotated[Optional[str], Field(description="The container entrypoint")] = None
    working_dir: Annotated[
        Optional[str], Field(description="The absolute working directory in the run")
    ] = None
    home_dir: Annotated[str, Field(description="Deprecated; has no effect")] = "/root"
    registry_auth: Annotated[
        Optional[RegistryAuth], Field(description="Credentials for a private image")
    ] = None
    python: Annotated[
        Optional[PythonVersion], Field(description="The Python version (not with `image`)")
    ] = None
    nvcc: Annotated[Optional[bool], Field(description="Include the CUDA compiler (not with `docker`)")] = None
    single_branch: Annotated[
        Optional[bool], Field(description="Clone only the current branch (default for tasks: true)")
    ] = None
    env: Annotated[Env, Field(description="Environment variables: a mapping or a list")] = Env()
    shell: Annotated[
        Optional[str], Field(description="`sh`, `bash` or an absolute path to a shell")
    ] = None
    resources: Annotated[ResourcesSpec, Field(description="Resources per node")] = ResourcesSpec()
    priority: Annotated[
        Optional[int],
        Field(description="0..100; higher runs start first. Defaults to 0", ge=PRIORITY_MIN, le=PRIORITY_MAX),
    ] = None
    volumes: Annotated[List[MountPointOrShorthand], Field(description="Volumes to mount")] = []
    docker: Annotated[
        Optional[bool], Field(description="Docker inside the run (not with image/python/nvcc)")
    ] = None
    repos: Annotated[List[RepoSpec], Field(description="The git repo to check out (at most one)")] = []
    files: Annotated[
        List[FilePathMapping], Field(description="Local files to copy into the run")
    ] = []
    dstack: Annotated[bool, Field(description="Expose the dstack server in the run (not on Ray)")] = False
    setup: Annotated[List[str], Field(description="Deprecated; has no effect for tasks")] = []
    commands: Annotated[List[str], Field(description="The shell commands to run")] = []
    ports: Annotated[List[PortMappingOrShorthand], Field(description="Ports to forward")] = []
    nodes: Annotated[
        Optional[int], Field(description="The number of nodes (homogeneous multi-node)", ge=1)
    ] = None
    groups: Annotated[
        Optional[List[NodeGroup]],
        Field(description="Node groups for heterogeneous multi-node tasks (not with `nodes`)"),
    ] = None

    @field_validator("image")
    @classmethod
    def _valid_image(cls, value: Optional[str]) -> Optional[str]:
        if value and (value.startswith("-") or any(c.isspace() for c in value)):
            raise ValueError(f"invalid image reference {short_repr(value)}: e.g. `python:3.12` or `ghcr.io/org/image:tag`")
        return value

    @field_validator("entrypoint")
    @classmethod
    def _splittable_entrypoint(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                shlex.split(value)
            except ValueError as e:
                raise ValueError(f"entrypoint cannot be split into arguments ({e}): check its quotes") from None
        return value

    # Where the configuration was read from, so later checks can name file and line.
    _source_file: Optional[str] = PrivateAttr(default=None)
    _source_lines: Dict[Tuple[Union[str, int], ...], int] = PrivateAttr(default_factory=dict)

    def set_source(self, file: Optional[str], lines: Dict[Tuple[Union[str, int], ...], int]) -> None:
        self._source_file = file
        self._source_lines = dict(lines)

    @property
    def source_file(self) -> Optional[str]:
        return self._source_file

    def source_line(self, path: Tuple[Union[str, int], ...]) -> Optional[int]:
        """The YAML line of `path`, or of its nearest parent present in the file."""
        for end in range(len(path), 0, -1):
            if path[:end] in self._source_lines:
                return self._source_lines[path[:end]]
        return None

    @model_validator(mode="before")
    @classmethod
    def _nodes_xor_groups(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("groups") is not None and data.get("nodes") is not None:
            raise ValueError("`nodes` and `groups` are mutually exclusive")
        return data

    @field_validator("python", mode="before")
    @classmethod
    def _python(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("image"):
            raise ValueError("`image` and `python` are mutually exclusive fields")
        if isinstance(value, float):
            value = "3.10" if str(value) == "3.1" else str(value)
        return value

    @field_validator("docker", mode="before")
    @classmethod
    def _docker(cls, value: Any, info: ValidationInfo) -> Any:
        if value is True:
            for other in ("image", "python", "nvcc"):
                if info.data.get(other):
                    raise ValueError(f"`{other}` and `docker` are mutually exclusive fields")
        return value

    @field_validator("repos")
    @classmethod
    def _one_repo(cls, value: List[RepoSpec]) -> List[RepoSpec]:
        if len(value) > 1:
            raise ValueError("A maximum of one repo is currently supported")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_unix_user(value)

    @field_validator("shell")
    @classmethod
    def _shell(cls, value: Optional[str]) -> Optional[str]:
        if value is None or value in ("sh", "bash") or PurePosixPath(value).is_absolute():
            return value
        raise ValueError("The value must be `sh`, `bash`, or an absolute path")

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: Optional[List[NodeGroup]]) -> Optional[List[NodeGroup]]:
        if value is None:
            return value
        if not value:
            raise ValueError("`groups` cannot be an empty list")
        for index, group in enumerate(value):
            if group.name is None:
                group.name = str(index)
        duplicates = [name for name, count in Counter(g.name for g in value).items() if count > 1]
        if duplicates:
            raise ValueError(
                f"Duplicate node group names found: {duplicates}. Each node group must have a unique name."
            )
        return value

    @model_validator(mode="after")
    def _commands_or_image(self) -> "TaskConfiguration":
        if self.groups is None:
            if not self.commands and not self.image:
                raise ValueError("Either `commands` or `image` must be set")
            return self
        for field in ("commands", "ports"):
            if getattr(self, field):
                raise ValueError(
                    f"Top-level `{field}` is not allowed when `groups` is set."
                    f" Specify `{field}` in each node group instead."
                )
        if self.entrypoint is not None:
            raise ValueError(
                "Top-level `entrypoint` is not allowed when `groups` is set."
                " Specify `commands` in each node group instead."
            )
        for group in self.groups:
            if not group.commands and self.image is None:
                raise ValueError(
                    f"Node group '{group.name}': either `commands` must be set in the group,"
                    " or `image` at the task level."
                )
        return self

    @property
    def node_groups(self) -> List[NodeGroup]:
        """The groups; without `groups`, one group "0" with the top-level nodes/commands/resources."""
        if self.groups is not None:
            return self.groups
        return [
            NodeGroup(
                name=DEFAULT_GROUP_NAME,
                nodes=self.nodes if self.nodes is not None else 1,
                commands=self.commands,
                resources=self.resources,
                ports=self.ports,
            )
        ]

    @property
    def nodes_num(self) -> int:
        return sum(group.nodes for group in self.node_groups)

    @property
    def effective_shell(self) -> str:
        """dstack's default: /bin/bash without an image, /bin/sh with one."""
        if self.shell is None:
            return "/bin/sh" if self.image else "/bin/bash"
        return {"sh": "/bin/sh", "bash": "/bin/bash"}.get(self.shell, self.shell)
