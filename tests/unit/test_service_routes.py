"""The service's own routes against a scripted Controller (no Ray): what they refuse before
answering (the port relay, the log stream) and the size of a request."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

from aiohttp.test_utils import TestClient, TestServer

from dstack_ray.config import parse_configuration
from dstack_ray.models import RunRecord, RunSpec, RunStatus, RunTerminationReason, new_jobs
from dstack_ray.service import server

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


class _Remote:
    def __init__(self, function) -> None:
        self.function = function

    async def remote(self, *args, **kwargs):
        return self.function(*args, **kwargs)


class FakeController:
    """The Controller's methods the routes call, answering from `runs`; `reads` records every
    log read (so a test can tell a request was refused before the stream started)."""

    def __init__(self, runs: List[RunRecord]) -> None:
        self.runs = {run.name: run for run in runs}
        self.reads: List[Tuple[str, int, int, int]] = []
        self.get_run = _Remote(lambda name: self.runs[name].public() if name in self.runs else None)
        self.read_logs = _Remote(self._read)
        self.submit = _Remote(lambda spec, payload=None: None)

    def _read(self, run_id: str, attempt: int, rank: int, offset: int, wait: float) -> Tuple[bytes, int, bool]:
        self.reads.append((run_id, attempt, rank, offset))
        return (b"2026-03-02T12:00:00Z hello\n", offset + 1, False) if offset == 0 else (b"", offset, True)


def _run(name: str, status: RunStatus = RunStatus.RUNNING, ports: Optional[list] = None, node_ip: Optional[str] = "127.0.0.1") -> RunRecord:
    cfg = parse_configuration({"type": "task", "name": name, "commands": ["true"], **({"ports": ports} if ports else {})})
    run = RunRecord(id=f"id-{name}", name=name, status=status, submitted_at=NOW, last_processed_at=NOW,
                    spec=RunSpec(run_name=name, configuration=cfg.model_dump(mode="json", exclude_unset=True)),
                    jobs=new_jobs(f"id-{name}", 0, cfg, NOW))
    run.jobs[0].node_ip = node_ip
    if status.is_finished():
        run.finish(RunTerminationReason.ALL_JOBS_DONE, NOW)
    return run


def _call(controller: FakeController, *requests: Tuple[str, str, Dict[str, Any]], environ: Optional[Dict[str, str]] = None) -> List[Tuple[int, str]]:
    async def go():
        service = server.Service(controller)
        if environ is not None:
            service.max_request = server.max_request(environ)
        async with TestClient(TestServer(service.app())) as client:
            answers = []
            for method, path, options in requests:
                response = await client.request(method, path, **options)
                answers.append((response.status, await response.text()))
            return answers

    return asyncio.run(go())


def test_the_relay_reaches_only_an_active_runs_declared_ports():
    controller = FakeController([_run("web", ports=[8000]), _run("over", RunStatus.DONE, ports=[8000]), _run("early", ports=[8000], node_ip=None)])
    answers = _call(
        controller,
        ("GET", "/api/runs/web/ports/99999", {}),
        ("GET", "/api/runs/web/ports/0", {}),
        ("GET", "/api/runs/web/ports/22", {}),
        ("GET", "/api/runs/over/ports/8000", {}),
        ("GET", "/api/runs/early/ports/8000", {}),
        ("GET", "/api/runs/nope/ports/8000", {}),
    )
    statuses = [status for status, _ in answers]
    assert statuses == [400, 400, 403, 409, 409, 404], answers
    assert "1-65535" in answers[0][1] and "not one of run web's ports (8000)" in answers[2][1] and "done" in answers[3][1]
    assert all("Traceback" not in text for _, text in answers)


def test_a_log_query_is_checked_before_the_stream_starts():
    controller = FakeController([_run("logged")])
    answers = _call(
        controller,
        ("GET", "/api/runs/logged/logs?offset=-5", {}),
        ("GET", "/api/runs/logged/logs?rank=-1", {}),
        ("GET", "/api/runs/logged/logs?attempt=3", {}),
        ("GET", "/api/runs/logged/logs?offset=x", {}),
        ("GET", "/api/runs/logged/logs", {}),
    )
    assert [status for status, _ in answers] == [400, 400, 400, 400, 200], answers
    assert "`offset` must be 0 or more" in answers[0][1] and "attempts 0 to 0" in answers[2][1]
    assert answers[4][1] == "2026-03-02T12:00:00Z hello\n"
    assert [read[3] for read in controller.reads] == [0, 1]  # only the good request read


def test_the_service_refuses_requests_over_its_limit():
    assert server.max_request({}) == (64 << 20) * 4 // 3 + (4 << 20)
    assert server.max_request({"DSTACK_RAY_PAYLOAD_LIMIT": "0"}) == server.NO_LIMIT_CAP
    controller = FakeController([])
    big = b'{"spec": {}, "payload": "' + b"A" * (8 << 20) + b'"}'
    answers = _call(controller, ("POST", "/api/runs", {"data": big, "headers": {"Content-Type": "application/json"}}),
                    environ={"DSTACK_RAY_PAYLOAD_LIMIT": str(1 << 20)})
    assert answers[0][0] == 413 and "larger than the service takes (5 MiB)" in answers[0][1] and "DSTACK_RAY_PAYLOAD_LIMIT" in answers[0][1]
