"""Recurring submits (#13): timing with an injected clock, step by step (no sleeps, no real
2-hour waits), over a real Store and Scheduler; then the RPC/labctl round trip and restart
persistence on a real daemon."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from labd.api import Call
from labd.api.params import ScheduleAdd
from labd.context import AppContext
from labd.experiment_loader import ExperimentLoader
from labd.identity import Peer
from labd.schedules import Schedules, next_after
from labd.store import Op
from labd_client import Client, InvalidParams, NotFound, PermissionDenied
from sched_harness import ALICE, ROOT, Harness

BOB = Peer(uid=1001, gid=1001, pid=1, username="bob", is_admin=False)
NOOP = {"experiment_class": "NoOpExperiment", "experiment_module": "experiments.diagnostics.noop"}
H = 3600.0
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc).timestamp()


class FakeClock:
    """Time moves only when the test says so; a sleeping loop wakes when it passes its
    deadline (or its wake event is set)."""

    def __init__(self, t: float) -> None:
        self.t = t
        self._changed = asyncio.Event()

    def now(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt
        self._changed.set()
        self._changed = asyncio.Event()

    async def sleep_until(self, deadline: float | None, wake: asyncio.Event) -> None:
        while not wake.is_set() and (deadline is None or self.t < deadline):
            tasks = {asyncio.ensure_future(wake.wait()),
                     asyncio.ensure_future(self._changed.wait())}
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()


class Admins:
    def is_admin(self, uid: int) -> bool:
        return uid == 0


def call(app: AppContext, peer: Peer) -> Call:
    return Call(app, SimpleNamespace(peer=peer))  # type: ignore[arg-type]


def add_params(every_s: float = 2 * H, start: float | None = None, **submit) -> ScheduleAdd:
    d = {"every_s": every_s, "submit": {**NOOP, **submit}}
    if start is not None:
        d["start"] = datetime.fromtimestamp(start, timezone.utc).isoformat()
    return ScheduleAdd.model_validate(d)


@asynccontextmanager
async def env(tmp_path, clock: FakeClock, harness: Harness | None = None):
    """A scheduler over a real store with the schedules' firing task on the fake clock."""
    async with (harness or Harness(tmp_path)) as h:
        sch = Schedules(h.settings, h.store, clock, admin_policy=Admins())
        app = AppContext(settings=h.settings, store=h.store, configs=h.configs,
                         loader=ExperimentLoader(h.settings.allowed_packages),
                         scheduler=h.sched, events=h.events, started_mono=0.0,
                         schedules=sch)
        asleep = sch.asleep()
        await sch.start(app)
        await asyncio.wait_for(asleep, 5)
        try:
            yield h, sch, app
        finally:
            await sch.stop()


async def step(sch: Schedules, clock: FakeClock, dt: float) -> None:
    """Advance the clock and wait (bounded) until the firing task is asleep again."""
    asleep = sch.asleep()
    clock.advance(dt)
    await asyncio.wait_for(asleep, 5)


def test_next_after_is_anchored_and_in_the_future():
    assert next_after(100.0, 10.0, 100.0) == 110.0
    assert next_after(100.0, 10.0, 99.0) == 110.0       # k >= 1
    assert next_after(100.0, 10.0, 155.0) == 160.0      # missed 5 periods: one step
    assert next_after(100.0, 10.0, 160.0) == 170.0      # strictly after now


