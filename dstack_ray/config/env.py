"""`env`: a mapping or a list of `KEY=VALUE` / `KEY` (a bare KEY is required from the caller)."""

from __future__ import annotations

import re
from typing import Any, Dict, Iterator, List, Mapping, Tuple, Union

from pydantic import ConfigDict, Field, RootModel, field_validator
from typing_extensions import Annotated

from dstack_ray.config.common import CoreModel
from dstack_ray.config.errors import ConfigurationError, short_repr

# dstack's pattern. dstack checks it with pydantic's Rust regex engine, where `.` excludes `\n`
# and `$` is the end of the text, so an item with a line break (e.g. a YAML `- |` block) is
# rejected. Python's `$` would also match before a final `\n`: ENV_ITEM_FULL_RE uses `\Z`.
_KEY = r"[a-zA-Z_][a-zA-Z0-9_]*"
ENV_ITEM_PATTERN = rf"^({_KEY})(=.*$|$)"
ENV_ITEM_FULL_RE = re.compile(rf"({_KEY})(=.*\Z|\Z)")
ENV_KEY_RE = re.compile(_KEY)


class EnvSentinel(CoreModel):
    """A variable named without a value: it must come from the submitting environment."""

    key: str

    def __str__(self) -> str:
        return f"EnvSentinel({self.key})"


def parse_env_item(item: str) -> Tuple[str, Union[str, EnvSentinel]]:
    """`K=V` -> (K, V); `K=` -> (K, ""); `K` -> (K, EnvSentinel(K))."""
    if not ENV_ITEM_FULL_RE.match(item):
        raise ValueError(
            f"Invalid environment variable `{item}`: use KEY=VALUE, or KEY alone to take the value"
            " from your environment; KEY starts with a letter or _ and has letters, digits and _"
        )
    if "=" in item:
        key, value = item.split("=", 1)
        return key, value
    return item, EnvSentinel(key=item)


_EnvInput = Union[
    List[Annotated[str, Field(pattern=ENV_ITEM_PATTERN)]],
    Dict[str, Union[str, EnvSentinel]],
]


class Env(RootModel[Dict[str, Union[str, EnvSentinel]]]):
    """Environment variables; always a dict once parsed. `as_dict()` requires every value set."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    root: Dict[str, Union[str, EnvSentinel]] = {}

    @field_validator("root", mode="before", json_schema_input_type=_EnvInput)
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            # Deviation: dstack leaves mapping keys unchecked; a key a shell cannot export
            # (`#X`, `A-B`, `A B`) would be dropped or mangled on the node, so it is refused.
            for key in value:
                if not isinstance(key, str) or not ENV_KEY_RE.fullmatch(key):
                    raise ValueError(
                        f"Invalid environment variable name {short_repr(key)}: it starts with a letter"
                        " or _ and has letters, digits and _"
                    )
            return value
        if not isinstance(value, list):
            return value
        parsed: Dict[str, Union[str, EnvSentinel]] = {}
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"Invalid environment variable {short_repr(item)}: use KEY=VALUE or KEY")
            key, val = parse_env_item(item)
            if key in parsed:
                raise ValueError(f"Duplicate environment variable: {item}")
            parsed[key] = val
        return parsed

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.root)

    def __contains__(self, key: object) -> bool:
        return key in self.root

    def __len__(self) -> int:
        return len(self.root)

    def __getitem__(self, key: str) -> Union[str, EnvSentinel]:
        return self.root[key]

    def __setitem__(self, key: str, value: Union[str, EnvSentinel]) -> None:
        self.root[key] = value

    def keys(self):
        return self.root.keys()

    def values(self):
        return self.root.values()

    def items(self):
        return self.root.items()

    def update(self, other: Union["Env", Mapping[str, Union[str, EnvSentinel]]]) -> None:
        self.root.update(other.root if isinstance(other, Env) else other)

    def unresolved(self) -> List[str]:
        """Names still waiting for a value, sorted."""
        return sorted(k for k, v in self.root.items() if isinstance(v, EnvSentinel))

    def resolve(self, environ: Mapping[str, str]) -> "Env":
        """A copy with every required variable taken from `environ` where it is set there."""
        resolved: Dict[str, Union[str, EnvSentinel]] = {}
        for key, value in self.root.items():
            if isinstance(value, EnvSentinel) and key in environ:
                resolved[key] = environ[key]
            else:
                resolved[key] = value
        return Env(resolved)

    def as_dict(self) -> Dict[str, str]:
        """The variables as plain strings; ConfigurationError names any still unresolved."""
        missing = self.unresolved()
        if missing:
            raise ConfigurationError(
                f"not all variables are resolved: {', '.join(missing)}",
                path="env",
                hint="set them in your environment or pass `-e NAME=VALUE`",
            )
        return {k: v for k, v in self.root.items() if isinstance(v, str)}
