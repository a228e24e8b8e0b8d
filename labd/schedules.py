"""Recurring submits (issue #13): "run this calibration every 2 h".

A schedule is an owner, a period and a submit's params (a validated blob of SubmitParams
fields). One asyncio task fires them: it sleeps until the earliest next fire time (woken
early through an asyncio.Event whenever a schedule changes; no polling) and submits each due
schedule's job through the submit path itself (``api.jobs._prepare`` then
``Scheduler.enqueue``), as the schedule's owner, so a fired job is validated and permitted
exactly like the owner's own submit. Fired jobs carry ``batch_id = SCHED-<id>``.

Timing rules:
- fire times are anchored: ``start + k * every``; a firing moves next_fire to the first such
  time strictly after now, so after downtime (or a busy loop) a schedule fires **once**, not
  once per missed period;
- no pile-up: while the job of the previous firing is still pending or running, a firing is
  skipped (and recorded as skipped);
- pause keeps the schedule; resume continues at the next anchored time in the future (the
  periods missed while paused are not fired).

The clock is injectable (``now()`` + ``sleep_until()``), so tests drive it step by step."""
from __future__ import annotations

import asyncio
import logging
import math
import pwd
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from labd_client.protocol import InvalidParams, LabdError, LimitExceeded, NotFound, \
    Unavailable
from .identity import AdminPolicy, Peer
from .models import utcnow
from .scheduler import policy
from .store import PreconditionFailed, Store, StoreError

if TYPE_CHECKING:
    from .api import Call
    from .api.params import ScheduleAdd
    from .context import AppContext
    from .settings import Settings

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (UTC)."""

    async def sleep_until(self, deadline: float | None, wake: asyncio.Event) -> None:
        """Return at ``deadline`` (never if None), or earlier once ``wake`` is set."""


class WallClock:
    """time.time(); a sleep re-reads it at least every MAX_SLEEP_S (the loop's own timer is
    monotonic, so a wall clock stepped by NTP is noticed within that)."""
    MAX_SLEEP_S = 600.0

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float | None, wake: asyncio.Event) -> None:
        timeout = self.MAX_SLEEP_S if deadline is None else \
            min(self.MAX_SLEEP_S, max(0.0, deadline - time.time()))
        try:
            await asyncio.wait_for(wake.wait(), timeout)
        except TimeoutError:
            pass


def next_after(anchor: float, every: float, now: float) -> float:
    """The first ``anchor + k * every`` (k >= 1) strictly after ``now``."""
    k = max(1, math.floor((now - anchor) / every) + 1)
    t = anchor + k * every
    while t <= now:   # float rounding
        t += every
    return t


def iso(ts: float | None) -> str | None:
    return None if ts is None else \
        datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def batch_id(sid: int) -> str:
    return f"SCHED-{sid}"


@dataclass
class Schedule:
    id: int
    owner: str
    owner_uid: int
    params: dict[str, Any]
    every_s: float
    next_fire: float
    paused: bool
    created_at: str
    last_fire_at: str | None = None
    last_job_id: str | None = None
    last_outcome: str | None = None
    last_message: str | None = None
    skips: int = 0

    @classmethod
    def from_row(cls, r: Any) -> "Schedule":
        import json
        return cls(id=r["id"], owner=r["owner"], owner_uid=r["owner_uid"],
                   params=json.loads(r["params"]), every_s=r["every_s"],
                   next_fire=r["next_fire"], paused=bool(r["paused"]),
                   created_at=r["created_at"], last_fire_at=r["last_fire_at"],
                   last_job_id=r["last_job_id"], last_outcome=r["last_outcome"],
                   last_message=r["last_message"], skips=r["skips"])

    @property
    def experiment(self) -> str:
        return f"{self.params.get('experiment_module')}.{self.params.get('experiment_class')}"


class _AsOwner:
    """A connection stand-in for a firing: the submit path sees the schedule's owner."""
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.gone: asyncio.Future = asyncio.get_running_loop().create_future()


