"""The job record shared by store, scheduler, RPC replies and clients, and its status enum.
(Request params are validated by the models in ``labd.api.params``.)"""
from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


def utcnow() -> str:
    """UTC ISO-8601 with offset; the predecessor's naive local times were ambiguous."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(BaseModel):
    """A job as stored and returned by get/history."""
    job_id: str
    status: JobStatus
    user: str
    os_user: str
    os_uid: int
    experiment_class: str
    experiment_module: str
    experiment_config: dict[str, Any]
    priority: int
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    data_file_path: str | None = None
    log_path: str | None = None
    error_message: str | None = None
    batch_id: str | None = None
    time_limit_s: float | None = None
    config_versions: dict[str, str] = {}
    pinned_versions: dict[str, str] = {}
    module_sha256: str | None = None
    module_git_rev: str | None = None
    progress: float | None = None
    phase: str | None = None           # where an active job is (RunPhase); None once final
    end_reason: str | None = None      # why it ended (EndReason)
    results: dict[str, Any] = {}
    held: bool = False
    after_job: str | None = None
    not_before: str | None = None
    retry_of: str | None = None

    def is_terminal(self) -> bool:
        return self.status.terminal
