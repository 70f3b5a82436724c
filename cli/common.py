"""What several commands share: connecting a Client, formatting dates and statuses."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

import typer

from dstack_ray_cli.console import CLIError, err_console

AddressOption = typer.Option(
    None,
    "--address",
    envvar="RAY_ADDRESS",
    help="The dstack-ray service's URL (http://host:8270), or a Ray cluster address (host:6379, ray://host:10001, auto)"
    " whose service is found, or started, through the cluster's Jobs API. Default: the local dstack-ray head.",
    show_envvar=True,
)


def connect(address: Optional[str]):
    """A Client for `address`, or for the local head (started on first use, with a notice)."""
    from dstack_ray import local_head
    from dstack_ray.api import Client, DstackRayError

    if not address:
        address = local_head.answering_service()  # the local head's service, when it answers
    if not address and local_head.status() is None:
        err_console.print("[dim]Starting the local Ray head (stop it with `dstack-ray server stop`)…[/]")
    try:
        return Client(address=address)
    except DstackRayError as e:
        raise CLIError(str(e), e.hint) from None
    except local_head.LocalHeadError as e:
        raise CLIError(str(e), "see `dstack-ray server status`; the head's log is in ~/.dstack-ray") from None
    except ConnectionError as e:
        raise CLIError(f"cannot connect to Ray: {e}", "check --address / RAY_ADDRESS") from None


def pretty_date(moment: Optional[datetime], now: Optional[datetime] = None) -> str:
    """dstack's relative dates: `now`, `5 mins ago`, `2 hours ago`, `yesterday`, `Nov 20, 2026`."""
    if moment is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    seconds = (now - moment).total_seconds()
    if seconds < 60:
        return "now"
    if seconds < 3600:
        minutes = int(seconds // 60)
        return f"{minutes} min{'s' if minutes > 1 else ''} ago"
    if seconds < 86400:
        hours = int(seconds // 3600)
        return f"{hours} hour{'s' if hours > 1 else ''} ago"
    if seconds < 2 * 86400:
        return "yesterday"
    return moment.strftime("%b %d, %Y")


STATUS_COLORS = {
    "pending": "white",
    "submitted": "grey50",
    "provisioning": "deep_sky_blue1",
    "pulling": "sea_green3",
    "running": "sea_green3",
    "terminating": "deep_sky_blue1",
    "terminated": "grey50",
    "failed": "indian_red1",
    "done": "grey50",
    "aborted": "gold1",
}


def status_markup(text: str, status: str, finished: bool) -> str:
    if text in ("no capacity", "interrupted", "retrying"):
        color = "gold1"
    elif text.startswith("exited (") and text != "exited (0)":
        color = "indian_red1"
    else:
        color = STATUS_COLORS.get(status, "white")
    style = color if finished else f"bold {color}"
    return f"[{style}]{text}[/]"
