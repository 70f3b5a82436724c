"""The CLI's tables in dstack's shapes, rendered without Ray."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rich.console import Console

from dstack_ray.models import JobRecord, JobStatus, JobTerminationReason, RunRecord, RunStatus
from dstack_ray_cli.runs_cmd import listed_runs, runs_table

NOW = datetime.now(timezone.utc)


class FakeRun:
    def __init__(self, name: str, status: RunStatus, minutes_ago: int, error: str = "", nodes: int = 1):
        jobs = [
            JobRecord(
                run_id=name, attempt=0, rank=rank, resources="cpu=2 mem=8GB gpu=H100:1", submitted_at=NOW,
                status=JobStatus.FAILED if error else JobStatus.RUNNING, node_ip=f"10.0.0.{rank + 1}",
                termination_reason=JobTerminationReason.EXECUTOR_ERROR if error else None, termination_message=error or None,
            )
            for rank in range(nodes)
        ]
        self.record = RunRecord(
            id=name, name=name, status=status, status_message=status.value,
            submitted_at=NOW - timedelta(minutes=minutes_ago), last_processed_at=NOW, jobs=jobs,
        )
        self.status = status


def render(table, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text()


class FakeClient:
    """Client.list_runs over a list: newest first, active ones only unless `all`, `limit`."""

    def __init__(self, runs):
        self.runs = runs
        self.calls = []

    def list_runs(self, all=True, limit=None):
        self.calls.append((all, limit))
        newest = sorted(self.runs, key=lambda r: r.record.submitted_at, reverse=True)
        chosen = newest if all else [r for r in newest if not r.status.is_finished()]
        return chosen[:limit] if limit is not None else chosen


def test_newest_first_and_the_last_finished_run_when_nothing_is_active():
    runs = [FakeRun("old", RunStatus.DONE, 30), FakeRun("newer", RunStatus.FAILED, 10), FakeRun("oldest", RunStatus.DONE, 60)]
    client = FakeClient(runs)
    assert [r.record.name for r in listed_runs(client, all_runs=False, last=None)] == ["newer"]
    assert client.calls == [(False, None), (True, 1)]  # the history is not fetched for one run
    assert [r.record.name for r in listed_runs(client, all_runs=True, last=None)] == ["newer", "old", "oldest"]
    assert [r.record.name for r in listed_runs(client, all_runs=True, last=2)] == ["newer", "old"]
    active = FakeClient(runs + [FakeRun("live", RunStatus.RUNNING, 5), FakeRun("queued", RunStatus.PENDING, 1)])
    assert [r.record.name for r in listed_runs(active, all_runs=False, last=None)] == ["queued", "live"]


def test_columns_are_dstacks():
    header = render(runs_table([FakeRun("a", RunStatus.RUNNING, 1)], width=200), 200).splitlines()[0].split()
    assert header == ["NAME", "BACKEND", "GPU", "PRICE", "STATUS", "SUBMITTED"]
    verbose = render(runs_table([FakeRun("a", RunStatus.RUNNING, 1)], verbose=True, width=200), 200).splitlines()[0]
    assert verbose.split() == ["NAME", "BACKEND", "RESOURCES", "INSTANCE", "TYPE", "PRICE", "STATUS", "SUBMITTED", "ERROR"]


def test_at_80_columns_errors_follow_the_table_in_full():
    error = "the node agent could not start the command: " + "x" * 120
    text = render(runs_table([FakeRun("train-llama", RunStatus.FAILED, 3, error=error, nodes=2)], verbose=True, width=80), 80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert lines[0].split() == ["NAME", "BACKEND", "RESOURCES", "INSTANCE", "TYPE", "PRICE", "STATUS", "SUBMITTED"]
    assert lines[1].startswith("train-llama") and "…" not in "\n".join(lines[:4])  # no squeezed cells
    errors = "".join(lines[lines.index("ERRORS") + 1 :]).replace(" ", "")
    assert errors.count(("job=0:executorerror:" + error).replace(" ", "")) == 1  # in full, wrapped


def test_wide_terminals_keep_the_error_column():
    error = "the node agent could not start the command"
    text = render(runs_table([FakeRun("train", RunStatus.FAILED, 3, error=error)], verbose=True, width=200), 200)
    assert text.splitlines()[0].split()[-1] == "ERROR" and error in text and "ERRORS" not in text
