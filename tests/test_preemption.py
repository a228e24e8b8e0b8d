"""Preemption (issue #16). The decision logic step by step with the in-process scheduler
(fake board, no sleeps); the mechanism (safe points, checkpoints, identical data, kill -9,
code changes, SIGTERM, labctl) with a real daemon and the seeded mock board."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
        # pending again (and maybe prepared already, as the job after `near`)
        await wait_for_condition(lambda: h.sched.active[low].shown_phase() == "preempted")
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
        order = [run.job.job_id for run in h.sched.dispatcher.upcoming] \
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


async def _preempted(h: Harness) -> tuple[str, str]:
    """A job that started, then yielded the board to a more urgent one: (job, urgent)."""
    job = await h.submit(priority=0)
    assert await h.started() == job
    urgent = await h.submit(priority=10)
    h.executor.yielded(job)
    assert await h.started() == urgent
    return job, urgent


async def test_resume_keeps_the_config_versions_it_started_with(tmp_path):
    async with harness(tmp_path) as h:
        v1 = (await h.configs.push("hardware_config", "a: 1\n", by="root"))["version_id"]
        job, urgent = await _preempted(h)
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
        job, urgent = await _preempted(h)
        await wait_for_condition(lambda: h.sched.active[job].preempted_at is not None)
        assert (await h.sched.cancel(ALICE, job))["status"] == "cancelled"
        assert (await h.final(job)).status == "cancelled"
        assert h.sched._pending_by_uid == {}
        h.executor.finish(urgent)
        await h.final(urgent)


async def test_a_cancel_as_the_job_yields_the_board_is_not_lost(tmp_path):
    """The board thread has yielded (its checkpoint written) and the loop has not yet seen
    the acquisition end when the owner's cancel comes: the reply said "cancelling", so the
    job ends cancelled; it used to go back to the queue and resume."""
    async with harness(tmp_path) as h:
        low = await h.submit(priority=0)
        assert await h.started() == low
        urgent = await h.submit(priority=10)
        h.executor.yielded(low)
        assert (await h.sched.cancel(ALICE, low))["status"] == "cancelling"
        job = await h.final(low)
        assert job.status == "cancelled" and "as it yielded the board" in job.error_message
        assert await h.started() == urgent
        h.executor.finish(urgent)
        await h.final(urgent)
        assert h.sched.active == {} and h.executor.started.empty()


async def test_restart_puts_a_preempted_job_at_the_head(tmp_path):
    async with harness(tmp_path) as h:
        a, u = await _preempted(h)
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


# ---- a real daemon with the seeded mock board -------------------------------------------
T1 = ("T1Experiment", "experiments.single_qubit.t1")
SLEEP = ("SleepExperiment", "experiments.diagnostics.sleep")
NOOP = ("NoOpExperiment", "experiments.diagnostics.noop")
# 20 rounds of ~60 ms each on the mock board at mock_speed 0.1
T1_CFG = {"reps": 100, "expts": 24, "rounds": 20, "start": 0, "step": 2}
MOCK = {"mock_seed": 7, "mock_speed": 0.1}


def until(pred, timeout: float = 60.0, what: str = "condition"):
    """Bounded wait on a condition (polled: no event orders anything here)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.02)


def arrays(path: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("avgi", "avgq")}


def attrs(path: str) -> dict:
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def reference(c) -> dict[str, np.ndarray]:
    """The same T1, never interrupted."""
    job = c.wait(c.submit(*T1, T1_CFG), timeout=120)
    assert job.status == "completed", job.error_message
    assert attrs(job.data_file_path)["preemptions"] == 0
    return arrays(job.data_file_path)


def preempt_with(c, urgent: tuple, cfg: dict, at: float = 0.2,
                 t1: tuple = T1) -> tuple[str, str]:
    """Start the T1, let it take some rounds, then submit the urgent job; returns both IDs
    once the T1 is preempted."""
    job = c.submit(*t1, T1_CFG)
    until(lambda: (c.get(job).progress or 0) >= at, what="T1 progress")
    u = c.submit(*urgent, cfg, priority=10)
    if urgent == NOOP:   # over in a moment: the preemption is what is left of it
        until(lambda: c.get(job).preemptions, what="preemption")
    else:
        until(lambda: c.get(job).phase == "preempted", what="preemption")
    return job, u


