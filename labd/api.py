"""The JSON-RPC methods. Each validates its params with a pydantic model and returns either a
result or a JSON-RPC error with a message a person can act on; unexpected exceptions are
logged with a reference and never leak their text to the client."""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from jsonrpcserver import Error, Success
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__
from .errors import INTERNAL_ERROR, Conflict, InvalidParams, LabdError, \
    PermissionDenied
from .experiment_loader import describe_validation
from .job_log import read_log
from .models import JOB_ID_RE, VERSION_RE, JobStatus, SubmitParams, utcnow

if TYPE_CHECKING:
    from .daemon import Daemon
    from .rpc_server import Connection

log = logging.getLogger(__name__)


@dataclass
class Call:
    daemon: "Daemon"
    conn: "Connection"

    @property
    def peer(self):
        return self.conn.peer


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoParams(_P):
    pass


class JobRef(_P):
    job_id: str = Field(pattern=JOB_ID_RE)


class BatchParams(_P):
    jobs: list[SubmitParams] = Field(min_length=1)


class QueueParams(_P):
    user: str | None = None
    os_user: str | None = None
    limit: int = Field(100_000, ge=1, le=1_000_000)


class HistoryParams(_P):
    user: str | None = Field(None, max_length=64)
    os_user: str | None = Field(None, max_length=64)
    status: JobStatus | None = None
    experiment: str | None = Field(None, max_length=128)
    batch_id: str | None = Field(None, max_length=64)
    since: datetime | None = None  # naive means UTC
    limit: int = Field(50, ge=1, le=10_000)
    cursor: int | None = Field(None, ge=0)


class PriorityParams(JobRef):
    priority: int = Field(ge=-(2**31), le=2**31)


class UserRef(_P):
    os_user: str = Field(min_length=1, max_length=64)


class WaitParams(JobRef):
    timeout: float = Field(3600.0, ge=0, le=7 * 86400)


class CancelBatch(_P):
    batch_id: str = Field(pattern=r"^BATCH-[0-9a-f]{12}$")


class LogsParams(JobRef):
    offset: int = Field(0, ge=0)
    max_bytes: int = Field(65536, ge=1, le=4 * 1024 * 1024)


class SubscribeParams(_P):
    topics: list[str] = ["job"]
    job_ids: list[str] | None = Field(None, max_length=100_000)


class ConfigTypeRef(_P):
    type: str = Field(max_length=64)


class ConfigPush(ConfigTypeRef):
    content: str
    message: str | None = Field(None, max_length=1000)
    expected_main: str | None = Field(None, pattern=VERSION_RE)


class VersionRef(_P):
    version_id: str = Field(pattern=VERSION_RE)


class SetMain(ConfigTypeRef, VersionRef):
    pass


class ConfigList(ConfigTypeRef):
    limit: int = Field(100, ge=1, le=10_000)


class ConfigDiff(_P):
    a: str = Field(pattern=VERSION_RE)
    b: str = Field(pattern=VERSION_RE)


METHODS: dict[str, Callable[..., Awaitable[Any]]] = {}


def rpc(name: str, params: type[_P] = NoParams):
    """Register a method: pydantic-validated params, LabdError -> JSON-RPC error."""
    def deco(fn: Callable[[Call, Any], Awaitable[Any]]):
        async def method(call: Call, *args: Any, **kwargs: Any):
            if args:
                return Error(InvalidParams.code, f"{name}: params must be an object with named "
                             "fields, not a list")
            try:
                return Success(await fn(call, params.model_validate(kwargs)))
            except ValidationError as exc:
                return Error(InvalidParams.code, f"{name}: {describe_validation(exc)}")
            except LabdError as exc:
                return Error(exc.code, exc.message, exc.data)
            except asyncio.CancelledError:
                raise
            except Exception:
                ref = uuid.uuid4().hex[:8]
                log.exception("%s failed (ref %s)", name, ref)
                return Error(INTERNAL_ERROR, f"internal error in {name}; the daemon log has "
                             f"the details under ref {ref}")
        method.__signature__ = inspect.signature(method)  # jsonrpcserver inspects every call
        METHODS[name] = method
        return fn
    return deco


