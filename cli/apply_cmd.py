"""`dstack-ray apply`: plan, confirm, submit, then follow the run (logs and ports)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from pydantic import ValidationError
from rich.markup import escape

from dstack_ray.config import TaskConfiguration
from dstack_ray.config.duration import parse_off_duration
from dstack_ray.config.env import parse_env_item
from dstack_ray.config.ports import PortMapping
from dstack_ray.config.profiles import ProfileRetry
from dstack_ray.config.resources import CPUSpec, DiskSpec, GPUSpec, Memory, Range
from dstack_ray_cli.attach import attach
from dstack_ray_cli.common import AddressOption, connect
from dstack_ray_cli.console import CLIError, console, err_console
from dstack_ray_cli.plan_view import print_plan


def default_file() -> Path:
    for name in (".dstack.yml", ".dstack.yaml"):
        if Path(name).exists():
            return Path(name)
    raise CLIError("No configuration file specified via `-f` and no default .dstack.yml configuration found")


def parse_env_options(values: List[str]) -> Dict[str, str]:
    """`-e KEY=VALUE` or `-e KEY` (taken from this shell's environment)."""
    env: Dict[str, str] = {}
    for value in values:
        try:
            key, parsed = parse_env_item(value)
        except ValueError as e:
            raise CLIError(f"-e {value}: {e}") from None
        if isinstance(parsed, str):
            env[key] = parsed
        elif key in os.environ:
            env[key] = os.environ[key]
        else:
            raise CLIError(f"-e {key}: Environment variable {key} is not set", f"export {key}, or pass -e {key}=VALUE")
    return env


def merge_ports(configured: List[PortMapping], options: List[str]) -> List[PortMapping]:
    """dstack's `-p` rule: an option replaces the configured mapping of the same container port."""
    merged = {p.container_port: p for p in configured}
    seen_container: set = set()
    for option in options:
        try:
            mapping = PortMapping.parse(option)
        except ValueError as e:
            raise CLIError(f"-p {option}: {e}") from None
        if mapping.container_port in seen_container:
            raise CLIError(f"Port {mapping.container_port} is already in use")
        seen_container.add(mapping.container_port)
        merged[mapping.container_port] = mapping
    locals_ = [p.local_port for p in merged.values() if p.local_port is not None]
    duplicates = {p for p in locals_ if locals_.count(p) > 1}
    if duplicates:
        raise CLIError(f"Port {sorted(duplicates)[0]} is already in use")
    return list(merged.values())


def profile_overrides(
    backends: List[str],
    regions: List[str],
    spot_policy: Optional[str],
    max_price: Optional[float],
    idle_duration: Optional[str],
    reuse: bool,
) -> Dict[str, Any]:
    """dstack's profile options of `apply`/`offer` as configuration fields (validated by the
    model). On Ray most only filter offers; the plan says which."""
    fields: Dict[str, Any] = {}
    if backends:
        fields["backends"] = backends
    if regions:
        fields["regions"] = regions
    if spot_policy is not None:
        fields["spot_policy"] = spot_policy
    if max_price is not None:
        fields["max_price"] = max_price
    if idle_duration is not None:
        fields["idle_duration"] = idle_duration
    if reuse:
        fields["creation_policy"] = "reuse"
    return fields


def spot_option(spot: bool, on_demand: bool, spot_auto: bool, spot_policy: Optional[str]) -> Optional[str]:
    chosen = [name for name, on in (("spot", spot), ("on-demand", on_demand), ("auto", spot_auto)) if on]
    if spot_policy is not None:
        chosen.append(spot_policy)
    if len(set(chosen)) > 1:
        raise CLIError("--spot, --on-demand, --spot-auto and --spot-policy exclude each other")
    return chosen[0] if chosen else None


def apply_overrides(
    cfg: TaskConfiguration,
    gpu: Optional[str],
    cpu: Optional[str],
    memory: Optional[str],
    disk: Optional[str],
    max_duration: Optional[str],
    retry: Optional[bool],
    retry_duration: Optional[str],
    profile: Optional[Dict[str, Any]] = None,
) -> TaskConfiguration:
    """The command-line resource and profile options, validated like the file's fields."""
    resources: Dict[str, Any] = {}
    try:
        if gpu is not None:
            resources["gpu"] = GPUSpec.model_validate(gpu)
        if cpu is not None:
            resources["cpu"] = CPUSpec.model_validate(cpu)
        if memory is not None:
            resources["memory"] = Range[Memory].model_validate(memory)
        if disk is not None:
            resources["disk"] = DiskSpec.model_validate(disk)
    except ValidationError as e:
        raise CLIError(f"invalid resource option: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    updates: Dict[str, Any] = {}
    if resources:
        if cfg.groups is not None:
            raise CLIError("--gpu/--cpu/--memory/--disk set top-level resources; this task uses `groups`", "set resources in each group")
        updates["resources"] = cfg.resources.model_copy(update=resources)
    if max_duration is not None:
        try:
            updates["max_duration"] = parse_off_duration(max_duration)
        except ValueError as e:
            raise CLIError(f"--max-duration {max_duration}: {e}") from None
    if retry is not None:
        updates["retry"] = retry
    if retry_duration is not None:
        try:
            updates["retry"] = ProfileRetry(duration=retry_duration)
        except ValueError as e:
            raise CLIError(f"--retry-duration {retry_duration}: {e}") from None
    if profile:
        try:
            checked = TaskConfiguration.model_validate({**cfg.model_dump(exclude_unset=True), **profile})
        except ValidationError as e:
            error = e.errors()[0]
            raise CLIError(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg'].removeprefix('Value error, ')}") from None
        updates.update({key: getattr(checked, key) for key in profile})
    if not updates:
        return cfg
    updated = TaskConfiguration.model_validate({**cfg.model_dump(exclude_unset=True), **updates})
    updated.set_source(cfg.source_file, cfg._source_lines)
    return updated


def apply(
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="The .dstack.yml file (default: ./.dstack.yml)."),
    yes: bool = typer.Option(False, "-y", "--yes", help="Don't ask for confirmation."),
    detach: bool = typer.Option(False, "-d", "--detach", help="Submit and exit without following the run."),
    name: Optional[str] = typer.Option(None, "-n", "--name", help="The run name (overrides `name`)."),
    env: List[str] = typer.Option([], "-e", "--env", help="KEY=VALUE, or KEY to take it from this shell. Repeatable."),
    gpu: Optional[str] = typer.Option(None, "--gpu", metavar="SPEC", help="GPU spec, e.g. H100:2 or 24GB.."),
    cpu: Optional[str] = typer.Option(None, "--cpu", metavar="SPEC", help="CPU spec, e.g. 4.. or arm:8"),
    memory: Optional[str] = typer.Option(None, "--memory", metavar="RANGE", help="Memory, e.g. 16GB.."),
    disk: Optional[str] = typer.Option(None, "--disk", metavar="RANGE", help="Disk, e.g. 100GB.."),
    max_duration: Optional[str] = typer.Option(None, "--max-duration", metavar="DURATION", help="e.g. 2h, or off."),
    retry: Optional[bool] = typer.Option(None, "--retry/--no-retry", help="Retry on all events for 1h, or never."),
    retry_duration: Optional[str] = typer.Option(None, "--retry-duration", metavar="DURATION", help="Retry on all events for this long."),
    port: List[str] = typer.Option([], "-p", "--port", metavar="MAPPING", help="Forward a port: 8080, 80:8080, *:8080. Repeatable."),
    backend: List[str] = typer.Option([], "-b", "--backend", help="Only these backends (Ray: filters catalog offers only). Repeatable."),
    region: List[str] = typer.Option([], "-r", "--region", help="Only these regions (Ray: node labels where nodes carry them). Repeatable."),
    spot: bool = typer.Option(False, "--spot", help="Spot instances only (Ray: nodes labelled spot, where labelled)."),
    on_demand: bool = typer.Option(False, "--on-demand", help="On-demand instances only."),
    spot_auto: bool = typer.Option(False, "--spot-auto", help="Spot if available, else on-demand."),
    spot_policy: Optional[str] = typer.Option(None, "--spot-policy", help="spot, on-demand or auto."),
    max_price: Optional[float] = typer.Option(None, "--max-price", help="Max price per hour (Ray: filters catalog offers only)."),
    idle_duration: Optional[str] = typer.Option(None, "--idle-duration", help="dstack's fleet idle time (Ray: no effect; the autoscaler's idle timeout applies)."),
    reuse: bool = typer.Option(False, "-R", "--reuse", help="Use existing capacity only (Ray: runs are always placed on the cluster's nodes)."),
    max_offers: int = typer.Option(3, "--max-offers", help="Offers to show in the plan."),
    force: bool = typer.Option(False, "--force", help="Submit even when no node can hold the run (it fails with `no capacity` unless nodes appear)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="The profile to use."),
    no_profile: bool = typer.Option(False, "--no-profile", help="Don't use any profile."),
    address: Optional[str] = AddressOption,
    args: Optional[List[str]] = typer.Argument(None, metavar="[-- ARGS...]", help="Arguments for ${{ run.args }}."),
) -> None:
    """Plan a task, confirm, submit it and follow it: live status, logs, port forwarding."""
    path = file or default_file()
    from dstack_ray.api import Client

    cfg = Client.load(path, profile=profile, no_profile=no_profile or None)
    profile_fields = profile_overrides(backend, region, spot_option(spot, on_demand, spot_auto, spot_policy), max_price, idle_duration, reuse)
    cfg = apply_overrides(cfg, gpu, cpu, memory, disk, max_duration, retry, retry_duration, profile_fields)
    ports = merge_ports([p for g in cfg.node_groups for p in g.ports], port)
    cfg = Client.prepare(cfg, name=name, env=parse_env_options(env), args=args or [])
    client = connect(address)
    plan = client.plan(cfg)
    print_plan(cfg, plan, client, path, max_offers=max_offers)
    if plan.no_capacity and not force:
        # dstack's "no offers": nothing in this cluster, nor any node its autoscaler can add,
        # can ever hold a node of the run; submitting would only fail with `no capacity`.
        raise CLIError(
            f"No offers: no node of this cluster can hold the run ({plan.no_capacity})",
            "ask for less (`--cpu`, `--memory`, `--gpu`, `nodes`), add nodes or autoscaler node types that fit, or submit anyway with --force",
        )
    run_name = cfg.name
    existing = client.find_run(run_name) if run_name else None
    replace = False
    if existing is not None and not existing.status.is_finished():
        if not yes and not typer.confirm(f"Active run {run_name} already exists. Stop and override the run?"):
            raise typer.Exit(1)
        replace = True
    elif not yes and not typer.confirm(f"Submit the run {run_name}?" if run_name else "Submit a new run?"):
        raise typer.Exit(1)
    run = client.submit(cfg, args=args or [], replace=replace)  # prepared above: not again
    if detach:
        console.print(f"Run [bold]{escape(run.name)}[/] submitted, detaching…")
        return
    err_console.print(f"[dim]Run {escape(run.name)} submitted; Ctrl+C to detach or stop[/]")
    raise typer.Exit(attach(run, ports))
