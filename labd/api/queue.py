"""Queue methods: the listing, queue control (pause, hold, priority), push events and
health."""
from __future__ import annotations

import itertools
import logging
import sqlite3
import time
from typing import Any

from .. import __version__
from labd_client.protocol import InvalidParams
from ..models import utcnow
from ..scheduler.admission import describe_wait
from . import Call, rpc
from .params import JobRef, NoParams, PriorityParams, QueueParams, SubscribeParams

QUEUE_COLUMNS = ["position", "job_id", "priority", "user", "os_user", "experiment_class",
                 "batch_id", "eta_s",
                 # (#16) phase "preempted": which job (or admin) it yielded to, since when
                 "phase", "preempted_by", "preempted_at"]
# submit times are in get/history: rows stay small
TOPICS = ("job", "progress", "log", "queue")
log = logging.getLogger(__name__)


async def waiting_details(call: Call,
                          job_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """Submit time and, where labd held the job itself (#13: a calibration it needed did
    not refresh its keys), why, of these waiting jobs: one query for all (both live in
    the DB only). A read error leaves them out rather than failing the listing."""
    if not job_ids:
        return {}
    try:
        return await call.app.store.waiting_details(job_ids)
    except sqlite3.Error as exc:
        log.warning("queue: details of waiting jobs not read: %s", exc)
        return {}


@rpc("queue", QueueParams)
async def queue(call: Call, p: QueueParams) -> dict[str, Any]:
    """Pending jobs in run order, as rows of QUEUE_COLUMNS (compact: a 10k-job queue is
    one small frame), plus the running job and the jobs that wait (held, after, not
    before; a job labd held itself says why in ``hold_reason``). ``eta_s``: expected
    seconds until the job starts: the running job's remaining time, then past run times
    of the experiments ahead (None once one has no history).
    Unfiltered, only the first ``limit`` jobs are looked at."""
    sched = call.app.scheduler
    rows = []
    unfiltered = p.user is None and p.os_user is None
    eta = None if sched.paused else sched.time_to_free()
    typical = sched.estimates.typical()
    # the prepared jobs (phase starting) are still pending until the board takes them: first
    ahead = [run.job for run in sched.dispatcher.upcoming]
    for pos, pj in enumerate(itertools.chain(
            ahead, sched.queue.ordered(p.limit if unfiltered else None)), 1):
        if (p.user is None or pj.user == p.user) and \
                (p.os_user is None or pj.os_user == p.os_user):
            rows.append([pos, pj.job_id, pj.priority, pj.user, pj.os_user,
                         pj.experiment_class, pj.batch_id,
                         None if eta is None else round(eta, 1), pj.shown_phase(),
                         pj.preempted_by if pj.resume else None,
                         pj.preempted_at if pj.resume else None])
            if len(rows) >= p.limit:
                break
        est = typical.get(pj.experiment_class)
        eta = None if eta is None or est is None else eta + est
    waiting = [{**pj.summary(), "waiting_for": describe_wait(pj)}
               for pj in itertools.islice(
                   (pj for pj in sched.waiting.jobs.values()
                    if (p.user is None or pj.user == p.user) and
                    (p.os_user is None or pj.os_user == p.os_user)), p.limit)]
    details = await waiting_details(call, [w["job_id"] for w in waiting])
    for w in waiting:
        w["created_at"], hold_reason = details.get(w["job_id"], (None, None))
        if hold_reason is not None and w["waiting_for"] == "held":
            w["hold_reason"] = hold_reason
    return {"running": sched.running.summary() if sched.running else None,
            "columns": QUEUE_COLUMNS, "pending": rows,
            "total_pending": sched.runnable_count,
            "waiting": waiting, "paused": sched.paused}


@rpc("pause")
async def pause(call: Call, p: NoParams) -> dict[str, Any]:
    return await call.app.scheduler.set_paused(call.peer, True)


@rpc("resume")
async def resume(call: Call, p: NoParams) -> dict[str, Any]:
    return await call.app.scheduler.set_paused(call.peer, False)


@rpc("hold", JobRef)
async def hold(call: Call, p: JobRef) -> dict[str, Any]:
    return await call.app.scheduler.set_held(call.peer, p.job_id, True)


@rpc("release", JobRef)
async def release(call: Call, p: JobRef) -> dict[str, Any]:
    return await call.app.scheduler.set_held(call.peer, p.job_id, False)


@rpc("set_priority", PriorityParams)
async def set_priority(call: Call, p: PriorityParams) -> dict[str, Any]:
    return await call.app.scheduler.set_priority(call.peer, p.job_id, p.priority)


@rpc("subscribe", SubscribeParams)
async def subscribe(call: Call, p: SubscribeParams) -> dict[str, Any]:
    """Push JSON-RPC notifications (method "event") for these topics on this connection."""
    bad = set(p.topics) - set(TOPICS)
    if bad:
        raise InvalidParams(f"unknown topics {sorted(bad)}; use {', '.join(TOPICS)}")
    call.conn.topics = set(p.topics)
    call.conn.job_ids = set(p.job_ids) if p.job_ids is not None else None
    call.app.events.subscribe(call.conn)
    return {"topics": sorted(call.conn.topics)}


@rpc("unsubscribe")
async def unsubscribe(call: Call, p: NoParams) -> dict[str, Any]:
    call.app.events.unsubscribe(call.conn)
    return {"topics": []}


def status(call: Call) -> str:
    """One word (or a sentence when something needs an operator)."""
    sched = call.app.scheduler
    disp = sched.dispatcher
    if sched.stopping:
        return "stopping"
    if sched.executor.state == "dead":
        return "degraded: the executor thread died; restart labd"
    if disp.stuck_since is not None:
        return "degraded: executor stuck, restart needed"
    if sched.states.unrecorded:
        _, why = next(iter(sched.states.unrecorded.values()))
        return (f"degraded: {len(sched.states.unrecorded)} job outcomes not stored yet "
                f"({why}); retrying")
    if sched.paused:
        return "paused"
    return "ok"


@rpc("board_stats")
async def board_stats(call: Call, p: NoParams) -> dict[str, Any]:
    """The board's idle time between one acquisition's end (``board.acquire`` returning)
    and the next one's start (the latest 100k, in ms; idle time with nothing queued is
    included: measure with a full queue), and how many acquisitions ran."""
    clock = call.app.scheduler.executor.clock
    gaps = list(clock.gaps)  # one C-level copy: the board thread appends meanwhile
    return {"acquisitions": clock.acquisitions, "idle_gaps_ms": [g * 1e3 for g in gaps]}


@rpc("health")
async def health(call: Call, p: NoParams) -> dict[str, Any]:
    app, sched = call.app, call.app.scheduler
    stuck = sched.dispatcher.stuck_since
    return {"status": status(call), "version": __version__, "pending": sched.runnable_count,
            "waiting": len(sched.waiting), "paused": sched.paused,
            "running": sched.running.summary() if sched.running else None,
            "executor": "stuck" if stuck is not None else sched.executor.state,
            "analyzing": sorted(sched.dispatcher.analyzing),
            # the child writing data files (null before the first job, and while labd
            # writes them itself after that child failed: the daemon log says why)
            "data_writer_pid": sched.executor.files.pid,
            "unrecorded_outcomes": len(sched.states.unrecorded),
            "db_error": app.store.last_error,
            "uptime_s": round(time.monotonic() - app.started_mono, 3),
            "hardware": app.settings.hardware, "db_commits": app.store.commits,
            "waits": app.events.waiting(), "you": call.peer.username,
            "admin": call.peer.is_admin, "time": utcnow(),
            # the predecessor's keys, which its notebooks read
            "pending_jobs": sched.runnable_count + len(sched.waiting),
            "running_jobs": int(sched.running is not None),
            "database_connected": app.store.last_error is None}
