"""Hostile input on the socket: malformed frames, slow and idle clients, and property-based
params. Every frame gets a JSON-RPC error or a closed connection; the daemon keeps serving
others; nothing it stored changes."""
from __future__ import annotations

import json
import random
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labd_client import Client

MAX_FRAME = 65536
STANDARD_CODES = {-32700, -32600, -32601, -32602, -32001, -32002, -32003, -32004}


def state(d) -> str:
    """Everything the daemon stores that a client can see (compared before/after)."""
    with Client(d.socket) as c:
        jobs = [(j.job_id, j.status) for j in c.history(limit=10000)]
        versions = {t["name"]: c.config_versions(t["name"])["versions"]
                    for t in c.config_types()}
        return json.dumps([jobs, versions, c.queue()["total_pending"]], sort_keys=True)


class Conn:
    def __init__(self, path) -> None:
        self.path = path
        self.open()

    def open(self) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(str(self.path))
        self.buf = b""

    def exchange(self, frame: bytes) -> dict | None:
        """Send one frame; the reply, or None if the daemon closed the connection."""
        try:
            self.s.sendall(frame + b"\n")
            while b"\n" not in self.buf:
                chunk = self.s.recv(1 << 16)
                if not chunk:
                    raise ConnectionResetError
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            self.s.close()
            self.open()
            return None
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def malformed_frames(rng: random.Random, n: int) -> list[bytes]:
    valid = {"jsonrpc": "2.0", "method": "health", "id": 1}
    bad_params = [  # well-formed requests whose params must all be refused
        ("submit", {"experiment_class": "X", "experiment_module": "os"}),
        ("submit", {"experiment_class": "system", "experiment_module": "subprocess"}),
        ("submit", {"experiment_class": "A", "experiment_module": "experiments/../x"}),
        ("submit", {"experiment_class": "NoOpExperiment",
                    "experiment_module": "experiments.diagnostics.noop", "priority": 10**30}),
        ("get", {"job_id": "../../etc/passwd"}), ("cancel", {"job_id": ["JOB"]}),
        ("history", {"limit": 10**20}), ("config.push", {"type": "../x", "content": "a"}),
        ("config.pull", {"type": 7}), ("logs", {"job_id": "JOB-1", "offset": -5}),
        ("submit_batch", {"jobs": []}), ("set_priority", {"job_id": 1, "priority": "hi"}),
    ]
    makers = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))).replace(
            b"\n", b" "),                                                     # binary
        lambda: json.dumps(valid)[:rng.randint(1, 40)].encode(),              # truncated
        lambda: b"{" * rng.randint(1, 50) + b"}",                             # garbage
        lambda: b"[" * rng.randint(2000, 20000),                              # deep nesting
        lambda: b'{"jsonrpc":"2.0","method":"health","id":' + b"9" * 5000 + b"}",  # huge int
        lambda: b'{"jsonrpc":"2.0","method":"health","id":1e99999}',
        lambda: json.dumps({"jsonrpc": "2.0", "method": rng.choice([5, None, [], {}]),
                            "id": 1}).encode(),                               # wrong types
        lambda: json.dumps({"jsonrpc": "1.0", "method": "health", "id": 1}).encode(),
        lambda: json.dumps({"jsonrpc": "2.0", "method": "health", "params": "x",
                            "id": 1}).encode(),
        lambda: json.dumps({"jsonrpc": "2.0", "method": "health", "id": {"a": 1}}).encode(),
        lambda: json.dumps([valid] * rng.randint(101, 300)).encode(),         # batch too big
        lambda: b"[]",
        lambda: json.dumps({"jsonrpc": "2.0", "method": "no.such", "id": 2}).encode(),
        lambda: json.dumps({"jsonrpc": "2.0", "method": "submit", "params": [1, 2],
                            "id": 3}).encode(),                               # positional
        lambda: (lambda m, p: json.dumps({"jsonrpc": "2.0", "method": m, "params": p,
                                          "id": 4}).encode())(*rng.choice(bad_params)),
        lambda: b"\xff\xfe" + "ü".encode("utf-16") + b"}",                    # not UTF-8
    ]
    return [rng.choice(makers)() for _ in range(n)]


