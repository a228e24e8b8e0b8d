"""A job that ignores its stop request is interrupted safely, hundreds of times in a row:
the daemon stays responsive, the board thread stays alive, SIGTERM still works (#11.7)."""
from __future__ import annotations

import time

from labd_client import Client

FAULTS = "labtest_experiments.faults"
CYCLES = 200


def _until(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_hundreds_of_cancels_of_a_job_that_logs_and_ignores_stop(make_daemon):
    d = make_daemon(stop_grace_s=0.1)
    with Client(d.socket) as c:
        for i in range(CYCLES):
            cls = "LogsIgnoringStop" if i % 2 == 0 else "IgnoresStop"
            job_id = c.submit(cls, FAULTS, {"seconds": 600})
            _until(lambda: c.logs(job_id)["text"])  # its loop runs (past any stop check)
            assert c.cancel(job_id)["status"] == "cancelling"
            job = c.wait(job_id, timeout=30)
            assert job.status == "cancelled", (i, job.error_message)
            assert "ignored the stop request and was interrupted" in job.error_message
        health = c.health()
        assert health["status"] == "ok" and health["executor"] == "idle", health
        assert c.wait(c.submit("NoOpExperiment", "experiments.diagnostics.noop"),
                      timeout=30).is_successful()
    t0 = time.monotonic()
    assert d.terminate(timeout=30) == 0
    assert time.monotonic() - t0 < 10
