"""Chaos: kill -9 the daemon at random moments while 8 clients submit 2,000 jobs (some
long, some failing), restart it each time, then check that nothing acknowledged was lost
and nothing is inconsistent."""
from __future__ import annotations

import random
import threading
import time

import h5py

from labd_client import Client, LabdError

KINDS = [  # (weight, class, module, config)
    (70, "NoOpExperiment", "experiments.diagnostics.noop", {}),
    (15, "SleepExperiment", "experiments.diagnostics.sleep", {"seconds": 0.08, "steps": 2}),
    (10, "RaiseInAcquire", "labtest_experiments.faults", {}),
    (5, "RaiseInAnalyze", "labtest_experiments.faults", {}),
]
EXPECTED_FAILURES = ("interrupted: daemon stopped during run",
                     "interrupted: daemon stopped during analysis; raw data saved",
                     "ValueError: the sample holder is on fire")


def test_kill9_chaos_loses_nothing(make_daemon):
    d = make_daemon(stop_grace_s=0.5)
    acked: dict[str, tuple[str, str]] = {}  # job_id -> (submit tag, class)
    lock = threading.Lock()
    reused: list[str] = []

    def worker(i: int) -> None:
        rng = random.Random(i)
        with Client(d.socket, timeout=10) as c:
            n = attempt = 0
            while n < 250:
                _, cls, module, cfg = rng.choices(KINDS, weights=[k[0] for k in KINDS])[0]
                tag = f"w{i}-{n}-{attempt}"
                try:
                    job_id = c.submit(cls, module, cfg, user=tag)
                except LabdError:  # daemon down or restarting: not acknowledged, retry
                    attempt += 1
                    time.sleep(0.05)
                    continue
                with lock:
                    if job_id in acked:
                        reused.append(job_id)
                    acked[job_id] = (tag, cls)
                n += 1
                time.sleep(rng.uniform(0, 0.03))

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    rng = random.Random(99)
    kills = 0
    while kills < 12 or any(w.is_alive() for w in workers):
        time.sleep(rng.uniform(0.2, 0.8))
        if kills >= 12:
            continue
        d.kill()
        kills += 1
        d.start()
        if kills % 3 == 0:
            with Client(d.socket) as c:
                try:
                    mp = c.config_pull("multiphoton_config")["content"]
                    c.config_push("multiphoton_config", mp + f"# chaos {kills}\n")
                except LabdError:
                    pass
    for w in workers:
        w.join()
    assert kills >= 10 and not reused and len(acked) == 2000

    with Client(d.socket, timeout=120) as c:
        for job_id in acked:  # let the queue drain
            assert c.wait(job_id, timeout=120).is_done(), job_id
        page = c.call("history", limit=10000)
        rows = {j["job_id"]: j for j in page["jobs"]}
        assert page["next_cursor"] is None
        verify = c.config_verify()
        health = c.health()

    # every acknowledged submit exists, as that client submitted it (no ID reuse)
    for job_id, (tag, cls) in acked.items():
        assert rows[job_id]["user"] == tag and rows[job_id]["experiment_class"] == cls
    numbers = sorted(int(j.rsplit("-", 1)[1]) for j in rows)
    assert len(numbers) == len(set(numbers))
    # every job in exactly one valid, final state; failures say why
    interrupted = 0
    for j in rows.values():
        assert j["status"] in ("completed", "failed", "cancelled"), j
        if j["status"] == "failed":
            assert j["error_message"] in EXPECTED_FAILURES, j
            interrupted += j["end_reason"] == "crash"
            assert j["config_versions"], j  # linked even though it failed
        if j["status"] == "completed":
            with h5py.File(j["data_file_path"]) as f:
                assert f.attrs["job_id"] == j["job_id"]
    assert interrupted >= 1
    assert health["running"] is None and health["pending"] == 0
    # no partial HDF5 file under a final name, no temp file left behind
    out = d.state_dir / "data"
    for path in out.rglob("*.h5"):
        with h5py.File(path) as f:
            assert f.attrs["analysis"] in ("none", "pending", "done", "failed")
    assert not list(out.rglob("*.part"))
    assert verify["ok"] and verify["checked"] >= 4