async def test_fires_on_time_no_pile_up_and_records_skips(tmp_path):
    clock = FakeClock(T0)
    async with env(tmp_path, clock) as (h, sch, app):
        r = await sch.add(call(app, ALICE), add_params())
        sid = r["schedule_id"]
        assert r["next_fire"] == "2026-11-25T14:00:00+00:00" and r["last_job_id"] is None
        await step(sch, clock, 2 * H - 1)                # not yet
        assert h.executor.started.empty() and sch.items[sid].last_outcome is None
        await step(sch, clock, 1)                        # exactly on time
        job1 = await h.started()
        job = await h.store.get_job(job1)
        assert job.batch_id == f"SCHED-{sid}" and job.os_uid == ALICE.uid
        assert job.user == "alice" and job.experiment_class == "NoOpExperiment"
        [view] = await sch.list()
        assert view["last_job_id"] == job1 and view["last_job_status"] == "running"
        assert view["next_fire"] == "2026-11-25T16:00:00+00:00"
        await step(sch, clock, 2 * H)                    # job1 still running: skipped
        [view] = await sch.list()
        assert view["last_outcome"] == "skipped" and view["skips"] == 1
        assert job1 in view["last_message"] and view["last_job_id"] == job1
        assert h.executor.started.empty()
        h.executor.finish(job1)
        await h.final(job1)
        await step(sch, clock, 2 * H)                    # free again: a new job
        job2 = await h.started()
        assert job2 != job1
        fires = await sch.fires(sid, 10)
        assert [f["outcome"] for f in fires] == ["submitted", "skipped", "submitted"]
        assert fires[0]["job_id"] == job2 and fires[2]["job_id"] == job1
        h.executor.finish(job2)
        await h.final(job2)
        [view] = await sch.list()
        assert view["last_job_status"] == "completed"


async def test_catch_up_after_downtime_fires_once(tmp_path):
    clock = FakeClock(T0)
    h = Harness(tmp_path)
    async with env(tmp_path, clock, h) as (h, sch, app):
        sid = (await sch.add(call(app, ALICE), add_params()))["schedule_id"]
    # down for 9 h 30 min: 4 periods missed (14:00, 16:00, 18:00, 20:00)
    clock = FakeClock(T0 + 9.5 * H)
    async with env(tmp_path, clock, Harness(tmp_path)) as (h, sch, app):
        job = await h.started()                          # fired once at start ...
        assert (await h.store.get_job(job)).batch_id == f"SCHED-{sid}"
        [view] = await sch.list()
        assert view["next_fire"] == "2026-11-25T22:00:00+00:00"   # ... anchored, ahead
        assert [f["outcome"] for f in await sch.fires(sid, 10)] == ["submitted"]
        assert h.executor.started.empty()
        h.executor.finish(job)
        await h.final(job)


async def test_job_stored_but_firing_not_recorded_is_adopted_at_start(tmp_path):
    """labd died between the job's commit and the firing's: at start the job counts as
    the last firing (no second job for the same period, no pile-up behind it)."""
    clock = FakeClock(T0)
    async with env(tmp_path, clock, Harness(tmp_path)) as (h, sch, app):
        sid = (await sch.add(call(app, ALICE), add_params()))["schedule_id"]
        await sch.stop()
        clock.advance(2 * H)           # due; the job gets stored, then "the crash"
        orphan = await h.submit(ALICE, batch_id=f"SCHED-{sid}")
        assert await h.started() == orphan
        await h.store.write(Op("UPDATE jobs SET created_at = ? WHERE job_id = ?",
                               ("2026-11-25T14:00:00.5+00:00", orphan)))  # the fake time
    clock = FakeClock(T0 + 2 * H + 60)
    async with env(tmp_path, clock, Harness(tmp_path)) as (h, sch, app):
        [view] = await sch.list()
        assert view["last_job_id"] == orphan and view["last_outcome"] == "submitted"
        assert view["next_fire"] == "2026-11-25T16:00:00+00:00"
        assert h.executor.started.empty()
        assert [f["job_id"] for f in await sch.fires(sid, 5)] == [orphan]


async def test_pause_resume_remove_and_wake_on_change(tmp_path):
    clock = FakeClock(T0)
    async with env(tmp_path, clock) as (h, sch, app):
        c = call(app, ALICE)
        sid = (await sch.add(c, add_params(every_s=H)))["schedule_id"]
        r = await sch.pause(c, sid)
        assert r["paused"] and r["next_fire"] is None
        await step(sch, clock, 5.5 * H)  # nothing fires while paused
        assert h.executor.started.empty() and sch.items[sid].last_fire_at is None
        asleep = sch.asleep()
        r = await sch.resume(c, sid)       # missed periods are not fired: next one ahead
        await asyncio.wait_for(asleep, 5)  # the loop was woken and recomputed
        assert r["next_fire"] == "2026-11-25T18:00:00+00:00"
        assert h.executor.started.empty()
        # a schedule due now wakes the sleeping loop at once (no poll)
        start_now = clock.now()
        asleep = sch.asleep()
        sid2 = (await sch.add(c, add_params(every_s=H, start=start_now)))["schedule_id"]
        await asyncio.wait_for(asleep, 5)
        job = await h.started()
        assert (await h.store.get_job(job)).batch_id == f"SCHED-{sid2}"
        await sch.remove(c, sid)
        assert [s["schedule_id"] for s in await sch.list()] == [sid2]
        with pytest.raises(NotFound):
            await sch.pause(c, sid)
        h.executor.finish(job)
        await h.final(job)