def describe_every(s: float) -> str:
    """7200 -> 2h, 5400 -> 1h30m, 90 -> 1m30s, 0.5 -> 0.5s."""
    if s != int(s):
        return f"{s:g}s"
    left, out = int(s), ""
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= n:
            out += f"{left // n}{unit}"
            left %= n
    return out or "0s"


class Schedules:
    """The schedules (mirrored in memory from the store) and their firing task."""

    def __init__(self, settings: "Settings", store: Store, clock: Clock | None = None,
                 admin_policy: AdminPolicy | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock: Clock = clock or WallClock()
        self.admin_policy = admin_policy or AdminPolicy(settings.admin_group,
                                                        settings.admin_users)
        self.app: "AppContext | None" = None
        self.items: dict[int, Schedule] = {}
        self._last_id = 0
        self._lock = asyncio.Lock()          # one change (or firing pass) at a time
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._sleep_waiters: list[asyncio.Future] = []

    # ---- start / stop -------------------------------------------------------------
    async def load(self, app: "AppContext") -> None:
        self.app = app
        self.items = {r["id"]: Schedule.from_row(r) for r in await self.store.schedules()}
        counter = (await self.store.counters()).get("SCHED", ("-", 0))[1]
        self._last_id = max([counter, *self.items])
        for s in self.items.values():
            await self._adopt_unrecorded(s)

    async def _adopt_unrecorded(self, s: Schedule) -> None:
        """A firing's job is stored before the firing is (two commits): if labd died in
        between, take that job as the last firing, so it neither fires twice nor piles up."""
        [row] = await self.store.history(
            user=None, os_user=None, status=None, experiment=None, since=None,
            batch_id=batch_id(s.id), before_seq=None, limit=1) or [None]
        if row is None or row["job_id"] == s.last_job_id:
            return
        created = datetime.fromisoformat(row["created_at"]).timestamp()
        s.last_job_id, s.last_outcome = row["job_id"], "submitted"
        s.last_fire_at, s.last_message = iso(created), None
        if s.next_fire <= created:
            s.next_fire = next_after(s.next_fire, s.every_s, created)
        log.warning("schedule %d: %s was submitted but its firing not recorded; recorded now",
                    s.id, row["job_id"])
        try:
            await self.store.write(*Store.schedule_fired(
                s.id, s.last_fire_at, "submitted", s.last_job_id, None, s.next_fire))
        except StoreError as exc:
            log.error("schedule %d: firing not recorded: %s", s.id, exc)

    async def start(self, app: "AppContext") -> None:
        """Load the schedules and start firing (overdue ones fire once, at once)."""
        await self.load(app)
        self._task = asyncio.create_task(self._run(), name="schedules")

    async def stop(self, timeout: float = 10.0) -> None:
        """Fire nothing new; a firing under way finishes (bounded) so that a submitted job
        is recorded as its schedule's last job."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=2)
            self._task = None

    def asleep(self) -> asyncio.Future:
        """Resolves when the firing task next goes to sleep (for tests)."""
        fut = asyncio.get_running_loop().create_future()
        self._sleep_waiters.append(fut)
        return fut

    def _earliest(self) -> float | None:
        times = [s.next_fire for s in self.items.values() if not s.paused]
        return min(times) if times else None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.fire_due()
            except Exception:  # never let one bad firing end all schedules
                log.exception("firing schedules failed")
            if self._stopping:
                break
            waiters, self._sleep_waiters = self._sleep_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
            await self.clock.sleep_until(self._earliest(), self._wake)

    # ---- firing -------------------------------------------------------------------
    async def fire_due(self) -> list[tuple[int, str, str | None]]:
        """Fire every schedule that is due now, once each; returns (id, outcome, job)."""
        out = []
        async with self._lock:
            now = self.clock.now()
            due = sorted((s for s in self.items.values()
                          if not s.paused and s.next_fire <= now),
                         key=lambda s: (s.next_fire, s.id))
            for s in due:
                if self._stopping:
                    break
                out.append(await self._fire(s, now))
        return out

    def _job_state(self, job_id: str | None) -> str | None:
        """'pending' or 'running' while the job is not final (in the scheduler), else None."""
        assert self.app is not None
        pj = self.app.scheduler.active.get(job_id) if job_id else None
        if pj is None:
            return None
        return "pending" if str(pj.phase) in ("waiting", "queued", "preempted") else "running"

    async def _fire(self, s: Schedule, now: float) -> tuple[int, str, str | None]:
        nxt = next_after(s.next_fire, s.every_s, now)
        busy = self._job_state(s.last_job_id)
        job_id: str | None = None
        if busy is not None:
            outcome, message = "skipped", f"{s.last_job_id} is still {busy}"
            log.info("schedule %d: skipped (%s)", s.id, message)
        else:
            try:
                job_id = await self._submit(s)
                outcome, message = "submitted", None
                log.info("schedule %d: submitted %s", s.id, job_id)
            except LabdError as exc:
                outcome, message = "failed", exc.message
                log.warning("schedule %d: not submitted: %s", s.id, message)
            except Exception:  # recorded and moved on: a due schedule must not spin
                log.exception("schedule %d: firing failed", s.id)
                outcome, message = "failed", "internal error; the daemon log has details"
        at = iso(now)
        s.next_fire, s.last_fire_at, s.last_outcome, s.last_message = nxt, at, outcome, message
        if job_id is not None:
            s.last_job_id = job_id
        if outcome == "skipped":
            s.skips += 1
        try:
            await self.store.write(*Store.schedule_fired(s.id, at, outcome, job_id, message,
                                                         nxt))
        except StoreError as exc:  # kept in memory; a restart may fire it once more
            log.error("schedule %d: firing not recorded: %s", s.id, exc)
        return s.id, outcome, job_id

    def owner_peer(self, s: Schedule) -> Peer:
        try:
            gid = pwd.getpwuid(s.owner_uid).pw_gid
        except KeyError:
            gid = s.owner_uid
        return Peer(uid=s.owner_uid, gid=gid, pid=0, username=s.owner,
                    policy=self.admin_policy)

    async def _submit(self, s: Schedule) -> str:
        """The owner's submit, through the submit path itself."""
        from .api import Call, calibration as calib
        from .api.jobs import _prepare
        from .api.params import SubmitParams
        from .experiment_loader import describe_validation
        assert self.app is not None
        try:
            p = SubmitParams.model_validate(s.params)
        except ValidationError as exc:
            raise InvalidParams(f"stored submit params no longer valid: "
                                f"{describe_validation(exc)}") from None
        call = Call(self.app, _AsOwner(self.owner_peer(s)))  # type: ignore[arg-type]
        job = await _prepare(call, p, batch_id(s.id))
        # a job that needs fresh keys gets its stale calibrations first, as from submit
        ids, _, [at] = await calib.enqueue(call, [(p, job)], _prepare)
        return ids[at]

    # ---- changes (RPC) ------------------------------------------------------------
    def _get(self, sid: int) -> Schedule:
        s = self.items.get(sid)
        if s is None:
            raise NotFound(f"no schedule {sid} (labctl schedule list)")
        return s

    async def add(self, call: "Call", p: "ScheduleAdd") -> dict[str, Any]:
        from .api.jobs import _prepare
        sp, peer, st = p.submit, call.peer, self.settings
        if sp.after is not None or sp.not_before is not None:
            raise InvalidParams("a schedule's submit cannot have after or not_before "
                                "(each firing is a new job; use start for the first time)")
        if p.every_s < st.schedule_min_every_s:
            raise InvalidParams(f"every must be at least {st.schedule_min_every_s:g} s")
        mine = sum(1 for s in self.items.values() if s.owner_uid == peer.uid)
        if mine >= st.max_schedules_per_user:
            raise LimitExceeded(f"{peer.username} has {mine} schedules; the limit is "
                                f"{st.max_schedules_per_user} (remove some)")
        # validated exactly as a submit by this caller would be (nothing is queued)
        job = await _prepare(call, sp, None)
        blob = sp.model_dump(mode="json", exclude_unset=True)
        if sp.inline_configs:  # snapshotted once now: each firing uses those versions
            blob.pop("inline_configs")
            blob["config_versions"] = job["pinned_versions"]
        now = self.clock.now()
        first = p.start.timestamp() if p.start is not None else now + p.every_s
        async with self._lock:
            sid = self._last_id + 1
            s = Schedule(id=sid, owner=peer.username, owner_uid=peer.uid, params=blob,
                         every_s=p.every_s, next_fire=first, paused=False,
                         created_at=utcnow())
            try:
                await self.store.write(*Store.insert_schedule(
                    sid, s.owner, s.owner_uid, blob, s.every_s, s.next_fire, s.created_at))
            except StoreError as exc:
                raise Unavailable(f"schedule not added: {exc}") from None
            self._last_id = sid
            self.items[sid] = s
        self._wake.set()
        return await self.view(s)

    async def _set(self, call: "Call", sid: int, paused: bool) -> dict[str, Any]:
        async with self._lock:
            s = self._get(sid)
            policy.require_owner(call.peer, s.owner_uid, f"schedule {sid}",
                                 "pause" if paused else "resume")
            nxt = s.next_fire
            if not paused and s.paused:
                now = self.clock.now()
                if nxt <= now:  # missed while paused: continue at the next anchored time
                    nxt = next_after(nxt, s.every_s, now)
            try:
                await self.store.write(Store.set_schedule_state(sid, nxt, paused))
            except PreconditionFailed:
                raise NotFound(f"no schedule {sid}") from None
            except StoreError as exc:
                raise Unavailable(f"schedule {sid} not changed: {exc}") from None
            s.paused, s.next_fire = paused, nxt
        self._wake.set()
        return await self.view(s)

    async def pause(self, call: "Call", sid: int) -> dict[str, Any]:
        return await self._set(call, sid, True)

    async def resume(self, call: "Call", sid: int) -> dict[str, Any]:
        return await self._set(call, sid, False)

    async def remove(self, call: "Call", sid: int) -> dict[str, Any]:
        async with self._lock:
            s = self._get(sid)
            policy.require_owner(call.peer, s.owner_uid, f"schedule {sid}", "remove")
            try:
                await self.store.write(Store.delete_schedule(sid))
            except PreconditionFailed:
                raise NotFound(f"no schedule {sid}") from None
            except StoreError as exc:
                raise Unavailable(f"schedule {sid} not removed: {exc}") from None
            del self.items[sid]
        self._wake.set()
        return {"schedule_id": sid, "removed": True}

    # ---- views --------------------------------------------------------------------
    async def view(self, s: Schedule) -> dict[str, Any]:
        status = self._job_state(s.last_job_id)
        if status is None and s.last_job_id:
            status = await self.store.job_status(s.last_job_id)
        now = self.clock.now()
        return {
            "schedule_id": s.id, "owner": s.owner, "experiment": s.experiment,
            "every_s": s.every_s, "every": describe_every(s.every_s),
            "params": s.params, "paused": s.paused, "created_at": s.created_at,
            "next_fire": None if s.paused else iso(s.next_fire),
            "next_fire_in_s": None if s.paused else round(max(0.0, s.next_fire - now), 1),
            "last_fire_at": s.last_fire_at, "last_outcome": s.last_outcome,
            "last_message": s.last_message, "last_job_id": s.last_job_id,
            "last_job_status": status, "skips": s.skips, "batch_id": batch_id(s.id),
        }

    async def list(self, os_user: str | None = None) -> list[dict[str, Any]]:
        return [await self.view(s) for s in sorted(self.items.values(), key=lambda s: s.id)
                if os_user is None or s.owner == os_user]

    async def fires(self, sid: int, limit: int) -> list[dict[str, Any]]:
        self._get(sid)
        return [dict(r) for r in await self.store.schedule_fires(sid, limit)]
