"""`ps`, `logs`, `stop`, `delete`, `events`: looking at and managing runs."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import typer
from rich.live import Live
from rich.markup import escape
from rich.console import Group
from rich.table import Table
from rich.text import Text

from dstack_ray.config.duration import parse_duration
from dstack_ray_cli.common import AddressOption, connect, pretty_date, status_markup
from dstack_ray_cli.console import CLIError, console, err_console


def run_summary(run: Any) -> Dict[str, Any]:
    """A run for `--json`: everything `ps` knows, no configuration values (no secrets)."""
    record = run.record
    return {
        "name": record.name,
        "id": record.id,
        "status": record.status.value,
        "status_message": record.display_status(),
        "termination_reason": record.termination_reason.value if record.termination_reason else None,
        "error": record.error,
        "wait_reason": record.wait_reason.value if record.wait_reason else None,
        "submitted_at": record.submitted_at.isoformat(),
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "attempt": record.attempt,
        "priority": record.priority,
        "jobs": [
            {
                "rank": j.rank,
                "group": j.group,
                "status": j.status.value,
                "status_message": j.status_message,
                "termination_reason": j.termination_reason.value if j.termination_reason else None,
                "exit_code": j.exit_code,
                "node_ip": j.node_ip,
                "resources": j.resources,
                "error": j.error or j.termination_message,
            }
            for j in record.jobs
        ],
    }


def _gpu(resources: str) -> str:
    """The `gpu=...` part of a bundle's description (dstack's GPU column), or `-`."""
    for part in resources.split():
        if part.startswith("gpu="):
            return part[len("gpu="):]
    return "-"


def _with_message(error: str, message: Optional[str]) -> str:
    """`executor error: <what happened>`: the reason and, when it says more, the message."""
    if message and message not in error:
        return f"{error}: {message}" if error else message
    return error


# Below this terminal width, `ps -v` lists errors under the table instead of in a column.
WIDE_ENOUGH_FOR_ERRORS = 140


def runs_table(runs: List[Any], verbose: bool = False, width: Optional[int] = None) -> Any:
    """dstack's `ps` table: NAME, BACKEND, GPU (RESOURCES and INSTANCE TYPE with -v), PRICE,
    STATUS, SUBMITTED (ERROR with -v). On Ray the backend is `ray`, the instance is the node
    (its IP) and there is no price. On a narrow terminal the errors follow the table, each on
    lines of its own, rather than in a column squeezed to a few letters."""
    width = width or console.width
    error_column = verbose and width >= WIDE_ENOUGH_FOR_ERRORS
    errors: List[str] = []
    table = Table(box=None, pad_edge=False)
    table.add_column("NAME", style="bold", no_wrap=True)
    table.add_column("BACKEND", style="grey58", no_wrap=True)
    if verbose:
        table.add_column("RESOURCES", style="grey58", overflow="fold")  # wraps between its parts
        table.add_column("INSTANCE TYPE", style="grey58", no_wrap=True)
    else:
        table.add_column("GPU", style="grey58", no_wrap=True)
    table.add_column("PRICE", style="grey58", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("SUBMITTED", style="grey58", no_wrap=True)
    if error_column:
        table.add_column("ERROR", overflow="fold", ratio=1)
    now = datetime.now(timezone.utc)
    for run in runs:
        record = run.record
        finished = record.status.is_finished()
        status = status_markup(record.display_status(), record.status.value, finished)
        if record.wait_reason and not finished:
            status += f" [dim]({escape(record.wait_text(now) or '')})[/]"
        jobs = record.jobs
        single = len(jobs) <= 1
        job = jobs[0] if jobs else None
        resources = (job.resources if job and job.resources else "-") if single else ""
        row = [escape(record.name), "ray" if single else ""]
        if verbose:
            row += [escape(resources), escape(job.node_ip or "-") if single and job else ""]
        else:
            row.append(escape(_gpu(resources)) if single else "")
        row += ["-" if single else "", status, pretty_date(record.submitted_at, now)]
        run_error = _with_message(record.error or "", job.termination_message if single and job is not None else None)
        if error_column:
            row.append(escape(run_error))
        elif verbose and run_error:
            errors.append(f"[bold]{escape(record.name)}[/]: {escape(run_error)}")
        table.add_row(*row)
        if single:
            continue
        for job in jobs:
            name = f"   job={job.rank}" + (f" [dim]group={escape(job.group)}[/]" if job.group not in ("0", "") else "")
            job_row = [name, "ray"]
            if verbose:
                job_row += [escape(job.resources or "-"), escape(job.node_ip or "-")]
            else:
                job_row.append(escape(_gpu(job.resources or "")))
            job_row += [
                "-",
                status_markup(job.status_message, job.status.value, job.status.is_finished()),
                pretty_date(job.submitted_at, now),
            ]
            job_error = _with_message(job.error or "", job.termination_message)
            if error_column:
                job_row.append(escape(job_error))
            elif verbose and job_error:
                errors.append(f"[bold]{escape(record.name)}[/] job={job.rank}: {escape(job_error)}")
            table.add_row(*job_row)
    if not errors:
        return table
    return Group(table, Text(""), Text.from_markup("[bold]ERRORS[/]"), *(Text.from_markup(e) for e in errors))


def listed_runs(client: Any, all_runs: bool, last: Optional[int]) -> List[Any]:
    """dstack's `ps` selection: newest first; active runs (or, with none, the last finished
    one) unless `-a`; at most `-n` runs. Only what is shown is fetched (the history may be long)."""
    if all_runs:
        return client.list_runs(all=True, limit=last)
    return client.list_runs(all=False, limit=last) or client.list_runs(all=True, limit=1)


def ps(
    all_runs: bool = typer.Option(False, "-a", "--all", help="Show finished runs too."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show resources, nodes and errors of every job."),
    watch: bool = typer.Option(False, "-w", "--watch", help="Keep the table updated."),
    last: Optional[int] = typer.Option(None, "-n", "--last", min=1, help="Show only the N most recent runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    address: Optional[str] = AddressOption,
) -> None:
    """List runs, newest first: the active ones (or the last finished one) unless -a."""
    client = connect(address)

    def current() -> List[Any]:
        return listed_runs(client, all_runs, last)

    if as_json:
        print(json.dumps([run_summary(r) for r in current()], indent=2))
        return
    if not watch:
        console.print(runs_table(current(), verbose))
        return
    try:
        with Live(runs_table(current(), verbose), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(2)
                live.update(runs_table(current(), verbose), refresh=True)
    except KeyboardInterrupt:
        pass


def parse_since(value: str) -> datetime:
    """`10m`-style durations back from now, or an RFC 3339 time."""
    try:
        seconds = parse_duration(value)
        return datetime.now(timezone.utc) - timedelta(seconds=seconds or 0)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(f"invalid --since value `{value}`", "use a duration like 10m or a time like 2026-11-27T06:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def stream_logs(
    run: Any,
    rank: int = 0,
    since: Optional[datetime] = None,
    on_new_attempt: Optional[Callable[[Any], None]] = None,
) -> None:
    """Print rank `rank`'s output until the run ends, moving on to each new attempt (retry).
    Pieces of lines are printed as they come (a `\\r` progress bar redraws live), as dstack does."""
    attempt = run.record.attempt
    while True:
        open_line = False
        for line in run.logs(rank=rank, follow=True, attempt=attempt, since=since, partial=True):
            sys.stdout.write(line if line.partial else line + "\n")
            sys.stdout.flush()
            open_line = line.partial
        if open_line:  # the command ended without a newline
            sys.stdout.write("\n")
            sys.stdout.flush()
        run.refresh()
        if run.record.attempt != attempt:
            attempt = run.record.attempt
            err_console.print(f"[dim]--- attempt {attempt} ---[/]")
            if on_new_attempt is not None:
                on_new_attempt(run)
            continue
        if run.status.is_finished():
            return
        run.wait_change(2.0)


def stream_all_logs(run: Any) -> None:
    """Every job's output at once, each line prefixed by its rank (`[1] ...`), until the run
    ends, through every attempt. (Not in dstack, which attaches to one job.)"""
    lock = threading.Lock()
    attempt = run.record.attempt

    def follow(rank: int, attempt: int) -> None:
        for line in run.logs(rank=rank, follow=True, attempt=attempt):
            with lock:
                sys.stdout.write(f"[{rank}] {line}\n")
                sys.stdout.flush()

    while True:
        threads = [
            threading.Thread(target=follow, args=(rank, attempt), daemon=True, name=f"dstack-logs-{rank}")
            for rank in range(max(len(run.jobs), 1))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        run.refresh()
        if run.record.attempt != attempt:
            attempt = run.record.attempt
            err_console.print(f"[dim]--- attempt {attempt} ---[/]")
            continue
        if run.status.is_finished():
            return
        run.wait_change(2.0)


def logs(
    run_name: str = typer.Argument(..., metavar="RUN", help="The run name."),
    job: int = typer.Option(0, "--job", help="The node rank whose output to show."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines until the run ends."),
    since: Optional[str] = typer.Option(None, "--since", help="Only lines after this: 10m, 2h, or an RFC 3339 time."),
    attempt: Optional[int] = typer.Option(None, "--attempt", help="The attempt (retry) whose output to show."),
    diagnose: bool = typer.Option(
        False, "-d", "--diagnose", help="Show how the run's jobs went (nodes, exits, reasons) and its events, not its output."
    ),
    address: Optional[str] = AddressOption,
) -> None:
    """Print a run's output (one node's; `--job N` for rank N)."""
    client = connect(address)
    run = client.get_run(run_name)
    if diagnose:
        print_diagnosis(run)
        return
    if job >= max(len(run.jobs), 1):
        raise CLIError(f"run {run_name} has no job {job}", f"it has jobs 0..{len(run.jobs) - 1}")
    moment = parse_since(since) if since else None
    try:
        if follow and attempt is None:
            stream_logs(run, job, since=moment)
            return
        for line in run.logs(rank=job, follow=follow, attempt=attempt, since=moment):
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass


def stop(
    run_name: str = typer.Argument(..., metavar="RUN"),
    abort: bool = typer.Option(False, "-x", "--abort", help="Kill at once, without the graceful stop."),
    yes: bool = typer.Option(False, "-y", "--yes", help="Don't ask for confirmation."),
    address: Optional[str] = AddressOption,
) -> None:
    """Stop a run (SIGINT, then SIGKILL after the grace period; -x kills at once)."""
    client = connect(address)
    run = client.get_run(run_name)
    if run.status.is_finished():
        console.print(f"Run {run_name} is already {run.status.value}")
        return
    if not yes and not typer.confirm(f"Stop the run {run_name}?"):
        raise typer.Exit(1)
    run.stop(abort=abort)
    run.wait(timeout=60)
    console.print(f"Run {run_name} {'aborted' if abort else 'stopped'} ({run.status_message})")


def delete(
    run_name: Optional[str] = typer.Argument(None, metavar="[RUN]", help="The run (or give its configuration with -f)."),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="The configuration whose run to delete (dstack's form)."),
    yes: bool = typer.Option(False, "-y", "--yes", help="Don't ask for confirmation."),
    address: Optional[str] = AddressOption,
) -> None:
    """Delete a finished run and everything recorded about it (its logs go with it)."""
    if (run_name is None) == (file is None):
        raise CLIError("give the run's name or its configuration with -f (one of them)", "e.g. `dstack-ray delete -f train.dstack.yml`")
    if file is not None:
        from dstack_ray.api import Client

        run_name = Client.load(file).name
        if not run_name:
            raise CLIError(f"{file} sets no `name`, so its runs have generated names", "give the run's name: `dstack-ray delete RUN`")
    assert run_name is not None
    client = connect(address)
    run = client.get_run(run_name)
    if not yes and not typer.confirm(f"Delete the run {run_name}?"):
        raise typer.Exit(1)
    run.delete()
    console.print(f"Run {run_name} deleted")


def print_diagnosis(run: Any) -> None:
    """dstack's `logs -d` shows the runner's own log; here: each job's node, exit and reason
    (every attempt), then the run's events."""
    table = Table(box=None)
    for column in ("ATTEMPT", "JOB", "NODE", "STATUS", "EXIT", "REASON", "MESSAGE"):
        table.add_column(column, overflow="fold")
    for job in run.jobs_history():
        table.add_row(
            str(job.attempt),
            str(job.rank),
            escape(job.node_ip or "-"),
            escape(job.status.value),
            "-" if job.exit_code is None else str(job.exit_code),
            escape(job.termination_reason.value if job.termination_reason else "-"),
            escape(job.termination_message or "-"),
        )
    console.print(table)
    console.print()
    for at, message in run.events():
        console.print(f"[dim]{at.strftime('%Y-%m-%d %H:%M:%S')}[/] {escape(message)}")


