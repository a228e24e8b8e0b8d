"""Crash recovery and graceful shutdown with a real daemon process."""
from __future__ import annotations

import time

from labd_client import Client

SLEEP = ("SleepExperiment", "experiments.diagnostics.sleep")
NOOP = ("NoOpExperiment", "experiments.diagnostics.noop")


def _wait_status(c: Client, job_id: str, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.get(job_id).status == status:
            return
        time.sleep(0.02)
    raise AssertionError(f"{job_id} never became {status}")


def test_kill9_marks_running_interrupted_and_keeps_pending_order(make_daemon):
    d = make_daemon()
    with Client(d.socket) as c:
        running = c.submit(*SLEEP, {"seconds": 60, "steps": 600})
        _wait_status(c, running, "running")
        pending = [c.submit(*NOOP, priority=p) for p in (0, 3, 0, 3)]
    d.kill()
    d.start()
    with Client(d.socket) as c:
        job = c.get(running)
        assert job.status == "failed"
        assert job.error_message == "interrupted: daemon stopped during run"
        done = [c.wait(j, timeout=20) for j in pending]
        assert all(j.status == "completed" for j in done)
        order = [j.job_id for j in sorted(done, key=lambda j: j.started_at)]
        assert order == [pending[1], pending[3], pending[0], pending[2]]
        # the daily counter survived the crash: new IDs continue, never reuse
        new = c.submit(*NOOP)
        assert int(new.rsplit("-", 1)[1]) == int(pending[-1].rsplit("-", 1)[1]) + 1


def test_sigterm_stops_running_job_at_safe_point_and_keeps_queue(make_daemon):
    d = make_daemon()
    with Client(d.socket) as c:
        c.call("health")
        running = c.submit(*SLEEP, {"seconds": 60, "steps": 600})
        _wait_status(c, running, "running")
        pending = c.submit(*NOOP)
    t0 = time.monotonic()
    assert d.terminate() == 0
    assert time.monotonic() - t0 < 10
    assert not d.socket.exists()
    d.start()
    with Client(d.socket) as c:
        job = c.get(running)
        assert job.status == "failed"
        assert job.error_message.startswith("interrupted: daemon shut down during run")
        assert c.wait(pending, timeout=20).status == "completed"


def test_stuck_experiment_is_interrupted_then_next_job_runs(make_daemon):
    d = make_daemon(stop_grace_s=0.5)
    with Client(d.socket) as c:
        busy = c.submit("IgnoresStop", "labtest_experiments.faults", {"seconds": 120},
                        time_limit_s=0.5)
        nxt = c.submit(*NOOP)
        job = c.wait(busy, timeout=20)
        assert job.status == "failed"
        assert "time limit exceeded" in job.error_message
        assert "ignored the stop request and was interrupted" in job.error_message
        assert c.wait(nxt, timeout=20).status == "completed"


def test_sigterm_with_a_job_stuck_in_c_records_it_and_exits(make_daemon):
    """#15: a job stuck in a C call at SIGTERM: its outcome is recorded and labd exits
    (the stuck thread is abandoned) instead of waiting for systemd to kill it."""
    d = make_daemon(stop_grace_s=0.5)
    with Client(d.socket) as c:
        job_id = c.submit("StuckInC", "labtest_experiments.faults", {"seconds": 120})
        _wait_status(c, job_id, "running")
        deadline = time.monotonic() + 20
        while "busy" not in (c.health()["executor"] or ""):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    t0 = time.monotonic()
    assert d.terminate(timeout=60) == 0
    assert time.monotonic() - t0 < 10
    d.start()
    with Client(d.socket) as c:
        job = c.get(job_id)
        assert (job.status, job.end_reason) == ("failed", "stuck")
        assert job.error_message.startswith("interrupted: daemon shut down during run; the "
                                            "experiment is stuck")
