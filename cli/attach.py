"""Following a run from the terminal: live status while it starts, then its logs (and ports)."""

from __future__ import annotations

from typing import Any, List, Optional

import typer
from rich.live import Live
from rich.markup import escape

from dstack_ray.config.ports import PortMapping
from dstack_ray_cli.console import CLIError, console, err_console
from dstack_ray_cli.runs_cmd import runs_table, stream_all_logs, stream_logs

STARTING = {"pending", "submitted", "provisioning"}


def show_status_until_running(run: Any) -> None:
    """A live one-run table while the run is queued or being placed."""
    if run.status.value not in STARTING:
        return
    with Live(runs_table([run]), console=console, auto_refresh=False, transient=True) as live:
        while run.status.value in STARTING:
            run.wait_change(1.0)
            live.update(runs_table([run]), refresh=True)


def attach(run: Any, ports: Optional[List[PortMapping]] = None, logs: bool = True, rank: Optional[int] = 0) -> int:
    """Follow the run until it ends (exit code 0 if it is done) or the user detaches.
    `rank=None`: the logs of every job, prefixed by rank."""
    forwarder = None
    try:
        show_status_until_running(run)
        if ports and not run.status.is_finished():
            # Bound only now: where rank 0 runs on this machine, the job's port must stay free for it.
            forwarder = _forwarder(run, ports)
            for port in forwarder.direct:
                err_console.print(f"[dim]Port {port} of the run is on this machine: http://127.0.0.1:{port}[/]")
            forwarder.start()
            for local, remote in forwarder.bound():
                err_console.print(f"[dim]Forwarding 127.0.0.1:{local} -> rank 0:{remote}[/]")
            forwarder.watch(lambda text: err_console.print(f"[dim]{escape(text.capitalize())}[/]"))
        if logs and rank is None:
            stream_all_logs(run)
        elif logs:
            stream_logs(run, rank, on_new_attempt=show_status_until_running)
        else:
            while not run.status.is_finished():
                run.wait_change(5.0)
    except KeyboardInterrupt:
        return _interrupted(run)
    finally:
        if forwarder is not None:
            forwarder.stop()
    run.refresh()
    print_outcome(run)
    return 0 if run.status.value == "done" else 1


def print_outcome(run: Any) -> None:
    """The closing line: how the run ended and, unless it is done, where to look."""
    status, message = run.status.value, run.status_message
    detail = f" ({escape(message)})" if message and message != status else ""
    if status == "done":
        err_console.print(f"[dim]Run {escape(run.name)} is done{detail}[/]")
        return
    error = run.error
    why = f": {escape(error)}" if error and error not in (message or "") else ""
    err_console.print(f"[bold red]Run {escape(run.name)} {status}{detail}{why}[/]")
    err_console.print(f"[dim]Details: `dstack-ray logs {escape(run.name)} -d` and `dstack-ray ps -v`[/]")


def _forwarder(run: Any, ports: List[PortMapping]) -> Any:
    from dstack_ray.forward import PortForwarder, PortInUseError

    jobs = run.refresh().jobs
    try:
        return PortForwarder(run, ports, node_ip=jobs[0].node_ip if jobs else None)
    except PortInUseError as e:
        raise CLIError(str(e), f"map it to another local port, e.g. `-p {e.port + 1}:{e.container_port}` or `-p *:{e.container_port}`") from None


def _interrupted(run: Any) -> int:
    """Ctrl+C: ask whether to stop the run; a second Ctrl+C aborts it."""
    err_console.print()
    try:
        stop = typer.confirm("Stop the run before detaching?", default=False)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("Aborting the run…")
        run.stop(abort=True)
        run.wait(timeout=30)
        return 1
    if stop:
        err_console.print("Stopping the run…")
        run.stop()
        try:
            run.wait(timeout=120)
        except KeyboardInterrupt:
            run.stop(abort=True)
        return 1
    err_console.print(f"Detached; the run keeps going (`dstack-ray attach {run.name}` to come back)")
    return 0 if run.refresh().status.value == "done" else 1
