"""`ports`: `8080`, `"80:8080"`, `"*:8080"` or `{local_port, container_port}`."""

from __future__ import annotations

import re
from typing import Any, Optional, Union

from pydantic import BeforeValidator, Field, conint, constr
from typing_extensions import Annotated

from dstack_ray.config.common import CoreModel

ValidPort = conint(gt=0, le=65535)
RESERVED_PORTS = range(10000, 11000)  # dstack keeps these for itself and drops them silently

_MAPPING_RE = re.compile(r"^(?:(\d+|\*):)?(\d+)?$")


class PortMapping(CoreModel):
    local_port: Annotated[
        Optional[ValidPort], Field(description="The local port; unset means any free port")
    ] = None
    container_port: Annotated[ValidPort, Field(description="The port in the run (rank 0)")]

    @classmethod
    def parse(cls, value: str) -> "PortMapping":
        match = _MAPPING_RE.search(value)
        if match is None or match.group(2) is None:
            raise ValueError(
                f"Invalid port mapping `{value}`: use PORT, LOCAL:PORT or *:PORT (e.g. 8080, 80:8080)"
            )
        local, container = match.groups()
        if local is None:
            local_port: Optional[int] = int(container)
        elif local == "*":
            local_port = None
        else:
            local_port = int(local)
        return cls(local_port=local_port, container_port=int(container))

    def __str__(self) -> str:
        local = "*" if self.local_port is None else str(self.local_port)
        return f"{local}:{self.container_port}"


def _parse_port(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return {"local_port": value, "container_port": value}
    if isinstance(value, str):
        return PortMapping.parse(value)
    return value


PortMappingOrShorthand = Annotated[
    PortMapping,
    BeforeValidator(
        _parse_port,
        json_schema_input_type=Union[ValidPort, constr(pattern=r"^(?:[0-9]+|\*):[0-9]+$"), PortMapping],
    ),
]


def filter_reserved_ports(ports: list[PortMapping]) -> list[PortMapping]:
    """dstack silently drops container ports 10000-10999; so do we."""
    return [p for p in ports if p.container_port not in RESERVED_PORTS]
