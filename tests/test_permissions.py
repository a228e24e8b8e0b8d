"""Identity comes from the kernel: other accounts cannot touch your jobs."""
from __future__ import annotations

import json
import os
import socket

import pytest

from labd_client import Client

NOBODY = 65534
OTHER = 65533
NOOP = {"experiment_class": "NoOpExperiment",
        "experiment_module": "experiments.diagnostics.noop"}
SLEEP = {"experiment_class": "SleepExperiment",
         "experiment_module": "experiments.diagnostics.sleep",
         "experiment_config": {"seconds": 60, "steps": 600}}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uid")


def as_uid(uid: int, sock_path, calls: list[tuple[str, dict]]) -> list[dict]:
    """Run raw JSON-RPC calls from a forked child that has dropped to ``uid``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = []
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(sock_path))
                f = s.makefile("rwb")
                for i, (method, params) in enumerate(calls):
                    f.write(json.dumps({"jsonrpc": "2.0", "method": method,
                                        "params": params, "id": i}).encode() + b"\n")
                    f.flush()
                    out.append(json.loads(f.readline()))
            except OSError as exc:
                out.append({"oserror": exc.errno})
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def test_user_outside_socket_group_cannot_connect(make_daemon):
    d = make_daemon()  # socket 0660 root:root
    [res] = as_uid(NOBODY, d.socket, [("health", {})])
    assert res == {"oserror": 13}  # EACCES


def test_identity_ownership_and_priority_cap(make_daemon):
    d = make_daemon(socket_mode=0o666, priority_cap=10)
    res = as_uid(NOBODY, d.socket, [
        ("health", {}),
        ("submit", {**SLEEP, "user": "alice"}),
        ("submit", {**NOOP, "priority": 11}),
        ("submit", {**NOOP, "priority": 10}),
    ])
    assert res[0]["result"]["you"] == "nobody" and res[0]["result"]["admin"] is False
    mine = res[1]["result"]["job_id"]
    assert res[2]["error"]["code"] == -32002 and "above the cap 10" in res[2]["error"]["message"]
    assert "result" in res[3]
    with Client(d.socket) as c:
        job = c.get(mine)
        assert job.user == "alice" and job.raw["os_user"] == "nobody"
        root_job = c.submit(**{"experiment_class": NOOP["experiment_class"],
                               "experiment_module": NOOP["experiment_module"]})
    # another non-admin account may neither cancel nobody's job nor root's
    other = as_uid(OTHER, d.socket, [("cancel", {"job_id": mine}),
                                     ("cancel", {"job_id": root_job})])
    for r in other:
        assert r["error"]["code"] == -32002
        assert "belongs to another account" in r["error"]["message"]
    # the owner may; an admin (root) may cancel anyone's
    own = as_uid(NOBODY, d.socket, [("cancel", {"job_id": res[3]["result"]["job_id"]})])
    assert own[0].get("result", {}).get("status") in ("cancelled", "cancelling") or \
        own[0]["error"]["code"] == -32003
    with Client(d.socket) as c:
        assert c.cancel(mine)["status"] in ("cancelled", "cancelling")
        assert c.wait(mine, timeout=20).status == "cancelled"


def test_rerun_and_retry_keep_a_priority_only_for_whoever_may_set_it(make_daemon):
    d = make_daemon(socket_mode=0o666, priority_cap=10)
    with Client(d.socket) as c:  # root: an admin
        done = c.wait(c.submit(NOOP["experiment_class"], NOOP["experiment_module"],
                               priority=20), timeout=30)
        assert c.get(c.rerun(done.job_id)).priority == 20
        held = c.submit(NOOP["experiment_class"], NOOP["experiment_module"], priority=20,
                        hold=True)
        c.cancel(held)
        assert c.get(c.retry(held)).priority == 20
    [rerun] = as_uid(NOBODY, d.socket, [("rerun", {"job_id": done.job_id})])
    with Client(d.socket) as c:
        assert c.get(rerun["result"]["job_id"]).priority == 10  # capped for a non-admin


def test_other_accounts_cannot_touch_your_pending_job(make_daemon):
    d = make_daemon(socket_mode=0o666)
    with Client(d.socket) as c:
        c.pause()
    [sub] = as_uid(NOBODY, d.socket, [("submit", NOOP)])
    job_id = sub["result"]["job_id"]
    other = as_uid(OTHER, d.socket, [
        ("hold", {"job_id": job_id}), ("release", {"job_id": job_id}),
        ("set_priority", {"job_id": job_id, "priority": -5}),
        ("cancel_user", {"os_user": "nobody"}), ("pause", {}), ("resume", {}),
        ("retry", {"job_id": job_id})])
    for r in other[:5]:
        assert r["error"]["code"] == -32002, r
    assert other[5]["error"]["code"] == -32002
    assert other[6]["error"]["code"] == -32003  # not failed: refused before ownership
    own = as_uid(NOBODY, d.socket, [("hold", {"job_id": job_id}),
                                    ("set_priority", {"job_id": job_id, "priority": -5}),
                                    ("cancel_user", {"os_user": "nobody"})])
    assert own[0]["result"]["held"] and own[1]["result"]["priority"] == -5
    assert own[2]["result"]["cancelled"] == [job_id]


def test_no_client_value_becomes_a_path(make_daemon):
    d = make_daemon()
    with Client(d.socket) as c:
        job = c.wait(c.submit(NOOP["experiment_class"], NOOP["experiment_module"],
                              user="../../../etc/evil"), timeout=30)
        assert job.is_successful() and job.user == "../../../etc/evil"
        day = job.job_id.split("-")[1]
        assert job.data_file_path == str(d.state_dir / "data" / day / f"{job.job_id}.h5")
        assert job.log_path == str(d.state_dir / "data" / day / f"{job.job_id}.log")
    for method, params in [
            ("config.push", {"type": "../../etc/passwd", "content": "a: 1"}),
            ("config.show", {"version_id": "../../labd.sqlite3"}),
            ("logs", {"job_id": "../../../etc/passwd"}),
            ("submit", {"experiment_class": "X",
                        "experiment_module": "experiments.single_qubit.t1/../../../x"}),
            ("submit", {"experiment_class": "X", "experiment_module": "subprocess"})]:
        r = d.rpc(method, **params)
        assert r["error"]["code"] == -32602, (method, r)
    assert not (d.state_dir.parent / "etc").exists()


def test_one_account_cannot_take_every_connection(make_daemon):
    """Idle connections of one account used to fill max_connections: every other client,
    admins included, was refused. An account now holds at most
    max_connections_per_user, and an admin gets in past the overall limit."""
    d = make_daemon(socket_mode=0o666, max_connections=8, max_connections_per_user=6)
    results, release = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # nobody, holding as many connections as it can get
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            socks, out = [], []
            for i in range(8):
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(d.socket))
                f = s.makefile("rwb")
                f.write(json.dumps({"jsonrpc": "2.0", "method": "health", "id": i})
                        .encode() + b"\n")
                f.flush()
                out.append(json.loads(f.readline()))
                socks.append((s, f))
            os.write(results[1], json.dumps(out).encode())
            os.read(release[0], 1)
        finally:
            os._exit(0)
    try:
        data = b""
        while not data.endswith(b"]"):
            data += os.read(results[0], 65536)
        out = json.loads(data)
        assert [("result" in r) for r in out] == [True] * 6 + [False] * 2, out
        assert "too many connections from nobody (6)" in out[6]["error"]["message"]
        [other] = as_uid(OTHER, d.socket, [("health", {})])   # another account gets in
        assert other["result"]["status"] == "ok", other
        conns = [socket.socket(socket.AF_UNIX) for _ in range(2)]   # root, an admin, gets
        for s in conns:                                   # in past the 8 overall as well
            s.connect(str(d.socket))
        assert d.rpc("health")["result"]["status"] == "ok"
        for s in conns:
            s.close()
    finally:
        os.write(release[1], b"x")
        os.waitpid(pid, 0)
