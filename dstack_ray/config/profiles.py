"""Profile fields (retry, durations, policies, schedule...) shared by tasks and `profiles.yml`."""

from __future__ import annotations

import enum
import re
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator
from typing_extensions import Annotated

from dstack_ray.config.common import CoreModel
from dstack_ray.config.cron import parse_cron
from dstack_ray.config.duration import Duration, IdleDuration, OffableDuration, format_duration

DEFAULT_RETRY_DURATION = 3600
DEFAULT_STOP_DURATION = 300
MIN_UTILIZATION_TIME_WINDOW = 300


class BackendType(str, enum.Enum):
    AMDDEVCLOUD = "amddevcloud"
    AWS = "aws"
    AZURE = "azure"
    CLOUDRIFT = "cloudrift"
    CRUSOE = "crusoe"
    CUDO = "cudo"
    DATACRUNCH = "datacrunch"
    DIGITALOCEAN = "digitalocean"
    DSTACK = "dstack"
    GCP = "gcp"
    HOTAISLE = "hotaisle"
    JARVISLABS = "jarvislabs"
    KUBERNETES = "kubernetes"
    LAMBDA = "lambda"
    REMOTE = "remote"
    NEBIUS = "nebius"
    OCI = "oci"
    RUNPOD = "runpod"
    TENSORDOCK = "tensordock"
    VASTAI = "vastai"
    VERDA = "verda"
    VULTR = "vultr"
    SLURM = "slurm"


class SpotPolicy(str, enum.Enum):
    SPOT = "spot"
    ONDEMAND = "on-demand"
    AUTO = "auto"


class CreationPolicy(str, enum.Enum):
    REUSE = "reuse"
    REUSE_OR_CREATE = "reuse-or-create"


class StartupOrder(str, enum.Enum):
    ANY = "any"
    MASTER_FIRST = "master-first"
    WORKERS_FIRST = "workers-first"


class StopCriteria(str, enum.Enum):
    ALL_DONE = "all-done"
    MASTER_DONE = "master-done"


class RetryEvent(str, enum.Enum):
    NO_CAPACITY = "no-capacity"
    INTERRUPTION = "interruption"
    ERROR = "error"


ALL_RETRY_EVENTS = [RetryEvent.NO_CAPACITY, RetryEvent.INTERRUPTION, RetryEvent.ERROR]


class ProfileRetry(CoreModel):
    on_events: Annotated[
        Optional[List[RetryEvent]],
        Field(description="Events to retry on: no-capacity, interruption, error. Omit for all"),
    ] = None
    duration: Annotated[
        Optional[Duration],
        Field(description="How long to keep retrying (e.g. `4h`). Defaults to `1h`"),
    ] = None

    @model_validator(mode="after")
    def _events_not_empty(self) -> "ProfileRetry":
        if self.on_events is not None and len(self.on_events) == 0:
            raise ValueError("`on_events` cannot be empty")
        return self


class Retry(CoreModel):
    """The effective retry policy after dstack's defaults are applied."""

    on_events: List[RetryEvent]
    duration: int

    def pretty_format(self) -> str:
        events = ", ".join(event.value for event in self.on_events)
        return f"{format_duration(self.duration)}[{events}]"


class UtilizationPolicy(CoreModel):
    min_gpu_utilization: Annotated[
        int, Field(description="Minimum GPU utilization, percent", ge=0, le=100)
    ]
    time_window: Annotated[
        Duration, Field(description="The window every sample of which must be below the minimum (>= 5m)")
    ]

    @field_validator("time_window")
    @classmethod
    def _min_window(cls, value: Duration) -> Duration:
        if value < MIN_UTILIZATION_TIME_WINDOW:
            raise ValueError("Minimum time_window is 5m")
        return value