def ckpt_of(d, job_id: str) -> Path:
    return d.state_dir / "data" / job_id.split("-")[1] / f"{job_id}.ckpt"


def test_preempted_job_resumes_with_identical_data(make_daemon):
    from labd_client import Client
    d = make_daemon(**MOCK)
    with Client(d.socket) as c:
        ref = reference(c)
        job, u = preempt_with(c, NOOP, {})
        a = c.get(job)
        assert a.preempted_by == u and a.preempted_at and a.status.value in (
            "pending", "running")
        done = c.wait(job, timeout=120)
        assert done.status == "completed", done.error_message
        assert done.preemptions == 1 and done.preempted_by == u
        urgent = c.get(u)
        assert urgent.status == "completed"
        got = arrays(done.data_file_path)
        assert np.array_equal(got["avgi"], ref["avgi"])
        assert np.array_equal(got["avgq"], ref["avgq"])
        meta = attrs(done.data_file_path)
        intervals = json.loads(meta["acquisitions"])
        assert len(intervals) == 2 and meta["preemptions"] == 1
        # the urgent job ran in the gap between the two intervals
        assert intervals[0][1] <= urgent.started_at <= intervals[1][0]
        assert not ckpt_of(d, job).exists()   # the data file holds it all now


def test_kill_9_while_preempted_and_while_resuming(make_daemon):
    from labd_client import Client
    d = make_daemon(**MOCK)
    with Client(d.socket) as c:
        ref = reference(c)
        job, u = preempt_with(c, SLEEP, {"seconds": 60})
        assert ckpt_of(d, job).exists()
    d.kill()                                  # while preempted
    d.start()
    with Client(d.socket) as c:
        assert c.get(u).end_reason == "crash"
        # resumes; killed again once it has taken more rounds (while resuming)
        log = Path(c.get(job).log_path)
        first = int(until(lambda: "continues at round" in log.read_text() and
                          log.read_text().split("continues at round ")[1].split()[0],
                          what="resume"))
        until(lambda: (c.get(job).progress or 0) >= (first + 3) / 20, what="new rounds")
    d.kill()
    d.start()
    with Client(d.socket) as c:
        done = c.wait(job, timeout=120)
        assert done.status == "completed", done.error_message
        got = arrays(done.data_file_path)
        assert np.array_equal(got["avgi"], ref["avgi"])
        assert np.array_equal(got["avgq"], ref["avgq"])
        assert len(json.loads(attrs(done.data_file_path)["acquisitions"])) == 3
        # no completed round was taken twice: the second resume went on from where the
        # killed one was (its journal), not from the preemption's checkpoint
        log = Path(done.log_path).read_text()
        at = [int(ln.split("continues at round ")[1].split()[0])
              for ln in log.splitlines() if "continues at round" in ln]
        assert len(at) == 2 and at[0] == first and at[1] >= at[0] + 2, at
        assert not ckpt_of(d, job).exists()
        assert not ckpt_of(d, job).with_name(ckpt_of(d, job).name + ".rounds").exists()


def test_checkpoint_journal_torn_record_and_old_generation(tmp_path):
    from labd.checkpoint import Checkpoint, journal_path
    path = tmp_path / "J.ckpt"
    ck = Checkpoint("m", "p", {"hardware_config": "V1"}, [], 3, 10, np.ones(4, complex),
                    [["t0", "t1"]])
    ck.save(path)
    j = journal_path(path)
    stale = Checkpoint.record(ck.generation - 1, "round", 0, 9, 10, np.zeros(4, complex),
                              ["x", "y"])
    r4 = Checkpoint.record(ck.generation, "round", 0, 4, 10, np.full(4, 4 + 0j), ["t2", "t3"])
    done = Checkpoint.record(ck.generation, "call", 0, 10, 10, np.full(4, 0.5 + 0j),
                             ["t2", "t4"])
    r1 = Checkpoint.record(ck.generation, "round", 1, 1, 10, np.full(4, 7 + 0j), ["t2", "t5"])
    j.write_bytes(stale + r4 + done + r1[:-3])           # the last one torn by a kill
    got = Checkpoint.load(path)
    assert len(got.completed) == 1 and np.array_equal(got.completed[0], np.full(4, 0.5))
    assert got.total is None and got.rounds_done == 0
    assert got.intervals == [["t0", "t1"], ["t2", "t4"]]
    j.write_bytes(stale + r4)
    got = Checkpoint.load(path)
    assert got.rounds_done == 4 and np.array_equal(got.total, np.full(4, 4 + 0j))
    ck.save(path)                                       # a new generation voids the journal
    assert not j.exists()


