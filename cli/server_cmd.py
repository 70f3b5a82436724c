"""`dstack-ray server start|stop|status`: the embedded local Ray head (like `dstack server`) and
its dstack-ray service; with `--address`, the service of another cluster."""

from __future__ import annotations

from typing import Optional

import typer

from dstack_ray import local_head
from dstack_ray.errors import DstackRayError
from dstack_ray_cli.console import CLIError, console

app = typer.Typer(
    help="Manage the local Ray head that dstack-ray uses when no --address is given, or a cluster's dstack-ray service.",
    no_args_is_help=True,
)
ClusterOption = typer.Option(
    None, "--address", help="A Ray cluster (host:6379, ray://host:10001): its dstack-ray service (a Ray Job) instead of the local head."
)


@app.command()
def start(
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="Logical CPUs to offer (default: all)."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", help="GPUs to offer (default: detected)."),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Turn Ray's token authentication off. Some head ports listen on the network: anyone who reaches them can run code."
    ),
) -> None:
    """Start the local head (it keeps running until `server stop`)."""
    running = local_head.status()
    if running is not None:
        try:
            local_head.service_url(running)
        except DstackRayError as e:
            raise CLIError(str(e), e.hint) from None
        console.print("The local Ray head is already running")
        _print_head(running)
        return
    if no_auth:
        console.print(
            "[bold yellow]Warning:[/] starting the local Ray head without authentication; Ray binds some"
            " of its ports to this machine's network address, so anyone who can reach them can run code here."
        )
    console.print("Starting the local Ray head…")
    try:
        head = local_head.start(num_cpus=num_cpus, num_gpus=num_gpus, auth=not no_auth)
    except local_head.LocalHeadError as e:
        raise CLIError(str(e)) from None
    except DstackRayError as e:
        raise CLIError(str(e), e.hint) from None
    _print_head(head)


def _print_head(head: local_head.LocalHead) -> None:
    console.print(f"The local Ray head is running at {head.address}")
    console.print(f"Ray dashboard: {head.dashboard_url}")
    if head.service:
        console.print(f"dstack-ray service: {head.service} (the `dstack-ray` job in the dashboard's Jobs tab)")


@app.command()
def stop(address: Optional[str] = ClusterOption) -> None:
    """Stop the local head and everything running on it; with --address, only that cluster's
    service (runs go on; the next dstack-ray command starts it again)."""
    if address:
        from dstack_ray.service.client import stop_service

        try:
            head = local_head.head_at(address)
            stopped = stop_service(address, head.dashboard_url if head else None)
        except DstackRayError as e:
            raise CLIError(str(e), e.hint) from None
        console.print(f"Stopped the dstack-ray service job {', '.join(stopped)}" if stopped else "No dstack-ray service runs on that cluster")
        return
    if local_head.stop():
        console.print("The local Ray head was stopped")
    else:
        console.print("The local Ray head is not running")


@app.command()
def upgrade(address: Optional[str] = ClusterOption) -> None:
    """Replace the cluster's dstack-ray service (or the local head's) with this client's
    version. Refused while runs are active: their node agents run the old code."""
    from dstack_ray.service import client as service

    try:
        head = local_head.head_at(address) if address else local_head.status()
        if address is None and head is None:
            raise CLIError("The local Ray head is not running: nothing to upgrade", "give the cluster with --address")
        target = address or head.address
        token = local_head.token_of(head) if head else service.auth_token()
        stopped = service.replace_service(target, token, head.dashboard_url if head else None)
        url = local_head.service_url(head) if head else service.service_for_ray_address(target, token)
    except DstackRayError as e:
        raise CLIError(str(e), e.hint) from None
    from dstack_ray import __version__

    for submission_id, version in stopped:
        console.print(f"Stopped the dstack-ray service job {submission_id} (dstack-ray {version or 'unknown'})")
    console.print(f"dstack-ray service {__version__} answers at {url}")


@app.command()
def status() -> None:
    """Whether the local head runs, and where."""
    head = local_head.status()
    if head is None:
        console.print("The local Ray head is not running (it starts with the first command that needs it)")
        raise typer.Exit(1)
    _print_head(head)
