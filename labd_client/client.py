"""Client: labd from notebooks and scripts, on one blocking Unix socket. No event loop, no
thread: it works inside Jupyter's running loop because it never touches asyncio, and
Ctrl-C leaves nothing behind (any interrupted call closes the connection, which ends the
daemon's side of a wait and drops the subscription)."""
from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

from . import verbs
from .data import load
from .paths import candidate_sockets, connect_failure, not_running
from .protocol import (LOST, WAIT_FOREVER_S, ConnectionFailed, Conversation, LabdError,
                       backoff, clean, is_event, result_of)
from .results import JobResult

RECV_BYTES = 1 << 18


class Client:
    def __init__(self, socket_path: str | os.PathLike | None = None,
                 timeout: float = 60.0) -> None:
        self._candidates = candidate_sockets(socket_path)
        self.socket_path = self._candidates[0]
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._sock_timeout: float | None = None  # what the socket is set to: set on change
        self._inbox = bytearray(RECV_BYTES)    # recv_into this: no new buffer per read
        self._conv = Conversation()
        self._events: deque[dict[str, Any]] = deque()
        self._subscription: dict[str, Any] | None = None
        self._lock = threading.RLock()  # one exchange at a time if threads share a client

    # ---- connection -----------------------------------------------------------------
    def connect(self) -> None:
        if self._sock is not None:
            return
        tried = []
        for path in self._candidates:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
            except OSError as exc:
                s.close()
                tried.append(connect_failure(path, exc))
                continue
            self._sock, self.socket_path, self._conv = s, path, Conversation()
            self._sock_timeout = None
            break
        else:
            raise ConnectionFailed(not_running(tried))
        if self._subscription is not None:  # restore push events after a reconnect
            self._exchange("subscribe", self._subscription)

    def _drop(self) -> None:
        """Close the connection: the daemon ends this connection's wait and events."""
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._events.clear()

    def close(self) -> None:
        self._subscription = None
        self._drop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exchange(self, method: str | None, params: dict[str, Any] | None = None,
                  timeout: float | None = None,
                  on_event: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Send one request and read until its response (events meanwhile go to
        ``on_event`` or the buffer). With ``method=None``, read until one event arrives.
        Anything but a complete exchange (timeout, lost connection, Ctrl-C) closes the
        connection, so no half-read reply or server-side wait outlives the call."""
        with self._lock:
            return self._exchange_locked(method, params, timeout, on_event)

    def _exchange_locked(self, method: str | None, params: dict[str, Any] | None,
                         timeout: float | None,
                         on_event: Callable[[dict[str, Any]], None] | None) -> Any:
        self.connect()
        assert self._sock is not None
        deliver = on_event or self._events.append
        limit = self.timeout if timeout is None else timeout
        response = None
        try:
            if limit != self._sock_timeout:
                self._sock.settimeout(limit)
                self._sock_timeout = limit
            req_id = None
            if method is not None:
                req_id, data = self._conv.request(method, params or {})
                self._sock.sendall(data)
            got_event = False
            while response is None and not (method is None and got_event):
                n = self._sock.recv_into(self._inbox)
                if not n:
                    raise ConnectionFailed(LOST)
                for msg in self._conv.feed(memoryview(self._inbox)[:n]):
                    if is_event(msg):
                        deliver(msg.get("params") or {})
                        got_event = True
                    elif msg.get("id") == req_id or (msg.get("id") is None and "error" in msg):
                        response = msg  # ours, or a connection-level error
        except socket.timeout:
            self._drop()
            raise LabdError(f"{method or 'events'}: no answer from labd within "
                            f"{limit:g} s") from None
        except ConnectionFailed:
            self._drop()
            raise
        except OSError:
            self._drop()
            raise ConnectionFailed(LOST) from None
        except BaseException:
            self._drop()
            raise
        return None if response is None else result_of(response)

    def call(self, method: str, _timeout: float | None = None, **params: Any) -> Any:
        """One JSON-RPC call; raises a typed LabdError carrying the daemon's message."""
        return self._exchange(method, params, _timeout)

    # ---- events ---------------------------------------------------------------------
    def subscribe(self, topics: list[str], job_ids: list[str] | None = None) -> None:
        self._subscription = clean(topics=topics, job_ids=job_ids)
        self._exchange("subscribe", self._subscription)

    def unsubscribe(self) -> None:
        self._subscription = None
        self._events.clear()
        if self._sock is not None:
            self._exchange("unsubscribe")

    def _end_subscription(self) -> None:
        """Used in ``finally``: after an interrupt the connection is already gone."""
        try:
            self.unsubscribe()
        except LabdError:
            pass

    def _next_events(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until at least one pushed event is here; return all buffered."""
        if not self._events:
            self._exchange(None, timeout=timeout)
        out = list(self._events)
        self._events.clear()
        return out

    # ---- waiting --------------------------------------------------------------------
    def wait(self, job_id: str, timeout: float | None = None,
             progress: bool = False) -> JobResult:
        """Block until the job ends (a server-side wait; nothing polls). With
        ``progress=True`` a tqdm bar follows the job's pushed progress events. Survives
        a daemon restart: the job is durable, so it reconnects until its deadline."""
        deadline = time.monotonic() + (WAIT_FOREVER_S if timeout is None else timeout)
        bar = None
        try:
            if progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=100, desc=job_id, unit="%")
                self.subscribe(["progress"], [job_id])

            def on_event(ev: dict[str, Any]) -> None:
                if bar is not None and ev.get("type") == "progress":
                    bar.update(round(100 * ev["progress"]) - bar.n)
            delay = None
            while True:
                for ev in self._events:
                    on_event(ev)
                self._events.clear()
                left = max(0.0, deadline - time.monotonic())
                try:
                    job = JobResult.from_dict(self._exchange(
                        "wait", {"job_id": job_id, "timeout": left}, left + 30, on_event))
                    break
                except ConnectionFailed:
                    delay = backoff(delay)
                    if time.monotonic() + delay >= deadline:
                        raise
                    time.sleep(delay)
            if bar is not None:
                if job.is_successful():
                    bar.update(100 - bar.n)
                bar.set_postfix_str(job.status)
            return job
        finally:
            if bar is not None:
                bar.close()
                self._end_subscription()

    def follow_logs(self, job_id: str, offset: int = 0,
                    timeout: float | None = None) -> Iterator[str]:
        """Yield the job's log text live until the job ends. Pushed events only wake us;
        the text comes by byte offset, so nothing is duplicated or lost. ``timeout`` in
        seconds bounds the whole follow."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.subscribe(["job", "log"], [job_id])
        try:
            while True:
                while True:
                    page = self.logs(job_id, offset)
                    if page["text"]:
                        offset = page["offset"]
                        yield page["text"]
                    if page["eof"]:
                        return
                    if not page["text"]:
                        break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                try:
                    self._next_events(WAIT_FOREVER_S if left is None else left)
                except LabdError:
                    if deadline is not None and time.monotonic() >= deadline:
                        return
                    raise
        finally:
            self._end_subscription()

    def load_data(self, job_id: str) -> dict[str, Any]:
        """Arrays, merged config and config contents from the job's HDF5 file."""
        return load(verbs.data_path(self.get(job_id)))


def _sync_verb(build: Callable[..., verbs.Req]) -> Callable[..., Any]:
    @functools.wraps(build)
    def verb(self: Client, *args: Any, **kwargs: Any) -> Any:
        req = build(*args, **kwargs)
        return req.convert(self._exchange(req.method, req.params))
    return verb


for _build in verbs.VERBS:
    setattr(Client, _build.__name__, _sync_verb(_build))
