"""Durable state in SQLite through aiosqlite's public API. The daemon is the only process that
opens the database; every write goes through one group-commit writer, so concurrent callers
share one transaction (and one fsync), each is acknowledged only after the commit, and one
caller's failing statement never fails another's (the group is replayed caller by caller).

Every SQL statement of the scheduler lives here, named for what it does."""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import aiosqlite

from .ids import later
from .migrations import migrate
from .models import Job, utcnow

log = logging.getLogger(__name__)


class Op(NamedTuple):
    """One statement of a write. ``expect_rows``: the statement must change exactly that
    many rows, else the caller's whole write is rolled back (compare-and-set)."""
    sql: str
    params: Sequence[Any] = ()
    expect_rows: int | None = None


JOB_COLUMNS = (
    "job_id", "status", "user", "os_user", "os_uid", "experiment_class", "experiment_module",
    "experiment_config", "priority", "created_at", "started_at", "finished_at",
    "data_file_path", "log_path", "error_message", "batch_id", "time_limit_s",
    "config_versions", "pinned_versions", "inline_configs", "module_sha256",
    "module_git_rev", "results", "held", "after_job", "not_before", "retry_of", "end_reason",
    "created_max",
)
_JSON_COLUMNS = {"experiment_config", "config_versions", "pinned_versions", "results",
                 "inline_configs"}
INSERT_JOB = (f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) "
              f"VALUES ({', '.join('?' * len(JOB_COLUMNS))})")
UPSERT_COUNTER = ("INSERT INTO counters(prefix, day, last) VALUES (?, ?, ?) "
                  "ON CONFLICT(prefix) DO UPDATE SET day=excluded.day, last=excluded.last")
_CLAIM = ("UPDATE jobs SET status='running', started_at=?, config_versions=?, log_path=? "
          "WHERE job_id=? AND status='pending'")
_END = ("UPDATE jobs SET status=?, end_reason=?, finished_at=?, error_message=?, "
        "data_file_path=coalesce(?, data_file_path), module_sha256=coalesce(?, module_sha256),"
        " module_git_rev=coalesce(?, module_git_rev), results=?,"
        " config_versions=coalesce(?, config_versions) "
        "WHERE job_id=? AND status IN ('pending', 'running')")


def job_row(values: dict[str, Any]) -> tuple:
    """Column tuple for INSERT_JOB from a dict of job fields (JSON columns encoded)."""
    return tuple((json.dumps(v) if (v := values.get(c)) else "{}") if c in _JSON_COLUMNS
                 else values.get(c) for c in JOB_COLUMNS)


# looked up once: pydantic's Job.model_fields is a property that costs ~1.5 us a call, paid
# per column per row (a 50-job history page: ~2k calls, a third of its CPU time)
_JOB_FIELDS = frozenset(Job.model_fields)


def row_to_job(row: aiosqlite.Row) -> Job:
    d = {k: row[k] for k in row.keys() if k in _JOB_FIELDS}
    for c in _JSON_COLUMNS & d.keys():
        d[c] = json.loads(d[c])
    return Job.model_validate(d)


# The first seq from which on ``created_max`` (the running max of created_at in seq order,
# see Store.insert_jobs) reaches the bound: no earlier job can have been created
# at or after it, even where created_at goes backwards in seq (clock steps, imported rows).
# created_max never decreases, so binary lifting over the primary key finds that seq: x is
# the last seq known to be before it, tried further by halving steps (~63 primary-key probes,
# no index to write on every submit). NULL on an empty table (which has no such jobs either).
_SINCE_SEQ = (
    "(WITH RECURSIVE b(x, step) AS ("
    " SELECT (SELECT min(seq) FROM jobs) - 1, 1 << 62"
    " UNION ALL"
    " SELECT x + iif((SELECT created_max < ? FROM jobs WHERE seq >= x + step"
    "  ORDER BY seq LIMIT 1), step, 0), step / 2 FROM b WHERE step > 0)"
    " SELECT max(x) + 1 FROM b)")


