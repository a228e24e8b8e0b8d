"""The socket under load and abuse (issue #15): the listen backlog asked for, no file but a
stale socket ever deleted at the socket path, and reply sizes capped."""
from __future__ import annotations

import errno
import json
import socket

import pytest

from labd.rpc_server import bind_socket
from labd.settings import Settings
from labd_client import Client

DEFAULT_MAX_REPLY_BYTES = Settings.model_fields["max_reply_bytes"].default

NOOP = {"experiment_class": "NoOpExperiment",
        "experiment_module": "experiments.diagnostics.noop"}


def test_500_simultaneous_connects_are_all_accepted(make_daemon):
    d = make_daemon()
    socks, refused = [], 0
    try:
        for _ in range(500):      # as fast as the kernel takes them: the backlog decides
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            err = s.connect_ex(str(d.socket))
            refused += err in (errno.EAGAIN, errno.ECONNREFUSED, errno.ECONNRESET)
            socks.append(s)
        assert refused == 0, f"{refused} of 500 connects refused"
        request = json.dumps({"jsonrpc": "2.0", "method": "health", "id": 1}).encode()
        for s in socks:
            s.setblocking(True)
            s.settimeout(30)
            s.sendall(request + b"\n")
        for s in socks:
            assert b'"result"' in s.makefile("rb").readline()
    finally:
        for s in socks:
            s.close()


def test_bind_refuses_a_file_that_is_not_a_socket(tmp_path):
    path = tmp_path / "labd.sock"
    path.write_text("someone's notes")
    with pytest.raises(RuntimeError, match="is not a socket; labd will not delete it"):
        bind_socket(path, 0o660, None)
    assert path.read_text() == "someone's notes"


def test_bind_replaces_only_a_stale_socket(tmp_path):
    path = tmp_path / "labd.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()                  # left behind by a crash: nobody listens
    bind_socket(path, 0o660, None).close()
    live = bind_socket(tmp_path / "live.sock", 0o660, None)
    try:
        with pytest.raises(RuntimeError, match="already listening"):
            bind_socket(tmp_path / "live.sock", 0o660, None)
    finally:
        live.close()


def test_the_socket_path_appears_only_once_it_listens(tmp_path, monkeypatch):
    """A client that finds the socket can connect: it is set up under another name and
    renamed into place after listen() (a client polling for the path at start-up got
    "nothing listening")."""
    path = tmp_path / "labd.sock"
    seen = []
    real_listen = socket.socket.listen

    def listen(self, *args):
        seen.append(path.exists())
        return real_listen(self, *args)
    monkeypatch.setattr(socket.socket, "listen", listen)
    sock = bind_socket(path, 0o660, None)
    try:
        assert seen == [False]
        assert sorted(tmp_path.iterdir()) == [path]                # no temporary left
        assert oct(path.stat().st_mode & 0o777) == oct(0o660)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        sock.close()


def test_a_small_batch_cannot_ask_for_a_huge_reply(make_daemon):
    """100 calls in one ~8 KB request, each echoing a 500 KB expt config: the total is
    capped and the calls over it get a LimitExceeded error saying what to do."""
    d = make_daemon()
    assert "result" in d.rpc("pause")
    job = d.rpc("submit", experiment_class="Bulky",
                experiment_module="labtest_experiments.bulky",
                experiment_config={"blob": "x" * 500_000})["result"]["job_id"]
    batch = [{"jsonrpc": "2.0", "method": "get", "params": {"job_id": job}, "id": i}
             for i in range(100)]
    request = json.dumps(batch, separators=(",", ":")).encode() + b"\n"
    assert len(request) <= 8192
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(d.socket))
        s.sendall(request)
        reply = s.makefile("rb").readline()
    assert len(reply) < DEFAULT_MAX_REPLY_BYTES + 100 * 400
    items = json.loads(reply)
    assert [r["id"] for r in items] == list(range(100))
    errors = [r["error"] for r in items if "error" in r]
    assert len(errors) > 50 and all(e["code"] == -32004 for e in errors)
    assert "page with cursor" in errors[0]["message"] and "fewer calls" in errors[0]["message"]
    with Client(d.socket) as c:
        assert c.health()["status"] in ("ok", "paused")
