"""The Unix-socket JSON-RPC 2.0 server: newline-delimited frames with a size cap, the
caller's identity from SO_PEERCRED, requests on one connection handled concurrently, and
server-pushed notifications for subscribed events."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import stat
from collections import Counter
from contextvars import ContextVar
from typing import Any, Awaitable, Callable, Iterator

from jsonrpcserver import async_dispatch
from jsonrpcserver.async_dispatcher import call
from jsonrpcserver.dispatcher import create_request, to_response
from jsonrpcserver.response import to_serializable
from jsonrpcserver.sentinels import NOID

from labd_client.protocol import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, LimitExceeded
from labd_client.protocol import frame
from .identity import AdminPolicy, Peer

log = logging.getLogger(__name__)

MAX_INFLIGHT_PER_CONNECTION = 64    # calls being handled; a long wait is not one of them
MAX_WAITS_PER_CONNECTION = 10_000   # long waits parked on one connection
SUM_UNSENT_PAST = 1024 * 1024   # a connection with this much unsent checks the sum of all
LISTEN_BACKLOG = 1024


def _error_frame(code: int, message: str) -> bytes:
    """A JSON-RPC error not tied to a request (id null): the frame itself was bad."""
    return frame({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": None})


MAX_BATCH = 100
_REQUEST_KEYS = frozenset(("jsonrpc", "method", "params", "id"))


def validate_request(req: Any) -> Any:
    """The JSON-RPC 2.0 request schema jsonrpcserver ships, checked in plain Python (its
    jsonschema validation cost more than the rest of a submit), plus a batch size cap."""
    items = req if isinstance(req, list) else [req]
    if not items or len(items) > MAX_BATCH:
        raise ValueError("empty or oversized batch")
    for r in items:
        if not (isinstance(r, dict) and r.get("jsonrpc") == "2.0"
                and isinstance(r.get("method"), str) and r.keys() <= _REQUEST_KEYS
                and isinstance(r.get("params", []), (list, dict))):
            raise ValueError("not a JSON-RPC 2.0 request")
        rid = r.get("id")
        if isinstance(rid, bool) or not (rid is None or isinstance(rid, (str, int, float))):
            raise ValueError("bad id")
    return req


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)


def _deserialize(text: str) -> Any:
    """Strict JSON: NaN/Infinity (which we could not echo back as valid JSON) are refused.
    (One decoder for all: json.loads with these options builds one per call.)"""
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# frees the in-flight slot of the request being handled (see long_call)
_free_slot: ContextVar[Callable[[], None] | None] = ContextVar("labd_free_slot", default=None)


@contextlib.contextmanager
def long_call(conn: Any) -> Iterator[None]:
    """Around a call that waits long (``wait``): its in-flight slot is freed, so the
    connection is still read while it waits, for the client's other calls and for its
    hang-up (which ends the wait). Such waits are bounded per connection instead."""
    if not isinstance(conn, Connection):   # the dashboard's or a schedule's caller
        yield
        return
    if conn.waits >= MAX_WAITS_PER_CONNECTION:
        raise LimitExceeded(f"{MAX_WAITS_PER_CONNECTION} waits are open on this connection "
                            "already; wait for fewer jobs at once, or subscribe to job events")
    free = _free_slot.get()
    if free is not None:
        free()
    conn.waits += 1
    try:
        yield
    finally:
        conn.waits -= 1


class Connection:
    """One client connection; also an EventBus subscriber once it subscribes."""

    def __init__(self, peer: Peer, writer: asyncio.StreamWriter, max_queue: int,
                 server: "RpcServer") -> None:
        self.peer = peer
        self.writer = writer
        self.server = server   # for the bound on unsent replies over all connections
        self.topics: set[str] = set()       # "job", "progress", "log"
        self.job_ids: set[str] | None = None  # None: all jobs
        self.max_queue = max_queue
        self.closed = False
        self.calls: set[asyncio.Task] = set()   # its requests being handled
        self.waits = 0                          # of them, long waits (see long_call)
        # Done when the client hangs up. Calls in flight are not cancelled then (a submit
        # cancelled between its commit and the heap would be stored but never run); the
        # one long call, wait, ends early on it instead.
        self.gone: asyncio.Future = asyncio.get_running_loop().create_future()

    def wants(self, event: dict[str, Any]) -> bool:
        return event.get("type") in self.topics and (
            self.job_ids is None or event.get("job_id") in self.job_ids)

    def deliver(self, event: dict[str, Any]) -> None:
        self.send(frame({"jsonrpc": "2.0", "method": "event", "params": event}))

    def send(self, data: bytes) -> None:
        """Queue one frame (from frame())."""
        if self.closed:
            return
        transport = self.writer.transport
        queued = transport.get_write_buffer_size()
        if queued > self.max_queue or \
                queued > SUM_UNSENT_PAST and self.server.unsent() > self.server.max_unsent:
            log.warning("closing connection of %s: it does not read its replies",
                        self.peer.username)
            self.closed = True
            transport.abort()
            return
        self.writer.write(data)


class RpcServer:
    def __init__(self, methods: dict[str, Callable[..., Awaitable[Any]]],
                 policy: AdminPolicy, make_context: Callable[[Connection], Any],
                 max_frame_bytes: int, max_connections: int, max_per_user: int,
                 on_disconnect: Callable[[Connection], None], max_reply_bytes: int,
                 max_unsent_bytes: int) -> None:
        self.methods = methods
        self.max_reply = max_reply_bytes
        self.policy = policy
        self.make_context = make_context
        self.max_frame = max_frame_bytes
        self.max_connections = max_connections
        self.max_per_user = max_per_user
        self.max_unsent = max_unsent_bytes
        self._per_uid: Counter[int] = Counter()
        self.on_disconnect = on_disconnect
        self.connections: set[Connection] = set()
        self._calls: set[asyncio.Task] = set()
        self._server: asyncio.base_events.Server | None = None

    def unsent(self) -> int:
        """Bytes of replies queued for all clients (asked only by a connection that has
        a lot queued, so a scan of the connections is rare)."""
        return sum(c.writer.transport.get_write_buffer_size() for c in self.connections
                   if not c.closed)

    async def start(self, sock: socket.socket) -> None:
        # asyncio listens again on a passed socket, with its own default backlog (100)
        # unless told: 500 clients connecting at once would then see resets.
        self._server = await asyncio.start_unix_server(
            self._handle, sock=sock, limit=self.max_frame + 1, backlog=LISTEN_BACKLOG)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.writer.close()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for the calls in flight, e.g. at shutdown before the store
        closes under them."""
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=timeout)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            peer = self.policy.peer(sock)
        except OSError:
            writer.close()
            return
        if self._per_uid[peer.uid] >= self.max_per_user:
            refused = (f"too many connections from {peer.username} ({self.max_per_user}); "
                       "close some (each Client holds one)")
        elif len(self.connections) >= self.max_connections and not peer.is_admin:
            refused = "too many connections to labd; try again"
        else:
            refused = None
        if refused is not None:
            writer.write(_error_frame(LimitExceeded.code, refused))
            writer.close()
            return
        self._per_uid[peer.uid] += 1
        # What a client that does not read may hold: this much queued, plus one reply.
        conn = Connection(peer, writer, max_queue=16 * self.max_frame, server=self)
        self.connections.add(conn)
        ctx = self.make_context(conn)
        inflight = asyncio.Semaphore(MAX_INFLIGHT_PER_CONNECTION)
        try:
            while not conn.closed:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    break  # client closed (a half frame at EOF is dropped)
                except asyncio.LimitOverrunError:  # also when the newline comes too late
                    conn.send(_error_frame(INVALID_REQUEST, f"frame exceeds {self.max_frame} "
                                           "bytes; connection closed"))
                    break
                await inflight.acquire()
                task = asyncio.create_task(self._one(conn, ctx, line, inflight))
                for calls in (self._calls, conn.calls):   # strong refs: the loop keeps
                    calls.add(task)                       # only weak ones
                    task.add_done_callback(calls.discard)
        except (ConnectionError, OSError):
            pass
        finally:
            conn.gone.set_result(None)   # its waits end now
            try:
                if conn.calls:   # the others still answer: a client that only half-closed
                    await asyncio.wait(set(conn.calls))   # (printf ... | socat) reads them
            finally:
                conn.closed = True
                self.connections.discard(conn)
                self._per_uid[peer.uid] -= 1
                if not self._per_uid[peer.uid]:
                    del self._per_uid[peer.uid]
                self.on_disconnect(conn)
                try:
                    writer.close()
                except Exception:
                    pass

    async def _one(self, conn: Connection, ctx: Any, line: bytes,
                   inflight: asyncio.Semaphore) -> None:
        held = True

        def free_slot() -> None:
            nonlocal held
            if held:
                held = False
                inflight.release()
        _free_slot.set(free_slot)
        try:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                conn.send(_error_frame(PARSE_ERROR, "frame is not UTF-8 text"))
                return
            reply = await self._dispatch(ctx, text)
            if reply:
                conn.send(reply)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request failed outside any method")
            conn.send(_error_frame(INTERNAL_ERROR, "internal error"))
        finally:
            free_slot()

    async def _dispatch(self, ctx: Any, text: str) -> bytes | None:
        """The reply frame (None for a notification), by jsonrpcserver. A single valid
        request, nearly every frame, takes async_dispatch's steps for one request
        directly: its Request, its ``call`` (exceptions to JSON-RPC errors), its Response.
        Skipped are the Task that its gather makes per request and its check of the
        params against the method's signature, which cannot fail here (every method
        takes any params and validates them with pydantic): together 3/4 of its cost.
        Batches, frames that are no valid request and unknown methods go through
        async_dispatch whole, and so get its error replies."""
        try:
            req = validate_request(_deserialize(text))
        except Exception:
            req = None
        method = self.methods.get(req["method"]) if isinstance(req, dict) else None
        if method is None:
            return await async_dispatch(text, methods=self.methods, context=ctx,
                                        deserializer=_deserialize,
                                        validator=validate_request,
                                        serializer=self._capped_frame)
        request = create_request(req)
        result = await call(request, ctx, method)
        if request.id is NOID:
            return None
        return self._capped_frame(to_serializable(to_response(request, result)))

    def _capped_frame(self, response: Any) -> bytes:
        """The reply frame, with any reply that would take the whole (or a batch's total)
        above ``max_reply`` replaced by a LimitExceeded error telling what to do."""
        if not isinstance(response, list):
            return self._capped_one(response, self.max_reply, "")
        parts, used = [], 2
        for item in response:
            part = self._capped_one(item, self.max_reply - used,
                                    " (for the batch's replies together: send fewer calls"
                                    " per batch)")
            used += len(part)
            parts.append(part[:-1])   # without its newline
        return b"[" + b",".join(parts) + b"]\n"

    def _capped_one(self, item: dict[str, Any], room: int, why: str) -> bytes:
        data = frame(item)
        if len(data) <= room:
            return data
        return frame({"jsonrpc": "2.0", "id": item.get("id"), "error": {
            "code": LimitExceeded.code,
            "message": f"reply of {len(data)} bytes is over labd's limit of "
                       f"{self.max_reply} bytes{why}; ask for less: a smaller limit, a "
                       f"narrower filter, or page with cursor/offset"}})