def history_sql(*, user: str | None, os_user: str | None, status: str | None,
                experiment: str | None, since: str | None, batch_id: str | None,
                before_seq: int | None, limit: int) -> tuple[str, list[Any]]:
    """The history query, newest first. ``since`` also bounds seq from below, so SQLite
    walks only the jobs after that point instead of checking created_at on every older
    one (a `since` that excludes every job below a cursor cost a walk of all of them)."""
    where, params = [], []
    for col, val in (("user", user), ("os_user", os_user), ("status", status),
                     ("experiment_class", experiment), ("batch_id", batch_id)):
        if val is not None:
            where.append(f"{col} = ?")
            params.append(val)
    if since is not None:
        where += [f"seq >= {_SINCE_SEQ}", "created_at >= ?"]
        params += [since, since]
    if before_seq is not None:
        where.append("seq < ?")
        params.append(before_seq)
    sql = "SELECT * FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY seq DESC LIMIT ?", [*params, limit]


class StoreError(RuntimeError):
    """The database refused a write (disk full, read-only, corrupt): the message says which,
    in words an operator can act on."""


class PreconditionFailed(StoreError):
    """A compare-and-set statement matched no row: the state changed meanwhile."""


def describe(exc: sqlite3.Error, path: Path) -> str:
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return f"the disk holding the labd database ({path.parent}) is full"
    if name.startswith("SQLITE_READONLY") or name == "SQLITE_CANTOPEN":
        return f"the labd database {path} is read-only or cannot be opened"
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return f"the labd database {path} is damaged"
    if name.startswith("SQLITE_IOERR"):
        return f"I/O error on the labd database {path} ({exc})"
    return f"database write failed: {exc}"


def _statements(ops: Sequence[Op]) -> list[tuple[str, list[Sequence[Any]], int | None]]:
    """The ops of one transaction as (sql, params list, expect_rows) statements:
    consecutive unconditional ops with the same SQL run as one executemany (a group of N
    submits: one statement)."""
    out: list[tuple[str, list[Sequence[Any]], int | None]] = []
    for op in ops:
        if op.expect_rows is None and out and out[-1][0] == op.sql and out[-1][2] is None:
            out[-1][1].append(op.params)
        else:
            out.append((op.sql, [op.params], op.expect_rows))
    return out


# The writer's transactions: sqlite3 opens them itself (BEGIN IMMEDIATE before the first
# write of a group), one round trip to the database thread less than an explicit BEGIN.
ISOLATION = "IMMEDIATE"


class _Request(NamedTuple):
    ops: Sequence[Op]
    fut: asyncio.Future


