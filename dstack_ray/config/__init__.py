"""dstack's task configuration: models, YAML loading, grammar helpers.

The names below are the stable public API (see DESIGN.md).
"""

from dstack_ray.config.cron import next_fire_time, parse_cron
from dstack_ray.config.duration import format_duration, parse_duration
from dstack_ray.config.env import Env, EnvSentinel
from dstack_ray.config.errors import ConfigIssue, ConfigurationError
from dstack_ray.config.interpolate import interpolate
from dstack_ray.config.loader import (
    load_configuration,
    merge_profile,
    parse_configuration,
    read_yaml,
    select_profile,
)
from dstack_ray.config.ports import PortMapping
from dstack_ray.config.profiles import (
    Profile,
    ProfileRetry,
    Retry,
    RetryEvent,
    Schedule,
    SpotPolicy,
    StartupOrder,
    StopCriteria,
    UtilizationPolicy,
    effective_retry,
)
from dstack_ray.config.resources import GPUSpec, Memory, Range, ResourcesSpec
from dstack_ray.config.task import NodeGroup, TaskConfiguration

__all__ = [
    "ConfigIssue",
    "ConfigurationError",
    "Env",
    "EnvSentinel",
    "GPUSpec",
    "Memory",
    "NodeGroup",
    "PortMapping",
    "Profile",
    "ProfileRetry",
    "Range",
    "ResourcesSpec",
    "Retry",
    "RetryEvent",
    "Schedule",
    "SpotPolicy",
    "StartupOrder",
    "StopCriteria",
    "TaskConfiguration",
    "UtilizationPolicy",
    "effective_retry",
    "format_duration",
    "interpolate",
    "load_configuration",
    "merge_profile",
    "next_fire_time",
    "parse_configuration",
    "parse_cron",
    "parse_duration",
    "read_yaml",
    "select_profile",
]
