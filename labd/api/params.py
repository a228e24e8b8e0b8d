"""Every RPC method's params as one pydantic model each: what a client may send, bounded so
that extreme values get an invalid-params answer a person can act on, never an internal
error. Nothing here ever becomes a file path."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from ..models import JobStatus

JOB_ID_RE = re.compile(r"^JOB-\d{8}-\d{5,9}$")
VERSION_RE = re.compile(r"^CFG-[A-Z0-9]{1,4}-\d{8}-\d{5,9}$")
MODULE_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,8}$"
CLASS_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
MAX_INT = 2**63 - 1


def _job_id(v: str) -> str:
    if not JOB_ID_RE.match(v):
        raise ValueError(f"{v[:40]!r} is not a job ID like JOB-20260101-00001")
    return v


def _version_id(v: str) -> str:
    if not VERSION_RE.match(v):
        raise ValueError(f"{v[:40]!r} is not a config version ID like "
                         "CFG-HW-20260101-00001")
    return v


def _utc(v: datetime) -> datetime:
    """Aware UTC datetime within the years a lab can mean (a naive time means UTC)."""
    try:
        v = (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("time is out of range") from None
    if not 1970 <= v.year <= 9000:
        raise ValueError("time must be between 1970 and 9000")
    return v


JobId = Annotated[str, Field(max_length=64), AfterValidator(_job_id)]
VersionId = Annotated[str, Field(max_length=64), AfterValidator(_version_id)]
UtcTime = Annotated[datetime, AfterValidator(_utc)]
Content = Annotated[str, Field(max_length=64 * 1024 * 1024)]  # max_config_bytes applies too


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=4096)


class NoParams(_P):
    pass


class SubmitParams(_P):
    """What a client may say about a new job."""
    experiment_class: str = Field(pattern=CLASS_RE)
    experiment_module: str = Field(pattern=MODULE_RE, max_length=256)
    # default_factory: pydantic deep-copies a literal mutable default on every submit
    experiment_config: dict[str, Any] = Field(default_factory=dict)
    user: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
    priority: int | None = Field(None, ge=-(2**31), le=2**31)
    time_limit_s: float | None = Field(None, gt=0, le=10**9)
    config_versions: dict[str, VersionId] = Field(default_factory=dict)   # type -> version
    inline_configs: dict[str, Content] = Field(default_factory=dict)   # snapshotted on submit
    after: JobId | None = None                   # run only once that job completed
    not_before: UtcTime | None = None            # timezone-aware; do not start earlier
    hold: bool = False                           # queue it held; release to let it run
    # calibration (issue #13): update main from the fit; keys that must be fresh
    update_main: bool = False
    fresh: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=64)
    # (issue #16) False: never preempted automatically (an admin still may)
    preemptible: bool = True

    @field_validator("not_before", mode="before")
    @classmethod
    def _aware(cls, v: Any) -> Any:
        if isinstance(v, str) and v and not re.search(r"(Z|[+-]\d\d:?\d\d)$", v.strip()):
            raise ValueError("give a timezone, e.g. 2026-11-24T18:00:00+00:00")
        if isinstance(v, datetime) and v.tzinfo is None:
            raise ValueError("give a timezone, e.g. 2026-11-24T18:00:00+00:00")
        return v


class JobRef(_P):
    job_id: JobId


class BatchParams(_P):
    jobs: list[SubmitParams] = Field(min_length=1)


class QueueParams(_P):
    user: str | None = Field(None, max_length=64)
    os_user: str | None = Field(None, max_length=64)
    limit: int = Field(100_000, ge=1, le=1_000_000)


class HistoryParams(_P):
    user: str | None = Field(None, max_length=64)
    os_user: str | None = Field(None, max_length=64)
    status: JobStatus | None = None
    experiment: str | None = Field(None, max_length=128)
    batch_id: str | None = Field(None, max_length=64)
    since: UtcTime | None = None
    limit: int = Field(50, ge=1, le=10_000)
    cursor: int | None = Field(None, ge=0, le=MAX_INT)


class PriorityParams(JobRef):
    priority: int = Field(ge=-(2**31), le=2**31)


class UserRef(_P):
    os_user: str = Field(min_length=1, max_length=64)


class WaitParams(JobRef):
    timeout: float = Field(3600.0, ge=0, le=7 * 86400)


class CancelBatch(_P):
    batch_id: str = Field(pattern=r"^BATCH-[0-9a-f]{12}$")


class LogsParams(JobRef):
    offset: int = Field(0, ge=0, le=MAX_INT)
    max_bytes: int = Field(65536, ge=1, le=4 * 1024 * 1024)


class SubscribeParams(_P):
    topics: list[str] = ["job"]
    job_ids: list[JobId] | None = Field(None, max_length=100_000)


class ConfigTypeRef(_P):
    type: str = Field(max_length=64)


class ConfigPush(ConfigTypeRef):
    content: Content
    message: str | None = Field(None, max_length=1000)
    expected_main: VersionId | None = None


class VersionRef(_P):
    version_id: VersionId


class SetMain(ConfigTypeRef, VersionRef):
    pass


class ConfigList(ConfigTypeRef):
    limit: int = Field(100, ge=1, le=10_000)


class ConfigDiff(_P):
    a: VersionId
    b: VersionId


# ---- (sched) recurring schedules and config trace, issue #13 -----------------------------
class ScheduleAdd(_P):
    """A recurring submit: ``submit`` takes exactly what submit takes (validated as one)."""
    every_s: float = Field(gt=0, le=366 * 86400)
    submit: SubmitParams
    start: UtcTime | None = None     # first firing; default: one period from now

    @field_validator("start", mode="before")
    @classmethod
    def _aware(cls, v: Any) -> Any:
        return SubmitParams._aware(v)


class ScheduleRef(_P):
    schedule_id: int = Field(ge=1, le=MAX_INT)


class ScheduleList(_P):
    os_user: str | None = Field(None, max_length=64)


class ScheduleFires(ScheduleRef):
    limit: int = Field(20, ge=1, le=10_000)


class ConfigTrace(ConfigTypeRef):
    key: str = Field(min_length=1, max_length=1024)
    limit: int = Field(10_000, ge=1, le=100_000)   # main changes looked at, newest first
# ---- end of (sched) ----------------------------------------------------------------------
# ---- notifications (notify branch, issue #12) -----------------------------------------
NOTIFY_ID_RE = r"^NTF-[0-9a-f]{8}$"


class NotifyAdd(_P):
    url: str = Field(min_length=1, max_length=2048)
    on: Literal["all", "failures", "batch"] = "all"


class NotifyRef(_P):
    id: str = Field(pattern=NOTIFY_ID_RE, max_length=16)


class NotifyList(_P):
    all: bool = False   # admins: every account's targets
# ---- end of notifications ----------------------------------------------------------------
