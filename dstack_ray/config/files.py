"""`files`: `local[:container]` mappings shipped into the run's working directory."""

from __future__ import annotations

import pathlib
import string
from typing import Any

from pydantic import Field, GetCoreSchemaHandler, field_validator
from pydantic_core import CoreSchema, core_schema
from typing_extensions import Annotated

from dstack_ray.config.common import CoreModel


def _is_windows_drive(parts: list[str]) -> bool:
    return (
        len(parts) > 1
        and len(parts[0]) == 1
        and parts[0] in string.ascii_letters
        and parts[1][:1] in ("\\", "/")
    )


class FilePathMapping(CoreModel):
    local_path: Annotated[
        str, Field(description="Path on your machine; relative to the configuration file's folder")
    ]
    path: Annotated[
        str, Field(description="Path in the run; relative to the working directory, `~` = home")
    ]

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        model_schema = handler(source_type)
        return core_schema.no_info_before_validator_function(
            cls._shorthand,
            model_schema,
            json_schema_input_schema=core_schema.union_schema(
                [model_schema, core_schema.str_schema()]
            ),
        )

    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        parts = value.split(":")
        if _is_windows_drive(parts):
            parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
        if len(parts) == 1:
            return {"local_path": parts[0], "path": parts[0]}
        if len(parts) == 2:
            return {"local_path": parts[0], "path": parts[1]}
        raise ValueError(f"invalid file path mapping: {value} (use `local_path[:path]`)")

    @field_validator("path")
    @classmethod
    def _unix_path(cls, value: str) -> str:
        if pathlib.PureWindowsPath(value).is_absolute():
            raise ValueError(f"path must be a Unix file path: {value}")
        return value