# ---- jobs ---------------------------------------------------------------------------
async def _prepare(call: Call, p: SubmitParams, batch_id: str | None) -> dict[str, Any]:
    d = call.daemon
    s = d.settings
    if len(json.dumps(p.experiment_config)) > s.max_config_bytes:
        raise InvalidParams(f"experiment_config exceeds {s.max_config_bytes} bytes")
    loaded = d.loader.load(p.experiment_module, p.experiment_class)
    d.loader.validate_config(loaded, p.experiment_config)
    priority = s.priority_default if p.priority is None else p.priority
    if not s.priority_min <= priority <= s.priority_max:
        raise InvalidParams(f"priority must be between {s.priority_min} and {s.priority_max}")
    if priority > s.priority_cap and not call.peer.is_admin:
        raise PermissionDenied(f"priority {priority} is above the cap {s.priority_cap}; "
                               "only an admin may submit above it")
    if p.time_limit_s is not None and p.time_limit_s > s.job_time_limit_max_s:
        raise InvalidParams(f"time_limit_s may be at most {s.job_time_limit_max_s:g}")
    await d.configs.check_pins(p.config_versions)
    if p.after is not None and await d.scheduler.status_of(p.after) is None:
        raise InvalidParams(f"after: no job {p.after}")
    pinned = dict(p.config_versions)
    for name, content in p.inline_configs.items():
        if name in pinned:
            raise InvalidParams(f"{name}: give either a pinned version or inline content")
        pinned[name], _ = await d.configs.snapshot(name, content, by=call.peer.username,
                                                   message="inline config of a submit")
    return {
        "user": p.user or call.peer.username, "experiment_class": p.experiment_class,
        "experiment_module": p.experiment_module, "experiment_config": p.experiment_config,
        "priority": priority, "time_limit_s": p.time_limit_s, "pinned_versions": pinned,
        "batch_id": batch_id, "held": int(p.hold), "after_job": p.after, "retry_of": None,
        "not_before": p.not_before.astimezone(timezone.utc).isoformat() if p.not_before
        else None,
    }


async def _resubmit(call: Call, src: Any, *, pins: dict[str, str],
                    batch_id: str | None) -> dict[str, Any]:
    """A new job like ``src`` (same experiment, expt config, user, time limit), validated
    again as a submit: the experiment may have changed since. It keeps src's priority if
    the caller could submit at it (an admin, or within the cap), else gets the cap."""
    cap = call.daemon.settings.priority_cap
    return await _prepare(call, SubmitParams(
        experiment_class=src.experiment_class, experiment_module=src.experiment_module,
        experiment_config=src.experiment_config, user=src.user,
        priority=src.priority if src.priority <= cap or call.peer.is_admin else cap,
        time_limit_s=src.time_limit_s, config_versions=pins), batch_id)


@rpc("submit", SubmitParams)
async def submit(call: Call, p: SubmitParams) -> dict[str, Any]:
    job = await _prepare(call, p, None)
    [job_id] = await call.daemon.scheduler.enqueue(call.peer, [job])
    return {"job_id": job_id, "status": "pending",
            "position": call.daemon.scheduler.queue.position(job_id)}


@rpc("submit_batch", BatchParams)
async def submit_batch(call: Call, p: BatchParams) -> dict[str, Any]:
    """All or nothing: every job is validated before any is stored, in one commit."""
    if len(p.jobs) > call.daemon.settings.max_batch:
        raise InvalidParams(f"a batch may hold at most {call.daemon.settings.max_batch} jobs")
    batch_id = f"BATCH-{uuid.uuid4().hex[:12]}"
    jobs = []
    for i, sp in enumerate(p.jobs):
        try:
            jobs.append(await _prepare(call, sp, batch_id))
        except LabdError as exc:
            exc.message = f"jobs[{i}]: {exc.message} (nothing in the batch was submitted)"
            raise
    ids = await call.daemon.scheduler.enqueue(call.peer, jobs)
    return {"batch_id": batch_id, "job_ids": ids}


