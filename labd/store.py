"""Durable state in SQLite through aiosqlite. The daemon is the only process that opens
the database; all writes go through one group-commit writer, so concurrent submits share
one transaction (and one fsync) and each caller is acknowledged only after the commit."""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Sequence

import aiosqlite

from .models import Job

log = logging.getLogger(__name__)

Op = tuple[str, Sequence[Any]]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('pending','running','completed','failed','cancelled')),
    user TEXT NOT NULL,
    os_user TEXT NOT NULL,
    os_uid INTEGER NOT NULL,
    experiment_class TEXT NOT NULL,
    experiment_module TEXT NOT NULL,
    experiment_config TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    data_file_path TEXT,
    log_path TEXT,
    error_message TEXT,
    batch_id TEXT,
    time_limit_s REAL,
    config_versions TEXT NOT NULL DEFAULT '{}',
    pinned_versions TEXT NOT NULL DEFAULT '{}',
    inline_configs TEXT NOT NULL DEFAULT '{}',
    module_sha256 TEXT,
    module_git_rev TEXT,
    results TEXT NOT NULL DEFAULT '{}',
    held INTEGER NOT NULL DEFAULT 0,
    after_job TEXT,
    not_before TEXT,
    retry_of TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user, seq);
CREATE INDEX IF NOT EXISTS jobs_os_user ON jobs(os_user, seq);
CREATE INDEX IF NOT EXISTS jobs_class ON jobs(experiment_class, seq);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs(batch_id) WHERE batch_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS daemon_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    prefix TEXT PRIMARY KEY, day TEXT NOT NULL, last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS config_versions (
    version_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    filename TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    message TEXT,
    UNIQUE (type, sha256)
);
CREATE TABLE IF NOT EXISTS config_main_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    version_id TEXT NOT NULL REFERENCES config_versions(version_id),
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS config_main_type ON config_main_history(type, id);
"""

JOB_COLUMNS = (
    "job_id", "status", "user", "os_user", "os_uid", "experiment_class", "experiment_module",
    "experiment_config", "priority", "created_at", "started_at", "finished_at",
    "data_file_path", "log_path", "error_message", "batch_id", "time_limit_s",
    "config_versions", "pinned_versions", "inline_configs", "module_sha256",
    "module_git_rev", "results", "held", "after_job", "not_before", "retry_of",
)
_JSON_COLUMNS = {"experiment_config", "config_versions", "pinned_versions", "results",
                 "inline_configs"}
INSERT_JOB = (f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) "
              f"VALUES ({', '.join('?' * len(JOB_COLUMNS))})")
UPSERT_COUNTER = ("INSERT INTO counters(prefix, day, last) VALUES (?, ?, ?) "
                  "ON CONFLICT(prefix) DO UPDATE SET day=excluded.day, last=excluded.last")


def job_row(values: dict[str, Any]) -> tuple:
    """Column tuple for INSERT_JOB from a dict of job fields (JSON columns encoded)."""
    return tuple((json.dumps(v) if (v := values.get(c)) else "{}") if c in _JSON_COLUMNS
                 else values.get(c) for c in JOB_COLUMNS)


def row_to_job(row: aiosqlite.Row) -> Job:
    d = {k: row[k] for k in row.keys() if k in Job.model_fields}
    for c in _JSON_COLUMNS & d.keys():
        d[c] = json.loads(d[c])
    return Job.model_validate(d)


def _run_group(conn: sqlite3.Connection, ops: list[Op]) -> None:
    """In the SQLite thread: all ops in one transaction; consecutive ops with the same SQL
    go through one executemany."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        i = 0
        while i < len(ops):
            sql, j = ops[i][0], i
            while j < len(ops) and ops[j][0] == sql:
                j += 1
            conn.executemany(sql, [p for _, p in ops[i:j]])
            i = j
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class StoreError(RuntimeError):
    """The database refused a write (disk full, read-only, corrupt)."""


def _resolve(batch: list[tuple[Sequence[Op], asyncio.Future]],
             error: BaseException | None) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(error) if error else fut.set_result(None)


