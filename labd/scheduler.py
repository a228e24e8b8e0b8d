"""The async heart: accepts jobs (durably, then onto the heap), dispatches them one at a time
to the executor as soon as the previous one ends, supervises cancel and time limits, and
records outcomes. All database writes go through the store's group commit."""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .config_store import ConfigStore
from .errors import (Conflict, InvalidParams, LimitExceeded, NotFound, PermissionDenied,
                     Unavailable)
from .events import EventBus
from .executor import Executor, JobContext, JobSpec, Outcome
from .identity import Peer
from .ids import DailyCounter
from .models import Job, JobStatus, utcnow
from .pending_queue import PendingJob, PendingQueue
from .settings import Settings
from .store import INSERT_JOB, UPSERT_COUNTER, Store, StoreError, job_row

log = logging.getLogger(__name__)

CLAIM = ("UPDATE jobs SET status='running', started_at=?, config_versions=?, log_path=? "
         "WHERE job_id=? AND status='pending'")
FINISH = ("UPDATE jobs SET status=?, finished_at=?, error_message=?, data_file_path=?, "
          "module_sha256=?, module_git_rev=?, results=? WHERE job_id=? "
          "AND status IN ('pending', 'running')")  # pending: it failed while being started
CANCEL_PENDING = ("UPDATE jobs SET status='cancelled', finished_at=?, error_message=? "
                  "WHERE job_id=? AND status='pending'")


@dataclass
class Running:
    job: PendingJob
    ctx: JobContext
    started_at: str
    started_mono: float
    time_limit_s: float
    progress: float = 0.0
    stop_requested_mono: float | None = None
    stop_changed: asyncio.Event = field(default_factory=asyncio.Event)

    def summary(self) -> dict[str, Any]:
        return {**self.job.summary(), "status": "running", "started_at": self.started_at,
                "progress": self.progress, "stop_reason": self.ctx.stop_reason}