class Schedule(CoreModel):
    cron: Annotated[
        Union[List[str], str],
        Field(description="One or more cron expressions (UTC) at which the run starts"),
    ]

    @field_validator("cron")
    @classmethod
    def _valid_crons(cls, value: Union[List[str], str]) -> List[str]:
        crons = [value] if isinstance(value, str) else value
        if not crons:
            raise ValueError("At least one cron expression must be specified")
        for cron in crons:
            try:
                parse_cron(cron)
            except ValueError as e:
                raise ValueError(f"Invalid cron expression `{cron}`: {e}") from None
        return crons

    @property
    def crons(self) -> List[str]:
        return [self.cron] if isinstance(self.cron, str) else list(self.cron)


class EntityReference(CoreModel):
    project: Annotated[Optional[str], Field(description="The project; unset for the current one")] = None
    name: Annotated[str, Field(description="The entity name")]

    @classmethod
    def parse(cls, value: Union[str, "EntityReference"]) -> "EntityReference":
        if isinstance(value, EntityReference):
            return value
        parts = value.split("/")
        if any(not part for part in parts) or len(parts) > 2:
            raise ValueError(
                "Invalid entity reference. Only `<name>` or `<project>/<name>` formats are allowed"
            )
        if len(parts) == 1:
            return cls(name=parts[0])
        return cls(project=parts[0], name=parts[1])


class InstanceNameSelector(CoreModel):
    name: Annotated[str, Field(description="The fleet instance name", min_length=1)]


class InstanceHostnameSelector(CoreModel):
    hostname: Annotated[str, Field(description="The instance hostname or IP", min_length=1)]


class FleetInstanceSelector(CoreModel):
    fleet: Annotated[EntityReference, Field(description="`<fleet>`, `<project>/<fleet>` or an object")]
    instance: Annotated[int, Field(description="The fleet instance number", ge=0)]

    @field_validator("fleet", mode="before", json_schema_input_type=Union[EntityReference, str])
    @classmethod
    def _fleet_shorthand(cls, value: Any) -> Any:
        return EntityReference.parse(value) if isinstance(value, str) else value


InstanceSelector = Union[InstanceNameSelector, InstanceHostnameSelector, FleetInstanceSelector]


def _instance_shorthand(value: Any) -> Any:
    return InstanceNameSelector(name=value) if isinstance(value, str) else value


def _fleet_reference(value: Any) -> Any:
    return EntityReference.parse(value) if isinstance(value, str) else value


class VastAIProfileOptions(CoreModel):
    type: Literal["vastai"] = "vastai"
    offer_order: Annotated[Optional[Literal["score", "price"]], Field(description="score or price")] = None
    min_reliability: Annotated[Optional[float], Field(ge=0, le=1)] = None
    min_score: Annotated[Optional[int], Field(ge=0)] = None


_TAG_KEY_RE = re.compile(r"^[_\-a-zA-Z0-9]{1,60}$")
_TAG_VALUE_RE = re.compile(r"^[a-zA-Z0-9 .:/=_\-+@]{0,256}$")


def _check_tags(tags: Optional[Dict[str, str]]) -> Optional[Dict[str, str]]:
    for key, value in (tags or {}).items():
        if not _TAG_KEY_RE.match(key):
            raise ValueError(f"Invalid tag key {key}. The key must match regex '{_TAG_KEY_RE.pattern}'")
        if not _TAG_VALUE_RE.match(value):
            raise ValueError(
                f"Invalid tag value {value}. The value must match regex '{_TAG_VALUE_RE.pattern}'"
            )
    return tags


