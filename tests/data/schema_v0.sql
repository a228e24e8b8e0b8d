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