def test_ten_thousand_malformed_frames(make_daemon):
    d = make_daemon(max_frame_bytes=MAX_FRAME)
    before = state(d)
    rng = random.Random(1234)
    conn = Conn(d.socket)
    frames = malformed_frames(rng, 10_000)
    frames += [b'{"jsonrpc":"2.0","method":"health","id":1,"params":{"p":"' +
               b"x" * (2 * MAX_FRAME) + b'"}}'] * 20                        # oversize
    closed = answered = 0
    for frame in frames:
        reply = conn.exchange(frame)
        if reply is None:
            closed += 1
            continue
        answered += 1
        replies = reply if isinstance(reply, list) else [reply]
        for r in replies:
            assert "error" in r and r["error"]["code"] in STANDARD_CODES, (frame[:200], r)
            assert "Traceback" not in r["error"]["message"]
    assert answered + closed == len(frames) and answered > 9000
    assert d.proc.poll() is None
    assert d.rpc("health")["result"]["status"] == "ok"
    assert state(d) == before


def test_any_json_id_is_echoed_exactly(make_daemon):
    """Replies are encoded by orjson, which refuses ints beyond 64 bits: JSON allows them."""
    conn = Conn(make_daemon().socket)
    for rid in (2 ** 70, -2 ** 63, 2 ** 64 - 1, "é" * 50, 1.5, None):
        reply = conn.exchange(json.dumps({"jsonrpc": "2.0", "method": "health",
                                          "id": rid}).encode())
        assert reply["id"] == rid and reply["result"]["status"] == "ok"


def test_a_client_that_hangs_up_mid_request_leaves_consistent_state(make_daemon):
    """A submit whose client disconnects while the commit is under way is either not
    stored or stored and queued: never stored but missing from the queue."""
    d = make_daemon()
    with Client(d.socket) as c:
        c.pause()
        for i in range(100):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(d.socket))
            s.sendall(json.dumps({"jsonrpc": "2.0", "method": "submit", "id": i, "params": {
                "experiment_class": "NoOpExperiment", "user": "hangs-up",
                "experiment_module": "experiments.diagnostics.noop"}}).encode() + b"\n")
            time.sleep(i * 2e-5)  # hang up at some point between 0 and 2 ms
            s.close()
        time.sleep(0.5)
        stored = {j.job_id for j in c.history(user="hangs-up", limit=1000)}
        queued = {r["job_id"] for r in c.queue(user="hangs-up")["pending"]}
        assert stored, "no submit got far enough to be stored: the test proves nothing"
        assert stored == queued


