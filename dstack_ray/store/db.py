"""Run, job and event records in SQLite on the head node (owned by the Controller)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from dstack_ray.models import JobRecord, RunRecord, RunStatus
from dstack_ray.paths import private_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    submitted_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_name ON runs (name);
CREATE INDEX IF NOT EXISTS runs_listing ON runs (deleted, submitted_at);
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


SCHEMA_VERSION = 2
_FINISHED_STATUSES = ", ".join(f"'{status.value}'" for status in RunStatus if status.is_finished())
# Columns added by schema 2 (indexed copies of record fields, so that queries need not parse
# records): whether the run finished, and its submission id (a retried submit is answered once).
_SCHEMA_2 = [
    ("finished", "INTEGER NOT NULL DEFAULT 0", f"json_extract(record, '$.status') IN ({_FINISHED_STATUSES})"),
    ("submission_id", "TEXT", "json_extract(record, '$.spec.submission_id')"),
]
_SCHEMA_2_INDEXES = """
CREATE INDEX IF NOT EXISTS runs_active ON runs (finished, deleted);
CREATE INDEX IF NOT EXISTS runs_submission ON runs (submission_id);
"""
QUARANTINED = 2  # `runs.deleted` of a record that could not be read


class StoreError(RuntimeError):
    """The state database cannot be used; the message says what to do."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _when(moment: datetime) -> str:
    """Timestamps as stored: UTC ISO 8601 with microseconds, so that text order is time order."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


class Store:
    """Records as JSON documents keyed by run; every write is committed before it returns."""

    def __init__(self, path: Path) -> None:
        private_dir(path.parent)
        self.path = path
        self._lock = threading.Lock()
        # Run specs carry registry credentials and env values: the file is 0600 before SQLite
        # opens it, and SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        for extra in ("-wal", "-shm"):
            if Path(f"{path}{extra}").exists():
                os.chmod(f"{path}{extra}", 0o600)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted records are overwritten, not left in free pages
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} was written by a newer dstack-ray (schema {version}, this one reads {SCHEMA_VERSION});"
                " upgrade dstack-ray on the head node, or point DSTACK_RAY_STATE_DIR elsewhere"
            )
        self._db.executescript(_SCHEMA)
        self._upgrade()
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.quarantined: List[Tuple[str, str]] = []  # (run id, why) of records set aside
        self._check_records()

    def _upgrade(self) -> None:
        """Schema 1 -> 2: add the indexed columns and fill them from the records."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        for name, kind, value in _SCHEMA_2:
            if name not in columns:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
                self._db.execute(f"UPDATE runs SET {name} = {value} WHERE json_valid(record)")
        self._db.executescript(_SCHEMA_2_INDEXES)

    def _check_records(self) -> None:
        """Set aside, at start, records that are not JSON or carry a status this version does not
        know (written by a newer one): one indexed pass, whatever the history's length. Other
        damage is found when the record is read."""
        known = tuple(status.value for status in RunStatus)
        marks = ", ".join("?" * len(known))
        with self._lock:
            rows = self._db.execute(
                "SELECT id, CASE WHEN json_valid(record) THEN json_extract(record, '$.status') END FROM runs"
                f" WHERE deleted IN (0, 1) AND (NOT json_valid(record) OR json_extract(record, '$.status') NOT IN ({marks}))",
                known,
            ).fetchall()
        for run_id, status in rows:
            self._quarantine(run_id, "not a JSON record" if status is None else f"status: unknown value {status!r}")

    def close(self) -> None:
        self._db.close()

    # -- runs -------------------------------------------------------------------------------

    def save_run(self, run: RunRecord) -> None:
        """Insert or replace a run (its jobs are saved separately)."""
        document = run.model_dump_json(exclude={"jobs"})
        submission = run.spec.submission_id if run.spec is not None else None
        with self._lock:
            self._db.execute(
                "INSERT INTO runs (id, name, deleted, submitted_at, record, finished, submission_id)"
                " VALUES (?, ?, 0, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET record = excluded.record, finished = excluded.finished",
                (run.id, run.name, _when(run.submitted_at), document, int(run.status.is_finished()), submission),
            )

    def mark_deleted(self, run: RunRecord) -> None:
        """Hide a run from listings, keeping its history but not its secrets."""
        data = run.public()
        data.pop("jobs", None)
        document = json.dumps(data)
        with self._lock:
            self._db.execute("UPDATE runs SET deleted = 1, record = ? WHERE id = ?", (document, run.id))
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def delete_run(self, run_id: str) -> None:
        """Remove a run and everything recorded about it (`delete`)."""
        self.delete_runs([run_id])

    def delete_runs(self, run_ids: List[str]) -> None:
        """Remove runs and everything recorded about them, in one transaction; the freed pages
        are overwritten (secure_delete) and the write-ahead log emptied, so nothing remains."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for run_id in run_ids:
                    self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                    for table in ("jobs", "events", "metrics"):
                        self._db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def load_runs(self, include_deleted: bool = False, active_only: bool = False) -> List[RunRecord]:
        """The runs, oldest first (with `active_only`, the unfinished ones: what the Controller
        keeps in memory); a record that cannot be read (written by another version, damaged) is
        quarantined: hidden from listings, kept in the database, and named in `quarantined`."""
        query = "SELECT id, record FROM runs"
        query += " WHERE deleted IN (0, 1)" if include_deleted else " WHERE deleted = 0"
        if active_only:
            query += " AND finished = 0"
        return self._records(query + " ORDER BY submitted_at", ())

    def list_runs(self, limit: Optional[int] = None, before: Optional[Tuple[datetime, str]] = None) -> List[RunRecord]:
        """Up to `limit` runs (None: all), newest first, without their specs (a listing does not
        need them); `before`: (submitted_at, id) of the last run of the previous page."""
        query = "SELECT id, json_remove(record, '$.spec') FROM runs WHERE deleted = 0"
        params: list = []
        if before is not None:
            query += " AND (submitted_at < ? OR (submitted_at = ? AND id < ?))"
            params += [_when(before[0]), _when(before[0]), before[1]]
        return self._records(query + " ORDER BY submitted_at DESC, id DESC LIMIT ?", (*params, -1 if limit is None else limit))

    def find_run(self, name_or_id: str) -> Optional[RunRecord]:
        """A run by id, else the newest run of that name."""
        found = self._records("SELECT id, record FROM runs WHERE deleted = 0 AND id = ?", (name_or_id,))
        if not found:
            found = self._records(
                "SELECT id, record FROM runs WHERE deleted = 0 AND name = ? ORDER BY submitted_at DESC LIMIT 1", (name_or_id,)
            )
        return found[0] if found else None

    def names(self, run_ids: List[str]) -> List[Tuple[str, str]]:
        """(name, id) of these runs, listed or not."""
        with self._lock:
            return [
                (name, run_id)
                for run_id in run_ids
                for (name,) in self._db.execute("SELECT name FROM runs WHERE id = ?", (run_id,)).fetchall()
            ]

    def find_submission(self, submission_id: str) -> Optional[RunRecord]:
        found = self._records("SELECT id, record FROM runs WHERE deleted = 0 AND submission_id = ?", (submission_id,))
        return found[0] if found else None

    def has_name(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM runs WHERE deleted = 0 AND name = ? LIMIT 1", (name,)).fetchone() is not None

    def status_counts(self) -> Dict[str, int]:
        """Runs per status (for the metrics), from the indexed columns and one JSON field."""
        with self._lock:
            rows = self._db.execute(
                "SELECT json_extract(record, '$.status'), count(*) FROM runs WHERE deleted = 0 GROUP BY 1"
            ).fetchall()
        return {status: count for status, count in rows if status}

    def expired_runs(self, older_than: Optional[datetime], keep: Optional[int]) -> List[str]:
        """Finished runs past the retention: submitted before `older_than`, or before the newest
        `keep` listed runs (active ones count, but are never expired)."""
        expired: List[str] = []
        with self._lock:
            if older_than is not None:
                expired += [r[0] for r in self._db.execute(
                    "SELECT id FROM runs WHERE deleted IN (0, 1) AND finished = 1 AND submitted_at < ?", (_when(older_than),)
                )]
            if keep is not None:  # older than the keep-th newest listed run (replaced ones go with them)
                expired += [r[0] for r in self._db.execute(
                    "SELECT id FROM runs WHERE deleted IN (0, 1) AND finished = 1 AND submitted_at <"
                    " (SELECT submitted_at FROM runs WHERE deleted = 0 ORDER BY submitted_at DESC LIMIT 1 OFFSET ?)",
                    (keep - 1,),
                )]
        return sorted(set(expired))

    def _records(self, query: str, params: tuple) -> List[RunRecord]:
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        runs = []
        for run_id, document in rows:
            try:
                run = RunRecord.model_validate_json(document)
                run.jobs = self.load_jobs(run.id, run.attempt)
            except ValueError as e:  # pydantic's ValidationError and JSON errors are ValueErrors
                self._quarantine(run_id, " ".join(str(e).split())[:300])
                continue
            runs.append(run)
        return runs

    def _quarantine(self, run_id: str, why: str) -> None:
        with self._lock:
            self._db.execute("UPDATE runs SET deleted = ? WHERE id = ?", (QUARANTINED, run_id))
        self.quarantined.append((run_id, why))

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
