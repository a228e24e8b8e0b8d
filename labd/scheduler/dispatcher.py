"""Dispatch: one acquisition at a time from the queue to the board thread, as small stages —
claim (resolve config versions, durably mark it running), acquire (the board thread),
supervise (cancel, time limit, escalation), then analyze (the analysis thread saves the raw
data and fits) and finish (record the outcome). The next job starts acquiring as soon as
the board is free, while the previous one is still being saved and analyzed. The jobs
waiting for their save and fit are bounded (``MAX_ANALYZING`` jobs, ``MAX_BACKLOG_BYTES`` of
raw data): past that the board waits for a fit rather than piling up data in memory.

Escalation for a job asked to stop: its stop flag (cooperative, ``check_stop``); after
``stop_grace_s`` it is interrupted at its next labd call (board, log, print, progress);
after another grace it is declared stuck: its outcome is recorded, no job starts until the
board thread returns, health says so and the systemd watchdog restarts labd.

When the queue runs dry the loop runs one full garbage collection: a finished job's data
held in reference cycles would otherwise wait for Python's next full collection (which
grows rarer as the heap grows), and the daemon's memory would not come back after work.
It costs a few ms at a moment nothing waits; pending-job records are outside the cyclic
GC, so it does not grow with the queue."""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labd_client.protocol import LabdError
from ..executor import JobContext, JobSpec, Outcome
from ..models import utcnow
from ..pending_queue import PendingJob
from ..store import PreconditionFailed, Store, StoreError
from .states import EndReason, RunPhase

if TYPE_CHECKING:
    from .core import Scheduler

log = logging.getLogger(__name__)

MAX_ANALYZING = 256
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

    def summary(self) -> dict[str, Any]:
        return {**self.job.summary(), "status": "running", "started_at": self.started_at,
                "progress": self.progress, "stop_reason": self.ctx.stop_reason}


