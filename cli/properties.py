"""The plan's property rows as dstack prints them (Type, Resources, Spot policy, Retry policy...)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import List, Optional, Tuple

from dstack_ray.config.checks import with_server_defaults
from dstack_ray.config.cron import next_fire_time
from dstack_ray.config.duration import format_duration
from dstack_ray.config.gpus import CPUArchitecture
from dstack_ray.config.profiles import DEFAULT_STOP_DURATION, SpotPolicy, effective_retry
from dstack_ray.config.resources import ResourcesSpec
from dstack_ray.config.task import PRIORITY_DEFAULT, TaskConfiguration
from dstack_ray.models.secrets import redact_url

DEFAULT_RUN_IDLE_DURATION = 300


def requirements(cfg: TaskConfiguration, resources: ResourcesSpec) -> ResourcesSpec:
    """Resources as dstack's server completes them: x86 without an image, inferred GPU vendor."""
    completed = with_server_defaults(resources, cfg.image, cfg.docker)
    if completed.cpu.arch is None and cfg.image is None:
        completed = completed.model_copy(
            update={"cpu": completed.cpu.model_copy(update={"arch": CPUArchitecture.X86})}
        )
    return completed


def format_price(price: float) -> str:
    """`$0.5`, `$2.19`: dstack strips trailing zeros."""
    return f"${price:3f}".rstrip("0").rstrip(".")


def spot_policy_text(cfg: TaskConfiguration) -> str:
    return (cfg.spot_policy or SpotPolicy.ONDEMAND).value


def duration_text(value: object, default: Optional[int] = None) -> str:
    """An offable duration for display: seconds -> `2h`; off/unset -> `off` (or the default)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return format_duration(value)
    if value is None and default is not None:
        return format_duration(default)
    return "off"


def resources_text(cfg: TaskConfiguration) -> str:
    groups = cfg.node_groups
    if cfg.groups is None:
        return requirements(cfg, groups[0].resources).pretty_format()
    return "; ".join(
        f"{g.name}: {requirements(cfg, g.resources).pretty_format()}" for g in groups
    )


def run_properties(
    cfg: TaskConfiguration, now: Optional[datetime] = None
) -> List[Tuple[str, str]]:
    """(label, value) rows describing how the run will be scheduled; no secrets in them."""
    retry = effective_retry(cfg)
    if cfg.idle_duration is not None and cfg.idle_duration < 0:
        idle = "-"
    else:
        idle = format_duration(cfg.idle_duration if cfg.idle_duration is not None else DEFAULT_RUN_IDLE_DURATION)
    rows = [
        ("Type", f"task (nodes={cfg.nodes_num})"),
        ("Resources", resources_text(cfg)),
        ("Spot policy", spot_policy_text(cfg)),
        ("Max price", format_price(cfg.max_price) if cfg.max_price else "-"),
        ("Retry policy", retry.pretty_format() if retry else "off"),
        ("Idle duration", idle),
        ("Max duration", duration_text(cfg.max_duration)),
    ]
    rows.append(("Reservation", cfg.reservation or "-"))
    rows.append(("Stop duration", duration_text(cfg.stop_duration, DEFAULT_STOP_DURATION)))
    if cfg.nodes_num > 1:
        rows.append(("Startup order", (cfg.startup_order.value if cfg.startup_order else "any")))
        rows.append(("Stop criteria", (cfg.stop_criteria.value if cfg.stop_criteria else "all-done")))
    if cfg.utilization_policy:
        policy = cfg.utilization_policy
        rows.append(
            (
                "Utilization policy",
                f"min GPU utilization {policy.min_gpu_utilization}% over {format_duration(policy.time_window)}",
            )
        )
    if cfg.schedule:
        crons = cfg.schedule.crons
        fire = next_fire_time(crons, now or datetime.now(timezone.utc))
        when = fire.strftime("%Y-%m-%d %H:%M UTC") if fire else "never"
        rows.append(("Schedule", f"{', '.join(crons)} (next: {when})"))
    rows.append(("Priority", str(cfg.priority if cfg.priority is not None else PRIORITY_DEFAULT)))
    if cfg.image:
        rows.append(("Image", cfg.image + (" (registry auth)" if cfg.registry_auth else "")))
    elif cfg.python:
        rows.append(("Python", cfg.python.value))
    if cfg.working_dir:
        rows.append(("Working dir", cfg.working_dir))
    ports = [str(p) for g in cfg.node_groups for p in g.ports]
    if ports:
        rows.append(("Ports", ", ".join(ports)))
    if cfg.env:
        rows.append(("Env", ", ".join(cfg.env.keys())))
    if cfg.files:
        rows.append(("Files", ", ".join(f"{f.local_path} -> {f.path}" for f in cfg.files)))
    if cfg.repos:
        repo = cfg.repos[0]
        rows.append(("Repo", f"{repo.local_path or redact_url(repo.url or '')} -> {repo.path}"))
    return rows