def test_a_wait_ends_when_its_client_hangs_up(make_daemon):
    d = make_daemon()
    with Client(d.socket) as c:
        c.pause()
        job_id = c.submit("NoOpExperiment", "experiments.diagnostics.noop")
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(d.socket))
        s.sendall(json.dumps({"jsonrpc": "2.0", "method": "wait", "id": 1, "params": {
            "job_id": job_id, "timeout": 3600}}).encode() + b"\n")
        deadline = time.monotonic() + 10
        while c.health()["waits"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        s.close()
        while c.health()["waits"] != 0:
            assert time.monotonic() < deadline, "the wait outlived its client"
            time.sleep(0.02)


def test_unread_replies_are_bounded_over_all_connections(make_daemon):
    """Each connection may hold 16 frames of unread replies, and nothing bounded their sum:
    one account's sockets that ask for big replies and never read grew the daemon by
    their number times 16 MB. Past max_unsent_bytes in all, a connection that does not
    read is closed."""
    d = make_daemon(max_frame_bytes=1024 * 1024, max_unsent_bytes=32 * 1024 * 1024)
    content = "".join(f"- {'x' * 100}{i}\n" for i in range(9000))   # a 0.95 MB reply
    d.rpc("config.push", type="multiphoton_config", content=content)
    pull = json.dumps({"jsonrpc": "2.0", "method": "config.pull", "id": 1,
                       "params": {"type": "multiphoton_config"}}).encode() + b"\n"
    deaf = []
    for _ in range(24):   # 24 x 16 replies: 365 MB if each connection may keep its own
        s = socket.socket(socket.AF_UNIX)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(str(d.socket))
        s.sendall(pull * 16)
        deaf.append(s)
    try:
        deadline = time.monotonic() + 60
        while d.log().count("does not read its replies") < 20:   # ~2 fit in 32 MB
            assert time.monotonic() < deadline, d.log()[-2000:]
            time.sleep(0.05)
        assert d.rpc("health")["result"]["status"] == "ok"
    finally:
        for s in deaf:
            s.close()


def test_waits_do_not_hold_the_connection_and_end_when_it_hangs_up(make_daemon):
    """A notebook's gather(client.wait(j) for j in batch) parks more waits on one
    connection than the 64 calls handled at once. Those 64 used to stop the daemon reading
    it: the client's other calls got no answer, and when it hung up, 64 waits stayed
    parked (for their timeout, up to 7 days) with its connection slot."""
    d = make_daemon()
    job = d.rpc("submit", hold=True, experiment_class="NoOpExperiment",
                experiment_module="experiments.diagnostics.noop")["result"]["job_id"]
    conn = Conn(d.socket)
    waits = b"".join(json.dumps({"jsonrpc": "2.0", "method": "wait", "id": i, "params": {
        "job_id": job, "timeout": 3600}}).encode() + b"\n" for i in range(200))
    reply = conn.exchange(waits + b'{"jsonrpc": "2.0", "method": "health", "id": "h"}')
    assert reply["id"] == "h" and reply["result"]["waits"] == 200, reply
    conn.s.close()
    deadline = time.monotonic() + 30
    while d.rpc("health")["result"]["waits"]:
        assert time.monotonic() < deadline, "waits outlived their client"
        time.sleep(0.01)


def test_a_half_closed_client_gets_its_reply(make_daemon):
    """`printf '{...}\\n' | socat - UNIX-CONNECT:labd.sock` shuts its sending side after the
    request: that EOF was taken for a hang-up, and the reply of a submit that was stored
    and queued was dropped."""
    d = make_daemon()
    d.rpc("pause")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(d.socket))
        s.sendall(json.dumps({"jsonrpc": "2.0", "method": "submit", "id": 1, "params": {
            "experiment_class": "NoOpExperiment",
            "experiment_module": "experiments.diagnostics.noop"}}).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert json.loads(reply)["result"]["job_id"].startswith("JOB-"), reply


def test_idle_slow_half_frame_and_non_reading_clients(make_daemon):
    d = make_daemon(max_frame_bytes=MAX_FRAME, max_connections_per_user=4096)  # one account
    idle = []
    for _ in range(2000):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(d.socket))
        idle.append(s)
    half = socket.socket(socket.AF_UNIX)
    half.connect(str(d.socket))
    half.sendall(b'{"jsonrpc":"2.0","method":"hea')  # and never finishes it
    slow = socket.socket(socket.AF_UNIX)
    slow.connect(str(d.socket))
    deaf = socket.socket(socket.AF_UNIX)  # subscribes to everything, never reads
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    deaf.connect(str(d.socket))
    deaf.sendall(json.dumps({"jsonrpc": "2.0", "method": "subscribe", "id": 1,
                             "params": {"topics": ["job", "log", "progress"]}}).encode() + b"\n")
    try:
        with Client(d.socket) as c:
            t0 = time.monotonic()
            assert c.health()["status"] == "ok"
            request = json.dumps({"jsonrpc": "2.0", "method": "health", "id": 7}).encode()
            for i in range(len(request)):  # one byte at a time, while others are served
                slow.sendall(request[i:i + 1])
                if i % 10 == 0:
                    assert c.health()["status"] == "ok"
                time.sleep(0.005)
            slow.sendall(b"\n")
            slow.settimeout(10)
            assert json.loads(slow.makefile("rb").readline())["result"]["status"] == "ok"
            chatty = c.submit("HugeOutput", "labtest_experiments.faults", {"lines": 20000})
            assert c.wait(chatty, timeout=60).is_successful()
            assert time.monotonic() - t0 < 60
        deaf.settimeout(5)
        got = 0
        try:  # the daemon dropped the deaf client instead of buffering without bound
            while chunk := deaf.recv(1 << 20):
                got += len(chunk)
        except (ConnectionResetError, socket.timeout):
            pass
        assert got < 16 * MAX_FRAME + (1 << 20)
        assert "does not read its replies" in d.log()
    finally:
        for s in (*idle, half, slow, deaf):
            s.close()
    assert d.rpc("health")["result"]["status"] == "ok"


KEYS = ["job_id", "experiment_class", "experiment_module", "experiment_config", "priority",
        "user", "limit", "cursor", "status", "type", "content", "version_id", "offset",
        "max_bytes", "topics", "job_ids", "jobs", "batch_id", "os_user", "a", "b", "after",
        "not_before", "hold", "time_limit_s", "config_versions", "inline_configs", "since",
        "call"]
