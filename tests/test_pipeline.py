"""Pipelined jobs (#14): the board thread owns the hardware only while a job acquires; the
previous job's data are saved and fitted meanwhile, durably before it is `completed`."""
from __future__ import annotations

import subprocess
import sys
import time

import h5py

from labd.scheduler.states import RunPhase
from labd_client import Client
from sched_harness import ROOT, Harness

SLOW = ("SlowAnalysis", "labtest_experiments.faults")
NOOP = ("NoOpExperiment", "experiments.diagnostics.noop")


async def test_next_job_acquires_while_the_previous_is_analyzed(tmp_path):
    async with Harness(tmp_path) as h:
        a, b = await h.submit(), await h.submit()
        assert await h.started() == a
        h.executor.acquired(a)                   # a's acquisition ends ...
        assert await h.started() == b            # ... and b gets the board at once
        assert h.sched.active[a].phase == RunPhase.ANALYZING
        assert (await h.sched.get(a)).status == "running"
        h.executor.finish(b)
        assert (await h.final(b)).status == "completed"
        assert h.sched.active[a].phase == RunPhase.ANALYZING
        h.executor.finish(a)
        assert (await h.final(a)).status == "completed"


async def test_analysis_backlog_is_bounded(tmp_path, monkeypatch):
    from labd.scheduler import dispatcher
    MAX_ANALYZING = 8   # (4096 in labd: fits may fall far behind the board)
    monkeypatch.setattr(dispatcher, "MAX_ANALYZING", MAX_ANALYZING)
    async with Harness(tmp_path) as h:
        ids = [await h.submit() for _ in range(MAX_ANALYZING + 1)]
        for job_id in ids[:MAX_ANALYZING]:
            assert await h.started() == job_id
            h.executor.acquired(job_id)
        assert h.executor.started.empty()        # the board waits for a fit to finish
        h.executor.finish(ids[0])
        assert await h.started() == ids[-1]


