"""Run, job and event records in SQLite on the head node (owned by the Controller)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, List, Optional

from dstack_ray.runtime.models import JobRecord, RunRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    submitted_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_name ON runs (name);
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, attempt, rank)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    at TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, id);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    at TEXT NOT NULL,
    sample TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id, attempt, rank, at);
"""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    """Records as JSON documents keyed by run; every write is committed before it returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        try:
            os.chmod(path, 0o600)  # run specs carry registry credentials and env values
        except OSError:
            pass

    def close(self) -> None:
        self._db.close()

    # -- runs -------------------------------------------------------------------------------

    def save_run(self, run: RunRecord) -> None:
        """Insert or replace a run (its jobs are saved separately)."""
        document = run.model_dump_json(exclude={"jobs"})
        with self._lock:
            self._db.execute(
                "INSERT INTO runs (id, name, deleted, submitted_at, record) VALUES (?, ?, 0, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET record = excluded.record",
                (run.id, run.name, run.submitted_at.isoformat(), document),
            )

    def mark_deleted(self, run_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE runs SET deleted = 1 WHERE id = ?", (run_id,))

    def load_runs(self, include_deleted: bool = False) -> List[RunRecord]:
        query = "SELECT record FROM runs"
        if not include_deleted:
            query += " WHERE deleted = 0"
        query += " ORDER BY submitted_at"
        with self._lock:
            rows = self._db.execute(query).fetchall()
        runs = [RunRecord.model_validate_json(row[0]) for row in rows]
        for run in runs:
            run.jobs = self.load_jobs(run.id, run.attempt)
        return runs

    # -- jobs -------------------------------------------------------------------------------

    def save_jobs(self, jobs: Iterable[JobRecord]) -> None:
        rows = [(j.run_id, j.attempt, j.rank, j.model_dump_json()) for j in jobs]
        with self._lock:
            self._db.executemany(
                "INSERT INTO jobs (run_id, attempt, rank, record) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(run_id, attempt, rank) DO UPDATE SET record = excluded.record",
                rows,
            )

    def load_jobs(self, run_id: str, attempt: Optional[int] = None) -> List[JobRecord]:
        query = "SELECT record FROM jobs WHERE run_id = ?"
        params: tuple = (run_id,)
        if attempt is not None:
            query += " AND attempt = ?"
            params += (attempt,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY attempt, rank", params).fetchall()
        return [JobRecord.model_validate_json(row[0]) for row in rows]

    # -- events and metrics -----------------------------------------------------------------

    def add_event(self, run_id: str, message: str, at: Optional[datetime] = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO events (run_id, at, message) VALUES (?, ?, ?)",
                (run_id, (at or utcnow()).isoformat(), message),
            )

    def events(self, run_id: str) -> List[tuple[datetime, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, message FROM events WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
        return [(datetime.fromisoformat(at), message) for at, message in rows]

    def add_metrics(self, run_id: str, attempt: int, rank: int, at: datetime, sample: dict) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO metrics (run_id, attempt, rank, at, sample) VALUES (?, ?, ?, ?, ?)",
                (run_id, attempt, rank, at.isoformat(), json.dumps(sample)),
            )

    def metrics(self, run_id: str, attempt: Optional[int] = None, since: Optional[datetime] = None) -> List[dict]:
        query = "SELECT attempt, rank, at, sample FROM metrics WHERE run_id = ?"
        params: list = [run_id]
        if attempt is not None:
            query += " AND attempt = ?"
            params.append(attempt)
        if since is not None:
            query += " AND at >= ?"
            params.append(since.isoformat())
        with self._lock:
            rows = self._db.execute(query + " ORDER BY at", params).fetchall()
        return [
            {"attempt": a, "rank": r, "at": datetime.fromisoformat(at), **json.loads(s)}
            for a, r, at, s in rows
        ]
