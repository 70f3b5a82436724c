"""`dstack-ray cluster render`: the Ray cluster a task needs, as a cluster launcher YAML (or a
KubeRay RayCluster), optionally started right away."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Union

import typer
from dstack_ray_cli.console import CLIError, err_console
from rich.markup import escape

from dstack_ray.config import load_configuration
from dstack_ray.config.task import TaskConfiguration
from dstack_ray.plan.launcher import (
    RAY_IMAGE_AUTO,
    LauncherError,
    Provider,
    RenderedCluster,
)
from dstack_ray.plan.launcher import (
    render as render_cluster,
)

app = typer.Typer(help="Ray clusters for tasks: cluster launcher configurations.", no_args_is_help=True)


@app.command()
def render(
    file: Path = typer.Option(..., "-f", "--file", help="The task's .dstack.yml."),
    provider: Provider = typer.Option(..., "--provider", help="Where the cluster runs.", case_sensitive=False),
    region: Optional[str] = typer.Option(
        None, "--region", help="Region (Azure: location). Default: the cheapest offer's."
    ),
    zone: Optional[str] = typer.Option(None, "--zone", help="Availability zone (aws, gcp, azure)."),
    instance_type: List[str] = typer.Option(
        [], "--instance-type", help="Instance type for every node group, or GROUP=TYPE for one; needs no catalog."
    ),
    head_instance_type: Optional[str] = typer.Option(
        None, "--head-instance-type", help="Instance type of the head node."
    ),
    head_ip: Optional[str] = typer.Option(None, "--head-ip", help="local: the head machine."),
    worker_ip: List[str] = typer.Option([], "--worker-ip", help="local: a worker machine (repeat for each)."),
    ssh_user: Optional[str] = typer.Option(None, "--ssh-user", help="The user `ray up` connects as."),
    project_id: Optional[str] = typer.Option(None, "--project-id", help="gcp: the project to launch in."),
    docker: bool = typer.Option(False, "--docker", help="Run Ray in rayproject/ray containers on the nodes."),
    ray_image: Optional[str] = typer.Option(None, "--ray-image", help="Run Ray in this image (implies --docker)."),
    name: Optional[str] = typer.Option(None, "--name", help="Cluster name. Default: the task's name or file name."),
    template: Optional[Path] = typer.Option(
        None, "--template", help="Start from this file, not the built-in template."
    ),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
    up: bool = typer.Option(False, "--up", help="Write the file, then start the cluster (ray up / kubectl apply)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="The profile to merge in."),
    no_profile: bool = typer.Option(False, "--no-profile", help="Don't merge any profile."),
) -> None:
    """Render the Ray cluster a task needs: a worker node type per node group, sized so its runs fit."""
    cfg = load_configuration(file, profile=profile, no_profile=no_profile or None)
    try:
        rendered = render_cluster(
            cfg,
            provider,
            region=region,
            zone=zone,
            instance_type=_instance_types(cfg, instance_type),
            cluster_name=name or cfg.name or _file_stem(file),
            head_instance_type=head_instance_type,
            head_ip=head_ip,
            worker_ips=worker_ip,
            ssh_user=ssh_user,
            project_id=project_id,
            ray_image=ray_image or (RAY_IMAGE_AUTO if docker else None),
            template=template,
            source=str(file),
        )
    except LauncherError as e:
        raise CLIError(str(e), e.hint) from None
    for note in rendered.notes:
        err_console.print(f"[dim]{escape(note)}[/]")
    text = rendered.to_yaml()
    if output is None and not up:
        typer.echo(text, nl=False)
        return
    path = output or _default_output(rendered)
    path.write_text(text)
    err_console.print(f"Wrote {escape(str(path))}")
    if up:
        _start(rendered, path)


def _file_stem(file: Path) -> str:
    """`train.dstack.yml` -> `train`."""
    name = file.name
    for suffix in (".yml", ".yaml", ".dstack"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name or "dstack-ray"


def _instance_types(cfg: TaskConfiguration, values: List[str]) -> Union[None, Dict[str, str]]:
    """`TYPE` applies to every node group, `GROUP=TYPE` to one (and wins over `TYPE`)."""
    if not values:
        return None
    plain = [v for v in values if "=" not in v]
    if len(plain) > 1:
        raise CLIError(
            f"--instance-type given {len(plain)} times without a group: {', '.join(plain)}",
            hint="use GROUP=TYPE to give node groups different instance types",
        )
    groups = [g.name or str(i) for i, g in enumerate(cfg.node_groups)]
    types = {group: plain[0] for group in groups} if plain else {}
    for value in values:
        if "=" in value:
            group, _, instance_type = value.partition("=")
            if not group or not instance_type:
                raise CLIError(f"--instance-type {value!r} is not GROUP=TYPE")
            types[group] = instance_type
    return types


def _default_output(rendered: RenderedCluster) -> Path:
    """Where --up keeps the file (`ray down` needs it later); never over an existing one."""
    config = rendered.config
    name = config.get("cluster_name") or (config.get("metadata") or {}).get("name") or "dstack-ray"
    path = Path(f"{name}.{rendered.provider.value}.yaml")
    if path.exists():
        raise CLIError(f"{path} exists", hint=f"pass -o {path} to overwrite it, or -o with another path")
    return path


def _start(rendered: RenderedCluster, path: Path) -> None:
    if rendered.provider == Provider.GCP and not (rendered.config.get("provider") or {}).get("project_id"):
        raise CLIError("the GCP project is not set", hint=f"pass --project-id, or set provider.project_id in {path}")
    if rendered.provider == Provider.KUBERAY:
        command = [
            _executable("kubectl", "install kubectl and point it at a cluster with the KubeRay operator"),
            "apply",
            "-f",
            str(path),
        ]
        undo = f"kubectl delete -f {path}"
    else:
        command = [_executable("ray", "install Ray's CLI: pip install 'ray[default]'"), "up", "-y", str(path)]
        undo = f"ray down -y {path}"
    err_console.print(f"Running: {escape(shlex.join(command))}")
    code = subprocess.call(command)
    if code != 0:
        raise CLIError(
            f"`{shlex.join(command[1:])}` failed (exit code {code})",
            hint=f"fix what it reported above and run it again; `{undo}` removes what it created",
        )


def _executable(name: str, hint: str) -> str:
    """`name` from PATH, else from this Python's environment (a venv that is not activated)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise CLIError(f"`{name}` is not installed (not on PATH)", hint=hint)
    return found