def events(
    run_name: str = typer.Argument(..., metavar="RUN"),
    address: Optional[str] = AddressOption,
) -> None:
    """What happened to a run: submissions, placements, node exits, retries, stops."""
    client = connect(address)
    for at, message in client.get_run(run_name).events():
        console.print(f"[dim]{at.strftime('%Y-%m-%d %H:%M:%S')}[/] {escape(message)}")


def _gb(value: float) -> str:
    return f"{value / 1024**3:.1f}GB"


def metrics_table(run: Any, samples: List[Any]) -> Table:
    """dstack's `metrics` columns, a row per job: JOB, STATUS, CPU, MEMORY, GPU."""
    jobs: Dict[int, Any] = {}
    gpus: Dict[int, Dict[str, Any]] = {}
    for sample in samples:  # MetricsSample, oldest first: the last one of each series wins
        if sample.kind == "job":
            jobs[sample.rank] = sample
        elif sample.gpu is not None:
            gpus.setdefault(sample.rank, {})[sample.gpu] = sample
    result = Table(box=None)
    for column in ("JOB", "STATUS", "CPU", "MEMORY", "GPU"):
        result.add_column(column, no_wrap=column != "GPU")
    statuses = {job.rank: job for job in run.jobs}
    for rank in sorted(set(jobs) | set(gpus)):
        job = statuses.get(rank)
        sample = jobs.get(rank)
        limit = re.search(r"mem=([\d.]+)GB", job.resources or "") if job else None
        memory = "-"
        if sample:
            memory = _gb(sample.memory_bytes) + (f"/{float(limit.group(1)):.1f}GB" if limit else "")
        gpu_text = "\n".join(
            f"gpu={gpu} mem={_gb(g.memory_used)}/{_gb(g.memory_total)} util={g.utilization:.0f}%"
            for gpu, g in sorted(gpus.get(rank, {}).items())
        )
        result.add_row(
            str(rank),
            escape(job.status_message if job else "-"),
            f"{sample.cpu_percent:.0f}%" if sample else "-",
            memory,
            escape(gpu_text or "-"),
        )
    return result


