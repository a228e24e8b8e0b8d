"""Races in the scheduler core, each driven step by step (gates on store writes, a fake
board the test finishes): a check, an await on the database and an action must never
interleave with another caller's."""
from __future__ import annotations

import asyncio
import gc
import sqlite3

import pytest

from labd_client.protocol import Conflict
from labd.scheduler.states import EndReason, RunPhase
from labd.store import PreconditionFailed
from sched_harness import ALICE, ROOT, Harness, wait_for_condition


def sql_starts(prefix: str):
    return lambda sql: sql.startswith(prefix)


async def test_hold_racing_the_dispatcher(tmp_path):
    """Issue #11.1: while hold's write is in flight the board frees up; the dispatcher
    must not start the job being held, its quota is released once, and the reply is
    true."""
    async with Harness(tmp_path) as h:
        first = await h.submit()
        assert await h.started() == first
        job = await h.submit()
        reached, release = h.store.gate(sql_starts("UPDATE jobs SET held"))
        hold = asyncio.create_task(h.sched.set_held(ALICE, job, True))
        await reached.wait()                      # hold is awaiting its commit ...
        h.executor.finish(first)                  # ... and the board becomes free
        await h.final(first)
        assert h.sched.dispatcher.running is None
        release.set()
        reply = await hold
        assert reply["held"] and reply["waiting_for"] == "held"
        assert h.executor.started.empty()        # the held job never reached the board
        assert (await h.store.get_job(job)).held
        assert h.sched._pending_by_uid == {ALICE.uid: 1}
        await h.sched.set_held(ALICE, job, False)
        assert await h.started() == job
        assert h.sched._pending_by_uid == {}


async def test_hold_of_a_job_that_just_started_is_refused(tmp_path):
    async with Harness(tmp_path) as h:
        job = await h.submit()
        assert await h.started() == job
        with pytest.raises(Conflict, match="not pending"):
            await h.sched.set_held(ALICE, job, True)
        h.executor.finish(job)
        assert (await h.final(job)).status == "completed"


async def test_dependency_finishing_while_its_outcome_commits(tmp_path):
    """Issue #11.2: a job submitted `after` a job whose outcome is being committed must
    run once that commit lands (today it waited until a restart)."""
    async with Harness(tmp_path) as h:
        dep = await h.submit()
        assert await h.started() == dep
        reached, release = h.store.gate(sql_starts("UPDATE jobs SET status=?, end_reason"))
        h.executor.finish(dep)
        await reached.wait()                      # dep's outcome is known, not stored
        assert h.sched.active[dep].phase == RunPhase.FINISHING
        later = await h.submit(after_job=dep)
        assert h.sched.active[later].phase == RunPhase.WAITING
        release.set()
        assert await h.started() == later


async def test_dependency_ending_while_the_submit_commits(tmp_path):
    """The other order: the dependency's outcome lands while the new job's INSERT is in
    flight; the new job is decided from the outcome, not from a stale read."""
    async with Harness(tmp_path) as h:
        dep = await h.submit()
        assert await h.started() == dep
        reached, release = h.store.gate(sql_starts("INSERT INTO jobs"))
        submit = asyncio.create_task(h.submit(after_job=dep))
        await reached.wait()
        h.executor.finish(dep, EndReason.ERROR)
        assert (await h.final(dep)).status == "failed"
        release.set()
        later = await submit
        job = await h.final(later)
        assert job.status == "cancelled" and job.end_reason == "dependency"
        assert job.error_message == f"cancelled: dependency {dep} failed"


async def test_claim_of_a_job_changed_behind_the_daemon_does_not_run_it(tmp_path):
    """Issue #11.10: the claim is conditional and checked. Another process takes the job
    while its claim commits (two daemons on one state dir ran jobs twice): the UPDATE
    changes no row, so the job is stopped at once (the board took it the moment it was
    free, #14), nothing of it is saved or recorded here, and the next job runs."""
    async with Harness(tmp_path) as h:
        reached, release = h.store.gate(sql_starts("UPDATE jobs SET status='running'"))
        job = await h.submit()
        assert await h.started(recorded=False) == job
        await reached.wait()                     # the claim read it as pending ...
        with sqlite3.connect(h.settings.db_path) as other:  # ... another process takes it
            other.execute("UPDATE jobs SET status='running', error_message='other' "
                          "WHERE job_id=?", (job,))
        release.set()
        ctx = h.executor.handles[job].ctx
        await wait_for_condition(lambda: ctx.stop_kind is not None)
        assert "could not be recorded" in ctx.stop_reason
        marker = await h.submit()
        h.executor.finish(job, EndReason.SHUTDOWN)  # the board honours the stop
        assert await h.started() == marker       # the taken job is not run again here
        assert job not in h.sched.active
        row = await h.store.get_job(job)         # the other process's record is untouched
        assert row.status == "running" and row.error_message == "other"


