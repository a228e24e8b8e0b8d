"""Dispatch: one acquisition at a time, as stages of one task per job — prepare (resolve
its config versions; the executor loads it and builds its programs while the job before
it still acquires), start (the board thread takes it the moment the previous acquisition
ends; only then is it durably recorded as running, and nothing of it is saved before that
record), supervise (cancel, time limit, escalation), analyze (the save and analysis
threads, while the next job acquires) and finish (record the outcome).

The board's next ``PREPARE_AHEAD`` jobs are prepared. A prepared job is taken back to the
queue, unstarted (with the prepared jobs after it, which must not overtake it), when a
more urgent job arrives, the queue is paused, labd shuts down, or a main config it would
use changes (every job runs with main as of its start); while a job that may update main
(a calibration) is prepared, runs or is analyzed, the job after it is not prepared at all.
Fits may fall far behind the board: the jobs waiting for their save and fit are bounded
only by ``MAX_ANALYZING`` jobs (each holding no open file, and its data only while the
executor holds under ``fit_backlog_bytes``) and ``MAX_BACKLOG_BYTES`` of unsaved raw data; past
that the board waits for a fit.

Escalation for a job asked to stop: its stop flag (cooperative, ``check_stop``); after
``stop_grace_s`` it is interrupted at its next labd call (board, log, print, progress);
after another grace it is declared stuck: its outcome is recorded, no job starts until the
board thread returns, health says so and the systemd watchdog restarts labd.

When the queue runs dry the loop runs one full garbage collection: a finished job's data
held in reference cycles would otherwise wait for Python's next full collection (which
grows rarer as the heap grows), and the daemon's memory would not come back after work.
It costs a few ms at a moment nothing waits; pending-job records are outside the cyclic
GC, so it does not grow with the queue.

Preemption (issue #16): when a runnable job's priority exceeds the running job's by at
least ``preempt_margin`` and the running job can yield (its experiment has safe points, its
submit did not opt out, it was preempted fewer than ``max_preemptions`` times, it is not
stopping and updates no main config), it is asked to yield at its next safe point, and the
urgent job is prepared meanwhile: the board takes it the moment the running job's
checkpoint is in place (its fsync follows in the background; the preemption is recorded
after it). The preempted job is then pending again at the head of its priority, and
resumes from its checkpoint with the config versions it started with. At shutdown a running
job with safe points yields the same way (not counted as a preemption)."""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labd_client.protocol import LabdError
from ..executor import Handle, JobContext, JobSpec, Outcome
from ..pending_queue import PendingJob
from ..store import PreconditionFailed, Store, StoreError
from .states import EndReason, RunPhase

if TYPE_CHECKING:
    from .core import Scheduler

log = logging.getLogger(__name__)

SHUTDOWN_BY = "labd shutdown"   # (#16) who a job yields to at SIGTERM
PREPARE_AHEAD = 3   # prepared jobs waiting for the board: the one it takes next is ready,
                    # and the ones after it have whole acquisitions to be prepared in (the
                    # way there goes through the loop, the database and the prepare
                    # thread, each a GIL hand-off behind busy saves and fits)
MAX_ANALYZING = 4096   # jobs acquired, waiting for their save and fit (no open file each)
MAX_BACKLOG_BYTES = 256 * 1024 * 1024


@dataclass
class Running:
    job: PendingJob
    ctx: JobContext
    started_at: str
    started_mono: float
    time_limit_s: float
    progress: float = 0.0
    stop_requested_mono: float | None = None
    hard_stopped: bool = False
    stop_changed: asyncio.Event = field(default_factory=asyncio.Event)
    handle: Handle | None = None
    versions: dict[str, str] = field(default_factory=dict)   # config versions it runs with
    pinned: frozenset[str] = frozenset()                     # types the submit pinned
    revoked: bool = False     # taken back before its start: pending again
    created_at: str = ""      # its submit time, as stored

    def summary(self) -> dict[str, Any]:
        return {**self.job.summary(self.created_at), "status": "running",
                "started_at": self.started_at,
                "progress": self.progress, "stop_reason": self.ctx.stop_reason,
                # (#16) asked to yield the board to this job (or admin) at a safe point
                "preempting_for": self.ctx.preempt_by,
                "safe_points": self.ctx.safe is not None}


try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):   # not glibc
    _libc = None


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc): a big array freed by the idle
    collection may sit in a thread's malloc arena, whichever thread allocated it."""
    if _libc is not None:
        _libc.malloc_trim(0)


