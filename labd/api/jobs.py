"""Job methods: submit (single and batch), get, wait, logs, history, cancel, retry, rerun."""
from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from labd_client.protocol import Conflict, InvalidParams, LabdError
from ..job_log import read_log
from ..rpc_server import long_call
from ..scheduler import policy
from ..store import row_to_job
from . import Call, rpc
from . import calibration as calib   # issue #13
from .params import BatchParams, HistoryParams, JobRef, LogsParams, SubmitParams, UserRef, \
    CancelBatch, WaitParams


async def _prepare(call: Call, p: SubmitParams, batch_id: str | None) -> dict[str, Any]:
    """Validate a submit completely (nothing is stored yet) and return the job's fields."""
    app, s = call.app, call.app.settings
    if len(json.dumps(p.experiment_config)) > s.max_config_bytes:
        raise InvalidParams(f"experiment_config exceeds {s.max_config_bytes} bytes")
    loaded = app.loader.load(p.experiment_module, p.experiment_class)
    cfg = app.loader.validate_config(loaded, p.experiment_config)
    priority = s.priority_default if p.priority is None else p.priority
    policy.check_submit_priority(s, call.peer, priority)
    if p.time_limit_s is not None and p.time_limit_s > s.job_time_limit_max_s:
        raise InvalidParams(f"time_limit_s may be at most {s.job_time_limit_max_s:g}")
    await app.configs.check_pins(p.config_versions)
    if p.after is not None and not await app.scheduler.exists(p.after):
        raise InvalidParams(f"after: no job {p.after}")
    pinned = dict(p.config_versions)
    for name, content in p.inline_configs.items():
        if name in pinned:
            raise InvalidParams(f"{name}: give either a pinned version or inline content")
        pinned[name], _ = await app.configs.snapshot(name, content, by=call.peer.username,
                                                     message="inline config of a submit")
    job = {
        "user": p.user or call.peer.username, "experiment_class": p.experiment_class,
        "experiment_module": p.experiment_module, "experiment_config": p.experiment_config,
        "priority": priority, "time_limit_s": p.time_limit_s, "pinned_versions": pinned,
        "batch_id": batch_id, "held": int(p.hold), "after_job": p.after, "retry_of": None,
        "not_before": p.not_before.isoformat() if p.not_before else None,
        "preemptible": p.preemptible,   # (#16)
    }
    await calib.check_submit(call, p, loaded, cfg, job)   # (#13) update_main, fresh
    return job


def _resubmit_params(call: Call, src: Any, *, pins: dict[str, str],
                     fresh: list[str]) -> SubmitParams:
    """A submit like ``src`` (same experiment, expt config, user, time limit), to be
    validated again: the experiment may have changed since."""
    return SubmitParams(
        experiment_class=src.experiment_class, experiment_module=src.experiment_module,
        experiment_config=src.experiment_config, user=src.user,
        priority=policy.resubmit_priority(call.app.settings, call.peer, src.priority),
        time_limit_s=src.time_limit_s, config_versions=pins,
        update_main=src.update_main, fresh=fresh, preemptible=src.preemptible)


@rpc("submit", SubmitParams)
async def submit(call: Call, p: SubmitParams) -> dict[str, Any]:
    job = await _prepare(call, p, None)
    # (#13) stale calibrations it needs go first, linked to it
    ids, jobs, [at] = await calib.enqueue(call, [(p, job)], _prepare)
    job_id = ids[at]
    reply = {"job_id": job_id, "status": "pending",
             "position": call.app.scheduler.position(job_id)}
    if jobs[at].get("calibrated_by"):   # new ones, or one already under way
        reply["calibrations"] = jobs[at]["calibrated_by"]
    return reply


@rpc("submit_batch", BatchParams)
async def submit_batch(call: Call, p: BatchParams) -> dict[str, Any]:
    """All or nothing: every job is validated before any is stored, in one commit."""
    if len(p.jobs) > call.app.settings.max_batch:
        raise InvalidParams(f"a batch may hold at most {call.app.settings.max_batch} jobs")
    batch_id = f"BATCH-{uuid.uuid4().hex[:12]}"
    jobs = []
    for i, sp in enumerate(p.jobs):
        try:
            jobs.append(await _prepare(call, sp, batch_id))
        except LabdError as exc:
            exc.message = f"jobs[{i}]: {exc.message} (nothing in the batch was submitted)"
            raise
    # (#13) stale calibrations the jobs need go first, linked to them
    ids, jobs, at = await calib.enqueue(call, list(zip(p.jobs, jobs)), _prepare)
    reply: dict[str, Any] = {"batch_id": batch_id, "job_ids": [ids[i] for i in at]}
    if len(ids) > len(at):
        requested = set(at)
        reply["calibrations"] = [j for i, j in enumerate(ids) if i not in requested]
    return reply


@rpc("get", JobRef)
async def get(call: Call, p: JobRef) -> dict[str, Any]:
    job = await call.app.scheduler.get(p.job_id)
    out = job.model_dump(mode="json")
    out["position"] = call.app.scheduler.position(p.job_id)
    return out


