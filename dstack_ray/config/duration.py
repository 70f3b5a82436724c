"""dstack's duration grammar: seconds as a number, or `<int><s|m|h|d|w>`."""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Optional, Union

from pydantic import BeforeValidator, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema
from typing_extensions import Annotated

from dstack_ray.config.errors import short_repr

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+) *([smhdw])$")
_UNITS_DESC = sorted(_UNITS.items(), key=lambda item: -item[1])


def parse_duration(value: Union[int, float, str, None]) -> Optional[int]:
    """`90` -> 90, `"5m"` -> 300, `"2h"` -> 7200; `None` stays `None`.

    Floats are truncated (`1.9` -> 1) and numeric strings may be negative, as in dstack;
    compound (`1h30m`), fractional (`1.5h`) and upper-case (`1H`) forms are rejected.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)):  # bools included, as in dstack: `true` is 1 second
        if isinstance(value, float) and not math.isfinite(value):  # YAML `.inf`, `.nan`
            raise ValueError(f"Cannot parse the duration {short_repr(value)}")
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(
                f"Cannot parse the duration {value}: use seconds or a number with one unit"
                " of s, m, h, d, w (e.g. 90, 30m, 2h)"
            )
        return int(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"Cannot parse the duration {short_repr(value)}")


def parse_off_duration(value: Any) -> Union[Literal["off"], int, None]:
    """`off`/`false` -> "off"; `true`/None -> None (the default); negatives are rejected."""
    if value == "off" or value is False:
        return "off"
    if value is True or value is None:
        return None
    seconds = parse_duration(value)
    if seconds is not None and seconds < 0:
        raise ValueError("Duration cannot be negative")
    return seconds


def parse_idle_duration(value: Any) -> Optional[int]:
    """`off`/`false`/-1 -> -1 (never); `true` -> None; negatives are kept, as dstack does."""
    if value == "off" or value is False or (value == -1 and not isinstance(value, bool)):
        return -1
    if value is True:
        return None
    return parse_duration(value)


def format_duration(seconds: int) -> str:
    """The largest unit that divides exactly: 5400 -> `90m`, 90000 -> `25h`, 0 -> `0s`."""
    if seconds < 0:
        raise ValueError("Seconds cannot be negative")
    if seconds == 0:
        return "0s"
    for unit, multiplier in _UNITS_DESC:
        if seconds % multiplier == 0:
            return f"{seconds // multiplier}{unit}"
    return f"{seconds}s"


class Duration(int):
    """A required duration in seconds, accepted as a number or a `5m`-style string."""

    @classmethod
    def parse(cls, value: Any) -> "Duration":
        seconds = parse_duration(value)
        if seconds is None:
            raise ValueError("A duration is required")
        return cls(seconds)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(
                int, return_schema=core_schema.int_schema()
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        if handler.mode == "validation":
            return {"anyOf": [{"type": "integer"}, {"type": "string"}]}
        return {"type": "integer"}


OffableDuration = Annotated[
    Optional[Union[Literal["off"], int]],
    BeforeValidator(parse_off_duration, json_schema_input_type=Optional[Union[int, str, bool]]),
]
"""`None` (unset), `"off"`, or seconds; `true` means the default, `false` means off."""

IdleDuration = Annotated[
    Optional[int],
    BeforeValidator(parse_idle_duration, json_schema_input_type=Optional[Union[int, str, bool]]),
]
"""Seconds, or -1 for "off" (also written `off`, `false`, `-1`)."""