T1P = ("T1P", "preempt_exps.t1p")


def daemon_with_t1p(make_daemon, tmp_path) -> tuple[Any, Path]:
    """A daemon allowed a package of the test's own, ``preempt_exps``, whose module
    ``t1p`` (returned, for the test to edit) holds a T1."""
    pkg = tmp_path / "pkgs" / "preempt_exps"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    mod = pkg / "t1p.py"
    mod.write_text("from experiments.single_qubit.t1 import T1Experiment\n\n\n"
                   "class T1P(T1Experiment):\n    pass\n")
    d = make_daemon(start=False, allowed_packages=["experiments", "preempt_exps"], **MOCK)
    d.env_extra["PYTHONPATH_PREPEND"] = str(tmp_path / "pkgs")
    return d.start(), mod


def test_code_changed_while_preempted_fails_with_partial_data(make_daemon, tmp_path):
    from labd_client import Client
    d, mod = daemon_with_t1p(make_daemon, tmp_path)
    with Client(d.socket) as c:
        job, _ = preempt_with(c, SLEEP, {"seconds": 60}, t1=T1P)
    d.kill()
    mod.write_text(mod.read_text() + "    # edited while it was preempted\n")
    d.start()
    with Client(d.socket) as c:
        done = c.wait(job, timeout=60)
    assert done.status == "failed" and "code" in done.error_message \
        and "changed" in done.error_message and "partial data" in done.error_message
    with h5py.File(done.data_file_path, "r") as f:
        done_rounds, total = f["partial_rounds"][()]
        assert 0 < done_rounds < total == 20
        assert f["partial"].shape == (24,)
        assert "changed" in f.attrs["partial"]
    assert not ckpt_of(d, job).exists()       # the data file holds what it had


def test_taken_back_as_its_partial_data_are_saved_it_ends_the_same_way(make_daemon, tmp_path):
    """Its code changed while it was preempted, and a pause takes it back while it is being
    prepared: preparing saved its partial data and removed the checkpoint, and the outcome
    went with the job. Resumed, it ends the same way; it used to acquire all its rounds
    anew and then fail to save them onto its own data file."""
    from labd_client import Client
    d, mod = daemon_with_t1p(make_daemon, tmp_path)
    body = mod.read_text()
    gate, importing = tmp_path / "gate", tmp_path / "importing"
    with Client(d.socket) as c:
        job, urgent = preempt_with(c, SLEEP, {"seconds": 60}, t1=T1P)
        c.call("pause")
        c.cancel(urgent)
        c.wait(urgent, timeout=30)
        # the new code's import waits for the test: the pause lands while it is prepared
        mod.write_text(f"import os, time\nopen({str(importing)!r}, 'w').close()\n"
                       f"for _ in range(3000):\n    if os.path.exists({str(gate)!r}):\n"
                       f"        break\n    time.sleep(0.01)\n" + body)
        c.call("resume")
        until(importing.exists, what="the prepare thread importing the new code")
        c.call("pause")
        gate.touch()
        until(lambda: not ckpt_of(d, job).exists(), what="the partial data saved")
        c.call("resume")
        done = c.wait(job, timeout=60)
    assert done.status == "failed" and "partial data" in done.error_message, \
        done.error_message
    with h5py.File(done.data_file_path, "r") as f:
        assert "changed" in f.attrs["partial"]
        assert 0 < f["partial_rounds"][()][0] < 20


