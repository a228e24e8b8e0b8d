"""History filters (issue #14) return exactly the jobs a plain filter over every row would, for
every combination of filters the API allows, also where created_at goes backwards in seq:
`since` bounds seq through created_max, the running max of created_at, so a job created
before an earlier-numbered one must still be found."""
from __future__ import annotations

import itertools
import random
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from labd.migrations import create
from labd.store import INSERT_JOB, job_row
from labd_client import Client

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
FILTERS = {"user": "u1", "os_user": "alice", "status": "failed",
           "experiment": "T1Experiment", "batch_id": "B1"}


def iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds")


def non_monotonic_times(n: int, rng: random.Random) -> list[datetime]:
    """A minute apart in seq order, except: the first job stamped 10 min ahead, a run of
    equal stamps, the clock stepped back 3 h for a while, one job stamped 1 h ahead (a clock
    corrected afterwards), and a block imported in shuffled order."""
    times = [T0 + timedelta(minutes=i) for i in range(n)]
    times[0] += timedelta(minutes=10)
    times[40:50] = [times[40]] * 10
    for i in range(60, 90):
        times[i] -= timedelta(hours=3)
    times[120] += timedelta(hours=1)
    block = times[190:230]
    rng.shuffle(block)
    times[190:230] = block
    return times


def fill(db_path: Path, times: list[datetime], rng: random.Random) -> list[dict]:
    """Finished jobs straight into a new database (as labd would have stored them)."""
    db = sqlite3.connect(db_path)
    create(db)
    jobs = []
    for i, t in enumerate(times):
        jobs.append({
            "job_id": f"JOB-20260301-{i + 1:05d}", "seq": i + 1,
            "status": rng.choice(["completed", "failed", "failed", "cancelled"]),
            "user": rng.choice(["u0", "u1"]), "os_user": rng.choice(["alice", "bob"]),
            "os_uid": 1000, "experiment_class": rng.choice(["T1Experiment", "NoOp"]),
            "experiment_module": "experiments.x", "experiment_config": {}, "priority": 0,
            "created_at": iso(t), "started_at": iso(t), "finished_at": iso(t),
            "batch_id": rng.choice([None, "B1"]), "held": 0, "end_reason": "completed"})
    db.executemany(INSERT_JOB, [job_row(j) for j in jobs])
    db.execute("INSERT INTO counters VALUES ('JOB', '20260301', ?)", (len(jobs),))
    db.commit()
    db.close()
    return jobs


def brute_force(jobs: list[dict], params: dict) -> list[str]:
    """Newest first, every job checked against every filter."""
    def keep(j: dict) -> bool:
        return (all(j["experiment_class" if k == "experiment" else k] == params[k]
                    for k in FILTERS if k in params)
                and ("since" not in params
                     or datetime.fromisoformat(j["created_at"]) >= params["since"])
                and ("cursor" not in params or j["seq"] < params["cursor"]))
    return [j["job_id"] for j in sorted(jobs, key=lambda j: -j["seq"]) if keep(j)]


def test_every_filter_combination_matches_a_brute_force_filter(make_daemon):
    rng = random.Random(14)
    n = 240
    times = non_monotonic_times(n, rng)
    assert times != sorted(times)
    d = make_daemon(start=False)
    d.state_dir.mkdir(parents=True)
    jobs = fill(d.state_dir / "labd.sqlite3", times, rng)
    d.start()
    sinces = [T0 - timedelta(days=1),                 # before every job
              times[5], times[40], times[50],         # below the first job's; equal stamps
              times[75],                              # inside the clock step back
              times[100], times[100] + timedelta(seconds=30),
              times[120], times[125],                 # the job stamped ahead; below it
              times[200],                             # a shuffled one
              max(times) + timedelta(seconds=1)]      # after every job
    cursors = [1, 101, 205, n + 1]
    checked = 0
    with Client(d.socket) as c:
        for k in range(len(FILTERS) + 1):
            for keys in itertools.combinations(FILTERS, k):
                base = {key: FILTERS[key] for key in keys}
                for since, cursor in itertools.product([None, *sinces], [None, *cursors]):
                    params = dict(base)
                    if since is not None:
                        params["since"] = since
                    if cursor is not None:
                        params["cursor"] = cursor
                    want = brute_force(jobs, params)
                    if since is not None:
                        params["since"] = iso(since)
                    for limit in (n, 3):
                        got = c.call("history", limit=limit, **params)["jobs"]
                        assert [j["job_id"] for j in got] == want[:limit], (params, limit)
                    checked += bool(want)
    assert checked > 500      # most combinations select jobs: the data exercises them


def test_jobs_submitted_after_a_job_stamped_ahead_keep_since_exact(make_daemon):
    """The daemon stamps created_max on its inserts itself: after a restart it continues
    from the stored rows' running max, so a job stamped ahead of the clock (before a clock
    correction) stays findable by `since` once newer-numbered jobs come in behind it."""
    ahead = datetime.now(timezone.utc) + timedelta(days=1)
    d = make_daemon(start=False)
    d.state_dir.mkdir(parents=True)
    db_path = d.state_dir / "labd.sqlite3"
    jobs = fill(db_path, [T0, ahead], random.Random(1))
    d.start()
    with Client(d.socket) as c:
        c.pause()
        new = [c.submit("NoOpExperiment", "experiments.diagnostics.noop") for _ in range(3)]
        got = c.call("history", since=iso(ahead - timedelta(hours=1)))["jobs"]
        assert [j["job_id"] for j in got] == [jobs[-1]["job_id"]]
        assert {j["job_id"] for j in c.call("history", limit=10)["jobs"]} >= set(new)
    d.close()
    db = sqlite3.connect(db_path)
    stamps = dict(db.execute("SELECT job_id, created_max FROM jobs"))
    db.close()
    assert [stamps[j] for j in new] == [iso(ahead)] * 3
