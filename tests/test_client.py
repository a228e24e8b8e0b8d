"""The client library against a real daemon: no daemon imports, the blocking socket,
Ctrl-C, restarts, the cannot-connect message, the experiment catalog."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from labd_client import Client, ConnectionFailed

SLEEP = ("SleepExperiment", "experiments.diagnostics.sleep")


def until(predicate, timeout: float = 20.0, what: str = "condition"):
    """Wait for an observable condition (bounded), returning its first truthy value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_labd_client_imports_no_daemon_module():
    code = ("import sys, labd_client, labd_client.labctl, labd_client.watch; "
            "print([m for m in sys.modules if m == 'labd' or m.startswith('labd.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_user_socket_is_the_daemons_default(monkeypatch, tmp_path):
    from labd.settings import default_socket_path
    from labd_client.paths import user_socket
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert user_socket() == default_socket_path()
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert user_socket() == default_socket_path()


def test_cannot_connect_names_every_socket_tried(monkeypatch, tmp_path):
    monkeypatch.delenv("LABD_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(ConnectionFailed) as e:
        Client().health()
    msg = e.value.message
    assert str(tmp_path / "labd" / "labd.sock") in msg and "/run/labd-socket/labd.sock" in msg
    assert "$LABD_SOCKET" in msg and "--socket" in msg
    monkeypatch.setenv("LABD_SOCKET", str(tmp_path / "x.sock"))
    with pytest.raises(ConnectionFailed, match="x.sock .no such socket."):
        Client().health()


def _health(daemon) -> dict:
    return daemon.rpc("health")["result"]


WAITER = """
import sys
from labd_client import Client
c = Client({socket!r})
try:
    if {mode!r} == "follow_logs":
        for text in c.follow_logs({job_id!r}):
            print("LOG", text.strip(), flush=True)
    else:
        c.wait({job_id!r}, progress={mode!r} == "progress")
except KeyboardInterrupt:
    print("INTERRUPTED connected=%s subscription=%s" % (c._sock is not None, c._subscription),
          flush=True)
"""


@pytest.mark.parametrize("mode", ["wait", "progress", "follow_logs"])
def test_ctrl_c_leaves_nothing_running(daemon, client, mode):
    job_id = client.submit(*SLEEP, {"seconds": 60, "steps": 600})
    try:
        proc = subprocess.Popen([sys.executable, "-c", WAITER.format(
            socket=str(daemon.socket), job_id=job_id, mode=mode)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if mode == "follow_logs":
            assert proc.stdout.readline().startswith("LOG")  # it is following
        else:
            until(lambda: _health(daemon)["waits"] == 1, what="the wait to reach labd")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=5)
        if mode == "follow_logs" and "connected=True" in out:
            # Ctrl-C landed between reads (while the loop body printed): the generator's
            # cleanup then unsubscribed on a healthy connection, which may stay open
            assert "INTERRUPTED connected=True subscription=None" in out, err
        else:  # interrupted inside a call: the connection is dropped with it
            assert "INTERRUPTED connected=False subscription=None" in out, err
        until(lambda: _health(daemon)["waits"] == 0, what="the server-side wait to end")
    finally:
        client.cancel(job_id)


def test_wait_inside_a_running_event_loop(daemon, client):
    """A notebook cell runs inside asyncio's loop: the sync client must not need one."""
    import asyncio

    async def cell():
        job_id = client.submit(*SLEEP, {"seconds": 0.1, "steps": 2})
        return client.wait(job_id, timeout=30, progress=True)
    assert asyncio.run(cell()).status == "completed"


def test_wait_survives_a_daemon_restart(make_daemon):
    d = make_daemon()
    result: dict = {}
    with Client(d.socket) as c:
        job_id = c.submit(*SLEEP, {"seconds": 60, "steps": 600})
        until(lambda: c.get(job_id).status == "running", what="the job to start")

        def waiter() -> None:
            with Client(d.socket) as w:
                result["job"] = w.wait(job_id, timeout=60)
        t = threading.Thread(target=waiter)
        t.start()
        until(lambda: _health(d)["waits"] == 1, what="the waiter to reach labd")
        d.kill()
        d.start()
        t.join(30)
    assert not t.is_alive()
    assert result["job"].status == "failed"
    assert result["job"].error_message == "interrupted: daemon stopped during run"


def test_async_client_shares_the_protocol(daemon):
    import asyncio
    from labd_client import AsyncClient, NotFound

    async def go():
        async with AsyncClient(daemon.socket) as c:
            job = await c.wait(await c.submit(*SLEEP, {"seconds": 0.05, "steps": 1}),
                               timeout=30)
            with pytest.raises(NotFound):
                await c.get("JOB-20000101-00001")
            return job, await c.load_data(job.job_id)
    job, data = asyncio.run(go())
    assert job["status"] == "completed" and list(data["data"]["avgi"]) == [0.0]


def test_experiment_catalog(client):
    cat = {(e["module"], e["class"]): e for e in client.experiments()}
    t1 = cat[("experiments.single_qubit.t1", "T1Experiment")]
    assert t1["has_analysis"] and "T1" in t1["doc"]
    step = next(f for f in t1["fields"] if f["name"] == "step")
    assert step["type"] == "float" and step["unit"] == "us" and not step["required"]
    assert isinstance(step["default"], float)
    reps = next(f for f in t1["fields"] if f["name"] == "reps")
    assert reps["type"] == "int" and reps["default"] == 1000
    assert not cat[("experiments.diagnostics.noop", "NoOpExperiment")]["has_analysis"]
    # only what a submit accepts: no helper base classes, no non-experiments
    assert not any(c in ("Experiment", "SingleQubitExperiment", "NotAnExperiment")
                   for _, c in cat)
    json.dumps(list(cat.values()))  # plain JSON all the way