def test_sigterm_while_preempted_keeps_the_checkpoint_and_while_resuming_yields(
        make_daemon):
    from labd_client import Client
    d = make_daemon(**MOCK)
    with Client(d.socket) as c:
        ref = reference(c)
        job, u = preempt_with(c, SLEEP, {"seconds": 60})
    assert d.terminate() == 0
    assert ckpt_of(d, job).exists()
    d.start()
    with Client(d.socket) as c:
        assert c.get(u).end_reason == "shutdown"
        # resuming; a SIGTERM now makes it yield at its next safe point (a checkpoint,
        # pending again, not counted as a preemption) instead of failing it
        until(lambda: c.get(job).status.value == "running" and
              (c.get(job).progress or 0) > 0.5, what="resumed progress")
    assert d.terminate() == 0
    d.start()
    with Client(d.socket) as c:
        done = c.wait(job, timeout=120)
        assert done.status == "completed", done.error_message
        assert done.preemptions == 1 and done.preempted_by == "labd shutdown"
        assert np.array_equal(arrays(done.data_file_path)["avgi"], ref["avgi"])
        assert np.array_equal(arrays(done.data_file_path)["avgq"], ref["avgq"])
        assert len(json.loads(attrs(done.data_file_path)["acquisitions"])) == 3


def labctl(d, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "labd_client.labctl", "--socket", str(d.socket), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=d.environment(),
                          timeout=60)


def test_labctl_preempt_is_admin_only_and_experiments_say_preemptible(make_daemon):
    from labd_client import Client
    from test_permissions import NOBODY, as_uid
    d = make_daemon(**MOCK, socket_mode=0o666)
    out = labctl(d, "experiments")
    assert out.returncode == 0, out.stderr
    blocks = {b.split("\n", 1)[0].split()[0]: b for b in
              ("\n" + out.stdout).split("\nexperiments.")[1:]}
    assert "preemptible: yes" in blocks["single_qubit.t1.T1Experiment"]
    assert "preemptible: no" in blocks["diagnostics.sleep.SleepExperiment"]
    with Client(d.socket) as c:
        job = c.submit(*T1, T1_CFG, preemptible=False)
        until(lambda: (c.get(job).progress or 0) >= 0.1, what="progress")
        assert not c.get(job).preemptible
        c.submit(*NOOP, {}, priority=10)          # opted out: not preempted
        [res] = as_uid(NOBODY, d.socket, [("preempt", {"job_id": job})])
        assert "only an admin may preempt" in res["error"]["message"]
        assert (c.get(job).preemptions or 0) == 0
        out = labctl(d, "preempt", job)
        assert out.returncode == 0, out.stderr
        until(lambda: c.get(job).preemptions == 1, what="forced preemption")
        shown = labctl(d, "show", job).stdout
        assert "preempted" in shown
        done = c.wait(job, timeout=120)
        assert done.status == "completed" and done.preemptions == 1
        assert done.preempted_by.startswith("root")


class _StreamBoard:
    """A board that steps the rounds of one loaded program itself (as the Pyro board)."""

    def __init__(self) -> None:
        self.loads = 0
        self.closed = 0

    def acquire(self, prog, *, rounds, ctx, **kw):  # pragma: no cover - not used
        raise AssertionError("a streaming board is driven through acquire_rounds")

    def acquire_rounds(self, prog, *, rounds, ctx, **kw):
        self.loads += 1
        try:
            for r in range(rounds):
                ctx.check_stop()
                ctx.progress(r + 1, rounds)
                yield np.full(3, prog.next_value(), dtype=complex)
        finally:
            self.closed += 1


class _Prog:
    """Each round's value is its global round number (so a lost or doubled round shows)."""

    def __init__(self) -> None:
        self.n = 0

    def next_value(self) -> float:
        self.n += 1
        return float(self.n)


class _Ctx:
    def __init__(self) -> None:
        self.progress_calls: list[tuple[float, float]] = []

    def check_stop(self) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def progress(self, done, total) -> None:
        self.progress_calls.append((done, total))


