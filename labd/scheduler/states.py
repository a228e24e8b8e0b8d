"""Typed job states, and the one place a job's stored state changes.

``JobStatus`` is what is stored and what clients filter on; ``RunPhase`` says where an
active job is inside the daemon; ``EndReason`` says why a job ended, stored beside its
status so no code ever parses a message to decide what happened. ``Transitions`` persists
a change and only then publishes it (ARTIQ's RunStatus setter is the model)."""
from __future__ import annotations

import asyncio
import logging
from enum import StrEnum
from typing import Any

from ..events import EventBus
from ..models import JobStatus, utcnow
from ..store import Op, PreconditionFailed, Store, StoreError

log = logging.getLogger(__name__)


class RunPhase(StrEnum):
    WAITING = "waiting"       # pending, not runnable yet (see WaitReason)
    QUEUED = "queued"         # pending, in the run order
    PREEMPTED = "preempted"   # pending, in the run order: yielded the board, resumes (#16)
    STARTING = "starting"     # left the queue: being prepared; the board takes it next
    RUNNING = "running"       # the executor has it
    STOPPING = "stopping"     # asked to stop: cancel, time limit, shutdown
    ANALYZING = "analyzing"   # acquired; raw data being saved, then fitted (board free)
    FINISHING = "finishing"   # outcome known, being recorded


class WaitReason(StrEnum):
    HELD = "held"
    AFTER = "after"
    NOT_BEFORE = "not_before"


class EndReason(StrEnum):
    COMPLETED = "completed"
    ERROR = "error"               # the experiment raised, or its data could not be saved
    CANCELLED = "cancelled"       # by its owner or an admin
    DEPENDENCY = "dependency"     # the job it ran after did not complete
    TIME_LIMIT = "time_limit"
    SHUTDOWN = "shutdown"         # SIGTERM while it ran
    CRASH = "crash"               # the daemon died while it ran (found at the next start)
    STUCK = "stuck"               # ignored every stop request; the board is not free
    START_FAILED = "start_failed"  # could not be started (e.g. no config version to use)

    @property
    def status(self) -> JobStatus:
        if self is EndReason.COMPLETED:
            return JobStatus.COMPLETED
        if self in (EndReason.CANCELLED, EndReason.DEPENDENCY):
            return JobStatus.CANCELLED
        return JobStatus.FAILED


class Transitions:
    """Persist, then publish. An outcome is retried until it is recorded (a full state
    disk must never leave a finished job looking as if it still ran); health shows the
    ones still waiting."""

    RETRY_MAX_S = 5.0

    def __init__(self, store: Store, events: EventBus) -> None:
        self.store = store
        self.events = events
        # job_id -> (its outcome, why it is not stored yet)
        self.unrecorded: dict[str, tuple[EndReason, str]] = {}
        self.giving_up = False                 # shutdown: stop retrying

    def publish(self, job_id: str, status: JobStatus | str, **extra: Any) -> None:
        status = JobStatus(status)
        self.events.publish({"type": "job", "job_id": job_id, "status": status.value,
                             "terminal": status.terminal, **extra})

    async def started(self, job_id: str, op: Op, **extra: Any) -> None:
        """pending -> running (the claim op); raises PreconditionFailed if the job was
        no longer pending, StoreError if it could not be recorded."""
        await self.store.write(op)
        self.publish(job_id, JobStatus.RUNNING, phase=RunPhase.RUNNING.value, **extra)

    async def preempted(self, job_id: str, by: str, at: str,
                        versions: dict[str, str], preemptions: int,
                        count: int = 1) -> None:
        """running -> pending (preempted, its checkpoint on disk). Retried until stored: a
        job the database still calls running would never be resumed (until a restart)."""
        delay = 0.05
        while True:
            try:
                await self.store.write(Store.preempt(job_id, by, at, versions, count))
                break
            except PreconditionFailed:
                raise
            except StoreError as exc:
                if self.giving_up:
                    raise
                log.error("preemption of %s not recorded yet (%s); retrying", job_id, exc)
                await asyncio.sleep(delay)
                delay = min(self.RETRY_MAX_S, delay * 2)
        self.publish(job_id, JobStatus.PENDING, phase=RunPhase.PREEMPTED.value,
                     preempted_by=by, preempted_at=at, preemptions=preemptions)

    async def ended(self, job_id: str, reason: EndReason, message: str | None,
                    finished_at: str | None = None, retry: bool = True,
                    ops: tuple[Op, ...] | list[Op] = (), **fields: Any) -> bool:
        """-> terminal. Retries a failing write with backoff until it is stored (or the
        daemon gives up at shutdown: the next start then records it as interrupted).
        ``ops`` are committed with it, all or nothing (a calibration's config update).
        Returns whether it was recorded. Without ``retry`` (a request its caller waits
        for, e.g. a cancel) a failing write raises StoreError at once."""
        finished_at = finished_at or utcnow()
        op = Store.end(job_id, reason.status.value, reason.value, finished_at, message,
                       **fields)
        delay = 0.05
        while True:
            try:
                await self.store.write(op, *ops)
                break
            except PreconditionFailed:
                if not retry:
                    raise
                log.error("%s was already final; outcome %s not recorded", job_id, reason)
                self.unrecorded.pop(job_id, None)
                return False
            except StoreError as exc:
                if not retry:
                    raise
                self.unrecorded[job_id] = (reason, str(exc))
                if self.giving_up:
                    log.error("outcome of %s not recorded at shutdown: %s", job_id, exc)
                    return False
                log.error("outcome of %s not recorded yet (%s); retrying", job_id, exc)
                await asyncio.sleep(delay)
                delay = min(self.RETRY_MAX_S, delay * 2)
        self.unrecorded.pop(job_id, None)
        self.publish(job_id, reason.status, end_reason=reason.value, finished_at=finished_at,
                     error_message=message, data_file_path=fields.get("data_file_path"))
        return True