async def test_prepared_jobs_reach_the_board_in_run_order(tmp_path, monkeypatch):
    """Each prepared job's fields are read from the database before the executor gets it;
    a later job whose reads finish first must not overtake (FIFO within a priority). It
    did, now and then: test_analysis_backlog_is_bounded failed 1 run in 5."""
    import asyncio
    from labd.scheduler.dispatcher import Dispatcher
    read = Dispatcher._spec
    first_may_read, second_read = asyncio.Event(), asyncio.Event()
    ids: list[str] = []

    async def spec(self, run):
        if run.job.job_id == ids[0]:
            await first_may_read.wait()
        out = await read(self, run)
        if run.job.job_id == ids[1]:
            second_read.set()
        return out
    monkeypatch.setattr(Dispatcher, "_spec", spec)
    async with Harness(tmp_path) as h:
        await h.sched.set_paused(ROOT, True)   # both queued, then taken together
        ids += [await h.submit(), await h.submit()]
        await h.sched.set_paused(ROOT, False)
        # the second job's reads may finish first (they did before the fix; now they wait
        # for the first job's turn): either way the board must get the first job first
        try:
            await asyncio.wait_for(second_read.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
        first_may_read.set()
        assert await h.started() == ids[0]
        h.executor.acquired(ids[0])
        assert await h.started() == ids[1]


def _until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_raw_data_durable_before_the_fit_and_the_board_free(make_daemon, tmp_path):
    d = make_daemon()
    flag = tmp_path / "fit-may-finish"
    with Client(d.socket) as c:
        slow = c.submit(*SLOW, {"flag": str(flag)})
        nxt = c.submit(*NOOP)
        assert c.wait(nxt, timeout=30).is_successful()   # ran while slow was fitted
        job = c.get(slow)
        assert (job.status, job.phase) == ("running", "analyzing")
        path = d.state_dir / "data" / slow.split("-")[1] / f"{slow}.h5"
        with h5py.File(path) as f:                        # raw data already durable
            assert f.attrs["analysis"] == "pending"
            assert list(f["avgi"][()]) == [0, 2, 4, 6]
        flag.touch()
        job = c.wait(slow, timeout=30)
        assert job.is_successful() and job.results == {"slope": 2.0}
        assert "fitted" in c.logs(slow)["text"]


def test_fits_far_behind_read_their_data_back_from_the_file(make_daemon):
    """Past fit_backlog_bytes a job waiting for its fit holds no data: its fit reads them
    from the saved file and gives what it gives with the data in memory."""
    results = []
    for limit in (64 * 1024 * 1024, 0):                 # held, then always read back
        d = make_daemon(mock_seed=3, fit_backlog_bytes=limit)
        with Client(d.socket) as c:
            job = c.wait(c.submit("T1Experiment", "experiments.single_qubit.t1",
                                  {"expts": 20, "reps": 10}), timeout=60)
            assert job.is_successful() and job.error_message is None, job.error_message
            results.append(job.results)
    assert results[0] == results[1] and results[0]["T1"] > 0


def test_a_fit_whose_log_cannot_be_reopened_still_runs(make_daemon, tmp_path):
    """A job waiting for its fit holds no open log; if the log cannot be opened again the
    fit runs all the same (the analysis thread must not die: every later fit waits on
    it)."""
    d = make_daemon()
    flag = tmp_path / "first-fit-may-finish"
    with Client(d.socket) as c:
        first = c.submit(*SLOW, {"flag": str(flag)})             # holds the analysis thread
        second = c.submit(*SLOW, {"flag": str(tmp_path)})        # (exists: fits at once)
        day = d.state_dir / "data" / second.split("-")[1]
        _until(lambda: (day / f"{second}.h5").exists())          # saved, waiting for its fit
        log = day / f"{second}.log"
        log.unlink()
        log.mkdir()                                              # cannot be opened
        flag.touch()
        assert c.wait(first, timeout=30).is_successful()
        job = c.wait(second, timeout=30)
        assert job.is_successful() and job.results == {"slope": 2.0}
        assert c.wait(c.submit(*SLOW, {"flag": str(tmp_path)}), timeout=30).is_successful()
    assert "cannot be reopened for the fit" in d.log()


def test_fit_threads_is_set_before_numpy_loads(make_daemon):
    """A fit's BLAS threads would take the cores the board thread needs: labd sets their
    number (fit_threads) in its environment before it loads numpy, which reads it once."""
    probe = subprocess.run([sys.executable, "-c", "import sys, labd.cli, labd.settings; "
                            "print('numpy' in sys.modules)"], capture_output=True, text=True,
                           check=True)
    assert probe.stdout.strip() == "False"
    d = make_daemon(fit_threads=3)
    with Client(d.socket) as c:
        job = c.wait(c.submit("FitThreads", "labtest_experiments.faults"), timeout=30)
        assert job.is_successful(), job.error_message
        assert c.load_data(job.job_id)["data"]["threads"][0] == 3.0


def test_kill_during_analysis_keeps_raw_data_and_says_so(make_daemon, tmp_path):
    d = make_daemon()
    with Client(d.socket) as c:
        slow = c.submit(*SLOW, {"flag": str(tmp_path / "never")})
        _until(lambda: "raw data saved" in c.logs(slow)["text"])  # now fitting
    d.kill()
    d.start()
    with Client(d.socket) as c:
        job = c.get(slow)
        assert job.status == "failed" and job.end_reason == "crash"
        assert job.error_message == "interrupted: daemon stopped during analysis; raw data saved"
        with h5py.File(job.data_file_path) as f:
            assert list(f["avgi"][()]) == [0, 2, 4, 6]


def test_sigterm_waits_for_the_analysis_and_records_it(make_daemon, tmp_path):
    d = make_daemon()
    flag = tmp_path / "fit-may-finish"
    with Client(d.socket) as c:
        slow = c.submit(*SLOW, {"flag": str(flag)})
        _until(lambda: "raw data saved" in c.logs(slow)["text"])  # now fitting
    d.proc.send_signal(15)
    _until(lambda: "stopping: no new jobs" in d.log())
    flag.touch()                                          # the fit ends while labd stops
    assert d.proc.wait(30) == 0
    d.start()
    with Client(d.socket) as c:
        assert c.get(slow).is_successful()


async def test_board_stats_while_the_board_thread_appends():
    """board_stats copies the gaps in one step: iterating the deque while the board thread
    appends raised "deque mutated during iteration" (an internal error mid-benchmark)."""
    import threading
    from types import SimpleNamespace
    from labd.api.params import NoParams
    from labd.api.queue import board_stats
    from labd.executor import BoardClock
    clock = BoardClock()
    clock.gaps.extend([0.001] * clock.gaps.maxlen)
    stop = threading.Event()

    def board() -> None:          # as the board thread: a gap per acquisition
        while not stop.is_set():
            clock.gaps.append(0.002)
    t = threading.Thread(target=board)
    t.start()
    call = SimpleNamespace(app=SimpleNamespace(scheduler=SimpleNamespace(
        executor=SimpleNamespace(clock=clock))))
    try:
        for _ in range(20):
            stats = await board_stats(call, NoParams())
            assert len(stats["idle_gaps_ms"]) == clock.gaps.maxlen
    finally:
        stop.set()
        t.join()


def test_each_job_log_starts_with_its_header(make_daemon):
    """The job's first log line names it, before anything the experiment logs on the board
    (the board thread writes it itself; only the daemon log's copy is left to its helper
    thread, with the time it was made)."""
    d = make_daemon(mock_speed=0)
    with Client(d.socket) as c:
        batch = c.submit_batch([{"experiment_class": "T1Experiment",
                                 "experiment_module": "experiments.single_qubit.t1",
                                 "experiment_config": {"expts": 10, "reps": 1}}] * 10)
        for job_id in batch["job_ids"]:
            assert c.wait(job_id, timeout=60).is_successful()
            lines = c.logs(job_id)["text"].splitlines()
            assert f"INFO labd.job: job {job_id}: experiments.single_qubit.t1." \
                   f"T1Experiment by " in lines[0], lines[:3]
            assert "T1Experiment on qubit 0" in lines[1], lines[:3]
    header = [line for line in d.log().splitlines() if "INFO labd.job: job JOB-" in line]
    assert len(header) == 10
