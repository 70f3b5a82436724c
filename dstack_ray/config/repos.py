"""`repos`: one git repo (a local path or a URL) checked out in the run."""

from __future__ import annotations

import enum
import re
import string
from pathlib import PurePosixPath
from typing import Any, Optional

from pydantic import Field, GetCoreSchemaHandler, field_validator, model_validator
from pydantic_core import CoreSchema, core_schema
from typing_extensions import Annotated

from dstack_ray.config.common import CoreModel
from dstack_ray.config.errors import short_repr


class RepoExistsAction(str, enum.Enum):
    ERROR = "error"
    SKIP = "skip"


COMMIT_RE = re.compile(r"[0-9a-fA-F]{4,64}")


class RepoSpec(CoreModel):
    local_path: Annotated[
        Optional[str],
        Field(description="A local git repo; relative to the configuration file. Not with `url`"),
    ] = None
    url: Annotated[Optional[str], Field(description="A git URL. Not with `local_path`")] = None
    branch: Annotated[Optional[str], Field(description="The branch to check out")] = None
    hash: Annotated[Optional[str], Field(description="The commit to check out")] = None
    path: Annotated[
        str, Field(description="Where the repo goes in the run; relative to the working directory")
    ] = "."
    if_exists: Annotated[
        RepoExistsAction, Field(description="What to do when `path` exists and is not empty: error, skip")
    ] = RepoExistsAction.ERROR

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
        """`<local_path|url>[:path]`; a URL has `@` before the first `:` or `//` after it."""
        if not isinstance(value, str):
            return value
        is_url = False
        parts = value.split(":")
        if len(parts) > 1:
            if "@" in parts[0] or parts[1].startswith("//"):
                parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
                is_url = True
            elif len(parts[0]) == 1 and parts[0] in string.ascii_letters and parts[1][:1] in ("\\", "/"):
                parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
        if len(parts) > 2:
            raise ValueError(f"Invalid repo: {value} (use `<local path or url>[:<path>]`)")
        spec = {"url" if is_url else "local_path": parts[0]}
        if len(parts) == 2:
            spec["path"] = parts[1]
        return spec

    @model_validator(mode="after")
    def _one_source(self) -> "RepoSpec":
        if self.local_path and self.url:
            raise ValueError("`local_path` and `url` are mutually exclusive")
        if not self.local_path and not self.url:
            raise ValueError("Either `local_path` or `url` must be specified")
        return self

    @field_validator("hash")
    @classmethod
    def _commit_hash(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not COMMIT_RE.fullmatch(value):
            raise ValueError(f"invalid commit hash {short_repr(value)}: use 4 to 64 hex digits")
        return value

    @field_validator("branch", "url")
    @classmethod
    def _not_an_option(cls, value: Optional[str]) -> Optional[str]:
        # git would read a leading `-` as an option (`--upload-pack=<command>` runs a command).
        if value is not None and (value.startswith("-") or any(c.isspace() or ord(c) < 32 for c in value)):
            raise ValueError(f"invalid value {short_repr(value)}: it may not start with `-` or contain spaces")
        return value

    @field_validator("path")
    @classmethod
    def _no_tilde_user(cls, value: str) -> str:
        if value.startswith("~") and PurePosixPath(value).parts[0] != "~":
            raise ValueError("`~username` syntax is not supported")
        return value
