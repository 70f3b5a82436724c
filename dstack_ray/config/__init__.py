"""dstack's task configuration: models, YAML loading, grammar helpers.

The names below are the stable public API (see DESIGN.md).
"""

import importlib
from typing import Any

# Light, and `interpolate` is also a submodule's name: importing that submodule would otherwise
# leave the module where the function is expected.
from dstack_ray.config.errors import ConfigIssue, ConfigurationError
from dstack_ray.config.interpolate import interpolate

# Each name is imported from its module on first use: a process that needs one (the CLI's
# error boundary needs ConfigurationError) does not build every model of the configuration.
_MODULES = {
    "next_fire_time": "cron",
    "parse_cron": "cron",
    "format_duration": "duration",
    "parse_duration": "duration",
    "Env": "env",
    "EnvSentinel": "env",
    "load_configuration": "loader",
    "merge_profile": "loader",
    "parse_configuration": "loader",
    "read_yaml": "loader",
    "select_profile": "loader",
    "PortMapping": "ports",
    "Profile": "profiles",
    "ProfileRetry": "profiles",
    "Retry": "profiles",
    "RetryEvent": "profiles",
    "Schedule": "profiles",
    "SpotPolicy": "profiles",
    "StartupOrder": "profiles",
    "StopCriteria": "profiles",
    "UtilizationPolicy": "profiles",
    "effective_retry": "profiles",
    "GPUSpec": "resources",
    "Memory": "resources",
    "Range": "resources",
    "ResourcesSpec": "resources",
    "NodeGroup": "task",
    "TaskConfiguration": "task",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    globals()[name] = value
    return value

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
