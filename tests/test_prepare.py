"""Issue #14: the next job is prepared (loaded, validated, its programs compiled) while the
current one acquires, and the board takes it the moment it is free. A prepared job is still
pending: it is taken back, unstarted, when that is what its owner or the queue needs.

Driven step by step through the in-process scheduler (tests/sched_harness.py)."""
from __future__ import annotations

import json
from importlib import resources

import yaml
from sched_harness import ALICE, ROOT, Harness, wait_for_condition
from test_calibration import T1_UPDATE

from experiments.single_qubit import common
from experiments.single_qubit.t1 import T1Config, T1Experiment
from labd.executor import JobContext, Outcome
from labd.hardware.simulated import SimulatedBoard
from labd.scheduler.states import EndReason, RunPhase


async def test_the_next_job_is_prepared_while_the_current_one_acquires(tmp_path):
    async with Harness(tmp_path) as h:
        first, second = await h.submit(), await h.submit()
        assert await h.started() == first
        nxt = h.sched.dispatcher.next
        assert nxt is not None and nxt.job.job_id == second      # handed to the executor
        assert h.sched.active[second].phase == RunPhase.STARTING
        assert (await h.store.get_job(second)).status == "pending"  # not started yet
        assert h.sched.position(second) == 1
        h.executor.acquired(first)
        assert await h.started() == second                       # at once, no round trip
        assert (await h.store.get_job(second)).status == "running"


async def test_a_more_urgent_job_takes_the_place_of_the_prepared_one(tmp_path):
    async with Harness(tmp_path) as h:
        first, prepared = await h.submit(), await h.submit()
        assert await h.started() == first
        urgent = await h.submit(priority=5)
        assert h.sched.active[prepared].phase == RunPhase.QUEUED  # taken back, unstarted
        await wait_for_condition(lambda: h.sched.dispatcher.next is not None)
        assert h.sched.dispatcher.next.job.job_id == urgent
        h.executor.acquired(first)
        assert await h.started() == urgent
        h.executor.acquired(urgent)
        assert await h.started() == prepared                     # then it, once


def upcoming(h: Harness) -> list[str]:
    return [run.job.job_id for run in h.sched.dispatcher.upcoming]


async def test_jobs_prepared_ahead_keep_the_run_order(tmp_path):
    """The board's next jobs are prepared (PREPARE_AHEAD). A job that outranks only the
    second goes between them; taking back the first (held) takes back the ones after it
    too, so no prepared job ever overtakes one before it in the run order."""
    async with Harness(tmp_path) as h:
        first = await h.submit(priority=5)
        assert await h.started() == first
        a, b = await h.submit(priority=5), await h.submit(priority=0)
        await wait_for_condition(lambda: upcoming(h) == [a, b])
        assert [h.sched.position(j) for j in (a, b)] == [1, 2]
        u = await h.submit(priority=3)                             # outranks b, not a
        assert h.sched.active[b].phase == RunPhase.QUEUED          # b taken back
        await wait_for_condition(lambda: upcoming(h) == [a, u, b])  # b again, after u
        assert h.sched.position(b) == 3
        await h.sched.set_held(ALICE, a, True)
        await wait_for_condition(lambda: upcoming(h) == [u, b])    # u again, after a
        h.executor.finish(first)
        for job in (u, b):
            assert await h.started() == job
            h.executor.finish(job)
        await h.final(b)
        assert (await h.store.get_job(a)).status == "pending"      # still held


async def test_hold_and_cancel_of_the_prepared_job_act_on_a_pending_job(tmp_path):
    async with Harness(tmp_path) as h:
        first, held, cancelled = await h.submit(), await h.submit(), await h.submit()
        assert await h.started() == first
        assert h.sched.dispatcher.next.job.job_id == held
        reply = await h.sched.set_held(ALICE, held, True)
        assert reply["waiting_for"] == "held"
        assert h.sched.dispatcher.next.job.job_id == cancelled
        assert (await h.sched.cancel(ALICE, cancelled))["status"] == "cancelled"
        job = await h.final(cancelled)
        assert job.status == "cancelled" and "while pending" in job.error_message
        h.executor.acquired(first)
        assert h.executor.started.empty()                        # neither reached the board
        assert h.sched._pending_by_uid == {ALICE.uid: 1}


async def test_a_main_change_while_prepared_reprepares_with_the_new_main(tmp_path):
    """Every job runs with main as of its start: a push between prepare and start takes
    the prepared job back, and it is prepared again with the new version."""
    async with Harness(tmp_path) as h:
        first, job = await h.submit(), await h.submit()
        assert await h.started() == first
        old = h.sched.dispatcher.next.versions["hardware_config"]
        content = (await h.configs.pull("hardware_config"))["content"]
        new = (await h.configs.push("hardware_config", content + "\n# edited\n",
                                    by="alice"))["version_id"]
        assert new != old
        await wait_for_condition(lambda: h.sched.dispatcher.next is not None and
                                 h.sched.dispatcher.next.versions.get("hardware_config") == new)
        h.executor.acquired(first)
        assert await h.started() == job
        stored = await h.store.get_job(job)
        assert stored.config_versions["hardware_config"] == new


async def test_a_job_that_may_update_main_holds_back_the_next_one(tmp_path):
    """A calibration with update_main may replace main when it completes: the job after
    it is not prepared until that is decided and committed."""
    async with Harness(tmp_path) as h:
        cal = await h.submit(ROOT, update_main=True, calibration=T1_UPDATE)
        assert await h.started() == cal
        after = await h.submit()
        assert h.sched.dispatcher.next is None                   # not prepared meanwhile
        h.executor.acquired(cal)                                  # analyzing: still not
        assert h.sched.dispatcher.next is None
        h.executor.handles[cal].done.set_result(
            Outcome(EndReason.COMPLETED, results={"T1": 42.0, "T1_err": 0.1}))
        assert await h.started() == after
        updated = (await h.store.get_job(cal)).config_update
        stored = await h.store.get_job(after)
        assert updated["applied"]
        assert stored.config_versions["hardware_config"] == updated["version_id"]


def test_prepare_builds_the_program_off_the_board(monkeypatch, tmp_path):
    """prepare() compiles the first sweep's program; acquire() on the board reuses it (and
    a second identical job reuses it too), and prepare never touches the hardware."""
    soccfg = json.loads((resources.files("labd.defaults") / "soccfg_zcu216.json").read_text())
    hw = yaml.safe_load((resources.files("labd.defaults") / "hardware_config.yml").read_text())
    built: list[type] = []
    real_init = common.QubitProgram.__init__

    def counting_init(self, *a, **kw):
        built.append(type(self))
        real_init(self, *a, **kw)
    monkeypatch.setattr(common.QubitProgram, "__init__", counting_init)
    monkeypatch.setattr(common, "_PROGRAMS", type(common._PROGRAMS)())
    ctx = JobContext("JOB-1", SimulatedBoard(soccfg), lambda *a: None)
    ctx.hardware_config, ctx.config_key = hw, (("hardware_config", "sha-1"),)
    exp = T1Experiment(ctx, T1Config(reps=10, expts=20))
    exp.prepare()                # outside the board stage: a board call would raise
    assert len(built) == 1
    ctx.board_stage = True
    data = exp.acquire()
    assert len(built) == 1 and len(data["avgi"]) == 20
    again = T1Experiment(ctx, T1Config(reps=10, expts=20))
    again.prepare()
    again.acquire()
    assert len(built) == 1                          # same inputs: compiled once
    T1Experiment(ctx, T1Config(reps=11, expts=20)).prepare()
    assert len(built) == 2                          # other inputs: its own program
