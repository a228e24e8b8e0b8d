"""End-to-end behaviour of the daemon core through the real client on a real socket."""
from __future__ import annotations

import json
import re
import stat
import threading
import time
from pathlib import Path

import h5py
import pytest

from labd_client import Client, Conflict, InvalidParams, NotFound

NOOP = ("NoOpExperiment", "experiments.diagnostics.noop")
SLEEP = ("SleepExperiment", "experiments.diagnostics.sleep")


def test_health(client):
    h = client.health()
    assert h["status"] == "ok"
    assert h["pending"] == 0 and h["running"] is None
    assert h["version"] and h["uptime_s"] >= 0 and h["hardware"] == "mock"


def test_socket_is_group_only(daemon):
    mode = stat.S_IMODE(daemon.socket.stat().st_mode)
    assert mode == 0o660


def test_socket_group_from_settings(make_daemon):
    import grp
    d = make_daemon(socket_group="daemon")
    assert d.socket.stat().st_gid == grp.getgrnam("daemon").gr_gid != 0


def test_noop_job_round_trip_writes_data_file(client, daemon):
    job_id = client.submit(*NOOP, {"value": 2.5}, user="alice")
    assert re.fullmatch(r"JOB-\d{8}-\d{5}", job_id)
    job = client.wait(job_id, timeout=30)
    assert job.status == "completed", job.error_message
    day = job_id.split("-")[1]
    path = Path(job.data_file_path)
    assert path == daemon.state_dir / "data" / day / f"{job_id}.h5"
    with h5py.File(path) as f:
        cfg = json.loads(f.attrs["config"])
        assert cfg["expt"] == {"value": 2.5}
        assert set(cfg) >= {"device", "hw", "aliases", "data_management", "expt"}
        assert f.attrs["job_id"] == job_id
        assert f.attrs["user"] == "alice" and f.attrs["os_user"] == "root"
        assert f.attrs["experiment_class"] == "NoOpExperiment"
        assert json.loads(f.attrs["config_versions"])["hardware_config"].startswith("CFG-HW-")
        assert f.attrs["labd_version"]
        assert f["avgi"][()].tolist() == [2.5]
        assert f.attrs["analysis"] == "none"
    assert job.created_at.endswith("+00:00") and job.started_at and job.finished_at
    assert not list(path.parent.glob("*.part"))


def test_ids_unique_and_gapless_under_concurrency(daemon):
    ids: list[str] = []
    lock = threading.Lock()

    def worker():
        with Client(daemon.socket) as c:
            mine = [c.submit(*NOOP) for _ in range(25)]
        with lock:
            ids.extend(mine)
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == len(set(ids)) == 200
    numbers = sorted(int(i.rsplit("-", 1)[1]) for i in ids)
    assert numbers == list(range(numbers[0], numbers[0] + 200))


async def test_concurrent_submits_share_commits(daemon):
    """200 submits in flight at once are acknowledged after a few grouped commits."""
    import asyncio
    from labd_client import AsyncClient
    async with AsyncClient(daemon.socket) as c:
        await c.pause()  # no job runs, so every commit below is a submit's
        try:
            before = (await c.health())["db_commits"]
            ids = await asyncio.gather(*(c.submit(*NOOP) for _ in range(200)))
            commits = (await c.health())["db_commits"] - before
            assert len(set(ids)) == 200 and commits <= 50, commits
            assert {(await c.get(j)).status for j in ids} == {"pending"}
        finally:
            await c.cancel_user("root")
            await c.resume()


def test_priority_then_fifo_order(client):
    blocker = client.submit(*SLEEP, {"seconds": 30, "steps": 300})
    _wait_running(client, blocker)
    submitted = [client.submit(*NOOP, {"value": float(i)}, priority=p)
                 for i, p in enumerate([0, 5, 0, 5, 10, -1])]
    q = client.queue()
    order = [j["job_id"] for j in q["pending"]]
    expected = [submitted[i] for i in (4, 1, 3, 0, 2, 5)]
    assert order == expected
    assert [j["position"] for j in q["pending"]] == list(range(1, 7))
    assert client.get(submitted[0]).position == 4
    client.cancel(blocker)
    finished = [client.wait(j, timeout=30) for j in submitted]
    starts = sorted(finished, key=lambda j: j.started_at)
    assert [j.job_id for j in starts] == expected