def test_streaming_board_preempts_between_rounds_and_resumes(tmp_path):
    from labd.checkpoint import Checkpoint, Preempted, SafePoints
    path = tmp_path / "J.ckpt"
    board, prog, ctx = _StreamBoard(), _Prog(), _Ctx()
    safe = SafePoints(path, Checkpoint("m", "p", {}), resumed=False)
    safe.begin()

    class AskAfterThree(_Ctx):
        def progress(self, done, total):
            super().progress(done, total)
            if done >= 3:       # ask during round 3: it yields before round 4
                safe.request("urgent")
    with pytest.raises(Preempted):
        safe.acquire(board.acquire, ctx, prog, rounds=8, ctx_arg=AskAfterThree())
    assert board.loads == 1 and board.closed == 1        # the program's stepping stopped
    safe.durable.result(10)
    ck = Checkpoint.load(path)
    assert ck.rounds_done == 3 and np.array_equal(ck.total, np.full(3, 6 + 0j))  # 1+2+3
    # resume: a fresh run of the same program continues with round 4 (values 4..8 here,
    # as a deterministic board would give)
    prog.n = 3
    safe2 = SafePoints(path, ck, resumed=True)
    safe2.begin()
    out = safe2.acquire(board.acquire, ctx, prog, rounds=8, ctx_arg=_Ctx())
    assert np.array_equal(out, np.full(3, sum(range(1, 9)) / 8 + 0j))
    assert board.loads == 2 and board.closed == 2
    safe2.end()


def test_queue_view_shows_preempted_and_preempting():
    from labd_client.protocol import queue_rows
    from labd_client.views import format_queue
    from labd.api.queue import QUEUE_COLUMNS
    q = queue_rows({
        "running": {"job_id": "JOB-20261125-00002", "experiment_class": "T1Experiment",
                    "user": "bob", "progress": 0.5, "preempting_for": "JOB-20261125-00003"},
        "columns": list(QUEUE_COLUMNS), "total_pending": 1, "waiting": [], "paused": False,
        "pending": [[1, "JOB-20261125-00001", 0, "alice", "alice", "T1Experiment", None,
                     None, "preempted", "JOB-20261125-00002",
                     "2026-11-25T03:40:01.000000+00:00"]]})
    text = format_queue(q)
    assert "yielding the board to JOB-20261125-00003" in text
    assert "PREEMPTED by JOB-20261125-00002 since 03:40:01" in text


def test_two_chunk_sweep_replays_the_finished_chunk_without_hardware(make_daemon, tmp_path):
    """An experiment acquiring in two board.acquire calls (sweep chunks), preempted in the
    second: on resume the first is answered from the checkpoint, the second continues
    from its next round; the data equal an uninterrupted run's."""
    from labd_client import Client
    pkg = tmp_path / "pkgs" / "chunk_exps"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "two.py").write_text(
        "import numpy as np\n"
        "from experiments.single_qubit.t1 import T1Experiment\n\n\n"
        "class TwoChunkT1(T1Experiment):\n"
        "    def acquire(self):\n"
        "        a = super().acquire()\n"
        "        b = super().acquire()\n"
        "        return {k: np.concatenate([a[k], b[k]]) for k in a}\n")
    d = make_daemon(start=False, allowed_packages=["experiments", "chunk_exps"], **MOCK)
    d.env_extra["PYTHONPATH_PREPEND"] = str(tmp_path / "pkgs")
    d.start()
    exp = ("TwoChunkT1", "chunk_exps.two")
    with Client(d.socket) as c:
        ref = c.wait(c.submit(*exp, T1_CFG), timeout=120)
        assert ref.status == "completed", ref.error_message
        job = c.submit(*exp, T1_CFG)
        # the second chunk (progress restarts at 0 for it): wait until it is under way
        log = Path(until(lambda: c.get(job).log_path, what="log"))
        until(lambda: log.read_text().count("points x") >= 2 and
              0.2 <= (c.get(job).progress or 0) < 0.9, what="second chunk")
        c.submit(*NOOP, priority=10)
        done = c.wait(job, timeout=120)
        assert done.status == "completed" and done.preemptions == 1, done.error_message
        text = Path(done.log_path).read_text()
        assert "1 acquisitions replayed, acquisition 1 continues at round" in text
        for k in ("avgi", "avgq"):
            assert np.array_equal(arrays(done.data_file_path)[k],
                                  arrays(ref.data_file_path)[k])