def bind_socket(path: os.PathLike, mode: int, group: str | None) -> socket.socket:
    """Bind the daemon's own socket (when systemd did not hand us one)."""
    import grp
    from pathlib import Path
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing = p.lstat().st_mode
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISSOCK(existing):
        raise RuntimeError(f"{p} exists and is not a socket; labd will not delete it: "
                           f"move it away or set another socket_path")
    if existing is not None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(p))
            raise RuntimeError(f"another labd is already listening on {p}")
        except (ConnectionRefusedError, FileNotFoundError):
            p.unlink(missing_ok=True)  # stale socket from a crash
        finally:
            probe.close()
    # Bound and set up under a temporary name, then renamed into place once it listens:
    # a client that finds the path can always connect (no "nothing listening" at start).
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    if len(os.fsencode(tmp)) >= 108:   # too long for a socket address: bind in place
        tmp = p
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        tmp.unlink(missing_ok=True)
        sock.bind(str(tmp))
    finally:
        os.umask(old)
    try:
        if group is not None:
            os.chown(tmp, -1, grp.getgrnam(group).gr_gid)
        os.chmod(tmp, mode)
        sock.listen(LISTEN_BACKLOG)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def systemd_sockets() -> list[socket.socket]:
    """The listening sockets passed by systemd socket activation (LISTEN_FDS), in the
    order of labd.socket's ListenStream lines: the RPC socket, then the dashboard's."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    n = int(os.environ.get("LISTEN_FDS", "0"))
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    socks = [socket.socket(fileno=3 + i) for i in range(n)]
    for sock in socks:
        sock.setblocking(False)
    return socks