async def test_a_failing_caller_does_not_fail_the_others_in_its_group(tmp_path):
    """Issue #11.4: one statement that fails (here a duplicate key) rolls back only its own
    caller; the others in the same group commit."""
    async with Harness(tmp_path) as h:
        await h.store.write(("INSERT INTO daemon_state(key, value) VALUES ('a', '1')",))
        commits = h.store.commits
        ok1 = asyncio.ensure_future(h.store.write(
            ("INSERT INTO daemon_state(key, value) VALUES ('b', '1')",)))
        bad = asyncio.ensure_future(h.store.write(
            ("INSERT INTO daemon_state(key, value) VALUES ('a', '2')",)))
        ok2 = asyncio.ensure_future(h.store.write(
            ("INSERT INTO daemon_state(key, value) VALUES ('c', '1')",)))
        results = await asyncio.gather(ok1, bad, ok2, return_exceptions=True)
        assert results[0] is None and results[2] is None
        assert "UNIQUE" in str(results[1])
        assert await h.store.get_state("b") == "1" and await h.store.get_state("c") == "1"
        assert await h.store.get_state("a") == "1"
        assert h.store.commits > commits


async def test_a_group_after_a_lone_autocommitted_write_is_one_transaction(tmp_path):
    """A lone unconditional statement commits in its own round trip (autocommit mode); the
    next group is one transaction again: its failed compare-and-set undoes its insert."""
    async with Harness(tmp_path) as h:
        await h.store.write(("INSERT INTO daemon_state(key, value) VALUES ('a', '1')",))
        with pytest.raises(PreconditionFailed):
            await h.store.write(("INSERT INTO daemon_state(key, value) VALUES ('b', '1')",),
                                ("UPDATE daemon_state SET value = '2' WHERE key = 'x'", (), 1))
        assert await h.store.get_state("a") == "1"
        assert await h.store.get_state("b") is None


async def until(cond, timeout: float = 10.0) -> None:
    """Wait (bounded) for an observable condition of the daemon's own loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_an_outcome_is_retried_until_it_can_be_stored(tmp_path):
    """Issue #11.4 / #15: a FINISH that the database refuses is retried; the job never
    shows as running meanwhile, and its waiters resolve once it is stored."""
    async with Harness(tmp_path) as h:
        job = await h.submit()
        assert await h.started() == job
        refuse = {"on": True}

        def authorizer(action, table, *_):  # the database refuses updates of jobs
            return sqlite3.SQLITE_DENY if refuse["on"] and action == sqlite3.SQLITE_UPDATE \
                and table == "jobs" else sqlite3.SQLITE_OK
        await h.store._w.set_authorizer(authorizer)
        waiter = asyncio.ensure_future(h.final(job))
        h.executor.finish(job)
        await until(lambda: job in h.sched.states.unrecorded)
        shown = await h.sched.get(job)  # its outcome, marked as not yet safe
        assert shown.status == "completed" and shown.phase == "finishing"
        assert "not stored yet" in shown.error_message
        assert not waiter.done()
        refuse["on"] = False
        assert (await waiter).status == "completed"
        assert h.sched.states.unrecorded == {}


async def test_pending_records_are_outside_the_cyclic_gc(tmp_path):
    """Issue #11.5: no gc.freeze of the whole heap; only the (atomic-valued) pending-job
    records are untracked, so nothing else leaks into a permanent generation."""
    async with Harness(tmp_path, max_pending_per_user=5000) as h:
        await h.sched.set_paused(ROOT, True)
        ids = await h.sched.enqueue(ALICE, [h.job() for _ in range(1500)])
        assert gc.get_freeze_count() == 0
        assert not any(gc.is_tracked(h.sched.active[i]) for i in ids)
