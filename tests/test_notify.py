"""Webhook notifications (issue #12) against a real local HTTP receiver on 127.0.0.1 and a
real daemon: what is posted, the filters, the allow-list, retries, dead receivers that
never delay a job, the bounded queue, ownership and labctl."""
from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

from labd_client import Client
from test_permissions import OTHER, as_uid
from labd_client.protocol import InvalidParams, NotFound, PermissionDenied

NOOP = {"experiment_class": "NoOpExperiment",
        "experiment_module": "experiments.diagnostics.noop"}
FAIL = {"experiment_class": "SleepExperiment", "experiment_module":
        "experiments.diagnostics.sleep",
        "expt_config": {"seconds": 0.01, "steps": 1, "fail": True}}
FAST = {"notify_retries": 2, "notify_backoff_s": 0.05, "notify_timeout_s": 5}


class Receiver:
    """A local webhook receiver: records each POST's JSON body; answers with the next
    status of ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.bodies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.statuses = list(statuses or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                if status < 300:
                    outer.bodies.put(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/abc?x=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, timeout: float = 20) -> dict[str, Any]:
        return self.bodies.get(timeout=timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]
    yield make
    for r in made:
        r.close()


def free_port() -> int:
    """A port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(cond: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def idle(c: Client) -> dict[str, Any]:
    """Every queued event handled and every delivery finished."""
    def check() -> dict[str, Any] | None:
        st = c.notify_status()
        return st if st["backlog"] == 0 else None
    return until(check, what="notifications idle")


def submit(c: Client, spec: dict[str, Any]) -> str:
    return c.submit(spec["experiment_class"], spec["experiment_module"],
                    spec.get("expt_config"))


def test_url_checks_without_a_daemon():
    from labd.notify import AllowList, parse_url
    allow = AllowList(["127.0.0.1:8080", "hooks.example.org", "[::1]:9000"])
    ok = ["http://127.0.0.1:8080/x", "https://hooks.example.org/services/T/B/secret",
          "http://hooks.example.org/", "HTTP://HOOKS.example.org/a?b=c", "http://[::1]:9000/"]
    for url in ok:
        assert allow.allows(allow.check(url)), url
    bad = {
        "http://127.0.0.1:8081/x": "not on",                       # same host, other port
        "http://127.0.0.1/x": "not on",                            # default port not listed
        "http://hooks.example.org:8443/": "not on",
        "http://hooks.example.org.evil.net/": "not on",            # suffix trick
        "http://evilhooks.example.org/": "not on",
        "http://127.0.0.1:8080@evil.net/": "user name",            # userinfo tricks
        "http://user:pw@127.0.0.1:8080/": "user name",
        "http://evil.net#@127.0.0.1:8080/": "not on",
        "http://evil.net\\@127.0.0.1:8080/": "backslash",
        "http://127.0.0.1:8080/a b": "spaces",
        "ftp://127.0.0.1:8080/": "http:// or https://",
        "file:///etc/passwd": "http:// or https://",
        "http://127.0.0.1:99999/": "port",
        "http:///nohost": "no host",
        "http://127.0.0.1:8080/" + "a" * 3000: "2048",
    }
    for url, why in bad.items():
        with pytest.raises(InvalidParams) as e:
            allow.check(url)
        assert why in e.value.message, (url, e.value.message)
    ep = parse_url("https://Hooks.Example.org/p?q=1#frag")
    assert (ep.host, ep.port, ep.target) == ("hooks.example.org", 443, "/p?q=1")
    with pytest.raises(InvalidParams, match="notify_allowed_hosts"):
        AllowList([]).check("http://127.0.0.1:8080/")
    from labd.settings import Settings
    with pytest.raises(ValueError, match="notify_allowed_hosts"):
        Settings(notify_allowed_hosts=["user@host"])


def test_job_end_posts_json_and_failures_filter(make_daemon, receiver):
    all_rx, fail_rx = receiver(), receiver()
    d = make_daemon(notify_allowed_hosts=[f"127.0.0.1:{all_rx.port}",
                                          f"127.0.0.1:{fail_rx.port}"], **FAST)
    with Client(d.socket) as c:
        t_all = c.notify(all_rx.url)
        t_fail = c.notify(fail_rx.url, on="failures")
        assert t_all["id"].startswith("NTF-") and t_all["on"] == "all"
        assert t_all["url"] == all_rx.url  # your own URL in full
        ok = submit(c, NOOP)
        assert c.wait(ok, timeout=30).status == "completed"
        bad = submit(c, FAIL)
        assert c.wait(bad, timeout=30).status == "failed"

        first, second = all_rx.get(), all_rx.get()
        assert {first["job"]["job_id"], second["job"]["job_id"]} == {ok, bad}
        by_id = {b["job"]["job_id"]: b for b in (first, second)}
        msg = by_id[ok]
        assert msg["event"] == "job_end" and msg["job"]["status"] == "completed"
        assert ok in msg["text"] and "NoOpExperiment" in msg["text"] and "completed" in \
            msg["text"]
        assert msg["job"]["end_reason"] == "completed" and msg["job"]["finished_at"]
        assert by_id[bad]["job"]["status"] == "failed"
        assert "failing on request" in by_id[bad]["text"]
        path, headers, _ = all_rx.requests[0]
        assert path == "/hooks/abc?x=1"
        assert headers["Content-Type"] == "application/json"
        assert headers["Host"] == f"127.0.0.1:{all_rx.port}"

        # failures only: the completed job (ended first, handled first) was not sent
        only = fail_rx.get()
        assert only["job"]["job_id"] == bad and only["job"]["status"] == "failed"
        st = idle(c)
        assert len(fail_rx.requests) == 1
        assert st["delivered"] == 3 and st["failed"] == 0 and st["dropped"] == 0
        targets = {t["id"]: t for t in st["targets"]}
        assert targets[t_fail["id"]]["delivered"] == 1
        assert targets[t_all["id"]]["last_status"] == "ok"


def test_batch_filter_posts_once_per_batch(make_daemon, receiver):
    rx = receiver()
    d = make_daemon(notify_allowed_hosts=[f"127.0.0.1:{rx.port}"], **FAST)
    with Client(d.socket) as c:
        c.notify(rx.url, on="batch")
        b = c.submit_batch([NOOP, NOOP, FAIL])
        for job_id in b["job_ids"]:
            c.wait(job_id, timeout=30)
        single = submit(c, NOOP)  # not in a batch: nothing for a batch target
        c.wait(single, timeout=30)
        msg = rx.get()
        assert msg["event"] == "batch_end"
        assert msg["batch"]["batch_id"] == b["batch_id"]
        assert (msg["batch"]["total"], msg["batch"]["completed"],
                msg["batch"]["failed"]) == (3, 2, 1)
        assert b["batch_id"] in msg["text"] and "done" in msg["text"]
        # a retry joins its batch: when it ends, the batch is reported done again
        again = c.retry(b["job_ids"][2])
        c.wait(again, timeout=30)
        msg = rx.get()
        assert (msg["batch"]["batch_id"], msg["batch"]["total"], msg["batch"]["failed"],
                msg["batch"]["last_job_id"]) == (b["batch_id"], 4, 2, again)
        b2 = c.submit_batch([NOOP])
        c.wait(b2["job_ids"][0], timeout=30)
        assert rx.get()["batch"]["batch_id"] == b2["batch_id"]
        # a batch cancelled at once: its job ends arrive together, one message
        b3 = c.submit_batch([{**NOOP, "hold": True}] * 5)
        assert len(c.cancel_batch(b3["batch_id"])["cancelled"]) == 5
        msg = rx.get()
        assert (msg["batch"]["batch_id"], msg["batch"]["cancelled"]) == (b3["batch_id"], 5)
        idle(c)
        assert len(rx.requests) == 4  # exactly one message per batch end


def test_url_not_on_allow_list_is_refused(make_daemon, receiver):
    rx = receiver()
    d = make_daemon(notify_allowed_hosts=[f"127.0.0.1:{rx.port}"])
    with Client(d.socket) as c:
        for url, why in ((f"http://127.0.0.1:{free_port()}/x", "not on this labd's "
                          "notify_allowed_hosts"),
                         ("http://example.com/hook", "ask an admin"),
                         (f"http://127.0.0.1:{rx.port}@example.com/", "user name"),
                         (f"http://x@127.0.0.1:{rx.port}/", "user name"),
                         ("gopher://127.0.0.1/", "http:// or https://")):
            with pytest.raises(InvalidParams) as e:
                c.notify(url)
            assert why in e.value.message
        with pytest.raises(InvalidParams, match="on"):
            c.call("notify_add", url=rx.url, on="sometimes")
        assert c.notify_list() == []
    d2 = make_daemon()  # no allow-list: webhooks disabled, and the error says which setting
    with Client(d2.socket) as c:
        with pytest.raises(InvalidParams, match="notify_allowed_hosts") as e:
            c.notify(rx.url)
        assert "disabled" in e.value.message
        assert c.notify_status()["enabled"] is False


def test_500_then_200_is_retried(make_daemon, receiver):
    rx = receiver([500, 503])
    d = make_daemon(notify_allowed_hosts=[f"127.0.0.1:{rx.port}"], **FAST)
    with Client(d.socket) as c:
        t = c.notify(rx.url)
        job = submit(c, NOOP)
        c.wait(job, timeout=30)
        assert rx.get()["job"]["job_id"] == job
        st = idle(c)
        [row] = st["targets"]
        assert row["id"] == t["id"]
        assert (row["attempts"], row["delivered"], row["failed"]) == (3, 1, 0)
        assert row["last_status"] == "ok" and row["last_error"] is None
        assert len(rx.requests) == 3


def test_dead_receivers_never_delay_jobs(make_daemon):
    refused = free_port()
    hang = socket.socket()  # accepts connections (backlog) but never answers
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    hang_port = hang.getsockname()[1]
    try:
        d = make_daemon(notify_allowed_hosts=[f"127.0.0.1:{refused}",
                                              f"127.0.0.1:{hang_port}"],
                        notify_retries=1, notify_backoff_s=0.05, notify_timeout_s=60,
                        notify_concurrency=2, notify_drain_s=0.5)
        with Client(d.socket) as c:
            dead = c.notify(f"http://127.0.0.1:{refused}/")
            c.notify(f"http://127.0.0.1:{hang_port}/", on="all")
            t0 = time.monotonic()
            ids = [submit(c, NOOP) for _ in range(8)]
            for job_id in ids:
                assert c.wait(job_id, timeout=30).status == "completed"
            # a hanging receiver holds its delivery for 60 s; no job waited on it
            assert time.monotonic() - t0 < 30

            def dead_failed():
                rows = {t["id"]: t for t in c.notify_status()["targets"]}
                return rows[dead["id"]] if rows[dead["id"]]["failed"] else None
            row = until(dead_failed, what="the refused delivery to be recorded")
            assert row["last_status"] == "failed"
            assert "connection refused" in row["last_error"]
            r = c.notify_test(dead["id"])
            assert r["ok"] is False and "refused" in r["error"]
            assert c.health()["status"] == "ok"
        # shutdown is bounded by notify_drain_s, not by the 60 s hang
        t0 = time.monotonic()
        assert d.terminate(timeout=30) == 0
        assert time.monotonic() - t0 < 15
    finally:
        hang.close()


def test_full_queue_drops_and_counts(make_daemon):
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    port = hang.getsockname()[1]
    try:
        # one delivery slot, held by a receiver that never answers: the worker blocks on
        # its second event, two more fit the queue, every later one is dropped
        d = make_daemon(notify_allowed_hosts=[f"127.0.0.1:{port}"], notify_queue_max=2,
                        notify_concurrency=1, notify_timeout_s=60, notify_retries=0)
        with Client(d.socket) as c:
            c.notify(f"http://127.0.0.1:{port}/")
            b = c.submit_batch([NOOP] * 12)
            for job_id in b["job_ids"]:
                assert c.wait(job_id, timeout=30).status == "completed"
            st = c.notify_status()
            assert st["dropped"] >= 12 - 4
            assert st["queue_length"] <= st["queue_max"] == 2
            assert "dropped" in subprocess.run(
                [sys.executable, "-m", "labd_client.labctl", "--socket", str(d.socket),
                 "notify", "status"], capture_output=True, text=True, timeout=60).stdout
    finally:
        hang.close()


def test_targets_persist_across_restart_with_last_error(make_daemon):
    refused = free_port()
    d = make_daemon(notify_allowed_hosts=[f"127.0.0.1:{refused}"], **FAST)
    with Client(d.socket) as c:
        t = c.notify(f"http://127.0.0.1:{refused}/")
        assert c.notify_test(t["id"])["ok"] is False
    assert d.terminate() == 0
    d.start()
    with Client(d.socket) as c:
        [row] = c.notify_status()["targets"]
        assert row["id"] == t["id"] and row["last_status"] == "failed"
        assert "refused" in row["last_error"] and row["attempts"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uid")
def test_other_account_cannot_touch_your_target(make_daemon, receiver):
    rx = receiver()
    d = make_daemon(socket_mode=0o666, notify_allowed_hosts=[f"127.0.0.1:{rx.port}"])
    with Client(d.socket) as c:
        mine = c.notify(rx.url)
    remove, test, listed, everyone, added = as_uid(OTHER, d.socket, [
        ("notify_remove", {"id": mine["id"]}), ("notify_test", {"id": mine["id"]}),
        ("notify_list", {}), ("notify_list", {"all": True}),
        ("notify_add", {"url": rx.url, "on": "failures"})])
    assert remove["error"]["code"] == PermissionDenied.code
    assert "another account" in remove["error"]["message"]
    assert test["error"]["code"] == PermissionDenied.code
    assert listed["result"]["targets"] == []
    assert everyone["error"]["code"] == PermissionDenied.code
    theirs = added["result"]
    assert rx.bodies.empty()  # the refused test sent nothing
    with Client(d.socket) as c:  # root is an admin: sees all, others' URLs redacted
        rows = {t["id"]: t for t in c.notify_list(all=True)}
        assert set(rows) == {mine["id"], theirs["id"]}
        assert rows[theirs["id"]]["url"] == f"http://127.0.0.1:{rx.port}/…"
        assert rows[mine["id"]]["url"] == rx.url
        # and an admin's own job does not notify another account's target
        job = submit(c, FAIL)
        c.wait(job, timeout=30)
        assert rx.get()["job"]["job_id"] == job
        idle(c)
        assert len(rx.requests) == 1
        c.notify_remove(theirs["id"])
        with pytest.raises(NotFound):
            c.notify_remove(theirs["id"])


def test_labctl_notify_round_trip(make_daemon, receiver):
    rx = receiver()
    d = make_daemon(notify_allowed_hosts=[f"127.0.0.1:{rx.port}"], **FAST)

    def labctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "labd_client.labctl", "--socket",
                               str(d.socket), "notify", *args],
                              capture_output=True, text=True, timeout=60)
    r = labctl("add", rx.url, "--on", "failures", "--json")
    assert r.returncode == 0, r.stderr
    tid = json.loads(r.stdout)["id"]
    r = labctl("list")
    assert r.returncode == 0 and tid in r.stdout and "on=failures" in r.stdout
    r = labctl("test", tid)
    assert r.returncode == 0 and "delivered" in r.stdout
    assert rx.get()["event"] == "test"
    r = labctl("status")
    assert r.returncode == 0 and "1 delivered" in r.stdout and "last: ok" in r.stdout
    r = labctl("status", "--json")
    assert json.loads(r.stdout)["targets"][0]["id"] == tid
    r = labctl("add", "http://example.com/x")
    assert r.returncode == 2 and "notify_allowed_hosts" in r.stderr
    r = labctl("add", rx.url, "--on", "failures")
    assert r.returncode == 5 and "already have" in r.stderr
    r = labctl("remove", tid)
    assert r.returncode == 0 and "removed" in r.stdout
    r = labctl("remove", tid)
    assert r.returncode == 3
    r = labctl("remove", "not-an-id")
    assert r.returncode == 2
    assert "no notification targets" in labctl("list").stdout