async def test_ownership_and_validation_at_add(tmp_path):
    clock = FakeClock(T0)
    async with env(tmp_path, clock) as (h, sch, app):
        sid = (await sch.add(call(app, ALICE), add_params()))["schedule_id"]
        for action in (sch.pause, sch.resume, sch.remove):
            with pytest.raises(PermissionDenied, match="owner or an admin"):
                await action(call(app, BOB), sid)
        assert (await sch.pause(call(app, ROOT), sid))["paused"]   # an admin may
        assert (await sch.resume(call(app, ALICE), sid))["paused"] is False
        # refused at add, with the submit's own messages; nothing is stored
        with pytest.raises(Exception, match="NoSuchExperiment|no experiment|not found"):
            await sch.add(call(app, ALICE), add_params(experiment_class="NoSuchExperiment"))
        with pytest.raises(InvalidParams, match="value"):
            await sch.add(call(app, ALICE), add_params(experiment_config={"value": "x"}))
        with pytest.raises(PermissionDenied, match="above the cap"):
            await sch.add(call(app, ALICE), add_params(priority=500))
        with pytest.raises(InvalidParams, match="at least 60"):
            await sch.add(call(app, ALICE), add_params(every_s=5))
        with pytest.raises(InvalidParams, match="not_before"):
            await sch.add(call(app, ALICE),
                          add_params(not_before="2026-12-01T00:00:00+00:00"))
        assert [s["schedule_id"] for s in await sch.list()] == [sid]
        assert (await sch.add(call(app, ROOT), add_params(priority=500)))["params"][
            "priority"] == 500


async def test_firing_is_the_owners_submit(tmp_path):
    """A firing is checked again as its owner: an owner who lost admin cannot keep
    submitting above the cap; the failure is recorded and the schedule moves on."""
    clock = FakeClock(T0)
    admins = {0, 1000}

    class Changing:
        def is_admin(self, uid: int) -> bool:
            return uid in admins
    async with env(tmp_path, clock) as (h, sch, app):
        sch.admin_policy = Changing()
        owner = Peer(uid=1000, gid=1000, pid=1, username="alice", policy=Changing())
        sid = (await sch.add(call(app, owner), add_params(priority=500)))["schedule_id"]
        admins.discard(1000)
        await step(sch, clock, 2 * H)
        [view] = await sch.list()
        assert view["last_outcome"] == "failed" and "above the cap" in view["last_message"]
        assert view["next_fire"] == "2026-11-25T16:00:00+00:00"
        assert h.executor.started.empty()
        assert (await sch.fires(sid, 5))[0]["outcome"] == "failed"


# ---- real daemon: RPC, labctl, restart -------------------------------------------------
def labctl(d, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labd_client.labctl", "--socket",
                           str(d.socket), *args], capture_output=True, text=True, timeout=60)