def _wait_running(client, job_id, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(job_id).status == "running":
            return
        time.sleep(0.02)
    raise AssertionError(f"{job_id} never started")


def test_cancel_pending_running_and_finished(client):
    running = client.submit(*SLEEP, {"seconds": 60, "steps": 600})
    pending = client.submit(*NOOP)
    assert client.cancel(pending)["status"] == "cancelled"
    assert client.get(pending).status == "cancelled"
    _wait_running(client, running)
    t0 = time.monotonic()
    assert client.cancel(running)["status"] == "cancelling"
    job = client.wait(running, timeout=10)
    assert job.status == "cancelled"
    assert "cancelled by root while running" in job.error_message
    assert time.monotonic() - t0 < 5
    with pytest.raises(Conflict, match="already cancelled"):
        client.cancel(running)
    with pytest.raises(NotFound):
        client.cancel("JOB-20000101-00001")


def test_time_limit_fails_job_with_reason(client):
    job_id = client.submit(*SLEEP, {"seconds": 60, "steps": 600}, time_limit_s=0.5)
    job = client.wait(job_id, timeout=20)
    assert job.status == "failed"
    assert "time limit exceeded (0.5 s)" in job.error_message


def test_failing_experiment_and_next_job_runs(client):
    bad = client.submit("RaiseInAcquire", "labtest_experiments.faults")
    good = client.submit(*NOOP)
    job = client.wait(bad, timeout=20)
    assert job.status == "failed"
    assert job.error_message == "ValueError: the sample holder is on fire"
    assert job.config_versions.get("hardware_config")  # failed jobs keep config links
    assert client.wait(good, timeout=20).status == "completed"
    text = client.logs(bad)["text"]
    assert "about to fail" in text and "Traceback" in text


def test_analysis_error_never_loses_data(client):
    job = client.wait(client.submit("RaiseInAnalyze", "labtest_experiments.faults"), 20)
    assert job.status == "completed"
    assert "analysis failed (raw data saved): RuntimeError: fit did not converge" \
        in job.error_message
    with h5py.File(job.data_file_path) as f:
        assert f["avgi"][()].tolist() == [1.0] * 5
        assert f.attrs["analysis"] == "failed"
        assert "fit did not converge" in f.attrs["analysis_error"]


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_what_an_experiment_gets_wrong_after_its_acquisition_never_loses_the_data(
        make_daemon, writer):
    """A fit result that is not numeric data, a fit that calls sys.exit(), units that are
    None or whose method raises, an after_job hook that fails: the raw data are saved and
    the record points to them (a fit's trouble used to mark the job failed with no data
    file; a unit or the hook, no file at all)."""
    d = make_daemon(data_writer=writer)
    with Client(d.socket) as c:
        ragged, exits, unit_none, units_raise, after = (
            c.wait(c.submit(cls, "labtest_experiments.faults"), 30)
            for cls in ("RaggedFit", "ExitInFit", "UnitNone", "UnitsRaise", "AfterJobRaises"))
        for job in (ragged, exits, unit_none, units_raise, after):
            assert job.status == "completed", (job.experiment_class, job.error_message)
            with h5py.File(job.data_file_path) as f:
                assert f["avgi"][()].tolist() == [1.0] * 5
        assert ragged.results == {"f0": 4.5}
        assert "result 'peaks'" in ragged.error_message and "(raw data saved)" in \
            ragged.error_message
        with h5py.File(ragged.data_file_path) as f:
            assert f["f0"][()] == 4.5 and f["model"].asstr()[()] == "lorentzian"
            assert "peaks" not in f
            assert f.attrs["analysis"] == "failed" and "peaks" in f.attrs["analysis_error"]
        assert "SystemExit: fit script calls sys.exit" in exits.error_message
        with h5py.File(unit_none.data_file_path) as f:
            assert f["avgi"].attrs["unit"] == "a.u." and "unit" not in f["xpts"].attrs
        assert "KeyError" in c.logs(units_raise.job_id)["text"]
        assert after.error_message == \
            "after_job failed: RuntimeError: could not park the flux bias"


def test_logs_by_offset_give_whole_lines_once(client):
    job_id = client.submit(*SLEEP, {"seconds": 0.6, "steps": 30})
    followed = "".join(client.follow_logs(job_id))
    steps = re.findall(r"step (\d+)/30", followed)
    assert steps == [str(i) for i in range(1, 31)]
    # paging with a window shorter than the log (but longer than any line) never splits one
    offset, pages = 0, []
    while True:
        page = client.logs(job_id, offset, max_bytes=256)
        if not page["text"]:
            break
        pages.append(page["text"])
        offset = page["offset"]
    assert "".join(pages) == followed
    assert all(p.endswith("\n") for p in pages)


def test_bad_input_gets_clear_errors(daemon):
    cases = [
        ("submit", {}, -32602, "experiment_class"),
        ("submit", {"experiment_class": "X", "experiment_module": "os"}, -32602,
         "not in an allowed package"),
        ("submit", {"experiment_class": "X", "experiment_module": "experiments/../x"},
         -32602, "experiment_module"),
        ("submit", {"experiment_class": "system", "experiment_module": "experiments.base"},
         -32602, "not an experiment class"),
        ("submit", {"experiment_class": "NotAnExperiment",
                    "experiment_module": "labtest_experiments.faults"}, -32602,
         "not an experiment class"),
        ("submit", {"experiment_class": "NoOpExperiment",
                    "experiment_module": "experiments.diagnostics.noop",
                    "experiment_config": {"value": "abc"}}, -32602, "value"),
        ("submit", {"experiment_class": "NoOpExperiment",
                    "experiment_module": "experiments.diagnostics.noop", "priority": 10**12},
         -32602, "priority"),
        ("get", {"job_id": 5}, -32602, "job_id"),
        ("history", {"limit": -1}, -32602, "limit"),
        ("history", {"status": "weird"}, -32602, "status"),
        ("wait", {"job_id": "JOB-20000101-00001", "timeout": 1}, -32001, "no job"),
        ("nope", {}, -32601, "not found"),
    ]
    for method, params, code, needle in cases:
        resp = daemon.rpc(method, **params)
        assert resp["error"]["code"] == code, (method, params, resp)
        assert needle.lower() in resp["error"]["message"].lower(), (method, resp)
        assert "Traceback" not in json.dumps(resp)
    assert daemon.rpc("health")["result"]["status"] == "ok"


def test_oversize_frame_is_refused_and_daemon_serves_on(make_daemon):
    import socket
    d = make_daemon(max_frame_bytes=4096)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(d.socket))
        s.sendall(b'{"jsonrpc":"2.0","method":"health","id":1,"params":{"x":"' +
                  b"a" * 10000 + b'"}}\n')
        reply = json.loads(s.makefile("rb").readline())
    assert reply["error"]["code"] == -32600 and "exceeds 4096 bytes" in reply["error"]["message"]
    assert d.rpc("health")["result"]["status"] == "ok"


