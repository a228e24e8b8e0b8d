"""The scheduler facade the RPC methods use: accepts jobs (durably, then into the queue or
the wait set), cancels, holds, reprioritizes and pauses, and tracks every job that is not
final yet in ``active`` until its outcome is stored. Each change happens synchronously in
memory *before* any await (so the dispatcher cannot take a job that is being held) and is
undone if it cannot be stored."""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import datetime
from typing import Any, Callable, Iterable

from ..calibration import Calibrator
from ..config_store import ConfigStore
from labd_client.protocol import Conflict, LimitExceeded, NotFound, PermissionDenied, Unavailable
from ..events import EventBus
from ..executor import Executor, Outcome
from ..identity import Peer
from .. import ids
from ..ids import DailyCounter
from ..models import Job, JobStatus, utcnow
from ..pending_queue import Extras, Origin, PendingJob, PendingQueue, shared, untrack
from ..settings import Settings
from ..store import PreconditionFailed, Store, StoreError
from . import policy
from .admission import WaitSet, describe_wait
from .dispatcher import SHUTDOWN_BY, Dispatcher
from .estimates import Estimates
from .states import EndReason, RunPhase, Transitions

log = logging.getLogger(__name__)

PENDING_PHASES = (RunPhase.WAITING, RunPhase.QUEUED, RunPhase.PREEMPTED)
HEAD_ORDER = -(1 << 40)   # a preempted job's order: ahead of every submit of its priority


RECENT_FINAL = 10_000   # statuses of jobs that just ended, for `after` decisions