def test_labctl_schedule_round_trip_and_restart(make_daemon):
    d = make_daemon()
    r = labctl(d, "schedule", "add", "--every", "2h",
               "experiments.diagnostics.noop.NoOpExperiment", "-p", "value=1.5",
               "--priority", "3", "--json")
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout)
    sid = added["schedule_id"]
    assert added["every_s"] == 7200 and added["params"]["priority"] == 3
    assert added["params"]["experiment_config"] == {"value": 1.5}
    next_fire = added["next_fire"]
    fire_at = datetime.fromisoformat(next_fire).timestamp()
    assert 7100 < fire_at - time.time() <= 7200
    r = labctl(d, "schedule", "list")
    assert r.returncode == 0 and "every 2h" in r.stdout and next_fire in r.stdout
    r = labctl(d, "schedule", "add", "--every", "2h", "NoSuchThing")
    assert r.returncode == 2 and "NoSuchThing" in r.stderr
    r = labctl(d, "schedule", "add", "--every", "2x", "x.NoOpExperiment")
    assert r.returncode == 2 and "period like" in r.stderr
    r = labctl(d, "schedule", "pause", str(sid), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["paused"] is True
    r = labctl(d, "schedule", "resume", str(sid), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["next_fire"] == next_fire
    r = labctl(d, "schedule", "pause", "999")
    assert r.returncode == 3 and "no schedule 999" in r.stderr

    assert d.terminate() == 0
    d.start()
    with Client(d.socket) as c:
        [s] = c.schedules()
        assert s["schedule_id"] == sid and s["next_fire"] == next_fire
        assert s["params"]["experiment_config"] == {"value": 1.5} and not s["paused"]
        # one due now fires at once through submit, as its owner, tagged with its ID
        start = datetime.now(timezone.utc).isoformat()
        s2 = c.schedule("NoOpExperiment", "experiments.diagnostics.noop", "1h",
                        {"value": 2.0}, start=start)
        assert s2["schedule_id"] == sid + 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            jobs = c.history(batch_id=f"SCHED-{s2['schedule_id']}")
            if jobs:
                break
            time.sleep(0.05)
        [job] = jobs
        assert c.wait(job.job_id, timeout=30).status == "completed"
        view = next(x for x in c.schedules() if x["schedule_id"] == s2["schedule_id"])
        assert view["last_job_id"] == job.job_id and view["last_job_status"] == "completed"
        [fire] = c.schedule_fires(s2["schedule_id"])
        assert fire["outcome"] == "submitted" and fire["job_id"] == job.job_id
        assert c.schedule_remove(sid) == {"schedule_id": sid, "removed": True}
        with pytest.raises(NotFound):
            c.schedule_remove(sid)
        with pytest.raises(InvalidParams, match="bogus_field: Extra inputs"):
            c.schedule("NoOpExperiment", "experiments.diagnostics.noop", "1h",
                       bogus_field=1)
        with pytest.raises(InvalidParams, match="update_main"):  # not a calibration
            c.schedule("NoOpExperiment", "experiments.diagnostics.noop", "1h",
                       update_main=True)
    r = labctl(d, "schedule", "list", "--json")
    assert [s["schedule_id"] for s in json.loads(r.stdout)["schedules"]] == [sid + 1]


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root to switch uid")
def test_other_accounts_cannot_change_your_schedule(make_daemon):
    """Identity from the kernel: another account may list but not change a schedule; its
    own schedule fires as itself; an admin may change anyone's."""
    from test_permissions import NOBODY, as_uid
    d = make_daemon(socket_mode=0o666)
    with Client(d.socket) as c:
        sid = c.schedule(NOOP["experiment_class"], NOOP["experiment_module"], "2h")[
            "schedule_id"]
    ref = {"schedule_id": sid}
    start = datetime.now(timezone.utc).isoformat()
    res = as_uid(NOBODY, d.socket, [
        ("schedule.pause", ref), ("schedule.remove", ref), ("schedule.list", {}),
        ("schedule.add", {"every_s": 3600, "start": start, "submit": NOOP}),
        ("schedule.add", {"every_s": 3600, "submit": {**NOOP, "priority": 500}})])
    for r in res[:2]:
        assert r["error"]["code"] == PermissionDenied.code
        assert "owner or an admin" in r["error"]["message"]
    assert [s["schedule_id"] for s in res[2]["result"]["schedules"]] == [sid]
    theirs = res[3]["result"]
    assert theirs["owner"] == "nobody" and theirs["schedule_id"] == sid + 1
    assert res[4]["error"]["code"] == PermissionDenied.code       # as a submit would be
    with Client(d.socket) as c:
        deadline = time.monotonic() + 30
        while not (jobs := c.history(batch_id=f"SCHED-{sid + 1}")) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        [job] = jobs
        assert job.os_user == "nobody"                          # fired as its owner
        assert c.schedule_pause(sid + 1)["paused"] is True      # root is an admin
        assert [s["schedule_id"] for s in c.schedules()] == [sid, sid + 1]
