"""The store serves a long history without reading all of it: pages newest first, lookups by
name, id and submission id through indexes, retention, and the upgrade of a schema-1 file."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone

from dstack_ray.config.loader import parse_configuration
from dstack_ray.models import JobRecord, RunRecord, RunSpec, RunStatus
from dstack_ray.store import LogStore, Store

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
CFG = parse_configuration({"type": "task", "commands": ["true"], "env": {"TOKEN": "s"}})


def run(index: int, status: RunStatus = RunStatus.DONE, name: str = "") -> RunRecord:
    at = T0 + timedelta(minutes=index)
    spec = RunSpec(run_name=name or f"run-{index}", configuration=CFG.model_dump(mode="json", exclude_unset=True), submission_id=f"sub-{index}")
    record = RunRecord(
        id=f"{index:032x}", name=name or f"run-{index}", status=status, submitted_at=at, last_processed_at=at, spec=spec,
        jobs=[JobRecord(run_id=f"{index:032x}", attempt=0, rank=0, submitted_at=at)],
    )
    return record


def filled(tmp_path, count: int) -> Store:
    store = Store(tmp_path / "state.db")
    for index in range(count):
        record = run(index, RunStatus.RUNNING if index % 100 == 7 else RunStatus.DONE)
        store.save_run(record)
        store.save_jobs(record.jobs)
    return store


def test_pages_newest_first_without_specs(tmp_path):
    store = filled(tmp_path, 250)
    first = store.list_runs(100)
    assert [r.name for r in first[:3]] == ["run-249", "run-248", "run-247"] and all(r.spec is None for r in first)
    assert first[0].jobs and first[0].jobs[0].rank == 0
    second = store.list_runs(100, before=(first[-1].submitted_at, first[-1].id))
    third = store.list_runs(100, before=(second[-1].submitted_at, second[-1].id))
    names = [r.name for r in first + second + third]
    assert len(third) == 50 and names == [f"run-{i}" for i in range(249, -1, -1)]


def test_the_active_runs_alone_are_loaded_at_start(tmp_path):
    store = filled(tmp_path, 300)
    assert [r.name for r in store.load_runs(active_only=True)] == ["run-7", "run-107", "run-207"]
    assert store.status_counts() == {"done": 297, "running": 3}


def test_lookups_by_name_id_and_submission(tmp_path):
    store = filled(tmp_path, 20)
    newer = run(30, name="run-3")  # the name reused by a later run
    store.save_run(newer)
    assert store.find_run("run-3").id == newer.id and store.find_run(run(3).id).submitted_at == run(3).submitted_at
    assert store.find_run("run-3").spec.configuration.commands == ["true"]
    assert store.find_submission("sub-12").name == "run-12" and store.find_submission("nope") is None
    assert store.has_name("run-19") and not store.has_name("run-99")


def test_listing_stays_fast_with_a_long_history(tmp_path):
    store = filled(tmp_path, 10_000)
    started = time.perf_counter()
    for _ in range(10):
        page = store.list_runs(50)
    took = (time.perf_counter() - started) / 10
    assert len(page) == 50 and page[0].name == "run-9999"
    assert took < 0.05, took  # the whole history is ~100x more; an unindexed scan would show
    plan = " ".join(str(row) for row in store._db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM runs WHERE deleted = 0 ORDER BY submitted_at DESC, id DESC LIMIT 50"
    ))
    assert "runs_listing" in plan


def test_retention_by_age_and_by_count_spares_active_runs(tmp_path):
    store = filled(tmp_path, 120)
    by_age = store.expired_runs(T0 + timedelta(minutes=10), None)
    assert by_age == sorted(run(i).id for i in range(10) if i != 7)  # run-7 is still running
    by_count = store.expired_runs(None, 100)
    assert by_count == sorted(run(i).id for i in range(20) if i != 7)
    logs = LogStore(tmp_path / "logs")
    logs.append(run(0).id, 0, 0, 0, b"line\n")
    store.delete_runs(by_count)
    logs.delete_run(run(0).id)
    assert store.find_run("run-0") is None and store.find_run("run-7") is not None
    assert store.load_jobs(run(0).id) == [] and not (tmp_path / "logs" / run(0).id).exists()
    assert len(store.list_runs(1000)) == 101


def test_a_schema_1_file_is_upgraded(tmp_path):
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,"
        " submitted_at TEXT NOT NULL, record TEXT NOT NULL); PRAGMA user_version = 1;"
    )
    for index, status in ((1, RunStatus.DONE), (2, RunStatus.RUNNING)):
        record = run(index, status)
        db.execute(
            "INSERT INTO runs VALUES (?, ?, 0, ?, ?)",
            (record.id, record.name, record.submitted_at.isoformat(), json.dumps(record.model_dump(mode="json", exclude={"jobs"}))),
        )
    db.commit()
    db.close()
    store = Store(path)
    assert [r.name for r in store.load_runs(active_only=True)] == ["run-2"]
    assert store.find_submission("sub-1").name == "run-1"
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_retention_settings_from_the_environment(monkeypatch):
    import pytest

    from dstack_ray.runtime.settings import RuntimeSettings

    assert RuntimeSettings().resolved_retention() == (None, None)
    monkeypatch.setenv("DSTACK_RAY_RETENTION_DAYS", "7.5")
    monkeypatch.setenv("DSTACK_RAY_RETENTION_RUNS", "1000")
    assert RuntimeSettings().resolved_retention() == (7.5, 1000)
    assert RuntimeSettings(retention_runs=5).resolved_retention() == (7.5, 5)  # the setting wins
    monkeypatch.setenv("DSTACK_RAY_RETENTION_RUNS", "lots")
    with pytest.raises(ValueError, match="DSTACK_RAY_RETENTION_RUNS='lots': give a positive whole number of runs"):
        RuntimeSettings().resolved_retention()