class Dispatcher:
    def __init__(self, sched: "Scheduler") -> None:
        self.sched = sched
        self.executor = sched.executor
        self.running: Running | None = None     # the board has it
        self.upcoming: list[Running] = []       # prepared, waiting for the board, in order
        self.stuck_since: float | None = None   # the board thread ignored every stop
        self.analyzing: dict[str, PendingJob] = {}  # acquired, being saved and analyzed
        self._main_changing = 0                 # config main changes being committed
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop = asyncio.get_running_loop()
        # the prepared jobs reach the executor in the order taken (asyncio.Lock is FIFO):
        # each first reads its fields from the database, and a later job's reads could
        # finish first and let it overtake
        self._in_order = asyncio.Lock()
        self._log_buf: list[tuple[str, str]] = []
        self._log_lock = threading.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._dispatch_loop(), name="dispatch")
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    @property
    def next(self) -> Running | None:
        """The job the board takes next, if it is prepared (or being prepared)."""
        return self.upcoming[0] if self.upcoming else None

    async def stop(self, timeout: float) -> None:
        """Shutdown: the prepared job goes back to pending; the running job is asked to
        stop at a safe point; wait (bounded) for both. Jobs being analyzed finish (the
        scheduler waits for their outcomes)."""
        for run in (*self.upcoming, self.running):
            if run is None:
                continue
            if run is self.running and run.ctx.stop_kind is None and \
                    run.ctx.safe is not None:
                run.ctx.request_preempt(SHUTDOWN_BY)   # unless it is yielding already
                # (#16) a job with safe points yields with a checkpoint and resumes at the
                # next start; one that does not reach a safe point within the grace time
                # is stopped as before
                log.info("%s yields the board at its next safe point: shutdown",
                         run.job.job_id)
                self._loop.call_later(self.sched.settings.stop_grace_s, self._stop_late, run)
                continue
            self.request_stop(run, EndReason.SHUTDOWN,
                              "interrupted: daemon shut down during run")
        self.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except (asyncio.TimeoutError, Exception):
                log.error("running job did not finish during shutdown")

    def _stop_late(self, run: Running) -> None:
        if self.running is run and not run.ctx.preempted:
            self.request_stop(run, EndReason.SHUTDOWN,
                              "interrupted: daemon shut down during run (no safe point "
                              "reached in time)")

    def _idle(self) -> bool:
        return not (len(self.sched.queue) or self.analyzing or self.running or self.upcoming)

    def _can_start(self) -> bool:
        """May the next job be prepared and handed to the board (which takes it when the
        current acquisition ends)?"""
        s = self.sched
        return not (s.paused or self.stuck_since is not None or not len(s.queue)
                    or len(self.upcoming) >= PREPARE_AHEAD or self._main_changing
                    or self._main_may_change()
                    or len(self.analyzing) + (self.running is not None)
                    + len(self.upcoming) >= MAX_ANALYZING
                    or self.executor.backlog_bytes >= MAX_BACKLOG_BYTES)

    def _main_may_change(self) -> bool:
        """A job that may update main when it completes (a calibration) is prepared,
        acquiring or being analyzed: the job after it waits, so it never runs on a replaced
        config."""
        updating = self.sched.calibration.updating
        return any(run.job.job_id in updating
                   for run in (*self.upcoming, self.running) if run is not None) or any(
            job_id in updating for job_id in self.analyzing)

    async def _dispatch_loop(self) -> None:
        ran_since_collect = False
        while not self.sched.stopping:
            if not self._can_start():
                if ran_since_collect and self._idle():  # free jobs' cyclic garbage now
                    gc.collect()
                    _malloc_trim()
                    ran_since_collect = False
                self._wake.clear()
                await self._wake.wait()
                continue
            ran_since_collect = True
            pj = self.sched.take_next()
            ctx = JobContext(pj.job_id, self.executor.board, self._on_progress,
                             self.executor.clock)
            run = Running(pj, ctx, "", time.monotonic(), self.sched.settings.job_time_limit_s)
            self.upcoming.append(run)
            self.sched.spawn(self._job(run))
        while self.upcoming or self.running is not None:  # shutdown: let them end
            self._wake.clear()
            await self._wake.wait()

    # ---- taking back prepared jobs ----------------------------------------------------
    def revoke_upcoming(self, why: str, first: int = 0) -> bool:
        """Take the prepared jobs from ``upcoming[first]`` on back to the queue (the ones
        after it too: none may start before it), unless the board started them; they are
        pending again at once (they can be held, reprioritized, cancelled as such). True if
        ``upcoming[first]`` will not start."""
        taken = self.upcoming[first:]
        for run in reversed(taken):   # the board takes them in order: the last ones first
            if run.handle is not None and not run.handle.revoke():
                return False          # the board has it, and so every one before it
            log.debug("%s taken back before its start: %s", run.job.job_id, why)
            run.revoked = True
            self._release(run)
            run.job.attempts += 1
            self.sched.requeue(run.job)
        return bool(taken)

    def take_back(self, pj: PendingJob, why: str) -> bool:
        """If ``pj`` is prepared and not started, it is pending again (True)."""
        for i, run in enumerate(self.upcoming):
            if run.job is pj:
                return self.revoke_upcoming(why, i)
        return False

    def queued(self, pj: PendingJob) -> None:
        """A job became runnable: it goes before the prepared jobs it outranks."""
        self.executor.warm_up()
        for i, run in enumerate(self.upcoming):
            if pj.priority > run.job.priority:
                self.revoke_upcoming(f"{pj.job_id} has a higher priority", i)
                break
            if pj.resume and pj < run.job:
                self.revoke_upcoming(f"{pj.job_id} was preempted: it resumes first", i)
                break
        self.consider_preempt(pj)
        self.wake()

    # ---- preemption (issue #16) --------------------------------------------------------
    def can_yield(self, run: Running) -> bool:
        """May the running job be preempted automatically?"""
        pj, s = run.job, self.sched
        return (run.ctx.safe is not None and run.ctx.stop_kind is None and pj.preemptible
                and pj.preemptions < s.settings.max_preemptions
                and pj.job_id not in s.calibration.updating)

    def consider_preempt(self, urgent: PendingJob | None = None) -> None:
        """Ask the running job to yield if ``urgent`` (default: the most urgent runnable
        job) outranks it by the margin."""
        run = self.running
        if run is None or self.sched.paused or self.sched.stopping:
            return
        if urgent is None:
            heads = [self.sched.queue.peek(), self.next.job if self.next else None]
            urgent = max((j for j in heads if j is not None), key=lambda j: j.priority,
                         default=None)
        if urgent is None or urgent.priority < run.job.priority + \
                self.sched.settings.preempt_margin or not self.can_yield(run):
            return
        self.preempt(run, urgent.job_id)

    def preempt(self, run: Running, by: str) -> None:
        if run.ctx.request_preempt(by):
            log.info("%s yields the board to %s at its next safe point", run.job.job_id, by)
            self.sched.states.publish(run.job.job_id, "running", phase="preempting",
                                      preempted_by=by)

    def block_starts(self) -> None:
        """No job is prepared or started until the matching ``unblock_starts``."""
        self._main_changing += 1

    def unblock_starts(self) -> None:
        self._main_changing -= 1
        self.wake()

    @contextlib.asynccontextmanager
    async def main_changing(self, type_name: str):
        """Around a change of a config type's main version: nothing starts meanwhile, and a
        prepared job that would use the old main is taken back, so every job runs with
        main as of its start."""
        self.block_starts()
        for i, run in enumerate(self.upcoming):
            if run.handle is not None and type_name in run.handle.spec.configs and \
                    type_name not in run.pinned:
                self.revoke_upcoming(f"main {type_name} is changing", i)
                break
        try:
            yield
        finally:
            self.unblock_starts()

    def request_stop(self, run: Running, kind: EndReason, message: str) -> None:
        if kind is EndReason.SHUTDOWN and self.take_back(run.job, "shutdown"):
            return  # never started: it stays pending
        run.ctx.request_stop(kind, message)
        run.job.phase = RunPhase.STOPPING
        if run.stop_requested_mono is None:
            run.stop_requested_mono = time.monotonic()
        run.stop_changed.set()

    def of(self, pj: PendingJob) -> Running | None:
        """The prepared or running record of ``pj``, if the board has or will have it."""
        for run in (self.running, *self.upcoming):
            if run is not None and run.job is pj:
                return run
        return None

    # ---- one job's stages ------------------------------------------------------------
    async def _job(self, run: Running) -> None:
        pj = run.job
        try:
            await self._stages(run)
        except Exception:  # never let one job take the dispatcher down
            log.exception("dispatching %s failed", pj.job_id)
            self._release(run)
            self.sched.finish(pj, Outcome(EndReason.START_FAILED, "internal error while "
                                          "starting the job; the daemon log has the details"))

    def _release(self, run: Running) -> None:
        if run in self.upcoming:
            self.upcoming.remove(run)
        if self.running is run:
            self.running = None
        self.wake()

    async def _stages(self, run: Running) -> None:
        pj = run.job
        async with self._in_order:
            with self.executor.readying.job():   # fits wait meanwhile: see Readying
                spec = await self._read(run)
                if spec is None or run.revoked:
                    return
                run.handle = handle = self.executor.submit(spec, run.ctx, self._on_log)
        if not await asyncio.wrap_future(handle.started):
            outcome = await asyncio.wrap_future(handle.done)
            if run.revoked:      # taken back: pending again already
                return
            self._release(run)
            if outcome is None:  # the executor dropped it unstarted: pending again
                pj.attempts += 1
                self.sched.requeue(pj)
            else:                # preparing it failed, or it was cancelled meanwhile
                outcome.config_versions = run.versions
                self.sched.finish(pj, outcome)
            return
        # the board has it; only now is it recorded as started (the board did not wait)
        if run in self.upcoming:
            self.upcoming.remove(run)
        self.running = run
        self.wake()   # prepare the one after it
        self.consider_preempt()   # (#16) one more urgent came while it was being handed over
        run.started_at, run.started_mono = spec.started_at, handle.started_mono
        if pj.phase is RunPhase.STARTING:
            pj.phase = RunPhase.RUNNING
        pj.resume = False   # (#16) resumed: its checkpoint is read
        try:
            await self.sched.states.started(
                pj.job_id, Store.claim(pj.job_id, spec.started_at, run.versions,
                                       str(spec.log_path)),
                started_at=spec.started_at, config_versions=run.versions)
            handle.set_claimed(True)
            not_pending = False
        except StoreError as exc:  # the database does not know it ran: stop it
            handle.set_claimed(False)
            not_pending = isinstance(exc, PreconditionFailed)
            log.error("could not start %s: its start could not be recorded (%s); stopping "
                      "it%s", pj.job_id, exc, "" if not_pending else ", it stays pending")
            run.ctx.request_stop(EndReason.SHUTDOWN, f"its start could not be recorded: {exc}")
        stuck = await self._supervise(run, asyncio.wrap_future(handle.acquired))
        if self.running is run:
            self.running = None
        self.wake()
        if stuck is not None:
            self._flush_logs()
            self.sched.finish(pj, stuck)
            return
        if run.ctx.preempted and handle.claim_ok:  # (#16) yielded at a safe point
            await asyncio.wrap_future(handle.done)
            if run.ctx.safe.durable is not None:   # its checkpoint fsynced: then the record
                try:
                    await asyncio.wrap_future(run.ctx.safe.durable)
                except OSError as exc:
                    log.error("checkpoint of %s may not survive a power loss: %s",
                              pj.job_id, exc)
            self._flush_logs()
            await self.sched.preempted(pj, run.ctx.preempt_by or "?", run.versions)
            if run.ctx.stop_kind is EndReason.CANCELLED:   # answered "cancelling"
                await self.sched.cancelled_as_it_yielded(pj, run.ctx.stop_reason or
                                                         "cancelled")
            return
        if not handle.claim_ok:  # its data are dropped: it never ran, as far as it is known
            await asyncio.wrap_future(handle.done)
            if not_pending:
                self.sched.forget(pj)
            else:
                pj.attempts += 1
                await asyncio.sleep(1.0)  # the database is failing: do not spin
                self.sched.requeue(pj)
            return
        pj.phase = RunPhase.ANALYZING
        self.analyzing[pj.job_id] = pj
        outcome = await asyncio.wrap_future(handle.done)
        self._flush_logs()
        if outcome.reason is EndReason.COMPLETED:
            self.sched.estimates.note(pj.experiment_class, time.monotonic() - run.started_mono)
        del self.analyzing[pj.job_id]
        self.sched.finish(pj, outcome)
        self.wake()

    async def _read(self, run: Running) -> JobSpec | None:
        """``_spec``, or None if the job cannot start now (then dealt with here)."""
        pj = run.job
        try:
            spec, run.pinned = await self._spec(run)
            return spec
        except PreconditionFailed:
            log.error("%s is not in the database; not running it", pj.job_id)
            self._release(run)
            self.sched.forget(pj)
        except StoreError as exc:
            log.error("could not start %s (%s); it stays pending", pj.job_id, exc)
            await asyncio.sleep(1.0)  # the database is failing: do not spin
            if not run.revoked:       # (taken back meanwhile: pending again already)
                self._release(run)
                self.sched.requeue(pj)
        except LabdError as exc:  # e.g. a pinned config version that cannot be read
            self._release(run)
            self.sched.finish(pj, Outcome(EndReason.START_FAILED, exc.message))
        return None

    async def _spec(self, run: Running) -> tuple[JobSpec, frozenset[str]]:
        """What the executor needs: the job's stored fields and the config versions it
        will run with (main as of now; ``main_changing`` takes it back if that changes
        before the board starts it)."""
        pj, s = run.job, self.sched
        row = await s.store.get_job_row(pj.job_id)
        if row is None:
            raise PreconditionFailed(f"{pj.job_id} is not in the database")
        pins = json.loads(row["pinned_versions"])
        if row["resume_versions"]:   # (#16) preempted: resumes with what it started with
            pins = json.loads(row["resume_versions"])
        cfg_rows = await s.configs.resolve(pins)
        out_dir = s.settings.output_root / pj.job_id.split("-")[1]
        run.created_at = row["created_at"]
        run.versions = {name: r["version_id"] for name, r in cfg_rows.items()}
        run.time_limit_s = min(row["time_limit_s"] or s.settings.job_time_limit_s,
                               s.settings.job_time_limit_max_s)
        spec = JobSpec(
            job_id=pj.job_id, user=pj.user, os_user=pj.os_user,
            experiment_module=pj.experiment_module, experiment_class=pj.experiment_class,
            experiment_config=json.loads(row["experiment_config"]), priority=pj.priority,
            created_at=run.created_at, started_at="", batch_id=pj.batch_id,
            data_path=out_dir / f"{pj.job_id}.h5", log_path=out_dir / f"{pj.job_id}.log",
            configs=cfg_rows, output_root=s.settings.output_root,
            resume_log=pj.attempts > 0 or pj.resume, preemptions=row["preemptions"])
        return spec, frozenset(pins)

    async def _supervise(self, run: Running, fut: asyncio.Future) -> Outcome | None:
        """Wait for the acquisition to end; None once it has, or the outcome of a job
        declared stuck (its acquisition never returned)."""
        grace = self.sched.settings.stop_grace_s
        while True:
            if run.stop_requested_mono is None:
                timeout = run.started_mono + run.time_limit_s - time.monotonic()
            else:
                timeout = run.stop_requested_mono + grace - time.monotonic()
            run.stop_changed.clear()
            changed = asyncio.ensure_future(run.stop_changed.wait())
            done, _ = await asyncio.wait({fut, changed}, timeout=max(timeout, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            if fut in done:
                return None
            if changed in done:
                continue
            if run.stop_requested_mono is None:
                self.request_stop(run, EndReason.TIME_LIMIT,
                                  f"time limit exceeded ({run.time_limit_s:g} s)")
            elif not run.hard_stopped:
                log.warning("%s ignores its stop request; interrupting it", run.job.job_id)
                run.ctx.hard_stop()
                run.hard_stopped = True
                run.stop_requested_mono = time.monotonic()
                fut.add_done_callback(lambda _: self.executor.clear_interrupt())
                asyncio.create_task(self._inject_interrupt(run, fut))
            else:
                self.stuck_since = time.monotonic()
                fut.add_done_callback(self._unstuck)
                return Outcome(EndReason.STUCK, (
                    f"{run.ctx.stop_reason}; the experiment is stuck in a call that cannot "
                    "be interrupted, so the board is not free: labd must be restarted"))

    async def _inject_interrupt(self, run: Running, fut: asyncio.Future) -> None:
        """For a job in a pure-Python loop that makes no labd call: inject the interrupt
        at a moment the board thread is in experiment code (checked every 20 ms)."""
        while not fut.done() and self.stuck_since is None:
            if self.executor.interrupt(run.job.job_id):
                return
            await asyncio.sleep(0.02)

    def _unstuck(self, _fut: Any) -> None:
        self.stuck_since = None
        self.wake()

    # ---- events from the executor thread -------------------------------------------
    def _on_progress(self, job_id: str, fraction: float) -> None:
        """From the board thread: the loop is woken by the executor's helper thread."""
        self.executor.later(self._loop.call_soon_threadsafe, self._progress, job_id, fraction)

    def _progress(self, job_id: str, fraction: float) -> None:
        if self.running is not None and self.running.job.job_id == job_id:
            self.running.progress = fraction
        self.sched.events.publish({"type": "progress", "job_id": job_id,
                                   "progress": fraction})

    def _on_log(self, job_id: str, text: str) -> None:
        with self._log_lock:
            first = not self._log_buf
            self._log_buf.append((job_id, text))
        if first:  # batch log lines: one loop wake-up per 50 ms, however chatty the job
            self._loop.call_soon_threadsafe(self._loop.call_later, 0.05, self._flush_logs)

    def _flush_logs(self) -> None:
        with self._log_lock:
            buf, self._log_buf = self._log_buf, []
        if buf:
            by_job: dict[str, list[str]] = {}
            for job_id, text in buf:
                by_job.setdefault(job_id, []).append(text)
            for job_id, parts in by_job.items():
                self.sched.events.publish({"type": "log", "job_id": job_id,
                                           "text": "".join(parts)})