async def test_post_errors_are_reported_not_raised():
    """The HTTP POST itself, against odd receivers: each failure is a short reason."""
    import asyncio
    from labd.notify import WebhookSender
    from labd.settings import Settings

    async def consume(reader):  # the whole request: closing with unread data resets
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)

    async def closer(reader, writer):
        await consume(reader)
        writer.close()

    async def garbage(reader, writer):
        await consume(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        writer.close()

    async def redirect(reader, writer):
        await consume(reader)
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\n\r\n")
        await writer.drain()
        writer.close()
    async def plain(reader, writer):  # answers at once, whatever came (a TLS hello)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
    servers = [await asyncio.start_server(h, "127.0.0.1", 0)
               for h in (closer, garbage, redirect, plain)]
    ports = [srv.sockets[0].getsockname()[1] for srv in servers]
    try:
        sender = WebhookSender(Settings(notify_allowed_hosts=[f"127.0.0.1:{p}" for p in ports],
                                        notify_timeout_s=5), store=None)  # type: ignore
        msg = {"text": "hi"}
        closed, bad, moved = [await sender.post(f"http://127.0.0.1:{p}/", msg)
                              for p in ports[:3]]
        assert "closed the connection" in closed
        assert "not HTTP" in bad
        assert moved == "HTTP 302"  # redirects are not followed off the allow-list
        tls = await sender.post(f"https://127.0.0.1:{ports[3]}/", msg)  # not TLS there
        assert tls is not None and ("TLS" in tls or "reach" in tls), tls
        assert "not on" in await sender.post("http://127.0.0.1:1/", msg)
    finally:
        for srv in servers:
            srv.close()


def test_async_client_notify_verbs(make_daemon, receiver):
    import asyncio
    from labd_client import AsyncClient
    rx = receiver()
    d = make_daemon(notify_allowed_hosts=[f"127.0.0.1:{rx.port}"], **FAST)

    async def go():
        async with AsyncClient(d.socket) as c:
            t = await c.notify(rx.url, on="batch")
            assert [x["id"] for x in await c.notify_list()] == [t["id"]]
            assert (await c.notify_test(t["id"]))["ok"] is True
            st = await c.notify_status()
            assert st["enabled"] and st["targets"][0]["delivered"] == 1
            assert (await c.notify_remove(t["id"]))["removed"] is True
            assert await c.notify_list() == []
    asyncio.run(go())
    assert rx.get()["event"] == "test"


def test_job_a_crash_interrupted_is_reported_after_restart(make_daemon, receiver):
    rx = receiver()
    d = make_daemon(notify_allowed_hosts=[f"127.0.0.1:{rx.port}"], **FAST)
    with Client(d.socket) as c:
        c.notify(rx.url, on="failures")
        job = c.submit("SleepExperiment", "experiments.diagnostics.sleep",
                       {"seconds": 60, "steps": 600})
        until(lambda: c.get(job).status == "running", what="the job to run")
    d.kill()
    d.start()
    msg = rx.get()
    assert msg["job"]["job_id"] == job and msg["job"]["end_reason"] == "crash"
