"""AsyncClient: labd from asyncio code (``labctl watch``, services). One Unix-socket
connection, requests multiplexed by id, server-pushed events delivered to ``events``; a
lost connection puts ``{"type": "disconnected"}`` there. Same verbs as ``Client``."""
from __future__ import annotations

import asyncio
import functools
import os
from typing import Any, AsyncIterator, Callable

from . import verbs
from .data import load
from .paths import candidate_sockets, connect_failure, not_running
from .protocol import (LOST, WAIT_FOREVER_S, ConnectionFailed, Conversation, LabdError,
                       backoff, clean, from_response, is_event, parse_frame, result_of)
from .results import JobResult

FRAME_LIMIT = 64 * 1024 * 1024
DISCONNECTED = {"type": "disconnected"}


class AsyncClient:
    def __init__(self, socket_path: str | os.PathLike | None = None,
                 timeout: float = 60.0) -> None:
        self._candidates = candidate_sockets(socket_path)
        self.socket_path = self._candidates[0]
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._conv = Conversation()
        self._read_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscription: dict[str, Any] | None = None

    # ---- connection ---------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        async with self._lock:
            if self.connected:
                return
            tried = []
            for path in self._candidates:
                try:
                    self._reader, self._writer = await asyncio.open_unix_connection(
                        str(path), limit=FRAME_LIMIT)
                except OSError as exc:
                    tried.append(connect_failure(path, exc))
                    continue
                self.socket_path, self._conv = path, Conversation()
                break
            else:
                raise ConnectionFailed(not_running(tried))
            self._read_task = asyncio.create_task(self._read_loop())
        if self._subscription is not None:  # restore push events after a reconnect
            await self.call("subscribe", **self._subscription)

    async def close(self) -> None:
        self._subscription = None
        if self._writer is not None:
            self._writer.close()
        if self._read_task is not None:
            self._read_task.cancel()
            try:
                await self._read_task
            except (asyncio.CancelledError, Exception):
                pass
        self._writer = self._reader = self._read_task = None

    async def __aenter__(self) -> "AsyncClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        reader = self._reader
        assert reader is not None
        try:
            while line := await reader.readline():
                msg = parse_frame(line)
                if not isinstance(msg, dict):
                    continue
                if is_event(msg):
                    self.events.put_nowait(msg.get("params") or {})
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                elif msg.get("id") is None and "error" in msg:
                    err = msg["error"]  # a connection-level error (e.g. frame too large)
                    for f in self._pending.values():
                        if not f.done():
                            f.set_exception(from_response(err["code"], err["message"]))
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionFailed(LOST))
            self._pending.clear()
            self.events.put_nowait(dict(DISCONNECTED))

    async def call(self, method: str, _timeout: float | None = None, **params: Any) -> Any:
        """One JSON-RPC call; raises a typed LabdError carrying the daemon's message.
        ``_timeout`` bounds the wait for the answer (default: the client's timeout)."""
        if not self.connected:
            await self.connect()
        req_id, data = self._conv.request(method, params)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        assert self._writer is not None
        self._writer.write(data)
        limit = self.timeout if _timeout is None else _timeout
        try:
            await self._writer.drain()
            msg = await asyncio.wait_for(fut, limit)
        except asyncio.TimeoutError:
            raise LabdError(f"{method}: no answer from labd within {limit:g} s") from None
        except (ConnectionError, OSError):
            raise ConnectionFailed(LOST) from None
        finally:
            self._pending.pop(req_id, None)
        return result_of(msg)

    async def _send(self, req: verbs.Req) -> Any:
        return req.convert(await self.call(req.method, **req.params))

    # ---- waiting and events ---------------------------------------------------------
    async def wait(self, job_id: str, timeout: float | None = None,
                   progress: bool = False) -> JobResult:
        """Block until the job ends (server-side wait; nothing polls). With
        ``progress=True`` a tqdm bar follows the job's pushed progress events."""
        limit = WAIT_FOREVER_S if timeout is None else timeout
        if progress:
            await self.subscribe(["progress"], [job_id])
        waiter = asyncio.ensure_future(self._wait_surviving_restarts(job_id, limit))
        if not progress:
            return await waiter
        from tqdm.auto import tqdm
        try:
            with tqdm(total=100, desc=job_id, unit="%") as bar:
                while not waiter.done():
                    ev = asyncio.ensure_future(self.events.get())
                    await asyncio.wait({waiter, ev}, return_when=asyncio.FIRST_COMPLETED)
                    if not ev.done():
                        ev.cancel()
                    elif ev.result().get("type") == "progress":
                        bar.update(round(100 * ev.result()["progress"]) - bar.n)
                result = waiter.result()
                if result.is_successful():
                    bar.update(100 - bar.n)
                bar.set_postfix_str(result.status)
        finally:
            waiter.cancel()
            await self._end_subscription()
        return result

    async def _wait_surviving_restarts(self, job_id: str, limit: float) -> JobResult:
        """The job is durable, so a daemon restart (systemd, crash) is not the caller's
        problem: reconnect with backoff and keep waiting until the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        delay = None
        while True:
            left = max(0.0, deadline - loop.time())
            try:
                return JobResult.from_dict(
                    await self.call("wait", _timeout=left + 30, job_id=job_id, timeout=left))
            except ConnectionFailed:
                delay = backoff(delay)
                if loop.time() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)

    async def follow_logs(self, job_id: str, offset: int = 0) -> AsyncIterator[str]:
        """Yield log text as the job writes it, until it ends. Push events only wake us;
        the text comes by byte offset, so nothing is duplicated or lost."""
        await self.subscribe(["job", "log"], [job_id])
        try:
            while True:
                while True:
                    page = await self.logs(job_id, offset)
                    if page["text"]:
                        offset = page["offset"]
                        yield page["text"]
                    if page["eof"]:
                        return
                    if not page["text"]:
                        break
                if (await self.events.get()) == DISCONNECTED:
                    raise ConnectionFailed(LOST)
                while not self.events.empty():  # coalesce a burst of wake-ups
                    self.events.get_nowait()
        finally:
            await self._end_subscription()

    async def subscribe(self, topics: list[str], job_ids: list[str] | None = None) -> None:
        self._subscription = clean(topics=topics, job_ids=job_ids)
        await self.call("subscribe", **self._subscription)

    async def unsubscribe(self) -> None:
        self._subscription = None
        await self.call("unsubscribe")

    async def _end_subscription(self) -> None:
        self._subscription = None
        if self.connected:
            try:
                await self.call("unsubscribe")
            except LabdError:
                pass

    async def load_data(self, job_id: str) -> dict[str, Any]:
        """Arrays, merged config and config contents from the job's HDF5 file."""
        path = verbs.data_path(await self.get(job_id))
        return await asyncio.to_thread(load, path)


def _async_verb(build: Callable[..., verbs.Req]) -> Callable[..., Any]:
    @functools.wraps(build)
    async def verb(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        return await self._send(build(*args, **kwargs))
    return verb


for _build in verbs.VERBS:
    setattr(AsyncClient, _build.__name__, _async_verb(_build))