class ProfileParams(CoreModel):
    backends: Annotated[
        Optional[List[BackendType]], Field(description="Backends to consider (e.g. `[aws, gcp]`)")
    ] = None
    regions: Annotated[Optional[List[str]], Field(description="Regions to consider")] = None
    availability_zones: Annotated[
        Optional[List[str]], Field(description="Availability zones to consider")
    ] = None
    instance_types: Annotated[
        Optional[List[str]], Field(description="Instance types to consider")
    ] = None
    reservation: Annotated[Optional[str], Field(description="A reservation to use")] = None
    spot_policy: Annotated[
        Optional[SpotPolicy], Field(description="spot, on-demand or auto. Defaults to on-demand")
    ] = None
    retry: Annotated[
        Optional[Union[ProfileRetry, bool]],
        Field(description="Resubmit the run on these events. Defaults to `false`"),
    ] = None
    max_duration: Annotated[
        OffableDuration, Field(description="The longest a run may be running (e.g. `2h`); `off`")
    ] = None
    stop_duration: Annotated[
        OffableDuration, Field(description="The graceful stop window. Defaults to `5m`")
    ] = None
    max_price: Annotated[
        Optional[float], Field(description="The maximum price per hour, USD", gt=0.0)
    ] = None
    creation_policy: Annotated[
        Optional[CreationPolicy], Field(description="reuse or reuse-or-create")
    ] = None
    idle_duration: Annotated[
        IdleDuration, Field(description="How long idle instances are kept (e.g. `5m`); `off`")
    ] = None
    utilization_policy: Annotated[
        Optional[UtilizationPolicy], Field(description="Stop the run when GPUs stay idle")
    ] = None
    startup_order: Annotated[
        Optional[StartupOrder], Field(description="any, master-first or workers-first")
    ] = None
    stop_criteria: Annotated[
        Optional[StopCriteria], Field(description="all-done or master-done")
    ] = None
    schedule: Annotated[Optional[Schedule], Field(description="Start the run on a cron schedule")] = None
    fleets: Annotated[
        Optional[List[Annotated[Union[EntityReference, str], AfterValidator(_fleet_reference)]]],
        Field(description="Fleets to consider: `<name>` or `<project>/<name>`"),
    ] = None
    instances: Annotated[
        Optional[
            List[
                Annotated[
                    InstanceSelector,
                    BeforeValidator(_instance_shorthand, json_schema_input_type=Union[InstanceSelector, str]),
                ]
            ]
        ],
        Field(description="Specific fleet instances to consider", min_length=1),
    ] = None
    tags: Annotated[Optional[Dict[str, str]], Field(description="Custom tags")] = None
    backend_options: Annotated[
        Optional[List[VastAIProfileOptions]], Field(description="Backend-specific options")
    ] = None

    _check_tags = field_validator("tags")(_check_tags)

    @field_validator("backend_options")
    @classmethod
    def _unique_backend_options(cls, value: Optional[List[VastAIProfileOptions]]) -> Any:
        seen: set[str] = set()
        for option in value or []:
            if option.type in seen:
                raise ValueError(f"backend_options contains duplicate entry for backend '{option.type}'")
            seen.add(option.type)
        return value


PROFILE_FIELDS: tuple[str, ...] = tuple(ProfileParams.model_fields)


class Profile(ProfileParams):
    name: Annotated[str, Field(description="The profile name, for `--profile`")] = ""
    default: Annotated[bool, Field(description="Use this profile when none is named")] = False


class ProfilesConfig(CoreModel):
    profiles: List[Profile]

    def default(self) -> Optional[Profile]:
        return next((p for p in self.profiles if p.default), None)

    def get(self, name: str) -> Optional[Profile]:
        return next((p for p in self.profiles if p.name == name), None)


def effective_retry(cfg: ProfileParams) -> Optional[Retry]:
    """dstack's effective retry: `true`/`{}` = all events for 1h; omitted fields get those defaults."""
    retry = cfg.retry
    if retry is None or retry is False:
        return None
    if retry is True:
        return Retry(on_events=list(ALL_RETRY_EVENTS), duration=DEFAULT_RETRY_DURATION)
    return Retry(
        on_events=list(retry.on_events) if retry.on_events is not None else list(ALL_RETRY_EVENTS),
        duration=retry.duration if retry.duration is not None else DEFAULT_RETRY_DURATION,
    )