def test_batch_is_atomic_and_cancellable(client):
    good = {"experiment_class": "SleepExperiment",
            "experiment_module": "experiments.diagnostics.sleep",
            "expt_config": {"seconds": 5}}
    before = client.health()["pending"]
    with pytest.raises(InvalidParams, match=r"jobs\[1\].*nothing in the batch"):
        client.submit_batch([good, {**good, "expt_config": {"bogus": 1}}, good])
    assert client.health()["pending"] == before
    batch = client.submit_batch([good] * 5)
    assert len(batch["job_ids"]) == 5
    assert all(client.get(j).batch_id == batch["batch_id"] for j in batch["job_ids"])
    r = client.cancel_batch(batch["batch_id"])
    assert sorted(r["cancelled"]) == sorted(batch["job_ids"]) and not r["refused"]
    for j in batch["job_ids"]:
        assert client.wait(j, timeout=20).status == "cancelled"


def test_history_filters_and_cursor(client):
    ids = [client.submit(*NOOP, user=f"hist-{i % 2}") for i in range(7)]
    for j in ids:
        client.wait(j, timeout=20)
    page = client.call("history", user="hist-0", limit=2)
    assert [j["user"] for j in page["jobs"]] == ["hist-0", "hist-0"]
    seen = [j["job_id"] for j in page["jobs"]]
    while page["next_cursor"] is not None:
        page = client.call("history", user="hist-0", limit=2, cursor=page["next_cursor"])
        seen += [j["job_id"] for j in page["jobs"]]
    assert seen == [ids[i] for i in (6, 4, 2, 0)]
    assert all(j.status == "completed" for j in client.history(status="completed", limit=5))
    assert client.history(experiment="NoOpExperiment", limit=1)[0].experiment_class == \
        "NoOpExperiment"


