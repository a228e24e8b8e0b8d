"""A database made by the schema labd first shipped (tests/data/schema_v0.sql, frozen: a
copy of store.py's SCHEMA before migrations existed) opens, upgrades in place and keeps
every job."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from labd.migrations import STEPS, VERSION, create
from labd.store import Store, StoreError, row_to_job

V0 = (Path(__file__).parent / "data" / "schema_v0.sql").read_text()

ROWS = [  # (job_id, status, error_message) -> expected end_reason
    ("JOB-20260101-00001", "completed", None, "completed"),
    ("JOB-20260101-00002", "failed", "ValueError: boom", "error"),
    ("JOB-20260101-00003", "failed", "interrupted: daemon stopped during run", "crash"),
    ("JOB-20260101-00004", "failed", "interrupted: daemon shut down during run", "shutdown"),
    ("JOB-20260101-00005", "failed", "time limit exceeded (5 s)", "time_limit"),
    ("JOB-20260101-00006", "cancelled", "cancelled by bob while pending", "cancelled"),
    ("JOB-20260101-00007", "cancelled", "cancelled: dependency JOB-20260101-00002 failed",
     "dependency"),
    ("JOB-20260101-00008", "pending", None, None),
]


def make_v0(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(V0)
        for job_id, status, msg, _ in ROWS:
            db.execute(
                "INSERT INTO jobs (job_id, status, user, os_user, os_uid, experiment_class,"
                " experiment_module, experiment_config, priority, created_at, error_message)"
                " VALUES (?, ?, 'alice', 'alice', 1000, 'T1Experiment',"
                " 'experiments.single_qubit.t1', '{\"reps\": 10}', 0,"
                " '2026-01-01T00:00:00+00:00', ?)", (job_id, status, msg))
        db.execute("INSERT INTO counters VALUES ('JOB', '20260101', 8)")
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0


async def test_a_database_from_the_first_schema_is_upgraded(tmp_path):
    db = tmp_path / "labd.sqlite3"
    make_v0(db)
    store = Store(db)
    await store.open()
    try:
        for job_id, status, _, reason in ROWS:
            job = row_to_job(await store.get_job_row(job_id))
            assert (job.status, job.end_reason) == (status, reason)
        assert await store.counters() == {"JOB": ("20260101", 8)}
        assert [r["job_id"] for r in await store.pending_rows()] == ["JOB-20260101-00008"]
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    store = Store(db)  # opening again is a no-op
    await store.open()
    await store.close()


async def test_a_database_from_a_newer_labd_is_refused(tmp_path):
    db = tmp_path / "labd.sqlite3"
    make_v0(db)
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this labd"):
        await Store(db).open()


async def test_created_max_is_backfilled_as_the_running_max_of_created_at(tmp_path):
    """A database from before created_max (history's `since` bound) gets it for every job
    already stored, correct where created_at goes backwards, and history finds every job
    created since any point, as a check of every job would."""
    before = 6                                    # STEPS[6] adds created_max
    assert "created_max" in STEPS[before][0]
    created = ["2026-01-01T10:00:00.000000+00:00", "2026-01-01T09:00:00.000000+00:00",
               "2026-01-01T11:00:00.000000+00:00", "2026-01-01T08:00:00.000000+00:00",
               "2026-01-01T11:00:00.000000+00:00", "2026-01-01T12:00:00.000000+00:00",
               "2026-01-01T10:30:00.000000+00:00"]
    db = tmp_path / "labd.sqlite3"
    with sqlite3.connect(db) as conn:
        create(conn, before)
        for i, at in enumerate(created):
            conn.execute(
                "INSERT INTO jobs (job_id, status, user, os_user, os_uid, experiment_class,"
                " experiment_module, experiment_config, priority, created_at)"
                " VALUES (?, 'completed', 'alice', 'alice', 1000, 'T1Experiment',"
                " 'experiments.single_qubit.t1', '{}', 0, ?)", (f"JOB-20260101-{i + 1:05d}", at))
    store = Store(db)
    await store.open()
    try:
        rows = await store.fetchall("SELECT created_max FROM jobs ORDER BY seq")
        assert [r["created_max"] for r in rows] == [max(created[:i + 1])
                                                    for i in range(len(created))]
        for since in sorted(set(created)):
            rows = await store.history(user=None, os_user=None, status=None, experiment=None,
                                       since=since, batch_id=None, before_seq=None, limit=100)
            assert [r["job_id"] for r in rows] == [
                f"JOB-20260101-{i + 1:05d}" for i in reversed(range(len(created)))
                if created[i] >= since]
    finally:
        await store.close()