@rpc("wait", WaitParams)
async def wait(call: Call, p: WaitParams) -> dict[str, Any]:
    """Server-side long wait for a job to end, i.e. for its outcome to be stored (the
    client never polls); ends early when the client hangs up."""
    sched = call.app.scheduler
    fut = call.app.events.waiter(p.job_id)
    try:
        job = await sched.get(p.job_id)
        if not job.is_terminal() or job.phase is not None:
            with long_call(call.conn):
                await asyncio.wait({fut, call.conn.gone}, timeout=p.timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            job = await sched.get(p.job_id)
    finally:
        call.app.events.drop_waiter(p.job_id, fut)
    out = job.model_dump(mode="json")
    out["timed_out"] = not job.is_terminal() or job.phase is not None
    return out


@rpc("logs", LogsParams)
async def logs(call: Call, p: LogsParams) -> dict[str, Any]:
    """Job log from a byte offset; only whole lines unless the job has ended."""
    job = await call.app.scheduler.get(p.job_id)
    if job.log_path is None:
        return {"text": "", "offset": p.offset, "eof": job.is_terminal(),
                "status": job.status.value}
    path = Path(job.log_path)
    text, offset, size = await asyncio.to_thread(_read, path, p.offset, p.max_bytes,
                                                 job.is_terminal())
    return {"text": text, "offset": offset, "status": job.status.value,
            "eof": job.is_terminal() and offset >= size}


def _read(path: Path, offset: int, max_bytes: int, final: bool) -> tuple[str, int, int]:
    text, offset = read_log(path, offset, max_bytes, final)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return text, offset, size


@rpc("history", HistoryParams)
async def history(call: Call, p: HistoryParams) -> dict[str, Any]:
    rows = await call.app.store.history(
        user=p.user, os_user=p.os_user, status=p.status.value if p.status else None,
        experiment=p.experiment, batch_id=p.batch_id, before_seq=p.cursor,
        since=p.since.isoformat(timespec="microseconds") if p.since else None, limit=p.limit)
    jobs = [row_to_job(r).model_dump(mode="json") for r in rows]
    cursor = rows[-1]["seq"] if len(rows) == p.limit else None
    return {"jobs": jobs, "next_cursor": cursor}


@rpc("cancel", JobRef)
async def cancel(call: Call, p: JobRef) -> dict[str, Any]:
    return await call.app.scheduler.cancel(call.peer, p.job_id)


@rpc("cancel_batch", CancelBatch)
async def cancel_batch(call: Call, p: CancelBatch) -> dict[str, Any]:
    sched = call.app.scheduler
    ids = sched.job_ids_where(lambda pj: pj.batch_id == p.batch_id)
    return {"batch_id": p.batch_id, **await sched.cancel_many(call.peer, ids)}


@rpc("cancel_user", UserRef)
async def cancel_user(call: Call, p: UserRef) -> dict[str, Any]:
    """Cancel every pending and running job of an account (yours, or anyone's as admin)."""
    if p.os_user != call.peer.username:
        policy.require_admin(call.peer, f"cancel the jobs of {p.os_user}")
    sched = call.app.scheduler
    ids = sched.job_ids_where(lambda pj: pj.os_user == p.os_user)
    return {"os_user": p.os_user, **await sched.cancel_many(call.peer, ids)}


@rpc("retry", JobRef)
async def retry(call: Call, p: JobRef) -> dict[str, Any]:
    """Submit a failed or cancelled job again as it was submitted (its pins, not the
    versions it resolved: use rerun to reproduce exactly)."""
    src = await call.app.scheduler.get(p.job_id)
    if src.status.value not in ("failed", "cancelled"):
        raise Conflict(f"{p.job_id} is {src.status.value}; only a failed or cancelled job "
                       "can be retried")
    policy.require_owner(call.peer, src.os_uid, p.job_id, "retry")
    sp = _resubmit_params(call, src, pins=src.pinned_versions, fresh=src.fresh)
    job = await _prepare(call, sp, src.batch_id)
    job["retry_of"] = p.job_id
    # (#13) it needs the same fresh keys as before: stale calibrations go first again
    ids, _, [at] = await calib.enqueue(call, [(sp, job)], _prepare)
    return {"job_id": ids[at], "status": "pending", "retry_of": p.job_id}


@rpc("rerun", JobRef)
async def rerun(call: Call, p: JobRef) -> dict[str, Any]:
    """Submit again with the same expt config and the exact config versions it ran with
    (so no calibration runs first: the versions are the point)."""
    src = await call.app.scheduler.get(p.job_id)
    pins = src.config_versions or src.pinned_versions
    job = await _prepare(call, _resubmit_params(call, src, pins=pins, fresh=[]), None)
    [job_id] = await call.app.scheduler.enqueue(call.peer, [job])
    return {"job_id": job_id, "status": "pending", "rerun_of": p.job_id,
            "config_versions": pins}


@rpc("preempt", JobRef)
async def preempt(call: Call, p: JobRef) -> dict[str, Any]:
    """(#16, admins) The running job yields the board at its next safe point."""
    return await call.app.scheduler.preempt(call.peer, p.job_id)


# ---- discoverability (dropin-client branch): the experiment catalog -----------------
from .params import NoParams  # noqa: E402  (kept inside this block)


@rpc("experiments")
async def experiments(call: Call, p: NoParams) -> dict[str, Any]:
    """The experiment classes a job may run, with their config fields (catalog.py)."""
    from ..catalog import catalog
    return {"experiments": await asyncio.to_thread(catalog, call.app.loader)}
# ---- end of the experiment catalog --------------------------------------------------
