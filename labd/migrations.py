"""Schema versions, tracked in ``PRAGMA user_version``. Version 0 is the schema labd first
shipped (databases made before migrations existed carry it); each step moves one version
forward inside one transaction, so a crash mid-upgrade leaves the old version intact.
Never edit a step that has shipped: add one."""
from __future__ import annotations

import sqlite3

import aiosqlite

BASELINE = """
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

# the columns history filters on (besides seq)
_FILTERED = ("user", "os_user", "status", "experiment_class", "batch_id", "created_at")

# Step N takes a database from version N to N + 1.
STEPS: list[list[str]] = [
    # 1: why a job ended, as a typed reason (EndReason) instead of parsing its message
    [
        "ALTER TABLE jobs ADD COLUMN end_reason TEXT",
        "UPDATE jobs SET end_reason = 'completed' WHERE status = 'completed'",
        "UPDATE jobs SET end_reason = CASE "
        " WHEN error_message LIKE 'cancelled: dependency%' THEN 'dependency'"
        " ELSE 'cancelled' END WHERE status = 'cancelled'",
        "UPDATE jobs SET end_reason = CASE "
        " WHEN error_message LIKE 'interrupted: daemon stopped%' THEN 'crash'"
        " WHEN error_message LIKE 'interrupted: daemon shut down%' THEN 'shutdown'"
        " WHEN error_message LIKE 'time limit exceeded%' THEN 'time_limit'"
        " ELSE 'error' END WHERE status = 'failed'",
    ],
    # (sched) recurring submits (issue #13): the schedule with its validated submit params
    # (a JSON blob of SubmitParams fields), and one row per firing (submitted/skipped/failed)
    [
        "CREATE TABLE schedules ("
        " id INTEGER PRIMARY KEY,"
        " owner TEXT NOT NULL,"
        " owner_uid INTEGER NOT NULL,"
        " params TEXT NOT NULL,"
        " every_s REAL NOT NULL,"
        " next_fire REAL NOT NULL,"
        " paused INTEGER NOT NULL DEFAULT 0,"
        " created_at TEXT NOT NULL,"
        " last_fire_at TEXT,"
        " last_job_id TEXT,"
        " last_outcome TEXT,"
        " last_message TEXT,"
        " skips INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE schedule_fires ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " schedule_id INTEGER NOT NULL,"
        " at TEXT NOT NULL,"
        " outcome TEXT NOT NULL CHECK (outcome IN ('submitted', 'skipped', 'failed')),"
        " job_id TEXT,"
        " message TEXT)",
        "CREATE INDEX schedule_fires_schedule ON schedule_fires(schedule_id, id)",
    ],
    # (notify branch) per-account webhook targets for job/batch-end notifications (#12);
    # last_* is each target's latest delivery outcome, shown by `labctl notify status`
    [
        "CREATE TABLE notify_targets ("
        " id TEXT PRIMARY KEY,"
        " os_uid INTEGER NOT NULL,"
        " os_user TEXT NOT NULL,"
        " url TEXT NOT NULL,"
        " on_filter TEXT NOT NULL CHECK (on_filter IN ('all', 'failures', 'batch')),"
        " created_at TEXT NOT NULL,"
        " last_status TEXT,"
        " last_error TEXT,"
        " last_attempt_at TEXT,"
        " last_ok_at TEXT,"
        " UNIQUE (os_uid, url, on_filter))",
    ],
    # (issue #13, calibration): config updates from a job, calibrate-when-stale links
    [
        "ALTER TABLE jobs ADD COLUMN update_main INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN calibration TEXT",      # JSON: resolved updates
        "ALTER TABLE jobs ADD COLUMN config_update TEXT",    # JSON: what was decided
        "ALTER TABLE jobs ADD COLUMN fresh TEXT",            # JSON: keys it needs fresh
        "ALTER TABLE jobs ADD COLUMN calibrated_by TEXT",    # JSON: calibration job IDs
        "ALTER TABLE jobs ADD COLUMN hold_reason TEXT",
        "ALTER TABLE config_versions ADD COLUMN created_by_job_id TEXT",
    ],
    # (issue #14) history filters: each filter column's index also carries the other filter
    # columns, so a combination that matches few rows is decided from the index alone (no
    # row read per candidate), in seq order; `since` gets its own index
    [
        *(f"DROP INDEX IF EXISTS {name}" for name in
          ("jobs_status", "jobs_user", "jobs_os_user", "jobs_class")),
        *(f"CREATE INDEX jobs_by_{col} ON jobs({col}, seq, "
          + ", ".join(c for c in _FILTERED if c != col) + ")"
          for col in ("status", "user", "os_user", "experiment_class")),
        "CREATE INDEX jobs_by_created_at ON jobs(created_at, seq)",
    ],
    # (issue #16) preemption: the submit's opt-out, how often and by whom it was preempted,
    # and the config versions a preempted job resumes with (those it started with)
    [
        "ALTER TABLE jobs ADD COLUMN preemptible INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE jobs ADD COLUMN preemptions INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN preempted_by TEXT",
        "ALTER TABLE jobs ADD COLUMN preempted_at TEXT",
        "ALTER TABLE jobs ADD COLUMN resume_versions TEXT",   # JSON, set once preempted
    ],
    # (issue #14) history `since` as a seq bound (store.history_sql): created_max is the
    # running max of created_at in seq order, which never decreases even where created_at
    # does (clock steps, imported rows); backfilled here, kept by a trigger on every insert
    # whoever inserts. It replaces the created_at index: one B-tree less on each submit.
    [
        "ALTER TABLE jobs ADD COLUMN created_max TEXT",
        "UPDATE jobs SET created_max = m FROM (SELECT seq AS s, max(created_at) OVER"
        " (ORDER BY seq) AS m FROM jobs) WHERE seq = s",
        "CREATE TRIGGER jobs_created_max AFTER INSERT ON jobs BEGIN"
        " UPDATE jobs SET created_max = max(NEW.created_at, coalesce((SELECT created_max"
        " FROM jobs WHERE seq < NEW.seq ORDER BY seq DESC LIMIT 1), NEW.created_at))"
        " WHERE seq = NEW.seq; END",
        "DROP INDEX jobs_by_created_at",
    ],
    # (issue #14) the daemon stamps created_max on its own inserts (store.insert_jobs): the
    # trigger's read and second write of the row were 40% of an insert's time; it stays for
    # rows inserted without it (tests, imports)
    [
        "DROP TRIGGER jobs_created_max",
        "CREATE TRIGGER jobs_created_max AFTER INSERT ON jobs WHEN NEW.created_max IS NULL"
        " BEGIN UPDATE jobs SET created_max = max(NEW.created_at, coalesce((SELECT"
        " created_max FROM jobs WHERE seq < NEW.seq ORDER BY seq DESC LIMIT 1),"
        " NEW.created_at)) WHERE seq = NEW.seq; END",
    ],
]
VERSION = len(STEPS)


def create(db: sqlite3.Connection, version: int = VERSION) -> None:
    """A new database at ``version``, without a daemon (benchmarks and tests fill one)."""
    db.executescript(BASELINE)
    for step in STEPS[:version]:
        for sql in step:
            db.execute(sql)
    db.execute(f"PRAGMA user_version = {version}")


async def migrate(conn: aiosqlite.Connection) -> int:
    """Bring the database to VERSION; returns the version it had. A database from a newer
    labd is refused rather than guessed at."""
    (have,) = await (await conn.execute("PRAGMA user_version")).fetchone()
    if have > VERSION:
        raise RuntimeError(f"the database has schema version {have}, newer than this labd "
                           f"understands ({VERSION}); run the newer labd")
    if have == 0:
        await conn.executescript(BASELINE)
    for n in range(have, VERSION):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in STEPS[n]:
                await conn.execute(sql)
            await conn.execute(f"PRAGMA user_version = {n + 1}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
    return have