class Dispatcher:
    def __init__(self, sched: "Scheduler") -> None:
        self.sched = sched
        self.executor = sched.executor
        self.running: Running | None = None
        self.stuck_since: float | None = None   # the board thread ignored every stop
        self.analyzing: dict[str, PendingJob] = {}  # acquired, being saved and analyzed
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop = asyncio.get_running_loop()
        self._prefetched: tuple[str, Any] | None = None  # (job_id, row) of the likely next
        self._log_buf: list[tuple[str, str]] = []
        self._log_lock = threading.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._dispatch_loop(), name="dispatch")
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """Shutdown: the running job is asked to stop at a safe point; wait (bounded) for
        the loop. Jobs being analyzed finish (the scheduler waits for their outcomes)."""
        if self.running is not None:
            self.request_stop(self.running, EndReason.SHUTDOWN,
                              "interrupted: daemon shut down during run")
        self.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except (asyncio.TimeoutError, Exception):
                log.error("running job did not finish during shutdown")

    def _idle(self) -> bool:
        return not (len(self.sched.queue) or self.analyzing or self.running)

    def _can_start(self) -> bool:
        s = self.sched
        return not (s.paused or self.stuck_since is not None or not len(s.queue)
                    or len(self.analyzing) >= MAX_ANALYZING
                    or self.executor.backlog_bytes >= MAX_BACKLOG_BYTES)

    async def _dispatch_loop(self) -> None:
        ran_since_collect = False
        while not self.sched.stopping:
            if not self._can_start():
                if ran_since_collect and self._idle():  # free jobs' cyclic garbage now
                    gc.collect()
                    ran_since_collect = False
                self._wake.clear()
                await self._wake.wait()
                continue
            ran_since_collect = True
            pj = self.sched.take_next()
            try:
                await self._run(pj)
            except Exception:  # never let one job take the dispatcher down
                log.exception("dispatching %s failed", pj.job_id)
                self.running = None
                self.sched.finish(pj, Outcome(EndReason.START_FAILED,
                                              "internal error while starting the job; the "
                                              "daemon log has the details"))

    def request_stop(self, run: Running, kind: EndReason, message: str) -> None:
        run.ctx.request_stop(kind, message)
        run.job.phase = RunPhase.STOPPING
        if run.stop_requested_mono is None:
            run.stop_requested_mono = time.monotonic()
        run.stop_changed.set()

    async def _run(self, pj: PendingJob) -> None:
        # Visible as running from the moment it leaves the queue, so a cancel that arrives
        # while the claim is being committed still reaches it.
        ctx = JobContext(pj.job_id, self.executor.board, self._on_progress,
                         self.executor.clock)
        run = Running(pj, ctx, "", time.monotonic(), self.sched.settings.job_time_limit_s)
        self.running = run
        if self.sched.stopping:
            self.request_stop(run, EndReason.SHUTDOWN, "interrupted: daemon shut down "
                              "during run")
        try:
            spec = await self._claim(run)
        except PreconditionFailed:
            log.error("%s is not pending in the database (changed by another process?); "
                      "not running it", pj.job_id)
            self.running = None
            self.sched.forget(pj)
            return
        except StoreError as exc:
            log.error("could not start %s (%s); it stays pending", pj.job_id, exc)
            self.running = None
            self.sched.requeue(pj)
            await asyncio.sleep(1.0)  # the database is failing: do not spin
            return
        except LabdError as exc:  # e.g. a pinned config version that cannot be read
            self.running = None
            self.sched.finish(pj, Outcome(EndReason.START_FAILED, exc.message))
            return
        if pj.phase is RunPhase.STARTING:
            pj.phase = RunPhase.RUNNING
        acquired, done = self.executor.submit(spec, ctx, self._on_log)
        await self._prefetch_next()
        stuck = await self._supervise(run, asyncio.wrap_future(acquired))
        self.running = None
        if stuck is not None:
            self._flush_logs()
            self.sched.finish(pj, stuck)
            return
        pj.phase = RunPhase.ANALYZING
        self.analyzing[pj.job_id] = pj
        self.sched.spawn(self._analyzed(run, asyncio.wrap_future(done)))

    async def _analyzed(self, run: Running, done: asyncio.Future) -> None:
        """The job's data and fits are saved: record its outcome; the board may take the
        next job (one more may wait for analysis)."""
        pj = run.job
        outcome = await done
        self._flush_logs()
        if outcome.reason is EndReason.COMPLETED:
            self.sched.estimates.note(pj.experiment_class, time.monotonic() - run.started_mono)
        del self.analyzing[pj.job_id]
        self.sched.finish(pj, outcome)
        self.wake()

    async def _prefetch_next(self) -> None:
        """Read the next job's row while this one runs: then the next claim needs no read,
        and shares one commit with this job's outcome. The fields used (config, pins, time
        limit) never change after submit; the claim itself is conditional."""
        nxt = self.sched.queue.peek()
        self._prefetched = None
        if nxt is not None:
            self._prefetched = (nxt.job_id, await self.sched.store.get_job_row(nxt.job_id))

    async def _claim(self, run: Running) -> JobSpec:
        """Resolve the config versions and durably mark the job running (linked to them)."""
        pj, s = run.job, self.sched
        if self._prefetched is not None and self._prefetched[0] == pj.job_id:
            row = self._prefetched[1]
        else:
            row = await s.store.get_job_row(pj.job_id)
        self._prefetched = None
        if row is None:
            raise PreconditionFailed(f"{pj.job_id} is not in the database")
        cfg_rows = await s.configs.resolve(json.loads(row["pinned_versions"]))
        started = utcnow()
        out_dir = s.settings.output_root / pj.job_id.split("-")[1]
        spec = JobSpec(
            job_id=pj.job_id, user=pj.user, os_user=pj.os_user,
            experiment_module=pj.experiment_module, experiment_class=pj.experiment_class,
            experiment_config=json.loads(row["experiment_config"]), priority=pj.priority,
            created_at=pj.created_at, started_at=started, batch_id=pj.batch_id,
            data_path=out_dir / f"{pj.job_id}.h5", log_path=out_dir / f"{pj.job_id}.log",
            configs=cfg_rows, output_root=s.settings.output_root)
        versions = {name: r["version_id"] for name, r in cfg_rows.items()}
        await s.states.started(pj.job_id, Store.claim(pj.job_id, started, versions,
                                                      str(spec.log_path)),
                               started_at=started, config_versions=versions)
        run.started_at = started
        run.started_mono = time.monotonic()
        run.time_limit_s = min(row["time_limit_s"] or s.settings.job_time_limit_s,
                               s.settings.job_time_limit_max_s)
        return spec

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
        self._loop.call_soon_threadsafe(self._progress, job_id, fraction)

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
