"""Pydantic models at the RPC boundary and the job record shared by store, scheduler and
executor. Validation here is what turns bad client input into an actionable error."""
from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

JOB_ID_RE = r"^JOB-\d{8}-\d{5,}$"
MODULE_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,8}$"
CLASS_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
VERSION_RE = r"^CFG-[A-Z0-9]{1,4}-\d{8}-\d{5,}$"


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



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=4096)


class SubmitParams(_Strict):
    """What a client may say about a new job. Nothing here ever becomes a file path."""
    experiment_class: str = Field(pattern=CLASS_RE)
    experiment_module: str = Field(pattern=MODULE_RE, max_length=256)
    experiment_config: dict[str, Any] = {}
    user: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")
    priority: int | None = Field(None, ge=-(2**31), le=2**31)
    time_limit_s: float | None = Field(None, gt=0, le=10**9)
    config_versions: dict[str, str] = {}   # type name -> pinned version ID
    inline_configs: dict[str, str] = {}    # type name -> content, snapshotted on submit
    after: str | None = Field(None, pattern=JOB_ID_RE)  # run only once that job completed
    not_before: datetime | None = None     # timezone-aware; do not start earlier
    hold: bool = False                     # queue it held; release to let it run

    @field_validator("not_before")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a timezone, e.g. 2026-11-24T18:00:00+00:00")
        return v

    @field_validator("config_versions")
    @classmethod
    def _versions(cls, v: dict[str, str]) -> dict[str, str]:
        import re
        for name, vid in v.items():
            if not re.match(VERSION_RE, vid):
                raise ValueError(f"{name}: {vid!r} is not a version ID like CFG-HW-20260101-00001")
        return v


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
