"""Preemption (issue #16). The decision logic step by step with the in-process scheduler
(fake board, no sleeps); the mechanism (safe points, checkpoints, identical data, kill -9,
code changes, SIGTERM, labctl) with a real daemon and the seeded mock board."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from labd_client.protocol import Conflict, PermissionDenied
from labd.scheduler.states import RunPhase
from sched_harness import ALICE, ROOT, Harness, wait_for_condition


def harness(tmp_path, **settings) -> Harness:
    h = Harness(tmp_path, **settings)
    h.executor.safe_points = True
    return h


def asked(h: Harness, job_id: str) -> str | None:
    """Who the running job was asked to yield to (None: not asked)."""
    ctx = h.executor.handles[job_id].ctx
    return ctx.safe.requested_by if ctx.safe.requested else None


async def test_margin_decides_and_the_urgent_job_takes_the_board(tmp_path):
    async with harness(tmp_path) as h:
        low = await h.submit(priority=0)
        assert await h.started() == low
        near = await h.submit(priority=9)          # below the margin (10)
        assert asked(h, low) is None
        urgent = await h.submit(priority=10)
        assert asked(h, low) == urgent
        # the urgent job is the prepared one: the board takes it once the other yields
        await wait_for_condition(lambda: h.sched.dispatcher.next is not None and
                                 h.sched.dispatcher.next.job.job_id == urgent)
        events = [e for e in h.log if e.get("job_id") == low]
        assert any(e.get("phase") == "preempting" for e in events)
        h.executor.yielded(low)
        assert await h.started() == urgent
        await wait_for_condition(lambda: h.sched.active[low].phase == RunPhase.PREEMPTED)
        job = await h.sched.get(low)
        assert job.status == "pending" and job.phase == "preempted"
        assert job.preempted_by == urgent and job.preempted_at and job.preemptions == 1
        ev = [e for e in h.log if e.get("job_id") == low and e.get("phase") == "preempted"]
        assert ev and ev[-1]["preempted_by"] == urgent and ev[-1]["status"] == "pending"
        # priority first: `near` (9) goes before the preempted job (0)
        h.executor.finish(urgent)
        assert await h.started() == near
        h.executor.finish(near)
        assert await h.started() == low                 # resumes
        assert h.executor.handles[low].spec.resume_log
        h.executor.finish(low)
        assert (await h.final(low)).status == "completed"


async def test_preempted_job_goes_to_the_head_of_its_priority(tmp_path):
    async with harness(tmp_path) as h:
        a = await h.submit(priority=0)
        assert await h.started() == a
        b = await h.submit(priority=0)
        u = await h.submit(priority=20)
        h.executor.yielded(a)
        assert await h.started() == u
        # pending again and the first in line: it is the one prepared for the board
        await wait_for_condition(lambda: h.sched.dispatcher.next is not None and
                                 h.sched.dispatcher.next.job.job_id == a)
        c = await h.submit(priority=0)
        order = ([h.sched.dispatcher.next.job.job_id] if h.sched.dispatcher.next else []) \
            + [pj.job_id for pj in h.sched.queue.ordered()]
        assert order == [a, b, c]
        assert h.sched.position(a) == 1
        h.executor.finish(u)
        assert await h.started() == a
        h.executor.finish(a)
        assert await h.started() == b
        h.executor.finish(b)
        assert await h.started() == c
        h.executor.finish(c)
        await h.final(c)


async def test_opt_out_only_an_admin_preempts(tmp_path):
    async with harness(tmp_path) as h:
        job = await h.submit(priority=0, preemptible=False)
        assert await h.started() == job
        assert not (await h.store.get_job(job)).preemptible
        urgent = await h.submit(priority=100)
        assert asked(h, job) is None
        with pytest.raises(PermissionDenied):
            await h.sched.preempt(ALICE, job)
        reply = await h.sched.preempt(ROOT, job)
        assert reply["status"] == "preempting" and asked(h, job).startswith("root")
        with pytest.raises(Conflict, match="not running"):
            await h.sched.preempt(ROOT, urgent)
        h.executor.yielded(job)
        assert await h.started() == urgent
        h.executor.finish(urgent)
        assert await h.started() == job
        h.executor.finish(job)
        await h.final(job)


async def test_no_safe_points_no_preemption(tmp_path):
    async with Harness(tmp_path) as h:     # the fake board gives no job safe points
        job = await h.submit(priority=0)
        assert await h.started() == job
        await h.submit(priority=100)
        assert h.executor.handles[job].ctx.safe is None
        with pytest.raises(Conflict, match="no safe points"):
            await h.sched.preempt(ROOT, job)
        h.executor.finish(job)
        await h.final(job)


async def test_max_preemptions_no_starvation(tmp_path):
    async with harness(tmp_path, max_preemptions=2) as h:
        job = await h.submit(priority=0)
        assert await h.started() == job
        for n in (1, 2):
            urgent = await h.submit(priority=50)
            assert asked(h, job) == urgent
            h.executor.yielded(job)
            assert await h.started() == urgent
            h.executor.finish(urgent)
            assert await h.started() == job
            await wait_for_condition(lambda: h.sched.running is not None)
            assert (await h.store.get_job(job)).preemptions == n
        third = await h.submit(priority=50)
        assert asked(h, job) is None             # preempted twice: runs to its end
        h.executor.finish(job)
        assert await h.started() == third
        h.executor.finish(third)
        await h.final(third)


async def test_resume_keeps_the_config_versions_it_started_with(tmp_path):
    async with harness(tmp_path) as h:
        v1 = (await h.configs.push("hardware_config", "a: 1\n", by="root"))["version_id"]
        job = await h.submit(priority=0)
        assert await h.started() == job
        urgent = await h.submit(priority=10)
        h.executor.yielded(job)
        assert await h.started() == urgent
        # a calibration (or a push) changes main while the job is preempted
        v2 = (await h.configs.push("hardware_config", "a: 2\n", by="root"))["version_id"]
        assert v2 != v1
        h.executor.finish(urgent)
        assert await h.started() == job
        spec = h.executor.handles[job].spec
        assert spec.configs["hardware_config"]["version_id"] == v1
        row = await h.store.get_job_row(job)
        assert json.loads(row["resume_versions"])["hardware_config"] == v1
        assert json.loads(row["config_versions"])["hardware_config"] == v1
        # a later main change does not take the resumed job back either
        other = await h.submit(priority=0)
        await h.configs.push("hardware_config", "a: 3\n", by="root")
        h.executor.finish(job)
        assert await h.started() == other
        h.executor.finish(other)
        await h.final(other)


async def test_cancel_a_preempted_job(tmp_path):
    async with harness(tmp_path) as h:
        job = await h.submit(priority=0)
        assert await h.started() == job
        urgent = await h.submit(priority=10)
        h.executor.yielded(job)
        assert await h.started() == urgent
        await wait_for_condition(lambda: h.sched.active[job].preempted_at is not None)
        assert (await h.sched.cancel(ALICE, job))["status"] == "cancelled"
        assert (await h.final(job)).status == "cancelled"
        assert h.sched._pending_by_uid == {}
        h.executor.finish(urgent)
        await h.final(urgent)


async def test_restart_puts_a_preempted_job_at_the_head(tmp_path):
    async with harness(tmp_path) as h:
        a = await h.submit(priority=0)
        assert await h.started() == a
        u = await h.submit(priority=10)
        h.executor.yielded(a)
        assert await h.started() == u
        await wait_for_condition(lambda: h.sched.active[a].preempted_at is not None)
        await h.sched.set_paused(ROOT, True)      # takes it back from the board's hand
        assert h.sched.active[a].phase == RunPhase.PREEMPTED
        b = await h.submit(priority=0)
        h.executor.finish(u)
        await h.final(u)
    async with harness(tmp_path) as h:
        assert h.sched.active[a].phase == RunPhase.PREEMPTED
        assert [pj.job_id for pj in h.sched.queue.ordered()] == [a, b]
        await h.sched.set_paused(ROOT, False)
        assert await h.started() == a
        h.executor.finish(a)
        assert await h.started() == b
        h.executor.finish(b)
        await h.final(b)