class Store:
    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._queue: list[tuple[Sequence[Op], asyncio.Future]] = []
        self._lock = threading.Lock()   # _queue and _draining: loop and SQLite thread
        self._draining: asyncio.Future | None = None
        self.commits = 0

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._w = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode=WAL", f"synchronous={self.synchronous}",
                       "foreign_keys=ON", "busy_timeout=5000"):
            await self._w.execute(f"PRAGMA {pragma}")
        await self._w.executescript(SCHEMA)
        # A second connection for reads: it only ever sees committed data, so a reader can
        # never observe a job whose submit has not been acknowledged.
        self._r = await aiosqlite.connect(self.path, isolation_level=None)
        self._r.row_factory = aiosqlite.Row
        await self._r.execute("PRAGMA query_only=ON")

    async def close(self) -> None:
        while self._draining is not None:  # let queued writes finish
            await asyncio.wait({self._draining})
        for c in (self._r, self._w):
            if c is not None:
                await c.close()

    # ---- writes -------------------------------------------------------------------
    async def write(self, *ops: Op) -> None:
        """Queue ops for the next group commit and wait until they are durable (raises
        StoreError if the commit failed)."""
        fut = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queue.append((ops, fut))
            if self._draining is None:  # else the SQLite thread takes it after its commit
                self._start_drain()
        await fut

    def _start_drain(self) -> None:
        # aiosqlite's _execute is the primitive its public calls are built on: one hop
        assert self._w is not None
        self._draining = asyncio.ensure_future(self._w._execute(
            self._drain, self._w._conn, asyncio.get_running_loop()))

    def _drain(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        """In the SQLite thread: commit whatever is queued, group after group, until the
        queue is empty. What arrives during a commit goes into the next one, without a
        round trip through the event loop in between."""
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    loop.call_soon_threadsafe(self._drained)
                    return
            try:
                _run_group(conn, [op for ops, _ in batch for op in ops])
                error: BaseException | None = None
                self.commits += 1
            except Exception as exc:  # disk full, read-only fs: fail this group, go on
                log.error("database write failed: %s", exc)
                error = StoreError(f"database write failed: {exc}")
            loop.call_soon_threadsafe(_resolve, batch, error)

    def _drained(self) -> None:
        with self._lock:
            self._draining = None
            if self._queue:  # queued after the thread's last look: start it again
                self._start_drain()

    # ---- reads --------------------------------------------------------------------
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        assert self._r is not None
        return list(await self._r.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def get_job(self, job_id: str) -> Job | None:
        row = await self.fetchone("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return row_to_job(row) if row else None

    async def get_job_row(self, job_id: str) -> aiosqlite.Row | None:
        return await self.fetchone("SELECT * FROM jobs WHERE job_id = ?", (job_id,))

    async def counters(self) -> dict[str, tuple[str, int]]:
        rows = await self.fetchall("SELECT prefix, day, last FROM counters")
        return {r["prefix"]: (r["day"], r["last"]) for r in rows}

    async def pending_rows(self) -> list[aiosqlite.Row]:
        """Pending jobs in submit order: the heap is rebuilt from these on start."""
        return await self.fetchall(
            "SELECT seq, job_id, user, os_user, os_uid, experiment_class, experiment_module,"
            " priority, created_at, batch_id, held, after_job, not_before FROM jobs"
            " WHERE status = 'pending' ORDER BY seq")

    async def history(self, *, user: str | None, os_user: str | None, status: str | None,
                      experiment: str | None, since: str | None, batch_id: str | None,
                      before_seq: int | None, limit: int) -> list[aiosqlite.Row]:
        where, params = [], []
        for col, val in (("user", user), ("os_user", os_user), ("status", status),
                         ("experiment_class", experiment), ("batch_id", batch_id)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        return await self.fetchall(sql, (*params, limit))

    async def get_state(self, key: str) -> str | None:
        row = await self.fetchone("SELECT value FROM daemon_state WHERE key = ?", (key,))
        return row["value"] if row else None

    async def set_state(self, key: str, value: str) -> None:
        await self.write(("INSERT INTO daemon_state(key, value) VALUES (?, ?) ON CONFLICT(key)"
                          " DO UPDATE SET value = excluded.value", (key, value)))

    async def recover_running(self, now: str) -> list[str]:
        """Jobs left ``running`` by a crash: the run was interrupted, never silently retried."""
        rows = await self.fetchall("SELECT job_id FROM jobs WHERE status = 'running'")
        ids = [r["job_id"] for r in rows]
        if ids:
            await self.write(*[(
                "UPDATE jobs SET status='failed', finished_at=?, error_message=? "
                "WHERE job_id=? AND status='running'",
                (now, "interrupted: daemon stopped during run", jid)) for jid in ids])
        return ids