@rpc("get", JobRef)
async def get(call: Call, p: JobRef) -> dict[str, Any]:
    job = await call.daemon.scheduler.get(p.job_id)
    out = job.model_dump(mode="json")
    out["position"] = call.daemon.scheduler.queue.position(p.job_id)
    return out


@rpc("cancel", JobRef)
async def cancel(call: Call, p: JobRef) -> dict[str, Any]:
    return await call.daemon.scheduler.cancel(call.peer, p.job_id)


@rpc("cancel_batch", CancelBatch)
async def cancel_batch(call: Call, p: CancelBatch) -> dict[str, Any]:
    sched = call.daemon.scheduler
    ids = sched.job_ids_where(lambda pj: pj.batch_id == p.batch_id)
    return {"batch_id": p.batch_id, **await sched.cancel_many(call.peer, ids)}


@rpc("cancel_user", UserRef)
async def cancel_user(call: Call, p: UserRef) -> dict[str, Any]:
    """Cancel every pending and running job of an account (yours, or anyone's as admin)."""
    if p.os_user != call.peer.username and not call.peer.is_admin:
        raise PermissionDenied(f"only an admin may cancel the jobs of {p.os_user}")
    sched = call.daemon.scheduler
    ids = sched.job_ids_where(lambda pj: pj.os_user == p.os_user)
    return {"os_user": p.os_user, **await sched.cancel_many(call.peer, ids)}


@rpc("pause")
async def pause(call: Call, p: NoParams) -> dict[str, Any]:
    return await call.daemon.scheduler.set_paused(call.peer, True)


@rpc("resume")
async def resume(call: Call, p: NoParams) -> dict[str, Any]:
    return await call.daemon.scheduler.set_paused(call.peer, False)


@rpc("hold", JobRef)
async def hold(call: Call, p: JobRef) -> dict[str, Any]:
    return await call.daemon.scheduler.set_held(call.peer, p.job_id, True)


@rpc("release", JobRef)
async def release(call: Call, p: JobRef) -> dict[str, Any]:
    return await call.daemon.scheduler.set_held(call.peer, p.job_id, False)


@rpc("set_priority", PriorityParams)
async def set_priority(call: Call, p: PriorityParams) -> dict[str, Any]:
    return await call.daemon.scheduler.set_priority(call.peer, p.job_id, p.priority)


@rpc("retry", JobRef)
async def retry(call: Call, p: JobRef) -> dict[str, Any]:
    """Submit a failed or cancelled job again as it was submitted (its pins, not the
    versions it resolved: use rerun to reproduce exactly)."""
    src = await call.daemon.scheduler.get(p.job_id)
    if src.status.value not in ("failed", "cancelled"):
        raise Conflict(f"{p.job_id} is {src.status.value}; only a failed or cancelled job "
                       "can be retried")
    call.daemon.scheduler.check_owner(call.peer, src.os_uid, p.job_id, "retry")
    job = await _resubmit(call, src, pins=src.pinned_versions, batch_id=src.batch_id)
    job["retry_of"] = p.job_id
    [job_id] = await call.daemon.scheduler.enqueue(call.peer, [job])
    return {"job_id": job_id, "status": "pending", "retry_of": p.job_id}