def test_sync_client_inside_running_event_loop(daemon):
    """Jupyter runs cells inside an event loop; the sync client must still work there."""
    import asyncio

    async def cell():
        with Client(daemon.socket) as c:
            job_id = c.submit(*NOOP)
            return c.wait(job_id, timeout=20)
    assert asyncio.run(cell()).is_successful()


async def test_async_client_and_push_events(daemon):
    from labd_client import AsyncClient
    async with AsyncClient(daemon.socket) as c:
        await c.subscribe(["job", "progress"])
        job_id = await c.submit(*SLEEP, {"seconds": 0.5, "steps": 5})
        statuses, progress = [], []
        while True:
            ev = await asyncio_wait_for(c.events.get(), 20)
            if ev.get("job_id") != job_id:
                continue
            if ev["type"] == "progress":
                progress.append(ev["progress"])
            else:
                statuses.append(ev["status"])
                if ev["terminal"]:
                    break
        assert statuses == ["pending", "running", "completed"]
        assert progress and progress[-1] == 1.0
        assert (await c.get(job_id)).is_successful()


def asyncio_wait_for(aw, timeout):
    import asyncio
    return asyncio.wait_for(aw, timeout)


def test_cancel_right_after_submit_always_lands(client):
    """A cancel may arrive while the dispatcher is committing the job's claim."""
    for _ in range(20):
        job_id = client.submit(*SLEEP, {"seconds": 30, "steps": 300})
        assert client.cancel(job_id)["status"] in ("cancelled", "cancelling")
        assert client.wait(job_id, timeout=20).status == "cancelled"


def test_history_since_filter(client):
    job = client.wait(client.submit(*NOOP, user="since-test"), timeout=30)
    assert [j.job_id for j in client.history(user="since-test", since=job.created_at)] == \
        [job.job_id]
    assert client.history(user="since-test", since="2999-01-01T00:00:00+00:00") == []
    from datetime import datetime, timedelta, timezone
    created = datetime.fromisoformat(job.created_at)
    # an hour before the job, written in UTC+5: as text it sorts after the job's UTC time
    earlier_elsewhere = (created - timedelta(hours=1)).astimezone(timezone(timedelta(hours=5)))
    assert earlier_elsewhere.isoformat() > job.created_at
    assert [j.job_id for j in client.history(user="since-test",
                                             since=earlier_elsewhere.isoformat())] == [job.job_id]
    assert len(client.history(user="since-test", since="2000-01-01")) == 1
    with pytest.raises(InvalidParams, match="since"):
        client.history(since="yesterday")


def test_numpy_values_from_a_notebook_are_sent_as_numbers(client):
    import numpy as np
    job = client.wait(client.submit(*NOOP, {"value": np.float64(2.5)}), timeout=30)
    assert job.is_successful() and job.experiment_config == {"value": 2.5}
    with h5py.File(job.data_file_path) as f:
        assert f["avgi"][0] == 2.5


def test_a_bad_job_id_is_explained_in_the_users_terms(client):
    """#10: no raw regex in the message for a mistyped job ID."""
    with pytest.raises(InvalidParams) as err:
        client.get("JOB-1")
    assert err.value.message == "get: job_id: 'JOB-1' is not a job ID like JOB-20260101-00001"