class Scheduler:
    def __init__(self, settings: Settings, store: Store, configs: ConfigStore,
                 executor: Executor, events: EventBus) -> None:
        self.settings = settings
        self.store = store
        self.configs = configs
        self.executor = executor
        self.events = events
        self.active: dict[str, PendingJob] = {}       # every job not final yet
        self.queue = PendingQueue()
        self.waiting = WaitSet(self._runnable)
        self.states = Transitions(store, events)
        self.estimates = Estimates()
        self.dispatcher = Dispatcher(self)
        configs.main_guard = self.dispatcher.main_changing
        self.paused = False
        self.stopping = False
        self.job_ids = DailyCounter("JOB")
        self._pending_by_uid: dict[int, int] = {}    # quota: pending jobs per account
        self._recent_final: OrderedDict[str, str] = OrderedDict()
        self._next_order = 0
        self._head_order = HEAD_ORDER      # (#16) preempted jobs: FIFO, before submits
        self._tasks: set[asyncio.Task] = set()
        self.calibration = Calibrator(self)           # issue #13: config updates, staleness

    # ---- start / stop -------------------------------------------------------------
    async def start(self, counters: dict[str, tuple[str, int]]) -> list[str]:
        """Recover after a crash, reload pending jobs in submit order, start dispatching.
        Returns the jobs that were running when the daemon died and are marked failed
        (not those that resume from a checkpoint)."""
        # never below what the data directory already holds (a lost or recreated database
        # must not hand out an ID, and so a data file name, a second time)
        day, last = ids.later(counters.get("JOB", (None, 0)), await asyncio.to_thread(
            ids.floor_from_files, "JOB", self.settings.output_root))
        self.job_ids = DailyCounter("JOB", day, last)
        interrupted = []
        for job_id in await self.store.running_job_ids():
            # never re-run silently (`labctl rerun` does, on request), except to resume
            day_dir = self.settings.output_root / job_id.split("-")[1]
            (day_dir / f"{job_id}.h5.part").unlink(missing_ok=True)  # never data
            data = day_dir / f"{job_id}.h5"
            if not data.exists() and (day_dir / f"{job_id}.ckpt").exists():
                # (#16) preempted before: it resumes from its checkpoint (no round lost)
                await self.store.write(Store.resume_after_crash(job_id))
                log.warning("%s was running when labd stopped; it resumes from its "
                            "checkpoint", job_id)
                continue
            interrupted.append(job_id)
            if data.exists():  # it died while the job was being analyzed
                await self.states.ended(job_id, EndReason.CRASH,
                                        "interrupted: daemon stopped during analysis; raw "
                                        "data saved", data_file_path=str(data))
            else:
                await self.states.ended(job_id, EndReason.CRASH,
                                        "interrupted: daemon stopped during run")
        await self.calibration.load()                 # (#13)
        self.paused = await self.store.get_state("paused") == "1"
        self.estimates.load(await self.store.recent_durations())
        rows = await self.store.pending_rows()
        records = [self._record(r) for r in rows]
        for pj in records:  # labd may have died just after the board took it: its log exists
            pj.attempts = 1
        for pj in sorted((pj for pj in records if pj.resume),
                         key=lambda pj: pj.preempted_at or ""):
            pj.order = self._next_head()   # (#16) preempted: the head of its priority
        final = await self._final_statuses(pj.after for pj in records)
        for pj in records:
            self._enter(pj)
            self._reserve(pj.os_uid, 1)
        for pj in records:
            self._admit(pj, final)
        self.dispatcher.start()
        return interrupted

    async def stop(self) -> None:
        """Graceful shutdown: start nothing new, stop the running job at a safe point and
        wait (bounded) until its outcome is recorded."""
        self.stopping = True
        await self.dispatcher.stop(3 * self.settings.stop_grace_s + 5)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        self.states.giving_up = True
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # a strong ref: the loop keeps only weak ones
        task.add_done_callback(self._tasks.discard)

    # ---- records and their places -----------------------------------------------------
    def _record(self, r: Any) -> PendingJob:
        """The in-memory record of a stored pending job, from a row or a new job's dict.
        Its origin and extras are shared with the other jobs that have the same (a
        million jobs hold a handful of users, experiments and batches)."""
        nb = r["not_before"]
        keys = r.keys()
        return PendingJob(
            job_id=r["job_id"], priority=r["priority"],
            origin=shared(Origin(r["user"], r["os_user"], r["os_uid"], r["experiment_class"],
                                 r["experiment_module"], r["batch_id"])),
            extras=shared(Extras(
                held=bool(r["held"]), after=r["after_job"],
                not_before=datetime.fromisoformat(nb).timestamp() if nb else None,
                # (#16)
                preemptible=bool(r["preemptible"]) if "preemptible" in keys and
                r["preemptible"] is not None else True,
                **({k: r[k] for k in ("preemptions", "preempted_by", "preempted_at")}
                   if "preemptions" in keys else {}),
                resume=bool(r["resume"]) if "resume" in keys else False)))

    def _enter(self, pj: PendingJob) -> None:
        pj.order = self._next_order
        self._next_order += 1
        self.active[pj.job_id] = untrack(pj)

    def _next_head(self) -> int:
        self._head_order += 1
        return self._head_order

    def _reserve(self, uid: int, n: int) -> None:
        self._pending_by_uid[uid] = self._pending_by_uid.get(uid, 0) + n

    def _release(self, uid: int, n: int) -> None:
        left = self._pending_by_uid.get(uid, 0) - n
        if left > 0:
            self._pending_by_uid[uid] = left
        else:
            self._pending_by_uid.pop(uid, None)

    def _place(self, pj: PendingJob) -> None:
        """Into the wait set if it must wait, else into the run order."""
        if not self.waiting.place(pj):
            self._runnable(pj)

    def _unplace(self, pj: PendingJob) -> None:
        if self.waiting.remove(pj.job_id) is None:
            self.queue.remove(pj)

    def _runnable(self, pj: PendingJob) -> None:
        pj.phase = RunPhase.PREEMPTED if pj.resume else RunPhase.QUEUED
        self.queue.push(pj)
        self.dispatcher.queued(pj)

    def _leave_pending(self, pj: PendingJob, phase: RunPhase) -> None:
        """The one place a job stops counting as pending (its quota is released once)."""
        assert pj.phase in PENDING_PHASES, (pj.job_id, pj.phase)
        self._unplace(pj)
        self._release(pj.os_uid, 1)
        pj.phase = phase

    def _is_pending(self, pj: PendingJob) -> bool:
        return self.active.get(pj.job_id) is pj and pj.phase in PENDING_PHASES

    # ---- dependencies -------------------------------------------------------------
    async def _final_statuses(self, deps: Iterable[str | None]) -> dict[str, str | None]:
        """Stored statuses of dependencies that are not active: such a job is final, and
        a final status never changes, so this read cannot go stale."""
        return {d: await self.store.job_status(d)
                for d in {d for d in deps if d and d not in self.active}}

    def _admit(self, pj: PendingJob, final: dict[str, str | None]) -> None:
        """Synchronously: wait for its dependency, run it, or cancel it."""
        dep = pj.after
        if dep is not None:
            if dep in self.active:
                self.waiting.add_dependent(dep, pj.job_id)
            else:
                status = self._recent_final.get(dep) or final.get(dep)
                if (why := self.calibration.blocked(pj.job_id, dep, status)) is not None:
                    self._hold_for_calibration(pj, why)   # (#13)
                    return
                if status == JobStatus.COMPLETED:
                    pj.after = None
                else:
                    pj.phase = RunPhase.WAITING  # counts as pending until it is ended
                    self.spawn(self._end_pending(
                        pj, EndReason.DEPENDENCY,
                        f"cancelled: dependency {dep} {status or 'does not exist'}"))
                    return
        self._place(pj)

    def _ended(self, job_id: str, status: JobStatus) -> None:
        """A job's outcome is stored: forget it, and release or cancel its dependents."""
        self.active.pop(job_id, None)
        self.calibration.updating.discard(job_id)
        self._recent_final[job_id] = status
        while len(self._recent_final) > RECENT_FINAL:
            self._recent_final.popitem(last=False)
        for dep_id in self.waiting.pop_dependents(job_id):
            pj = self.active.get(dep_id)
            if pj is None or not self._is_pending(pj) or pj.after != job_id:
                continue
            if (why := self.calibration.blocked(dep_id, job_id, status)) is not None:
                self.waiting.remove(dep_id)
                self._hold_for_calibration(pj, why)   # (#13)
            elif status == JobStatus.COMPLETED:
                self.waiting.remove(dep_id)
                pj.after = None
                self._place(pj)
            else:
                self.spawn(self._end_pending(pj, EndReason.DEPENDENCY,
                                              f"cancelled: dependency {job_id} {status}"))

    def _hold_for_calibration(self, pj: PendingJob, why: str) -> None:
        """(#13) A job that needed a calibration which did not refresh its keys waits held
        (not cancelled, not run on stale values); the reason is stored with it."""
        pj.after, pj.held = None, True
        self._place(pj)
        self.spawn(self.calibration.store_hold(pj.job_id, why))

    async def _end_pending(self, pj: PendingJob, reason: EndReason, message: str,
                           retry: bool = True) -> None:
        """End a pending job (cancel, failed dependency). Without ``retry`` a failed write
        puts the job back and raises Unavailable, so the caller learns it did not happen."""
        if not self._is_pending(pj):
            return
        self._leave_pending(pj, RunPhase.FINISHING)
        # (#13) a job that would have updated main ended before it ran: say so on it
        ops = [Store.set_config_update(pj.job_id, {
            "applied": False, "reason": f"the job ended before it ran ({reason.value})"})] \
            if pj.job_id in self.calibration.updating else []
        try:
            recorded = await self.states.ended(pj.job_id, reason, message, retry=retry,
                                               ops=ops)
        except StoreError as exc:
            self.requeue(pj)
            raise Unavailable(f"{pj.job_id} was not cancelled: {exc}") from None
        if recorded:
            self._ended(pj.job_id, reason.status)

    # ---- used by the dispatcher ---------------------------------------------------
    def take_next(self) -> PendingJob:
        pj = self.queue.peek()
        assert pj is not None
        self._leave_pending(pj, RunPhase.STARTING)
        return pj

    def requeue(self, pj: PendingJob) -> None:
        """A job that could not be started (or cancelled) is pending again."""
        pj.phase = RunPhase.QUEUED
        self._reserve(pj.os_uid, 1)
        self._place(pj)

    async def preempted(self, pj: PendingJob, by: str, versions: dict[str, str]) -> None:
        """(#16) It yielded the board at a safe point, its checkpoint durable: pending
        again, at the head of its priority (ahead of later submits), to resume with the
        config versions it started with."""
        at = utcnow()
        count = 0 if by == SHUTDOWN_BY else 1   # a shutdown's does not count
        try:
            await self.states.preempted(pj.job_id, by, at, versions, pj.preemptions + count,
                                        count)
        except StoreError as exc:   # shutdown: still 'running' with a checkpoint: the next
            log.error("preemption of %s not recorded (%s); it resumes at the next start",
                      pj.job_id, exc)   # start resumes it
            self.forget(pj)
            return
        pj.preemptions += count
        pj.preempted_by, pj.preempted_at, pj.resume = by, at, True
        pj.attempts += 1
        pj.order = self._next_head()
        self.requeue(pj)

    async def cancelled_as_it_yielded(self, pj: PendingJob, message: str) -> None:
        """(#16) Its owner's cancel came as it yielded the board, and was answered
        "cancelling": it ends as a cancel of the preempted job would, not resumed."""
        await self._end_pending(pj, EndReason.CANCELLED, f"{message}, as it yielded the board")

    async def preempt(self, peer: Peer, job_id: str) -> dict[str, Any]:
        """(#16, admins) Make the running job yield the board at its next safe point, even
        if its submit opted out or it was preempted max_preemptions times already."""
        policy.require_admin(peer, "preempt a job")
        run = self.dispatcher.running
        if run is None or run.job.job_id != job_id:
            if job_id not in self.active and await self.store.job_status(job_id) is None:
                raise NotFound(f"no job {job_id}")
            raise Conflict(f"{job_id} is not running; only the running job can be preempted")
        if run.ctx.safe is None:
            raise Conflict(f"{job_id} cannot be preempted: {run.job.experiment_class} has no "
                           "safe points (see `labctl experiments`)")
        if run.ctx.stop_kind is not None:
            raise Conflict(f"{job_id} is stopping ({run.ctx.stop_reason})")
        self.dispatcher.preempt(run, f"{peer.username} (labctl preempt)")
        return {"job_id": job_id, "status": "preempting", "by": run.ctx.preempt_by}

    def forget(self, pj: PendingJob) -> None:
        self.active.pop(pj.job_id, None)

    def finish(self, pj: PendingJob, out: Outcome) -> None:
        """Record an outcome in the background: the next job may start before this
        commit (and share it); the terminal event goes out once the outcome is stored."""
        pj.phase = RunPhase.FINISHING
        # a job that may update main holds back the next start until that is decided (the
        # dispatcher's check covers it while it acquires and is analyzed)
        updates_main = pj.job_id in self.calibration.updating
        if updates_main:
            self.dispatcher.block_starts()

        async def record() -> None:
            try:
                # (#13) a job with update_main: its config update is decided and committed
                # with its end (under the config lock)
                async with self.calibration.deciding(pj.job_id, out) as update:
                    if await self.states.ended(
                            pj.job_id, out.reason, out.error_message, out.finished_at,
                            data_file_path=out.data_file_path,
                            module_sha256=out.module_sha256,
                            module_git_rev=out.module_git_rev, results=out.results,
                            config_versions=out.config_versions, ops=update.ops):
                        update.committed()
                        self._ended(pj.job_id, out.reason.status)
            finally:
                if updates_main:
                    self.dispatcher.unblock_starts()
        self.spawn(record())

    # ---- submit -------------------------------------------------------------------
    async def enqueue(self, peer: Peer, jobs: list[dict[str, Any]]) -> list[str]:
        """Persist new jobs in one commit, then make them runnable. Returns their IDs."""
        if self.stopping:
            raise Unavailable("labd is shutting down; submit again when it is back")
        final = await self._final_statuses(j.get("after_job") for j in jobs)
        have = self._pending_by_uid.get(peer.uid, 0)
        limit = self.settings.max_pending_per_user
        if have + len(jobs) > limit:
            raise LimitExceeded(f"{peer.username} has {have} pending jobs; the limit is "
                                f"{limit} (cancel some or wait)")
        self._reserve(peer.uid, len(jobs))
        now = utcnow()
        for j in jobs:
            j.update(job_id=self.job_ids.next(), status="pending", created_at=now,
                     os_user=peer.username, os_uid=peer.uid)
        calibration_ops = self.calibration.submit_ops(jobs)    # (#13)
        calibration_ops += [Store.set_not_preemptible(j["job_id"]) for j in jobs
                            if j.get("preemptible") is False]   # (#16)
        try:
            await self.store.write(*self.store.insert_jobs(jobs), *calibration_ops)
        except StoreError as exc:
            self._release(peer.uid, len(jobs))
            raise Unavailable(f"job not accepted: {exc}") from None
        self.calibration.enqueued(jobs)                        # (#13)
        for j in jobs:  # no await from here on: dependencies are decided consistently
            pj = self._record(j)
            self._enter(pj)
            self.states.publish(pj.job_id, JobStatus.PENDING)
            self._admit(pj, final)
        return [j["job_id"] for j in jobs]

    async def exists(self, job_id: str) -> bool:
        return job_id in self.active or await self.store.job_status(job_id) is not None

    # ---- cancel -------------------------------------------------------------------
    async def cancel(self, peer: Peer, job_id: str) -> dict[str, Any]:
        pj = self.active.get(job_id)
        if pj is None:
            job = await self.store.get_job(job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            policy.require_owner(peer, job.os_uid, job_id, "cancel")
            raise Conflict(f"{job_id} is already {job.status.value}; nothing to cancel")
        policy.require_owner(peer, pj.os_uid, job_id, "cancel")
        self.dispatcher.take_back(pj, "cancelled")  # not started yet: cancel it as pending
        if pj.phase in PENDING_PHASES:
            await self._end_pending(pj, EndReason.CANCELLED,
                                    f"cancelled by {peer.username} while pending", retry=False)
            return {"job_id": job_id, "status": "cancelled"}
        run = self.dispatcher.of(pj)
        if run is not None:
            when = "while running" if run is self.dispatcher.running else "before its start"
            self.dispatcher.request_stop(run, EndReason.CANCELLED,
                                         f"cancelled by {peer.username} {when}")
            return {"job_id": job_id, "status": "cancelling"}
        if pj.phase is RunPhase.ANALYZING:
            raise Conflict(f"{job_id} has finished acquiring and its data are being saved "
                           "and analyzed; nothing to cancel")
        raise Conflict(f"{job_id} has finished running and its outcome is being recorded; "
                       "nothing to cancel")

    async def cancel_many(self, peer: Peer, job_ids: list[str]) -> dict[str, Any]:
        done, refused = [], []
        for job_id in job_ids:
            try:
                done.append((await self.cancel(peer, job_id))["job_id"])
            except (PermissionDenied, Conflict, NotFound) as exc:
                refused.append({"job_id": job_id, "error": exc.message})
        return {"cancelled": done, "refused": refused}

    def job_ids_where(self, pred: Callable[[PendingJob], bool]) -> list[str]:
        """Active (pending or running) job IDs matching ``pred``."""
        return [pj.job_id for pj in self.active.values()
                if pj.phase is not RunPhase.FINISHING and pred(pj)]

    # ---- queue control ------------------------------------------------------------
    async def set_paused(self, peer: Peer, paused: bool) -> dict[str, Any]:
        """Stop (or resume) starting jobs; the running job is not touched. Survives a
        restart, so a queue paused for maintenance stays paused."""
        policy.require_admin(peer, "pause or resume the queue")
        try:
            await self.store.write(Store.set_state("paused", "1" if paused else "0"))
        except StoreError as exc:
            raise Unavailable(f"not {'paused' if paused else 'resumed'}: {exc}") from None
        self.paused = paused
        if paused:
            self.dispatcher.revoke_upcoming("the queue is paused")
        self.dispatcher.wake()
        self.events.publish({"type": "queue", "paused": paused, "by": peer.username})
        return {"paused": paused}

    def _own_pending(self, peer: Peer, job_id: str, action: str) -> PendingJob:
        pj = self.active.get(job_id)
        if pj is not None and any(run.job is pj for run in self.dispatcher.upcoming):
            policy.require_owner(peer, pj.os_uid, job_id, action)
            self.dispatcher.take_back(pj, f"being {action}")  # not started: pending again
        if pj is None or pj.phase not in PENDING_PHASES:
            raise Conflict(f"{job_id} is not pending; only a pending job can be {action}")
        policy.require_owner(peer, pj.os_uid, job_id, action)
        return pj

    async def _change_pending(self, pj: PendingJob, apply: Callable[[], None],
                              undo: Callable[[], None], op: Any) -> None:
        """Apply a change to a pending job in memory at once (out of the dispatcher's
        reach), store it, and undo it if it could not be stored."""
        self._unplace(pj)
        apply()
        self._place(pj)
        try:
            await self.store.write(op)
        except PreconditionFailed:
            raise Conflict(f"{pj.job_id} is no longer pending") from None
        except StoreError as exc:
            if self._is_pending(pj):
                self._unplace(pj)
                undo()
                self._place(pj)
            raise Unavailable(f"{pj.job_id} not changed: {exc}") from None
        # watchers (labctl watch, open dashboard pages) see the change at once
        self.states.publish(pj.job_id, JobStatus.PENDING, held=pj.held, priority=pj.priority)

    async def set_held(self, peer: Peer, job_id: str, held: bool) -> dict[str, Any]:
        pj = self._own_pending(peer, job_id, "held" if held else "released")
        if pj.held != held:
            def flip(value: bool) -> Callable[[], None]:
                return lambda: setattr(pj, "held", value)
            await self._change_pending(pj, flip(held), flip(not held),
                                       Store.set_held(job_id, held))
        return {"job_id": job_id, "held": held, "waiting_for": describe_wait(pj),
                "position": self.position(job_id)}

    async def set_priority(self, peer: Peer, job_id: str, priority: int) -> dict[str, Any]:
        """The owner may lower a pending job's priority; raising it takes an admin."""
        pj = self._own_pending(peer, job_id, "reprioritized")
        old = pj.priority
        policy.check_reprioritize(self.settings, peer, old, priority)
        await self._change_pending(pj, lambda: setattr(pj, "priority", priority),
                                   lambda: setattr(pj, "priority", old),
                                   Store.set_priority(job_id, priority))
        return {"job_id": job_id, "priority": priority,
                "position": self.position(job_id)}

    async def raise_priority(self, job_id: str, priority: int) -> None:
        """(#13) A pending calibration that a more urgent job waits for runs at that job's
        priority (whose submitter's cap was checked); one that started needs nothing."""
        pj = self.active.get(job_id)
        if pj is not None:
            self.dispatcher.take_back(pj, "its priority is raised")
        if pj is None or not self._is_pending(pj) or pj.priority >= priority:
            return
        old = pj.priority
        await self._change_pending(pj, lambda: setattr(pj, "priority", priority),
                                   lambda: setattr(pj, "priority", old),
                                   Store.set_priority(job_id, priority))

    # ---- views --------------------------------------------------------------------
    @property
    def running(self):
        return self.dispatcher.running

    def position(self, job_id: str) -> int | None:
        """1-based place in the run order; the prepared jobs (not started yet) first."""
        upcoming = self.dispatcher.upcoming
        for i, run in enumerate(upcoming, 1):
            if run.job.job_id == job_id:
                return i
        pj = self.active.get(job_id)
        pos = None if pj is None else self.queue.position(pj)
        return None if pos is None else pos + len(upcoming)

    @property
    def runnable_count(self) -> int:
        """Runnable pending jobs, the prepared ones (not started yet) included."""
        return len(self.queue) + len(self.dispatcher.upcoming)

    def time_to_free(self) -> float | None:
        """Seconds until the board is free (0 if idle, None if unknown)."""
        run = self.dispatcher.running
        if run is None:
            return 0.0
        return self.estimates.remaining(run.job.experiment_class, run.started_mono,
                                        run.progress)

    async def get(self, job_id: str) -> Job:
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        pj = self.active.get(job_id)
        if pj is not None:
            job.phase = pj.shown_phase()
            run = self.dispatcher.running
            if run is not None and run.job is pj:
                job.progress = run.progress
            if job_id in self.states.unrecorded:  # show the outcome, and that it is not safe
                reason, why = self.states.unrecorded[job_id]
                job.status, job.end_reason = reason.status, reason.value
                job.error_message = f"{reason.value}; not stored yet ({why}); retrying"
        return job
