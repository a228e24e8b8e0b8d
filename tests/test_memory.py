"""#15: memory returns after work is drained. A gc.freeze() after each 1,000-job batch kept
whatever cyclic garbage-to-be was alive at that moment (a running job's data) forever."""
from __future__ import annotations

import time

from labd_client import Client

NOOP = {"experiment_class": "NoOpExperiment", "experiment_module": "experiments.diagnostics.noop"}
HOG = ("CyclicHog", "labtest_experiments.faults")


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_rss_returns_after_batches_are_drained(make_daemon):
    d = make_daemon()
    levels = []
    with Client(d.socket) as c:
        for _ in range(12):
            hog = c.submit(*HOG, {"size_mb": 20})
            deadline = time.monotonic() + 30
            while c.get(hog).status != "running":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            batch = c.submit_batch([NOOP] * 1000)   # 1,000 jobs queued while it runs
            assert len(c.cancel_batch(batch["batch_id"])["cancelled"]) == 1000
            c.cancel(hog)
            assert c.wait(hog, timeout=30).status == "cancelled"
            levels.append(rss_mb(d.proc.pid))
        assert c.health()["pending"] == 0
    assert levels[-1] <= 1.10 * levels[2], levels