class Scheduler:
    def __init__(self, settings: Settings, store: Store, configs: ConfigStore,
                 executor: Executor, events: EventBus) -> None:
        self.settings = settings
        self.store = store
        self.configs = configs
        self.executor = executor
        self.events = events
        self.queue = PendingQueue()
        self.waiting: dict[str, PendingJob] = {}        # pending but not runnable yet
        self._dependents: dict[str, set[str]] = {}       # job -> pending jobs after it
        self.running: Running | None = None
        self.paused = False
        self.stopping = False
        self.stuck_since: float | None = None   # executor thread did not return after stop
        self.job_ids = DailyCounter("JOB")
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task | None = None
        self._per_user: dict[int, int] = {}
        self._durations: dict[str, list[float]] = {}   # recent run times per experiment
        self._finishing: set[asyncio.Task] = set()
        self._prefetched: tuple[str, Any] | None = None  # (job_id, row) of the likely next
        self._log_buf: list[tuple[str, str]] = []
        self._log_lock = threading.Lock()

    # ---- start / stop -------------------------------------------------------------
    async def start(self, counters: dict[str, tuple[str, int]]) -> list[str]:
        day, last = counters.get("JOB", (None, 0))
        self.job_ids = DailyCounter("JOB", day, last)
        interrupted = await self.store.recover_running(utcnow())
        for job_id in interrupted:  # a temp data file of an interrupted run is never data
            day_dir = self.settings.output_root / job_id.split("-")[1]
            for part in day_dir.glob(f"{job_id}.h5.part"):
                part.unlink(missing_ok=True)
        self.paused = await self.store.get_state("paused") == "1"
        for r in reversed(await self.store.fetchall(
                "SELECT experiment_class, started_at, finished_at FROM jobs "
                "WHERE status = 'completed' ORDER BY seq DESC LIMIT 5000")):
            self._note_duration(r["experiment_class"], (
                datetime.fromisoformat(r["finished_at"]) -
                datetime.fromisoformat(r["started_at"])).total_seconds())
        for r in await self.store.pending_rows():
            await self._admit(_pending_job(r))
        _freeze_long_lived()
        self._task = asyncio.create_task(self._dispatch_loop(), name="dispatch")
        self._wake.set()
        return interrupted

    async def stop(self) -> None:
        """Graceful shutdown: stop dispatching, stop the running job at a safe point, and
        wait (bounded) for its outcome to be recorded."""
        self.stopping = True
        if self.running is not None:
            self.request_stop(self.running, "interrupted: daemon shut down during run")
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 3 * self.settings.stop_grace_s + 5)
            except (asyncio.TimeoutError, Exception):
                log.error("running job did not finish during shutdown")
        if self._finishing:
            await asyncio.wait(self._finishing, timeout=10)

    # ---- submit -------------------------------------------------------------------
    def _push(self, pj: PendingJob) -> None:
        self.queue.push(pj)
        self._per_user[pj.os_uid] = self._per_user.get(pj.os_uid, 0) + 1

    async def _admit(self, pj: PendingJob) -> None:
        """A stored pending job goes on the heap, or waits (held, dependency, not-before)."""
        if pj.after is not None:
            dep = await self.status_of(pj.after)
            if dep == "completed":
                pj.after = None
            elif dep in ("failed", "cancelled"):
                await self._cancel_stored(pj, f"cancelled: dependency {pj.after} {dep}")
                return
            else:
                self._dependents.setdefault(pj.after, set()).add(pj.job_id)
        if pj.waiting_for() is None:
            self._push(pj)
            return
        self.waiting[pj.job_id] = pj
        self._per_user[pj.os_uid] = self._per_user.get(pj.os_uid, 0) + 1
        if pj.not_before is not None and not pj.held and pj.after is None:
            self._loop.call_at(self._loop.time() + max(0.0, pj.not_before - time.time()),
                               self._maybe_release, pj.job_id)

    def _maybe_release(self, job_id: str) -> None:
        pj = self.waiting.get(job_id)
        if pj is None:
            return
        reason = pj.waiting_for()
        if reason is None:
            del self.waiting[job_id]
            self.queue.push(pj)
            self._wake.set()
        elif reason.startswith("not before") and pj.not_before is not None:
            self._loop.call_at(self._loop.time() + max(0.0, pj.not_before - time.time()),
                               self._maybe_release, job_id)

    async def status_of(self, job_id: str) -> str | None:
        if job_id in self.queue or job_id in self.waiting or (
                self.running is not None and self.running.job.job_id == job_id):
            return "pending"
        row = await self.store.fetchone("SELECT status FROM jobs WHERE job_id = ?", (job_id,))
        return row["status"] if row else None

    def _pending(self, job_id: str) -> PendingJob | None:
        return self.queue.get(job_id) or self.waiting.get(job_id)

    def _take(self, pj: PendingJob) -> None:
        """Remove a pending job from wherever it waits."""
        if self.waiting.pop(pj.job_id, None) is None:
            self.queue.remove(pj.job_id)
        self._forget(pj)

    async def _cancel_stored(self, pj: PendingJob, message: str) -> None:
        await self.store.write((CANCEL_PENDING, (utcnow(), message, pj.job_id)))
        self._publish_job(pj.job_id, "cancelled", error_message=message)
        self._job_ended(pj.job_id, "cancelled")

    def _job_ended(self, job_id: str, status: str) -> None:
        """Release or cancel the jobs that were waiting for this one."""
        for dep_id in self._dependents.pop(job_id, ()):
            pj = self.waiting.get(dep_id)
            if pj is None:
                continue
            if status == "completed":
                pj.after = None
                self._maybe_release(dep_id)
            else:
                self._take(pj)
                asyncio.create_task(self._cancel_stored(
                    pj, f"cancelled: dependency {job_id} {status}"))

    def _forget(self, pj: PendingJob) -> None:
        n = self._per_user.get(pj.os_uid, 1) - 1
        if n:
            self._per_user[pj.os_uid] = n
        else:
            self._per_user.pop(pj.os_uid, None)

    async def enqueue(self, peer: Peer, jobs: list[dict[str, Any]]) -> list[str]:
        """Persist new jobs in one commit, then make them runnable. Returns their IDs."""
        if self.stopping:
            raise Unavailable("labd is shutting down; submit again when it is back")
        have = self._per_user.get(peer.uid, 0)
        if have + len(jobs) > self.settings.max_pending_per_user:
            raise LimitExceeded(
                f"{peer.username} has {have} pending jobs; the limit is "
                f"{self.settings.max_pending_per_user} (cancel some or wait)")
        now = utcnow()
        for j in jobs:
            j.update(job_id=self.job_ids.next(), status="pending", created_at=now,
                     os_user=peer.username, os_uid=peer.uid)
        try:
            await self.store.write(*[(INSERT_JOB, job_row(j)) for j in jobs],
                                   (UPSERT_COUNTER, self.job_ids.row()))
        except StoreError as exc:
            raise Unavailable(f"job not accepted: {exc}") from None
        for j in jobs:
            await self._admit(_pending_job(j))
            self._publish_job(j["job_id"], "pending")
        if len(jobs) >= 1000:
            _freeze_long_lived()
        self._wake.set()
        return [j["job_id"] for j in jobs]

    # ---- cancel -------------------------------------------------------------------
    def check_owner(self, peer: Peer, os_uid: int, job_id: str, action: str) -> None:
        if not (peer.is_admin or peer.uid == os_uid):
            raise PermissionDenied(f"{peer.username} may not {action} {job_id}: it belongs "
                                   f"to another account (owner or an admin only)")

    async def cancel(self, peer: Peer, job_id: str) -> dict[str, Any]:
        pj = self._pending(job_id)
        if pj is not None:
            self.check_owner(peer, pj.os_uid, job_id, "cancel")
            self._take(pj)
            try:
                await self._cancel_stored(pj, f"cancelled by {peer.username} while pending")
            except StoreError as exc:
                await self._admit(pj)
                raise Unavailable(f"cancel not recorded: {exc}") from None
            return {"job_id": job_id, "status": "cancelled"}
        run = self.running
        if run is not None and run.job.job_id == job_id:
            self.check_owner(peer, run.job.os_uid, job_id, "cancel")
            self.request_stop(run, f"cancelled by {peer.username} while running")
            return {"job_id": job_id, "status": "cancelling"}
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        self.check_owner(peer, job.os_uid, job_id, "cancel")
        raise Conflict(f"{job_id} is already {job.status.value}; nothing to cancel")

    def request_stop(self, run: Running, reason: str) -> None:
        run.ctx.request_stop(reason)
        if run.stop_requested_mono is None:
            run.stop_requested_mono = time.monotonic()
        run.stop_changed.set()

    # ---- dispatch -----------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            if self.stopping:
                return
            if self.paused or self.stuck_since is not None or not len(self.queue):
                self._wake.clear()
                await self._wake.wait()
                continue
            pj = self.queue.pop()
            if pj is None:
                continue
            self._forget(pj)
            try:
                await self._run(pj)
            except Exception:  # never let one job take the dispatcher down
                log.exception("dispatching %s failed", pj.job_id)
                self.running = None
                self._finish(pj.job_id, Outcome(JobStatus.FAILED,
                                                "internal error while starting the job; "
                                                "the daemon log has the details"))

    async def _run(self, pj: PendingJob) -> None:
        # Visible as running from the moment it leaves the heap, so a cancel that arrives
        # while the claim is being committed still reaches it.
        ctx = JobContext(pj.job_id, self.executor.board, self._on_progress)
        run = Running(pj, ctx, "", time.monotonic(), self.settings.job_time_limit_s)
        self.running = run
        if self.stopping:
            self.request_stop(run, "interrupted: daemon shut down during run")
        try:
            spec = await self._claim(run)
        except StoreError as exc:
            log.error("could not start %s (%s); it stays pending", pj.job_id, exc)
            self.running = None
            self._push(pj)
            await asyncio.sleep(1.0)  # the database is failing: do not spin
            return
        if spec is None:
            self.running = None
            return
        fut = asyncio.wrap_future(self.executor.submit(spec, ctx, self._on_log))
        await self._prefetch_next()
        outcome = await self._supervise(run, fut)
        self._flush_logs()
        if outcome.status is JobStatus.COMPLETED:
            self._note_duration(pj.experiment_class, time.monotonic() - run.started_mono)
        self.running = None
        self._finish(pj.job_id, outcome)

    async def _prefetch_next(self) -> None:
        """Read the next job's row while this one runs: then the next claim needs no read,
        and shares one commit with this job's outcome. The fields used (config, pins, time
        limit) never change after submit; a cancelled or held job leaves the heap."""
        nxt = self.queue.peek()
        self._prefetched = None
        if nxt is not None:
            self._prefetched = (nxt.job_id, await self.store.get_job_row(nxt.job_id))

    async def _claim(self, run: Running) -> JobSpec | None:
        """Resolve the config versions and durably mark the job running (linked to them)."""
        pj = run.job
        if self._prefetched is not None and self._prefetched[0] == pj.job_id:
            row = self._prefetched[1]
        else:
            row = await self.store.get_job_row(pj.job_id)
        self._prefetched = None
        if row is None or row["status"] != "pending":
            return None
        cfg_rows = await self.configs.resolve(json.loads(row["pinned_versions"]))
        started = utcnow()
        out_dir = self.settings.output_root / pj.job_id.split("-")[1]
        spec = JobSpec(
            job_id=pj.job_id, user=pj.user, os_user=pj.os_user,
            experiment_module=pj.experiment_module, experiment_class=pj.experiment_class,
            experiment_config=json.loads(row["experiment_config"]), priority=pj.priority,
            created_at=pj.created_at, started_at=started, batch_id=pj.batch_id,
            data_path=out_dir / f"{pj.job_id}.h5", log_path=out_dir / f"{pj.job_id}.log",
            configs=cfg_rows, output_root=self.settings.output_root)
        versions = {name: r["version_id"] for name, r in cfg_rows.items()}
        await self.store.write((CLAIM, (started, json.dumps(versions), str(spec.log_path),
                                        pj.job_id)))
        run.started_at = started
        run.started_mono = time.monotonic()
        run.time_limit_s = min(row["time_limit_s"] or self.settings.job_time_limit_s,
                               self.settings.job_time_limit_max_s)
        self._publish_job(pj.job_id, "running", started_at=started, config_versions=versions)
        return spec

    async def _supervise(self, run: Running, fut: asyncio.Future) -> Outcome:
        """Wait for the job; on time limit or cancel, escalate: stop flag, then an
        asynchronous interrupt, then declare the executor stuck (watchdog restarts us)."""
        grace = self.settings.stop_grace_s
        interrupted = False
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
                try:
                    return fut.result()
                except BaseException as exc:
                    log.exception("executor raised")
                    return Outcome(JobStatus.FAILED, f"internal error: {type(exc).__name__}")
            if changed in done:
                continue
            if run.stop_requested_mono is None:
                self.request_stop(run, f"time limit exceeded ({run.time_limit_s:g} s)")
            elif not interrupted:
                log.warning("%s ignores its stop request; interrupting", run.job.job_id)
                self.executor.interrupt()
                interrupted = True
                run.stop_requested_mono = time.monotonic()
            else:
                self.stuck_since = time.monotonic()
                fut.add_done_callback(self._unstuck)
                return Outcome(JobStatus.FAILED, (
                    f"{run.ctx.stop_reason}; the experiment is stuck in a call that cannot "
                    "be interrupted, so the hardware is not free: labd must be restarted"))

    def _unstuck(self, _fut: Any) -> None:
        self.stuck_since = None
        self._wake.set()

    def _finish(self, job_id: str, out: Outcome) -> None:
        """Record an outcome; the next job may start before this commit, and both share a
        transaction. The terminal event goes out only once the outcome is durable."""
        async def record() -> None:
            now = out.finished_at
            try:
                await self.store.write((FINISH, (
                    out.status.value, now, out.error_message, out.data_file_path,
                    out.module_sha256, out.module_git_rev, json.dumps(out.results), job_id)))
            except StoreError:
                log.error("could not record outcome of %s; it will show as interrupted "
                          "after a restart", job_id)
                return
            self._publish_job(job_id, out.status.value, finished_at=now,
                              error_message=out.error_message,
                              data_file_path=out.data_file_path)
            self._job_ended(job_id, out.status.value)
        task = asyncio.create_task(record())
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    # ---- events from the executor thread -------------------------------------------
    def _on_progress(self, job_id: str, fraction: float) -> None:
        self._loop.call_soon_threadsafe(self._progress, job_id, fraction)

    def _progress(self, job_id: str, fraction: float) -> None:
        if self.running is not None and self.running.job.job_id == job_id:
            self.running.progress = fraction
        self.events.publish({"type": "progress", "job_id": job_id, "progress": fraction})

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
                self.events.publish({"type": "log", "job_id": job_id, "text": "".join(parts)})

    def _publish_job(self, job_id: str, status: str, **extra: Any) -> None:
        self.events.publish({"type": "job", "job_id": job_id, "status": status,
                             "terminal": JobStatus(status).terminal, **extra})

    # ---- queue control ------------------------------------------------------------
    def _require_admin(self, peer: Peer, what: str) -> None:
        if not peer.is_admin:
            raise PermissionDenied(f"only an admin may {what}")

    async def set_paused(self, peer: Peer, paused: bool) -> dict[str, Any]:
        """Stop (or resume) starting jobs; the running job is not touched. Survives a
        restart, so a queue paused for maintenance stays paused."""
        self._require_admin(peer, "pause or resume the queue")
        await self.store.set_state("paused", "1" if paused else "0")
        self.paused = paused
        self._wake.set()
        self.events.publish({"type": "queue", "paused": paused, "by": peer.username})
        return {"paused": paused}

    def _own_pending(self, peer: Peer, job_id: str, action: str) -> PendingJob:
        pj = self._pending(job_id)
        if pj is None:
            raise Conflict(f"{job_id} is not pending; only a pending job can be {action}")
        self.check_owner(peer, pj.os_uid, job_id, action)
        return pj

    async def set_held(self, peer: Peer, job_id: str, held: bool) -> dict[str, Any]:
        pj = self._own_pending(peer, job_id, "held" if held else "released")
        if pj.held != held:
            await self.store.write(("UPDATE jobs SET held=? WHERE job_id=? AND status='pending'",
                                    (int(held), job_id)))
            self._take(pj)
            pj.held = held
            await self._admit(pj)
            self._wake.set()
        return {"job_id": job_id, "held": held, "waiting_for": pj.waiting_for(),
                "position": self.queue.position(job_id)}

    async def set_priority(self, peer: Peer, job_id: str, priority: int) -> dict[str, Any]:
        """The owner may lower a pending job's priority; raising it takes an admin."""
        pj = self._own_pending(peer, job_id, "reprioritized")
        s = self.settings
        if not s.priority_min <= priority <= s.priority_max:
            raise InvalidParams(f"priority must be between {s.priority_min} and "
                                 f"{s.priority_max}")
        if priority > pj.priority and not peer.is_admin:
            raise PermissionDenied(f"only an admin may raise a job's priority "
                                   f"({pj.priority} -> {priority}); you may lower it")
        await self.store.write(("UPDATE jobs SET priority=? WHERE job_id=? AND "
                                "status='pending'", (priority, job_id)))
        if job_id in self.queue:
            self.queue.reprioritize(job_id, priority)
        else:
            pj.priority = priority
        return {"job_id": job_id, "priority": priority,
                "position": self.queue.position(job_id)}

    async def cancel_many(self, peer: Peer, job_ids: list[str]) -> dict[str, Any]:
        done, refused = [], []
        for job_id in job_ids:
            try:
                done.append((await self.cancel(peer, job_id))["job_id"])
            except (PermissionDenied, Conflict, NotFound) as exc:
                refused.append({"job_id": job_id, "error": exc.message})
        return {"cancelled": done, "refused": refused}

    def job_ids_where(self, pred: Any) -> list[str]:
        """Pending (waiting ones too) and running job IDs matching ``pred(PendingJob)``."""
        ids = [pj.job_id for pj in (*self.waiting.values(), *self.queue) if pred(pj)]
        if self.running is not None and pred(self.running.job):
            ids.append(self.running.job.job_id)
        return ids

    # ---- estimates -----------------------------------------------------------------
    def _note_duration(self, experiment_class: str, seconds: float) -> None:
        recent = self._durations.setdefault(experiment_class, [])
        recent.append(seconds)
        del recent[:-20]

    def estimates(self) -> dict[str, float]:
        """Expected run time per experiment class: the mean of its last 20 completed runs."""
        return {cls: sum(r) / len(r) for cls, r in self._durations.items()}

    def time_to_free(self) -> float | None:
        """Seconds until the running job is expected to end (0 if idle, None if unknown):
        from its own progress when it reports any, else from past runs of its class."""
        run = self.running
        if run is None:
            return 0.0
        elapsed = time.monotonic() - run.started_mono
        if run.progress > 0:
            return elapsed * (1 - run.progress) / run.progress
        est = self.estimates().get(run.job.experiment_class)
        return est - elapsed if est is not None and est > elapsed else None

    # ---- views --------------------------------------------------------------------
    async def get(self, job_id: str) -> Job:
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if self.running is not None and self.running.job.job_id == job_id:
            job.progress = self.running.progress
        return job


def _pending_job(r: Any) -> PendingJob:
    """The in-memory record of a pending job, from a row or a new job's dict."""
    nb = r["not_before"]
    return PendingJob(
        job_id=r["job_id"], user=r["user"], os_user=r["os_user"], os_uid=r["os_uid"],
        experiment_class=r["experiment_class"], experiment_module=r["experiment_module"],
        priority=r["priority"], created_at=r["created_at"], batch_id=r["batch_id"],
        held=bool(r["held"]), after=r["after_job"],
        not_before=datetime.fromisoformat(nb).timestamp() if nb else None)


def _freeze_long_lived() -> None:
    """Move the (many, long-lived, acyclic) pending-job records out of the cyclic GC's
    sight: with 100k of them, every full collection stalled the loop and the executor.
    They are still freed by reference counting when they leave the queue."""
    gc.collect()
    gc.freeze()
