"""`volumes`: network volumes by name, or instance (host) paths mounted into the run."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, List, Union

from pydantic import BeforeValidator, Field, field_validator
from typing_extensions import Annotated

from dstack_ray.config.common import CoreModel


def _absolute_path(path: str) -> str:
    if not path:
        raise ValueError("empty path")
    if ":" in path or "," in path:
        # the container runtime reads `:ro`, `:z`, `,` as mount options
        raise ValueError(f"`:` and `,` are not allowed in a volume path: {path}")
    posix = PurePosixPath(path)
    if not posix.is_absolute():
        raise ValueError(f"path must be absolute: {path}")
    if ".." in posix.parts:
        raise ValueError(f".. are not allowed: {path}")
    return str(posix)


class VolumeMountPoint(CoreModel):
    name: Annotated[
        Union[str, List[str]],
        Field(description="The network volume name, or a list of names (one of them is mounted)"),
    ]
    path: Annotated[str, Field(description="The absolute path in the run")]

    _check_path = field_validator("path")(_absolute_path)


class InstanceMountPoint(CoreModel):
    instance_path: Annotated[str, Field(description="The absolute path on the node (host)")]
    path: Annotated[str, Field(description="The absolute path in the run")]
    optional: Annotated[
        bool, Field(description="Allow running where instance volumes are not supported")
    ] = False

    _check_instance_path = field_validator("instance_path")(_absolute_path)
    _check_path = field_validator("path")(_absolute_path)


MountPoint = Union[VolumeMountPoint, InstanceMountPoint]


def _parse_mount_point(value: Any) -> Any:
    """`name:/path` is a network volume; `/host/path:/path` (a `/` in the source) an instance mount."""
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    if len(parts) != 2:
        raise ValueError(f"invalid mount point format: {value} (use `name:/path` or `/host:/path`)")
    source, target = parts
    if "/" in source:
        return InstanceMountPoint(instance_path=source, path=target)
    return VolumeMountPoint(name=source, path=target)


MountPointOrShorthand = Annotated[
    MountPoint,
    BeforeValidator(_parse_mount_point, json_schema_input_type=Union[MountPoint, str]),
]