def metrics(
    run_name: str = typer.Argument(..., metavar="RUN"),
    watch: bool = typer.Option(False, "-w", "--watch", help="Keep the table updated."),
    address: Optional[str] = AddressOption,
) -> None:
    """CPU, memory and GPUs of each job of a run (latest samples), as `dstack metrics`."""
    client = connect(address)
    run = client.get_run(run_name)

    def table() -> Table:
        return metrics_table(run.refresh(), run.metrics(jobs=True))

    current = table()
    if not current.row_count and not watch:
        console.print(f"No metrics for {run_name} yet (they are sampled every few seconds while its jobs run)")
        return
    if not watch:
        console.print(current)
        return
    try:
        with Live(current, console=console, auto_refresh=False) as live:
            while True:
                time.sleep(2)
                live.update(table(), refresh=True)
    except KeyboardInterrupt:
        pass


def attach_run(
    run_name: str = typer.Argument(..., metavar="RUN"),
    port: List[str] = typer.Option([], "-p", "--port", metavar="MAPPING", help="Forward a port: 8080, 80:8080, *:8080."),
    logs: bool = typer.Option(False, "--logs", help="Stream the run's output too."),
    job: str = typer.Option("0", "--job", help="The rank whose output to stream, or `all` (every rank, lines prefixed by rank)."),
    address: Optional[str] = AddressOption,
) -> None:
    """Attach to a running run: forward its ports (config `ports` and -p) until it ends."""
    if job != "all" and not job.isdigit():
        raise CLIError(f"--job {job}: give a rank (0, 1, ...) or `all`")
    from dstack_ray_cli.apply_cmd import merge_ports
    from dstack_ray_cli.attach import attach

    client = connect(address)
    run = client.get_run(run_name)
    if run.status.is_finished():
        raise CLIError(f"run {run_name} is {run.status.value}", "only active runs can be attached to")
    configured = [p for g in run.configuration.node_groups for p in g.ports]
    raise typer.Exit(attach(run, merge_ports(configured, port), logs=logs, rank=None if job == "all" else int(job)))