class Store:
    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._queue: deque[_Request] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._closing = False
        self.commits = 0
        self.last_error: str | None = None   # the latest failed commit, for health
        self._created_max = ""   # see insert_jobs

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: _transaction sets isolation_level from the loop thread,
        # between two round trips, when the database thread has nothing of this connection
        self._w = await aiosqlite.connect(self.path, isolation_level=ISOLATION,
                                          check_same_thread=False)
        try:
            for pragma in ("journal_mode=WAL", f"synchronous={self.synchronous}",
                           "foreign_keys=ON", "busy_timeout=5000"):
                await self._w.execute(f"PRAGMA {pragma}")
            await migrate(self._w)
            row = await (await self._w.execute(
                "SELECT created_max FROM jobs ORDER BY seq DESC LIMIT 1")).fetchone()
            self._created_max = row[0] if row and row[0] else ""
            # A second connection for reads: it only ever sees committed data, so a reader
            # can never observe a job whose submit has not been acknowledged.
            self._r = await aiosqlite.connect(self.path, isolation_level=None)
            self._r.row_factory = aiosqlite.Row
            await self._r.execute("PRAGMA query_only=ON")
        except (sqlite3.Error, RuntimeError) as exc:
            await self._close_connections()
            raise StoreError(describe(exc, self.path) if isinstance(exc, sqlite3.Error)
                             else str(exc)) from None
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Finish every queued write, then close."""
        if self._writer is not None:
            self._closing = True
            self._wake.set()
            await self._writer
            self._writer = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        for c in (self._r, self._w):
            if c is not None:
                await c.close()
        self._r = self._w = None

    # ---- writes -------------------------------------------------------------------
    async def write(self, *ops: Op | tuple) -> None:
        """Queue ops for the next group commit and wait until they are durable. Raises
        StoreError if they were not committed (PreconditionFailed for a failed CAS)."""
        if self._closing:
            raise StoreError("labd is shutting down; the database takes no new writes")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Request([o if isinstance(o, Op) else Op(*o) for o in ops], fut))
        self._wake.set()
        await fut

    async def _write_loop(self) -> None:
        """Commit whatever is queued, group after group; what arrives during a commit goes
        into the next one."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = list(self._queue)
                self._queue.clear()
                await self._commit_group(batch)
            if self._closing:
                return

    async def _commit_group(self, batch: list[_Request]) -> None:
        try:
            await self._transaction([op for r in batch for op in r.ops])
        except (sqlite3.Error, PreconditionFailed) as exc:
            if len(batch) == 1 or self._is_commit_failure(exc):
                self._fail(batch, exc)
                return
            # One caller's statement failed: replay each caller alone, so only it fails.
            for r in batch:
                try:
                    await self._transaction(r.ops)
                except (sqlite3.Error, PreconditionFailed) as one:
                    self._fail([r], one)
                else:
                    self._done([r])
            return
        self._done(batch)

    @staticmethod
    def _is_commit_failure(exc: BaseException) -> bool:
        """Failures that no caller caused (disk full, I/O): replaying would fail again."""
        name = getattr(exc, "sqlite_errorname", "")
        return name == "SQLITE_FULL" or name.startswith(("SQLITE_IOERR", "SQLITE_READONLY",
                                                         "SQLITE_CORRUPT", "SQLITE_NOTADB"))

    async def _transaction(self, ops: Sequence[Op]) -> None:
        """All ops in one transaction (begun implicitly by the first write), as few
        statements as they allow (``_statements``): each is a round trip to the database
        thread, and the commit one more. Except for one unconditional statement of one
        row (an idle submit's INSERT): SQLite makes that atomic by itself, so it runs in
        autocommit mode and its durable commit is part of the same round trip."""
        w = self._w
        assert w is not None
        statements = _statements(ops)
        if len(statements) == 1 and statements[0][2] is None and len(statements[0][1]) == 1 \
                and not w.in_transaction:   # (else setting autocommit would commit that)
            sql, [params], _ = statements[0]
            w.isolation_level = None
            try:
                await w.execute(sql, params)
            finally:
                w.isolation_level = ISOLATION
            return
        try:
            for sql, params, expect_rows in statements:
                if expect_rows is None:
                    await w.executemany(sql, params)
                    continue
                cur = await w.execute(sql, params[0])
                if cur.rowcount != expect_rows:
                    raise PreconditionFailed(f"{sql.split()[0].lower()} changed "
                                             f"{cur.rowcount} rows, not {expect_rows}")
            await w.commit()
        except BaseException:
            if w.in_transaction:  # a failed COMMIT may already have rolled back
                try:
                    await w.rollback()
                except sqlite3.Error:
                    log.exception("rollback failed")
            raise

    def _done(self, batch: list[_Request]) -> None:
        self.commits += 1
        self.last_error = None
        for r in batch:
            if not r.fut.done():
                r.fut.set_result(None)

    def _fail(self, batch: list[_Request], exc: BaseException) -> None:
        if isinstance(exc, PreconditionFailed):
            error: StoreError = exc
        else:
            error = StoreError(describe(exc, self.path))  # type: ignore[arg-type]
            self.last_error = str(error)
            log.error("database write failed: %s", exc)
        for r in batch:
            if not r.fut.done():
                r.fut.set_exception(error)

    # ---- reads --------------------------------------------------------------------
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        assert self._r is not None
        return list(await self._r.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def get_job(self, job_id: str) -> Job | None:
        row = await self.get_job_row(job_id)
        return row_to_job(row) if row else None

    async def get_job_row(self, job_id: str) -> aiosqlite.Row | None:
        return await self.fetchone("SELECT * FROM jobs WHERE job_id = ?", (job_id,))

    async def job_status(self, job_id: str) -> str | None:
        row = await self.fetchone("SELECT status FROM jobs WHERE job_id = ?", (job_id,))
        return row["status"] if row else None

    async def counters(self) -> dict[str, tuple[str, int]]:
        """Each ID prefix's (day, last number used). A submit writes no counter row (one
        statement, so one round trip, less): the jobs table holds every job ID stored,
        and the newest job's, the highest (IDs are stored in the order they are handed
        out), raises the JOB counter."""
        rows = await self.fetchall("SELECT prefix, day, last FROM counters")
        out = {r["prefix"]: (r["day"], r["last"]) for r in rows}
        newest = await self.fetchone("SELECT job_id FROM jobs ORDER BY seq DESC LIMIT 1")
        if newest is not None:
            _, day, last = newest["job_id"].split("-")
            out["JOB"] = later(out.get("JOB", (None, 0)), (day, int(last)))
        return out

    async def pending_rows(self) -> list[aiosqlite.Row]:
        """Pending jobs in submit order: the queue is rebuilt from these on start."""
        return await self.fetchall(
            "SELECT job_id, user, os_user, os_uid, experiment_class, experiment_module,"
            " priority, batch_id, held, after_job, not_before, preemptible,"
            " preemptions, preempted_by, preempted_at, resume_versions IS NOT NULL AS resume"
            " FROM jobs WHERE status = 'pending' ORDER BY seq")

    async def recent_durations(self, limit: int = 5000) -> list[aiosqlite.Row]:
        """Run times of the latest completed jobs, oldest first (for estimates)."""
        rows = await self.fetchall(
            "SELECT experiment_class, started_at, finished_at FROM jobs "
            "WHERE status = 'completed' ORDER BY seq DESC LIMIT ?", (limit,))
        return rows[::-1]

    async def history(self, *, user: str | None, os_user: str | None, status: str | None,
                      experiment: str | None, since: str | None, batch_id: str | None,
                      before_seq: int | None, limit: int) -> list[aiosqlite.Row]:
        return await self.fetchall(*history_sql(
            user=user, os_user=os_user, status=status, experiment=experiment, since=since,
            batch_id=batch_id, before_seq=before_seq, limit=limit))

    async def waiting_details(self, job_ids: list[str]) -> dict[str, tuple[str, str | None]]:
        """Submit time and the reason labd itself held it (if it did) of these jobs, in
        one query."""
        rows = await self.fetchall(
            "SELECT job_id, created_at, hold_reason FROM jobs WHERE job_id IN "
            "(SELECT value FROM json_each(?))", (json.dumps(job_ids),))
        return {r["job_id"]: (r["created_at"], r["hold_reason"]) for r in rows}

    async def get_state(self, key: str) -> str | None:
        row = await self.fetchone("SELECT value FROM daemon_state WHERE key = ?", (key,))
        return row["value"] if row else None

    # ---- job writes (ops, so callers can share a commit) ----------------------------
    def insert_jobs(self, jobs: list[dict[str, Any]]) -> list[Op]:
        """New jobs (their IDs need no counter row: see ``counters``), for ``write`` at once.

        Each carries created_max, the running max of created_at in seq order that history's
        `since` bound needs non-decreasing (rows inserted without it get it from a trigger,
        at 40% more time per insert). Stamped here, in the order write() queues and commits
        them; a max that runs ahead of the stored rows (an insert rolled back) only makes
        that bound looser, never wrong."""
        ops = []
        for j in jobs:
            self._created_max = max(self._created_max, j["created_at"])
            ops.append(Op(INSERT_JOB, job_row({**j, "created_max": self._created_max})))
        return ops

    @staticmethod
    def claim(job_id: str, started_at: str, versions: dict[str, str], log_path: str) -> Op:
        """pending -> running; fails (PreconditionFailed) unless the job is still pending."""
        return Op(_CLAIM, (started_at, json.dumps(versions), log_path, job_id), 1)

    @staticmethod
    def end(job_id: str, status: str, reason: str, finished_at: str, message: str | None,
            data_file_path: str | None = None, module_sha256: str | None = None,
            module_git_rev: str | None = None, results: dict[str, Any] | None = None,
            config_versions: dict[str, str] | None = None) -> Op:
        """pending or running -> a terminal status, with its reason (and, for a job that
        failed before its start was recorded, the config versions it would have used)."""
        return Op(_END, (status, reason, finished_at, message, data_file_path, module_sha256,
                         module_git_rev, json.dumps(results or {}),
                         None if config_versions is None else json.dumps(config_versions),
                         job_id), 1)

    # ---- preemption (issue #16) ---------------------------------------------------
    @staticmethod
    def set_not_preemptible(job_id: str) -> Op:
        """A new job's opt-out (in the commit that inserts it)."""
        return Op("UPDATE jobs SET preemptible=0 WHERE job_id=?", (job_id,), 1)

    @staticmethod
    def preempt(job_id: str, by: str, at: str, versions: dict[str, str],
                count: int = 1) -> Op:
        """running -> pending, its checkpoint on disk: it resumes with the config versions
        it started with (kept from its first preemption on). ``count`` 0: a shutdown's,
        not counted against max_preemptions."""
        return Op("UPDATE jobs SET status='pending', preemptions=preemptions+?, "
                  "preempted_by=?, preempted_at=?, "
                  "resume_versions=coalesce(resume_versions, ?) "
                  "WHERE job_id=? AND status='running'",
                  (count, by, at, json.dumps(versions), job_id), 1)

    @staticmethod
    def resume_after_crash(job_id: str) -> Op:
        """A job that died while running with a checkpoint on disk: pending again, to resume
        from it with the config versions it ran with."""
        return Op("UPDATE jobs SET status='pending', "
                  "resume_versions=coalesce(resume_versions, config_versions) "
                  "WHERE job_id=? AND status='running'", (job_id,), 1)
    # ---- end of preemption ------------------------------------------------------------

    @staticmethod
    def set_held(job_id: str, held: bool) -> Op:
        # a hold or release by hand ends labd's own hold: its reason no longer applies
        return Op("UPDATE jobs SET held=?, hold_reason=NULL WHERE job_id=? AND "
                  "status='pending'", (int(held), job_id), 1)

    @staticmethod
    def set_after(job_id: str, after: str | None) -> Op:
        return Op("UPDATE jobs SET after_job=? WHERE job_id=? AND status='pending'",
                  (after, job_id), 1)

    @staticmethod
    def set_priority(job_id: str, priority: int) -> Op:
        return Op("UPDATE jobs SET priority=? WHERE job_id=? AND status='pending'",
                  (priority, job_id), 1)

    @staticmethod
    def set_state(key: str, value: str) -> Op:
        return Op("INSERT INTO daemon_state(key, value) VALUES (?, ?) ON CONFLICT(key) "
                  "DO UPDATE SET value = excluded.value", (key, value))

    # ---- config versions ---------------------------------------------------------
    async def config_mains(self) -> dict[str, str]:
        """The current main version of each config type."""
        rows = await self.fetchall(
            "SELECT type, version_id FROM config_main_history WHERE id IN "
            "(SELECT max(id) FROM config_main_history GROUP BY type)")
        return {r["type"]: r["version_id"] for r in rows}

    async def config_version(self, version_id: str) -> aiosqlite.Row | None:
        return await self.fetchone("SELECT * FROM config_versions WHERE version_id = ?",
                                   (version_id,))

    async def config_version_by_hash(self, type_name: str, sha256: str) -> aiosqlite.Row | None:
        return await self.fetchone("SELECT * FROM config_versions WHERE type = ? AND "
                                   "sha256 = ?", (type_name, sha256))

    async def config_versions(self, type_name: str | None,
                              limit: int | None) -> list[aiosqlite.Row]:
        """Versions of a type, newest first (all versions of all types if None)."""
        if type_name is None:
            return await self.fetchall("SELECT * FROM config_versions ORDER BY version_id")
        return await self.fetchall(
            "SELECT version_id, sha256, size, created_at, created_by, message "
            "FROM config_versions WHERE type = ? ORDER BY created_at DESC, version_id DESC "
            "LIMIT ?", (type_name, limit))

    async def config_main_history(self, type_name: str, limit: int) -> list[aiosqlite.Row]:
        return await self.fetchall(
            "SELECT version_id, set_at, set_by FROM config_main_history WHERE type = ? "
            "ORDER BY id DESC LIMIT ?", (type_name, limit))

    @staticmethod
    def insert_config_version(version_id: str, type_name: str, sha256: str, size: int,
                              filename: str, by: str, message: str | None) -> Op:
        return Op("INSERT INTO config_versions(version_id, type, sha256, size, filename,"
                  " created_at, created_by, message) VALUES (?,?,?,?,?,?,?,?)",
                  (version_id, type_name, sha256, size, filename, utcnow(), by, message))

    @staticmethod
    def set_config_main(type_name: str, version_id: str, by: str,
                        current: str | None) -> Op:
        """Append to main's history only if main is still ``current`` (compare-and-set in
        the commit, so no other change of main can slip in between)."""
        return Op("INSERT INTO config_main_history(type, version_id, set_at, set_by) "
                  "SELECT ?, ?, ?, ? WHERE (SELECT version_id FROM config_main_history "
                  "WHERE type = ? ORDER BY id DESC LIMIT 1) IS ?",
                  (type_name, version_id, utcnow(), by, type_name, current), 1)

    @staticmethod
    def counter(row: tuple) -> Op:
        return Op(UPSERT_COUNTER, row)

    async def running_job_ids(self) -> list[str]:
        rows = await self.fetchall("SELECT job_id FROM jobs WHERE status = 'running'")
        return [r["job_id"] for r in rows]

    # ---- (sched) recurring schedules and config trace, issue #13 -----------------------
    async def schedules(self) -> list[aiosqlite.Row]:
        return await self.fetchall("SELECT * FROM schedules ORDER BY id")

    async def schedule_fires(self, schedule_id: int, limit: int) -> list[aiosqlite.Row]:
        """A schedule's firings, newest first."""
        return await self.fetchall(
            "SELECT at, outcome, job_id, message FROM schedule_fires WHERE schedule_id = ? "
            "ORDER BY id DESC LIMIT ?", (schedule_id, limit))

    @staticmethod
    def insert_schedule(sid: int, owner: str, owner_uid: int, params: dict[str, Any],
                        every_s: float, next_fire: float, created_at: str) -> list[Op]:
        """The schedule and its ID counter, in one commit (an ID is never handed out
        twice, even after the newest schedule was removed)."""
        return [Op("INSERT INTO schedules(id, owner, owner_uid, params, every_s, next_fire,"
                   " created_at) VALUES (?,?,?,?,?,?,?)",
                   (sid, owner, owner_uid, json.dumps(params), every_s, next_fire,
                    created_at)),
                Store.counter(("SCHED", "-", sid))]

    @staticmethod
    def set_schedule_state(sid: int, next_fire: float, paused: bool) -> Op:
        return Op("UPDATE schedules SET next_fire=?, paused=? WHERE id=?",
                  (next_fire, int(paused), sid), 1)

    @staticmethod
    def schedule_fired(sid: int, at: str, outcome: str, job_id: str | None,
                       message: str | None, next_fire: float) -> list[Op]:
        """Record a firing (submitted, skipped or failed) and move the next fire time, in
        one commit. A skip keeps last_job_id (the job that is still pending/running)."""
        return [
            Op("UPDATE schedules SET next_fire=?, last_fire_at=?, last_outcome=?,"
               " last_message=?, last_job_id=coalesce(?, last_job_id),"
               " skips=skips + (? = 'skipped') WHERE id=?",
               (next_fire, at, outcome, message, job_id, outcome, sid), 1),
            Op("INSERT INTO schedule_fires(schedule_id, at, outcome, job_id, message) "
               "VALUES (?,?,?,?,?)", (sid, at, outcome, job_id, message)),
        ]

    @staticmethod
    def delete_schedule(sid: int) -> Op:
        """The schedule goes; its firings stay (the jobs it made keep its batch_id)."""
        return Op("DELETE FROM schedules WHERE id=?", (sid,), 1)

    async def config_trace_rows(self, type_name: str) -> list[aiosqlite.Row]:
        """Every change of a type's main, oldest first, with its version's creator (and the
        job that created it, for a version a calibration made)."""
        return await self.fetchall(
            "SELECT h.id, h.version_id, h.set_at, h.set_by, v.type, v.sha256, v.filename,"
            " v.created_at, v.created_by, v.created_by_job_id FROM config_main_history h"
            " JOIN config_versions v ON v.version_id = h.version_id"
            " WHERE h.type = ? ORDER BY h.id", (type_name,))
    # ---- end of (sched) ------------------------------------------------------------------
    # ---- notification targets (notify branch, issue #12; labd/notify.py) ----------------
    async def notify_targets(self) -> list[aiosqlite.Row]:
        return await self.fetchall("SELECT * FROM notify_targets ORDER BY created_at, id")

    @staticmethod
    def insert_notify_target(target_id: str, os_uid: int, os_user: str, url: str, on: str,
                             created_at: str, max_per_user: int) -> Op:
        """Refused (PreconditionFailed) if the account already has ``max_per_user``."""
        return Op("INSERT INTO notify_targets(id, os_uid, os_user, url, on_filter, created_at)"
                  " SELECT ?, ?, ?, ?, ?, ? WHERE (SELECT count(*) FROM notify_targets"
                  " WHERE os_uid = ?) < ?",
                  (target_id, os_uid, os_user, url, on, created_at, os_uid, max_per_user), 1)

    @staticmethod
    def delete_notify_target(target_id: str) -> Op:
        return Op("DELETE FROM notify_targets WHERE id = ?", (target_id,), 1)

    @staticmethod
    def record_notify_delivery(target_id: str, status: str | None, error: str | None,
                               attempt_at: str, ok_at: str | None) -> Op:
        return Op("UPDATE notify_targets SET last_status=?, last_error=?, last_attempt_at=?,"
                  " last_ok_at=? WHERE id=?", (status, error, attempt_at, ok_at, target_id))

    async def notify_job_row(self, job_id: str) -> aiosqlite.Row | None:
        """What a job-end message says about a job (one indexed read)."""
        return await self.fetchone(
            "SELECT seq, job_id, status, end_reason, user, os_user, os_uid, experiment_class,"
            " experiment_module, batch_id, created_at, started_at, finished_at,"
            " error_message, data_file_path FROM jobs WHERE job_id = ?", (job_id,))

    async def notify_batch_unfinished(self, batch_id: str) -> bool:
        """Whether a job of the batch is still pending or running. The jobs_batch index,
        walked from the batch's newest job: while a batch runs in submit order that is
        the first row looked at, so each job end costs O(1), not a scan of the batch."""
        return await self.fetchone(
            "SELECT 1 FROM jobs WHERE batch_id = ? AND status IN ('pending', 'running')"
            " ORDER BY seq DESC LIMIT 1", (batch_id,)) is not None

    async def notify_batch_counts(self, batch_id: str) -> tuple[dict[str, int], int]:
        """Jobs of one batch by status, and its newest job's seq (once per batch end)."""
        rows = await self.fetchall("SELECT status, count(*) AS n, max(seq) AS last FROM jobs"
                                   " WHERE batch_id = ? GROUP BY status", (batch_id,))
        return {r["status"]: r["n"] for r in rows}, max((r["last"] for r in rows), default=0)
    # ---- end of notification targets ------------------------------------------------
    # ---- calibration (issue #13): config updates from jobs, calibrate-when-stale ------
    @staticmethod
    def set_calibration_fields(job_id: str, update_main: bool, calibration: Any,
                               fresh: list[str] | None, calibrated_by: list[str] | None) -> Op:
        """A new job's calibration columns (in the commit that inserts it)."""
        return Op("UPDATE jobs SET update_main=?, calibration=?, fresh=?, calibrated_by=? "
                  "WHERE job_id=?",
                  (int(update_main), json.dumps(calibration) if calibration else None,
                   json.dumps(fresh) if fresh else None,
                   json.dumps(calibrated_by) if calibrated_by else None, job_id), 1)

    @staticmethod
    def set_config_update(job_id: str, record: dict[str, Any]) -> Op:
        """What was decided about a job's config update (in the commit that ends it)."""
        return Op("UPDATE jobs SET config_update=? WHERE job_id=?",
                  (json.dumps(record), job_id), 1)

    @staticmethod
    def hold_for_calibration(job_id: str, reason: str) -> Op:
        return Op("UPDATE jobs SET held=1, after_job=NULL, hold_reason=? "
                  "WHERE job_id=? AND status='pending'", (reason, job_id), 1)

    @staticmethod
    def insert_job_config_version(version_id: str, type_name: str, sha256: str, size: int,
                                  filename: str, by: str, message: str | None,
                                  job_id: str) -> Op:
        return Op("INSERT INTO config_versions(version_id, type, sha256, size, filename,"
                  " created_at, created_by, message, created_by_job_id) "
                  "VALUES (?,?,?,?,?,?,?,?,?)",
                  (version_id, type_name, sha256, size, filename, utcnow(), by, message,
                   job_id))

    @staticmethod
    def key_calibrated(type_name: str, key: str, job_id: str, version_id: str) -> Op:
        """A calibration job confirmed (or set) a key's value now: its age restarts even
        if the value did not change. One daemon_state row per key (no new table)."""
        return Store.set_state(f"calibrated/{type_name}/{key}", json.dumps(
            {"at": utcnow(), "job_id": job_id, "version_id": version_id}))

    async def key_calibrated_at(self, type_name: str, key: str) -> str | None:
        value = await self.get_state(f"calibrated/{type_name}/{key}")
        return json.loads(value)["at"] if value else None

    async def calibration_rows(self) -> list[aiosqlite.Row]:
        """Jobs not final yet that update main or wait for calibrations."""
        return await self.fetchall(
            "SELECT job_id, update_main, calibrated_by FROM jobs WHERE status IN "
            "('pending', 'running') AND (update_main = 1 OR calibrated_by IS NOT NULL)")

    async def job_outcome_rows(self, job_ids: list[str]) -> list[aiosqlite.Row]:
        marks = ",".join("?" * len(job_ids))
        return await self.fetchall(
            f"SELECT job_id, status, error_message, config_update FROM jobs "
            f"WHERE job_id IN ({marks})", job_ids)
    # ---- end of calibration ---------------------------------------------------------
