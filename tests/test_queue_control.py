"""Queue control: pause/resume, hold/release, priority changes, bulk cancel, retry,
dependencies and not-before times; ETAs; labctl watch and completion; notebook views."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from labd_client import Client, Conflict, InvalidParams
from test_permissions import NOBODY, as_uid

NOOP = ("NoOpExperiment", "experiments.diagnostics.noop")
SLEEP = ("SleepExperiment", "experiments.diagnostics.sleep")


def test_pause_survives_restart_and_resume_runs(make_daemon):
    d = make_daemon(socket_mode=0o666)
    [res] = as_uid(NOBODY, d.socket, [("pause", {})])
    assert res["error"]["code"] == -32002 and "only an admin" in res["error"]["message"]
    with Client(d.socket) as c:
        assert c.pause() == {"paused": True}
        job_id = c.submit(*NOOP)
        assert c.wait(job_id, timeout=0.5).status == "pending"
        assert c.health()["paused"] and c.health()["status"] == "paused"
    d.restart()
    with Client(d.socket) as c:
        assert c.queue()["paused"]
        assert c.get(job_id).status == "pending"
        c.resume()
        assert c.wait(job_id, timeout=20).status == "completed"


def test_hold_release_keeps_fifo_place(client):
    client.pause()
    try:
        a, b, c_ = (client.submit(*NOOP) for _ in range(3))
        assert client.hold(b)["held"]
        q = client.queue()
        assert [j["job_id"] for j in q["pending"]][-2:] == [a, c_]
        assert q["waiting"][0]["job_id"] == b and q["waiting"][0]["waiting_for"] == "held"
        r = client.release(b)
        assert r["held"] is False and r["position"] is not None
        order = [j["job_id"] for j in client.queue()["pending"]]
        assert order.index(a) < order.index(b) < order.index(c_)
        with pytest.raises(Conflict):
            client.hold("JOB-20000101-00001")
    finally:
        client.resume()
    for j in (a, b, c_):
        assert client.wait(j, timeout=20).is_successful()


def test_priority_owner_lowers_admin_raises(make_daemon):
    d = make_daemon(socket_mode=0o666)
    with Client(d.socket) as c:
        c.pause()
    res = as_uid(NOBODY, d.socket, [("submit", {"experiment_class": NOOP[0],
                                                "experiment_module": NOOP[1], "priority": 5}),
                                    ("submit", {"experiment_class": NOOP[0],
                                                "experiment_module": NOOP[1], "priority": 5})])
    first, second = (r["result"]["job_id"] for r in res)
    res = as_uid(NOBODY, d.socket, [("set_priority", {"job_id": first, "priority": 1}),
                                    ("set_priority", {"job_id": first, "priority": 3})])
    assert res[0]["result"]["priority"] == 1 and res[0]["result"]["position"] == 2
    assert res[1]["error"]["code"] == -32002 and "only an admin may raise" in \
        res[1]["error"]["message"]
    with Client(d.socket) as c:
        assert c.set_priority(first, 5)["position"] == 1  # back in its original FIFO place
        assert [j["job_id"] for j in c.queue()["pending"]] == [first, second]
        with pytest.raises(InvalidParams, match="priority must be between"):
            c.set_priority(first, 10**6)


def test_cancel_user_and_retry(client):
    client.pause()
    try:
        mine = [client.submit(*NOOP, user="cu") for _ in range(3)]
        r = client.cancel_user("root")
        assert set(mine) <= set(r["cancelled"]) and not r["refused"]
    finally:
        client.resume()
    assert all(client.get(j).status == "cancelled" for j in mine)
    new = client.retry(mine[0])
    job = client.wait(new, timeout=20)
    assert job.is_successful() and job.raw["retry_of"] == mine[0]
    with pytest.raises(Conflict, match="only a failed or cancelled job"):
        client.retry(new)


def test_dependencies_run_in_order_or_cancel(client):
    first = client.submit(*SLEEP, {"seconds": 0.5, "steps": 5})
    then = client.submit(*NOOP, after=first)
    q = client.queue()
    assert any(w["job_id"] == then and w["waiting_for"] == f"after {first}"
               for w in q["waiting"])
    a, b = client.wait(first, timeout=20), client.wait(then, timeout=20)
    assert a.is_successful() and b.is_successful() and b.started_at > a.finished_at
    failing = client.submit(*SLEEP, {"seconds": 0.2, "fail": True})
    dep = client.submit(*NOOP, after=failing)
    dep2 = client.submit(*NOOP, after=dep)
    assert client.wait(failing, timeout=20).status == "failed"
    j = client.wait(dep, timeout=20)
    assert j.status == "cancelled" and j.error_message == \
        f"cancelled: dependency {failing} failed"
    assert client.wait(dep2, timeout=20).error_message == \
        f"cancelled: dependency {dep} cancelled"
    done = client.submit(*NOOP, after=first)  # already completed: runs at once
    assert client.wait(done, timeout=20).is_successful()
    with pytest.raises(InvalidParams, match="after: no job"):
        client.submit(*NOOP, after="JOB-20000101-00001")


def test_not_before(client):
    start = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    job_id = client.submit(*NOOP, not_before=start.isoformat())
    assert client.wait(job_id, timeout=0.5).status == "pending"
    job = client.wait(job_id, timeout=20)
    assert job.is_successful() and datetime.fromisoformat(job.started_at) >= start
    with pytest.raises(InvalidParams, match="give a timezone"):
        client.submit(*NOOP, not_before="2030-01-01T00:00:00")


def test_waiting_jobs_survive_restart(make_daemon):
    d = make_daemon()
    with Client(d.socket) as c:
        held = c.submit(*NOOP, hold=True)
        blocker = c.submit(*SLEEP, {"seconds": 60})
        after = c.submit(*NOOP, after=blocker)
        deadline = time.monotonic() + 20  # the restart must interrupt a running blocker
        while c.get(blocker).status != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
    d.restart()  # the blocker is interrupted, so its dependent is cancelled
    with Client(d.socket) as c:
        assert c.get(blocker).status == "failed"
        assert c.wait(after, timeout=20).status == "cancelled"
        assert c.queue()["waiting"][0]["job_id"] == held
        c.release(held)
        assert c.wait(held, timeout=20).is_successful()


def test_eta_from_past_run_times(client):
    for _ in range(2):
        client.wait(client.submit(*SLEEP, {"seconds": 0.4, "steps": 2}), timeout=20)
    blocker = client.submit(*SLEEP, {"seconds": 0.4, "steps": 2})
    ids = [client.submit(*SLEEP, {"seconds": 0.4, "steps": 2}) for _ in range(3)]
    rows = {j["job_id"]: j for j in client.queue()["pending"]}
    etas = [rows[j]["eta_s"] for j in ids]
    assert 0 <= etas[0] <= 0.5
    assert etas[1] - etas[0] == pytest.approx(0.4, abs=0.15)
    assert etas[2] - etas[1] == pytest.approx(0.4, abs=0.15)
    client.pause()
    try:
        assert all(j["eta_s"] is None for j in client.queue()["pending"])  # nothing starts
    finally:
        client.resume()
    for j in (blocker, *ids):
        client.wait(j, timeout=20)


def test_labctl_watch_updates_on_events(daemon):
    base = [sys.executable, "-m", "labd_client.labctl", "--socket", str(daemon.socket)]
    once = subprocess.run(base + ["watch", "--once"], capture_output=True, text=True,
                          timeout=30)
    assert once.returncode == 0
    assert "RUNNING" in once.stdout and "PENDING" in once.stdout and "RECENT" in once.stdout
    proc = subprocess.Popen(base + ["watch", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        json.loads(proc.stdout.readline())  # first frame
        with Client(daemon.socket) as c:
            job_id = c.submit(*SLEEP, {"seconds": 0.3, "steps": 3}, user="watcher")
        deadline = time.monotonic() + 20
        seen = set()
        while time.monotonic() < deadline and "completed" not in seen:
            frame = json.loads(proc.stdout.readline())
            if frame["queue"]["running"] and frame["queue"]["running"]["job_id"] == job_id:
                seen.add("running")
            if any(h["job_id"] == job_id and h["status"] == "completed"
                   for h in frame["history"]):
                seen.add("completed")
        assert seen == {"running", "completed"}
    finally:
        proc.kill()


def test_bash_completion(tmp_path):
    script = subprocess.run([sys.executable, "-m", "labd_client.labctl", "completion", "bash"],
                            capture_output=True, text=True).stdout
    (tmp_path / "c.sh").write_text(script)

    def complete(*words: str) -> set[str]:
        line = ("source {f}; COMP_WORDS=(labctl {w}); COMP_CWORD={n}; _labctl; "
                "echo ${{COMPREPLY[@]}}").format(f=tmp_path / "c.sh",
                                                 w=" ".join(f'"{w}"' for w in words),
                                                 n=len(words))
        return set(subprocess.run(["bash", "-c", line], capture_output=True,
                                  text=True).stdout.split())
    assert {"submit", "queue", "watch", "config"} <= complete("")
    assert complete("con") == {"config"}
    assert {"push", "pull", "verify"} <= complete("config", "")
    assert "--json" in complete("config", "push", "--")
    assert {"--after", "--not-before", "--hold"} <= complete("submit", "x", "--")


def test_notebook_views(client):
    client.wait(client.submit(*NOOP), timeout=20)
    q = client.queue()
    assert "<table>" in q._repr_html_() and "PENDING" in str(q)
    h = client.history(limit=3)
    assert len(h) == 3 and h._repr_html_().count("<tr>") == 4
    assert h[0].job_id in str(h)


def test_eta_follows_the_running_jobs_progress(client):
    long = client.submit(*SLEEP, {"seconds": 3, "steps": 30})
    nxt = client.submit(*NOOP)
    deadline = time.monotonic() + 20
    while (client.get(long).progress or 0) < 0.3 and time.monotonic() < deadline:
        time.sleep(0.05)
    eta = next(j for j in client.queue()["pending"] if j["job_id"] == nxt)["eta_s"]
    assert 0.8 < eta < 2.8  # ~3 s x (1 - progress) left
    client.cancel(long)
    assert client.wait(nxt, timeout=20).is_successful()


async def test_hold_and_priority_changes_are_published(tmp_path):
    """Open dashboards and `labctl watch` learn of a hold or a priority change made from
    anywhere (the event bus), not only of the ones they made themselves."""
    from sched_harness import ALICE, ROOT, Harness
    async with Harness(tmp_path) as h:
        await h.sched.set_paused(ROOT, True)
        job = await h.submit()
        await h.sched.set_held(ALICE, job, True)
        await h.sched.set_priority(ALICE, job, -3)
        changes = [(e.get("held"), e.get("priority")) for e in h.log
                   if e.get("type") == "job" and e.get("job_id") == job]
        assert changes[-2:] == [(True, 0), (True, -3)]
