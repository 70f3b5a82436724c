"""dstack's resources grammar: ranges, memory units, and the cpu/gpu/disk shorthands."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Generic, List, Optional, Tuple, TypeVar, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema
from typing_extensions import Annotated

from dstack_ray.config.common import CoreModel
from dstack_ray.config.errors import short_repr
from dstack_ray.config.gpus import AcceleratorVendor, CPUArchitecture

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=Union[int, float])

# No node has more: a larger (or infinite, or NaN) amount is a typo that would overflow the
# arithmetic of every admission pass.
MAX_RESOURCE_VALUE = 1e9

_SCALAR_INPUTS = [core_schema.int_schema(), core_schema.str_schema()]


class Range(BaseModel, Generic[T]):
    """`4`, `2..8`, `16GB..`, `..4` or `{min, max}`; either end may be open, not both."""

    model_config = ConfigDict(extra="forbid")

    min: Optional[T] = None
    max: Optional[T] = None

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        model_schema = handler(source_type)
        return core_schema.no_info_before_validator_function(
            cls._parse,
            model_schema,
            json_schema_input_schema=core_schema.union_schema([model_schema, *_SCALAR_INPUTS]),
        )

    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str) and ".." in value:
            value = value.replace(" ", "")
            low, high = value.split("..")  # `1...3` fails here: too many values
            return {"min": low or None, "max": high or None}
        if isinstance(value, (str, int, float)):
            return {"min": value, "max": value}
        return value

    @model_validator(mode="after")
    def _check_bounds(self) -> "Range[T]":
        if self.min is None and self.max is None:
            raise ValueError("Invalid empty range: ..")
        for bound in (self.min, self.max):
            if bound is not None and not (0 <= bound <= MAX_RESOURCE_VALUE):
                raise ValueError(
                    f"Invalid value {short_repr(bound)}: use a number from 0 to {MAX_RESOURCE_VALUE:g}"
                )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"Invalid range order: {self.min}..{self.max}")
        return self

    def __str__(self) -> str:
        low = "" if self.min is None else str(self.min)
        high = "" if self.max is None else str(self.max)
        if low == high:
            return low
        return f"{low}..{high}"

    def contains(self, value: float) -> bool:
        """Whether `value` satisfies the range (open ends are unbounded)."""
        if self.min is not None and value < self.min:
            return False
        return self.max is None or value <= self.max

    def intersect(self, other: "Range") -> Optional["Range"]:
        start = max(
            -math.inf if self.min is None else self.min,
            -math.inf if other.min is None else other.min,
        )
        end = min(
            math.inf if self.max is None else self.max,
            math.inf if other.max is None else other.max,
        )
        if start > end:
            return None
        return Range(
            min=None if abs(start) == math.inf else start,
            max=None if abs(end) == math.inf else end,
        )


class Memory(float):
    """A size in GB: `16`, `"16GB"`, `"512MB"`, `"1TB"` (any case, spaces ignored)."""

    @classmethod
    def parse(cls, value: Any) -> "Memory":
        memory = cls._parse(value)
        if not math.isfinite(memory) or memory < 0:
            raise ValueError(f"Invalid memory size: {short_repr(value)}. Use a non-negative size such as 512MB or 16GB")
        return memory

    @classmethod
    def _parse(cls, value: Any) -> "Memory":
        if isinstance(value, (float, int)):
            return cls(value)
        if isinstance(value, str):
            text = value.replace(" ", "").lower()
            try:
                if text.endswith("tb"):
                    return cls(float(text[:-2]) * 1024)
                if text.endswith("gb"):
                    return cls(float(text[:-2]))
                if text.endswith("mb"):
                    return cls(float(text[:-2]) / 1024)
                return cls(float(text))
            except ValueError:
                raise ValueError(
                    f"Invalid memory size: {value}. Use a number of GB or a unit: 512MB, 16GB, 1TB"
                ) from None
        raise ValueError(f"Invalid memory size: {short_repr(value)}")

    def __repr__(self) -> str:
        return f"{self:g}GB"

    __str__ = __repr__

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(
                float, return_schema=core_schema.float_schema()
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        if handler.mode == "validation":
            return {"anyOf": [{"type": "number"}, {"type": "string"}]}
        return {"type": "number"}


class ComputeCapability(Tuple[int, int]):
    """`7.5`, `"7.5"` or `[7, 5]`."""

    @classmethod
    def validate(cls, value: Any) -> Tuple[int, int]:
        if isinstance(value, float):
            value = str(value)
        if isinstance(value, str):
            value = value.strip().split(".")
        if isinstance(value, (tuple, list)) and len(value) == 2:
            try:
                return int(value[0]), int(value[1])
            except (TypeError, ValueError):
                pass
        raise ValueError(f"Invalid compute capability: {short_repr(value)}")

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                list, return_schema=core_schema.list_schema(core_schema.int_schema())
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        pair = {"type": "array", "items": {"type": "integer"}}
        if handler.mode == "validation":
            return {"anyOf": [{"type": "number"}, {"type": "string"}, pair]}
        return pair


DEFAULT_CPU_COUNT = Range[int](min=2)
DEFAULT_MEMORY_SIZE = Range[Memory](min=Memory(8))
DEFAULT_GPU_COUNT = Range[int](min=1)


class CPUSpec(CoreModel):
    arch: Annotated[
        Optional[CPUArchitecture], Field(description="The CPU architecture: `x86` or `arm`")
    ] = None
    count: Annotated[Range[int], Field(description="The number of CPU cores")] = DEFAULT_CPU_COUNT

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        model_schema = handler(source_type)
        return core_schema.no_info_before_validator_function(
            cls.parse,
            model_schema,
            json_schema_input_schema=core_schema.union_schema([model_schema, *_SCALAR_INPUTS]),
        )

    @classmethod
    def parse(cls, value: Any) -> Any:
        """`8`, `2..`, `arm:8`, `16..:x86` (tokens in any order) or `{min, max}`."""
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str):
            spec: dict[str, Any] = {}
            for token in value.replace(" ", "").split(":"):
                if not token:
                    raise ValueError(f"CPU spec contains empty token: {value}")
                if ".." in token or token.isdigit():
                    if "count" in spec:
                        raise ValueError(f"CPU spec count conflict: {value}")
                    spec["count"] = token
                else:
                    try:
                        arch = CPUArchitecture(token.lower())
                    except ValueError:
                        raise ValueError(
                            f"Invalid CPU architecture: {value} (use `x86` or `arm`)"
                        ) from None
                    if "arch" in spec:
                        raise ValueError(f"CPU spec arch conflict: {value}")
                    spec["arch"] = arch
            return spec
        if isinstance(value, Range):
            return {"arch": None, "count": value}
        if isinstance(value, Mapping) and value and value.keys() <= {"min", "max"}:
            return {"arch": None, "count": value}
        return value

    @field_validator("arch", mode="before")
    @classmethod
    def _lower_arch(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class GPUSpec(CoreModel):
    vendor: Annotated[
        Optional[AcceleratorVendor],
        Field(description="The vendor: `nvidia`, `amd`, `google` (alias `tpu`), `intel`, `tenstorrent`"),
    ] = None
    name: Annotated[
        Optional[List[str]], Field(description="The GPU name or names (e.g. `A100` or `[A100, H100]`)")
    ] = None
    count: Annotated[Range[int], Field(description="The number of GPUs")] = DEFAULT_GPU_COUNT
    memory: Annotated[
        Optional[Range[Memory]], Field(description="The memory per GPU (e.g. `16GB`, `24GB..`)")
    ] = None
    total_memory: Annotated[
        Optional[Range[Memory]], Field(description="The total memory of all GPUs (e.g. `80GB..`)")
    ] = None
    compute_capability: Annotated[
        Optional[ComputeCapability], Field(description="The minimum compute capability (e.g. `7.5`)")
    ] = None

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        model_schema = handler(source_type)
        return core_schema.no_info_before_validator_function(
            cls.parse,
            model_schema,
            json_schema_input_schema=core_schema.union_schema([model_schema, *_SCALAR_INPUTS]),
        )

    @classmethod
    def parse(cls, value: Any) -> Any:
        """Tokens split on `:` in any order: vendor, name list, memory (with unit), count."""
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            return value
        spec: dict[str, Any] = {}

        def put(key: str, token_value: Any) -> None:
            if key in spec:
                raise ValueError(f"GPU spec {key} conflict: {value}")
            spec[key] = token_value

        for token in value.replace(" ", "").split(":"):
            if not token:
                raise ValueError(f"GPU spec contains empty token: {value}")
            vendor = _vendor_or_none(token)
            if vendor is not None:
                put("vendor", vendor)
            elif token[0].isalpha():
                names = token.split(",")
                if not all(names):
                    raise ValueError(f"GPU name can not be empty: {value}")
                put("name", names)
            elif any(c.isalpha() for c in token):
                put("memory", token)
            else:
                put("count", token)
        return spec

    def pretty_format(self) -> str:
        """`H100:80GB:1..2`, `nvidia:1..`, `0..`: name or vendor, memory, count, total, cc."""
        details = [str(v) for v in (self.memory, self.count, self.total_memory) if v is not None]
        if self.compute_capability is not None:
            details.append("{}.{}".format(*self.compute_capability))
        names = ",".join(self.name) if self.name else ""
        if names:  # as dstack: `name: [""]` shows no name
            head = [names]
        elif self.vendor:
            head = [self.vendor.value]
        else:
            head = []
        return ":".join(head + details)

    @field_validator("name", mode="before", json_schema_input_type=Optional[Union[List[str], str]])
    @classmethod
    def _names(cls, value: Any) -> Any:
        if value is None:
            return None
        names = value if isinstance(value, list) else [value]
        stripped = [n[4:] if isinstance(n, str) and n.startswith("tpu-") else n for n in names]
        if stripped != names:
            logger.warning("The `tpu-` prefix in GPU names is deprecated; set `vendor: tpu` instead")
        return stripped

    @field_validator("vendor", mode="before")
    @classmethod
    def _vendor(cls, value: Any) -> Any:
        if value is None or isinstance(value, AcceleratorVendor):
            return value
        if isinstance(value, str):
            try:
                return AcceleratorVendor.from_token(value)
            except ValueError:
                known = ", ".join(v.value for v in AcceleratorVendor)
                raise ValueError(f"Unknown GPU vendor `{value}`; use one of: {known}") from None
        raise ValueError(f"Unsupported type: {short_repr(value)}")


def _vendor_or_none(token: str) -> Optional[AcceleratorVendor]:
    try:
        return AcceleratorVendor.from_token(token)
    except ValueError:
        return None


DEFAULT_GPU = GPUSpec(count=Range[int](min=0))


class DiskSpec(CoreModel):
    size: Annotated[Range[Memory], Field(description="The disk size (e.g. `100GB..`)")]

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        model_schema = handler(source_type)
        return core_schema.no_info_before_validator_function(
            cls._parse,
            model_schema,
            json_schema_input_schema=core_schema.union_schema([model_schema, *_SCALAR_INPUTS]),
        )

    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, (str, int, float)):
            return {"size": value}
        return value


DEFAULT_DISK = DiskSpec(size=Range[Memory](min=Memory(100)))


class ResourcesSpec(CoreModel):
    cpu: Annotated[CPUSpec, Field(description="The CPU requirements")] = CPUSpec()
    memory: Annotated[Range[Memory], Field(description="The RAM size (e.g. `8GB..`)")] = (
        DEFAULT_MEMORY_SIZE
    )
    shm_size: Annotated[
        Optional[Memory], Field(description="The shared memory size (e.g. `8GB`)")
    ] = None
    gpu: Annotated[Optional[GPUSpec], Field(description="The GPU requirements")] = DEFAULT_GPU
    disk: Annotated[Optional[DiskSpec], Field(description="The disk requirements")] = DEFAULT_DISK

    def pretty_format(self) -> str:
        """dstack's display string, e.g. `cpu=2.. mem=8GB.. disk=100GB.. gpu=H100:1..2`."""
        arch = f"{self.cpu.arch.value}:" if self.cpu.arch else ""
        parts = [f"cpu={arch}{self.cpu.count}", f"mem={self.memory}"]
        if self.disk:
            parts.append(f"disk={self.disk.size}")
        if self.gpu:
            parts.append(f"gpu={self.gpu.pretty_format()}")
        return " ".join(parts)