@rpc("wait", WaitParams)
async def wait(call: Call, p: WaitParams) -> dict[str, Any]:
    """Server-side long wait for a job to end (the client never polls)."""
    sched = call.daemon.scheduler
    fut = sched.events.waiter(p.job_id)
    try:
        job = await sched.get(p.job_id)
        if not job.is_terminal():
            await asyncio.wait({fut, call.conn.gone}, timeout=p.timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            job = await sched.get(p.job_id)
    finally:
        sched.events.drop_waiter(p.job_id, fut)
    out = job.model_dump(mode="json")
    out["timed_out"] = not job.is_terminal()
    return out


QUEUE_COLUMNS = ["position", "job_id", "priority", "user", "os_user", "experiment_class",
                 "batch_id", "eta_s"]  # submit times are in get/history: rows stay small


@rpc("queue", QueueParams)
async def queue(call: Call, p: QueueParams) -> dict[str, Any]:
    """Pending jobs in run order, as rows of QUEUE_COLUMNS (compact: a 10k-job queue is
    one small frame), plus the running job and the jobs that wait (held, after, not
    before). ``eta_s``: expected seconds until the job starts, from past run times of the
    same experiments (None once an experiment ahead has no history)."""
    sched = call.daemon.scheduler
    rows = []
    unfiltered = p.user is None and p.os_user is None
    eta = None if sched.paused else sched.time_to_free()
    estimates = sched.estimates()
    for pos, pj in enumerate(sched.queue.ordered(p.limit if unfiltered else None), 1):
        if (p.user is None or pj.user == p.user) and \
                (p.os_user is None or pj.os_user == p.os_user):
            rows.append([pos, pj.job_id, pj.priority, pj.user, pj.os_user,
                         pj.experiment_class, pj.batch_id,
                         None if eta is None else round(eta, 1)])
            if len(rows) >= p.limit:
                break
        est = estimates.get(pj.experiment_class)
        eta = None if eta is None or est is None else eta + est
    waiting = [{**pj.summary(), "waiting_for": pj.waiting_for()}
               for pj in sched.waiting.values()
               if (p.user is None or pj.user == p.user) and
               (p.os_user is None or pj.os_user == p.os_user)][:p.limit]
    return {"running": sched.running.summary() if sched.running else None,
            "columns": QUEUE_COLUMNS, "pending": rows, "total_pending": len(sched.queue),
            "waiting": waiting, "paused": sched.paused}


@rpc("history", HistoryParams)
async def history(call: Call, p: HistoryParams) -> dict[str, Any]:
    from .store import row_to_job
    rows = await call.daemon.store.history(
        user=p.user, os_user=p.os_user, status=p.status.value if p.status else None,
        experiment=p.experiment, batch_id=p.batch_id, before_seq=p.cursor,
        since=None if p.since is None else (p.since if p.since.tzinfo else p.since.replace(
            tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat(timespec="microseconds"),
        limit=p.limit)
    jobs = [row_to_job(r).model_dump(mode="json") for r in rows]
    cursor = rows[-1]["seq"] if len(rows) == p.limit else None
    return {"jobs": jobs, "next_cursor": cursor}


@rpc("logs", LogsParams)
async def logs(call: Call, p: LogsParams) -> dict[str, Any]:
    """Job log from a byte offset; only whole lines unless the job has ended."""
    job = await call.daemon.scheduler.get(p.job_id)
    if job.log_path is None:
        return {"text": "", "offset": p.offset, "eof": job.is_terminal(),
                "status": job.status.value}
    from pathlib import Path
    text, offset = await asyncio.to_thread(read_log, Path(job.log_path), p.offset,
                                           p.max_bytes, job.is_terminal())
    size = await asyncio.to_thread(_size, job.log_path)
    return {"text": text, "offset": offset, "status": job.status.value,
            "eof": job.is_terminal() and offset >= size}


def _size(path: str) -> int:
    import os
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


@rpc("subscribe", SubscribeParams)
async def subscribe(call: Call, p: SubscribeParams) -> dict[str, Any]:
    """Push JSON-RPC notifications (method "event") for these topics on this connection."""
    bad = set(p.topics) - {"job", "progress", "log", "queue"}
    if bad:
        raise InvalidParams(f"unknown topics {sorted(bad)}; use job, progress, log, queue")
    call.conn.topics = set(p.topics)
    call.conn.job_ids = set(p.job_ids) if p.job_ids is not None else None
    call.daemon.events.subscribe(call.conn)
    return {"topics": sorted(call.conn.topics)}


@rpc("unsubscribe")
async def unsubscribe(call: Call, p: NoParams) -> dict[str, Any]:
    call.daemon.events.unsubscribe(call.conn)
    return {"topics": []}


@rpc("health")
async def health(call: Call, p: NoParams) -> dict[str, Any]:
    d = call.daemon
    sched = d.scheduler
    status = "ok"
    if sched.stopping:
        status = "stopping"
    elif sched.stuck_since is not None:
        status = "degraded: executor stuck, restart needed"
    elif sched.paused:
        status = "paused"
    return {"status": status, "version": __version__, "pending": len(sched.queue),
            "waiting": len(sched.waiting), "paused": sched.paused,
            "running": sched.running.summary() if sched.running else None,
            "uptime_s": round(time.monotonic() - d.started_mono, 3),
            "hardware": d.settings.hardware, "db_commits": d.store.commits,
            "waits": sched.events.waiting(),
            "you": call.peer.username,
            "admin": call.peer.is_admin, "time": utcnow(),
            # the predecessor's keys, which its notebooks read
            "pending_jobs": len(sched.queue) + len(sched.waiting),
            "running_jobs": int(sched.running is not None),
            "database_connected": not sched.stopping}  # the store closes only at shutdown


@rpc("rerun", JobRef)
async def rerun(call: Call, p: JobRef) -> dict[str, Any]:
    """Submit again with the same expt config and the exact config versions it ran with."""
    src = await call.daemon.scheduler.get(p.job_id)
    pins = src.config_versions or src.pinned_versions
    job = await _resubmit(call, src, pins=pins, batch_id=None)
    [job_id] = await call.daemon.scheduler.enqueue(call.peer, [job])
    return {"job_id": job_id, "status": "pending", "rerun_of": p.job_id,
            "config_versions": pins}


# ---- configs ------------------------------------------------------------------------
@rpc("config.push", ConfigPush)
async def config_push(call: Call, p: ConfigPush) -> dict[str, Any]:
    return await call.daemon.configs.push(p.type, p.content, call.peer.username, p.message,
                                          p.expected_main)


@rpc("config.pull", ConfigTypeRef)
async def config_pull(call: Call, p: ConfigTypeRef) -> dict[str, Any]:
    return await call.daemon.configs.pull(p.type)


@rpc("config.versions", ConfigList)
async def config_versions(call: Call, p: ConfigList) -> dict[str, Any]:
    return {"type": p.type, "main": call.daemon.configs.main.get(p.type),
            "versions": await call.daemon.configs.versions(p.type, p.limit)}


@rpc("config.show", VersionRef)
async def config_show(call: Call, p: VersionRef) -> dict[str, Any]:
    return await call.daemon.configs.show(p.version_id)


@rpc("config.set_main", SetMain)
async def config_set_main(call: Call, p: SetMain) -> dict[str, Any]:
    return await call.daemon.configs.set_main(p.type, p.version_id, call.peer.username)


@rpc("config.history", ConfigList)
async def config_history(call: Call, p: ConfigList) -> dict[str, Any]:
    return {"type": p.type, "history": await call.daemon.configs.main_history(p.type, p.limit)}


@rpc("config.diff", ConfigDiff)
async def config_diff(call: Call, p: ConfigDiff) -> dict[str, Any]:
    return {"a": p.a, "b": p.b, "diff": await call.daemon.configs.diff(p.a, p.b)}


@rpc("config.verify")
async def config_verify(call: Call, p: NoParams) -> dict[str, Any]:
    return await call.daemon.configs.verify()


@rpc("config.types")
async def config_types(call: Call, p: NoParams) -> dict[str, Any]:
    c = call.daemon.configs
    return {"types": [{**t.model_dump(), "main": c.main.get(t.name)}
                      for t in c.types.values()]}


# ---- discoverability (dropin-client branch): the experiment catalog -----------------
@rpc("experiments")
async def experiments(call: Call, p: NoParams) -> dict[str, Any]:
    """The experiment classes a job may run, with their config fields (catalog.py)."""
    from .catalog import catalog
    return {"experiments": await asyncio.to_thread(catalog, call.daemon.loader)}
# ---- end of the experiment catalog --------------------------------------------------