SPECIAL = st.sampled_from([
    "JOB-20261124-00001", "CFG-HW-20261124-00001", "experiments.diagnostics.noop",
    "NoOpExperiment", "hardware_config", "../../etc/passwd", "os", "", "\x00", "💥" * 50,
    "2026-11-24T10:00:00", "2026-11-24T10:00:00+00:00", "BATCH-0123456789ab"])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70) |
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20) | SPECIAL,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
METHODS = ["submit", "submit_batch", "get", "cancel", "cancel_batch", "cancel_user",
           "queue", "history", "logs", "subscribe", "unsubscribe", "health", "rerun", "retry",
           "hold", "release", "set_priority", "config.push", "config.pull",
           "config.versions", "config.show", "config.set_main", "config.history",
           "config.diff", "config.verify", "config.types"]


@pytest.fixture(scope="module")
def paused_daemon():
    from daemon_harness import Daemon
    d = Daemon().start()
    with Client(d.socket) as c:
        c.pause()  # random submits may be valid: keep them from running
    yield d
    d.close()


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS),
       params=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6) | VALUES)
def test_random_params_never_cause_internal_errors(paused_daemon, method, params):
    req = {"jsonrpc": "2.0", "method": method, "id": 42}
    if params is not None:
        req["params"] = params
    conn = Conn(paused_daemon.socket)   # raw: any params, even a key named "method"
    try:
        reply = conn.exchange(json.dumps(req).encode())
    finally:
        conn.s.close()
    assert reply is not None
    if "error" in reply:
        assert reply["error"]["code"] in STANDARD_CODES, (method, params, reply)
    else:
        assert "result" in reply


EXTREMES = [
    ("history", {"since": "0001-01-01T00:00:00+00:00"}),
    ("history", {"since": "0001-01-01T00:00:00+14:00"}),
    ("history", {"since": "9999-12-31T23:59:59+00:00"}),
    ("history", {"since": "9999-12-31T23:59:59-14:00"}),
    ("history", {"cursor": 2**70}),
    ("history", {"cursor": 2**63}),
    ("logs", {"job_id": "JOB-20261124-00001", "offset": 2**64}),
    ("logs", {"job_id": "JOB-20261124-00001", "offset": 2**63}),
    ("submit", {"experiment_class": "NoOpExperiment",
                "experiment_module": "experiments.diagnostics.noop",
                "not_before": "0001-01-01T00:00:00+14:00"}),
    ("submit", {"experiment_class": "NoOpExperiment",
                "experiment_module": "experiments.diagnostics.noop",
                "not_before": "9999-12-31T23:59:59-14:00"}),
    ("submit", {"experiment_class": "NoOpExperiment",
                "experiment_module": "experiments.diagnostics.noop",
                "not_before": "9999-12-31T23:59:59+00:00"}),
]


@pytest.mark.parametrize("method, params", EXTREMES, ids=lambda v: str(v)[:40])
def test_extreme_values_are_invalid_params_or_answered(paused_daemon, method, params):
    """Dates at the ends of the calendar and integers beyond 64 bits are either answered or
    refused as invalid params; never an internal error."""
    if method == "logs":   # a real job, with a real (short) log
        job = paused_daemon.rpc("submit", experiment_class="NoOpExperiment",
                                experiment_module="experiments.diagnostics.noop")
        params = {**params, "job_id": job["result"]["job_id"]}
    reply = paused_daemon.rpc(method, **params)
    assert "result" in reply or reply["error"]["code"] == -32602, reply
    assert paused_daemon.rpc("health")["result"]["status"] in ("ok", "paused")


def test_a_param_named_like_the_methods_own_argument_is_an_invalid_param(paused_daemon):
    """Every method is called as method(call, **params): a param named "call" was an
    internal error whose data carried Python's TypeError text."""
    for method in METHODS:
        reply = paused_daemon.rpc(method, call=1)
        assert reply["error"]["code"] == -32602 and "call" in reply["error"]["message"], \
            (method, reply)


@pytest.mark.parametrize("offset", [2**63 - 1, 2**63, 2**64, 2**70])
def test_read_log_past_any_file_offset_is_just_nothing_yet(tmp_path, offset):
    from labd.job_log import read_log
    log = tmp_path / "JOB-20261124-00001.log"
    log.write_text("line\n")
    assert read_log(log, offset, 1024, final=True) == ("", offset)
