"""The wait set: pending jobs that may not run yet, and why (held, after another job, not
before a time). Decisions here are synchronous: nothing awaits between a check and the
action it justifies, so a job finishing or being released meanwhile cannot be missed."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Callable

from ..pending_queue import PendingJob
from .states import RunPhase, WaitReason


def wait_reason(pj: PendingJob) -> WaitReason | None:
    if pj.held:
        return WaitReason.HELD
    if pj.after is not None:
        return WaitReason.AFTER
    if pj.not_before is not None and pj.not_before > time.time():
        return WaitReason.NOT_BEFORE
    return None


def describe_wait(pj: PendingJob) -> str | None:
    """Why a job waits, for people: "held", "after JOB-…", "not before <time>"."""
    reason = wait_reason(pj)
    if reason is WaitReason.AFTER:
        return f"after {pj.after}"
    if reason is WaitReason.NOT_BEFORE:
        assert pj.not_before is not None
        return "not before " + datetime.fromtimestamp(pj.not_before, timezone.utc).isoformat(
            timespec="seconds")
    return None if reason is None else reason.value


class WaitSet:
    def __init__(self, on_runnable: Callable[[PendingJob], None]) -> None:
        self.jobs: dict[str, PendingJob] = {}
        self._dependents: dict[str, set[str]] = {}   # job -> pending jobs after it
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._on_runnable = on_runnable

    def __len__(self) -> int:
        return len(self.jobs)

    def place(self, pj: PendingJob) -> bool:
        """Keep the job here if it must wait; False if it may run now."""
        reason = wait_reason(pj)
        if reason is None:
            return False
        self.jobs[pj.job_id] = pj
        pj.phase = RunPhase.WAITING
        if reason is WaitReason.NOT_BEFORE:
            self._arm(pj)
        return True

    def remove(self, job_id: str) -> PendingJob | None:
        timer = self._timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()
        return self.jobs.pop(job_id, None)

    def _arm(self, pj: PendingJob) -> None:
        assert pj.not_before is not None
        loop = asyncio.get_running_loop()
        delay = max(0.0, pj.not_before - time.time())
        self._timers[pj.job_id] = loop.call_later(delay, self._due, pj.job_id)

    def _due(self, job_id: str) -> None:
        self._timers.pop(job_id, None)
        pj = self.jobs.get(job_id)
        if pj is None:
            return
        reason = wait_reason(pj)
        if reason is None:
            del self.jobs[job_id]
            self._on_runnable(pj)
        elif reason is WaitReason.NOT_BEFORE:  # the clock was stepped back: wait on
            self._arm(pj)

    # ---- dependencies ---------------------------------------------------------------
    def add_dependent(self, dep_id: str, job_id: str) -> None:
        self._dependents.setdefault(dep_id, set()).add(job_id)

    def pop_dependents(self, dep_id: str) -> set[str]:
        return self._dependents.pop(dep_id, set())
