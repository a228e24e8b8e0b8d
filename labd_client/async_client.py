"""AsyncClient: one Unix-socket connection to labd, JSON-RPC requests multiplexed by id,
server-pushed events delivered to a queue. Reconnects on the next call after the daemon
restarts."""
from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any, AsyncIterator

from jsonrpcclient import Error as RpcError
from jsonrpcclient import parse, request

from labd.errors import ConnectionFailed, LabdError, from_response
from labd.frames import frame, parse_frame
from .paths import default_socket
from .results import JobResult
from .views import JobList, QueueView

FRAME_LIMIT = 64 * 1024 * 1024


class AsyncClient:
    def __init__(self, socket_path: str | os.PathLike | None = None,
                 timeout: float = 60.0) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket()
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._read_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscription: dict[str, Any] | None = None

    # ---- connection ---------------------------------------------------------------
    async def connect(self) -> None:
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(
                    str(self.socket_path), limit=FRAME_LIMIT)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise ConnectionFailed(f"labd is not running at {self.socket_path} "
                                       f"({exc.strerror})") from None
            except PermissionError:
                raise ConnectionFailed(f"no permission to use {self.socket_path}: ask an "
                                       "admin to add you to the labd group") from None
            self._read_task = asyncio.create_task(self._read_loop())
        if self._subscription is not None:  # restore push events after a reconnect
            await self.call("subscribe", **self._subscription)

    async def close(self) -> None:
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
            while True:
                line = await reader.readline()
                if not line:
                    break
                msg = parse_frame(line)
                if isinstance(msg, dict) and "method" in msg and "id" not in msg:
                    self.events.put_nowait(msg.get("params") or {})
                    continue
                fut = self._pending.pop(msg.get("id"), None) if isinstance(msg, dict) else None
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                elif isinstance(msg, dict) and msg.get("id") is None and "error" in msg:
                    err = msg["error"]  # a connection-level error (e.g. frame too large)
                    for f in self._pending.values():
                        if not f.done():
                            f.set_exception(from_response(err["code"], err["message"]))
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
            lost = ConnectionFailed("connection to labd lost (daemon restarted?)")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(lost)
            self._pending.clear()

    async def call(self, method: str, _timeout: float | None = None, **params: Any) -> Any:
        """One JSON-RPC call; raises a typed LabdError carrying the daemon's message.
        ``_timeout`` bounds the wait for the answer (default: the client's timeout)."""
        if self._writer is None or self._writer.is_closing():
            await self.connect()
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        assert self._writer is not None
        self._writer.write(frame(request(method, params, id=req_id)))
        try:
            await self._writer.drain()
            limit = self.timeout if _timeout is None else _timeout
            msg = await asyncio.wait_for(fut, limit)
        except asyncio.TimeoutError:
            raise LabdError(f"{method}: no answer from labd within {limit:g} s") from None
        except (ConnectionError, OSError):
            raise ConnectionFailed("connection to labd lost (daemon restarted?)") from None
        finally:
            self._pending.pop(req_id, None)
        response = parse(msg)
        if isinstance(response, RpcError):
            raise from_response(response.code, response.message, response.data)
        return response.result

    # ---- jobs ---------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        return await self.call("health")

    async def submit(self, experiment_class: str, experiment_module: str,
                     expt_config: dict[str, Any] | None = None, *, user: str | None = None,
                     priority: int | None = None, time_limit_s: float | None = None,
                     config_versions: dict[str, str] | None = None,
                     inline_configs: dict[str, str] | None = None, after: str | None = None,
                     not_before: str | None = None, hold: bool = False) -> str:
        """Queue a job; returns its ID once the daemon has stored it durably.
        ``after``: run only once that job completed; ``not_before``: ISO time with a
        timezone; ``hold``: queue it held until released."""
        params = _clean(experiment_class=experiment_class, experiment_module=experiment_module,
                        experiment_config=expt_config or {}, user=user, priority=priority,
                        time_limit_s=time_limit_s, config_versions=config_versions,
                        inline_configs=inline_configs, after=after, not_before=not_before,
                        hold=hold or None)
        return (await self.call("submit", **params))["job_id"]

    async def submit_batch(self, jobs: list[dict[str, Any]]) -> dict[str, Any]:
        """Submit many jobs atomically (all or none): returns batch_id and job_ids. Each
        dict takes submit()'s arguments (``expt_config`` or ``experiment_config``)."""
        specs = []
        for j in jobs:
            j = dict(j)
            if "expt_config" in j:
                j["experiment_config"] = j.pop("expt_config")
            specs.append({k: v for k, v in j.items() if v is not None})
        return await self.call("submit_batch", jobs=specs)

    async def get(self, job_id: str) -> JobResult:
        return JobResult.from_dict(await self.call("get", job_id=job_id))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self.call("cancel", job_id=job_id)

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return await self.call("cancel_batch", batch_id=batch_id)

    async def rerun(self, job_id: str) -> str:
        """Submit again with the exact config versions and expt config the job ran with."""
        return (await self.call("rerun", job_id=job_id))["job_id"]

    async def retry(self, job_id: str) -> str:
        """Submit a failed or cancelled job again, as it was submitted."""
        return (await self.call("retry", job_id=job_id))["job_id"]

    async def cancel_user(self, os_user: str) -> dict[str, Any]:
        return await self.call("cancel_user", os_user=os_user)

    async def hold(self, job_id: str) -> dict[str, Any]:
        return await self.call("hold", job_id=job_id)

    async def release(self, job_id: str) -> dict[str, Any]:
        return await self.call("release", job_id=job_id)

    async def set_priority(self, job_id: str, priority: int) -> dict[str, Any]:
        return await self.call("set_priority", job_id=job_id, priority=priority)

    async def pause(self) -> dict[str, Any]:
        return await self.call("pause")

    async def resume(self) -> dict[str, Any]:
        return await self.call("resume")

    async def queue(self, user: str | None = None, os_user: str | None = None,
                    limit: int = 100_000) -> dict[str, Any]:
        """Running job and pending jobs in run order (each a dict with its position)."""
        q = await self.call("queue", **_clean(user=user, os_user=os_user, limit=limit))
        cols = q.pop("columns")
        q["pending"] = [dict(zip(cols, row)) for row in q["pending"]]
        return QueueView(q)

    async def history(self, user: str | None = None, status: str | None = None,
                      limit: int = 50, **filters: Any) -> list[JobResult]:
        out = await self.call("history", **_clean(user=user, status=status, limit=limit,
                                                  **filters))
        return JobList(JobResult.from_dict(j) for j in out["jobs"])

    async def wait(self, job_id: str, timeout: float | None = None,
                   progress: bool = False) -> JobResult:
        """Block until the job ends (server-side wait; nothing polls). With
        ``progress=True`` a tqdm bar follows the job's pushed progress events."""
        limit = 7 * 86400 if timeout is None else timeout
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
            await self.unsubscribe()
        return result

    async def _wait_surviving_restarts(self, job_id: str, limit: float) -> JobResult:
        """The job is durable, so a daemon restart (systemd, crash) is not the caller's
        problem: reconnect with backoff and keep waiting until the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        backoff = 0.05
        while True:
            left = max(0.0, deadline - loop.time())
            try:
                return JobResult.from_dict(
                    await self.call("wait", _timeout=left + 30, job_id=job_id, timeout=left))
            except ConnectionFailed:
                if loop.time() + backoff >= deadline:
                    raise
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    async def logs(self, job_id: str, offset: int = 0,
                   max_bytes: int = 65536) -> dict[str, Any]:
        return await self.call("logs", job_id=job_id, offset=offset, max_bytes=max_bytes)

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
                await self.events.get()  # new text was written (or the job ended)
                while not self.events.empty():  # coalesce a burst of wake-ups
                    self.events.get_nowait()
        finally:
            await self.unsubscribe()

    async def subscribe(self, topics: list[str], job_ids: list[str] | None = None) -> None:
        self._subscription = _clean(topics=topics, job_ids=job_ids)
        await self.call("subscribe", **self._subscription)

    async def unsubscribe(self) -> None:
        self._subscription = None
        await self.call("unsubscribe")

    # ---- configs ------------------------------------------------------------------
    async def config_push(self, type: str, content: str, message: str | None = None,
                          expected_main: str | None = None) -> dict[str, Any]:
        return await self.call("config.push", **_clean(type=type, content=content,
                                                       message=message,
                                                       expected_main=expected_main))

    async def config_pull(self, type: str) -> dict[str, Any]:
        return await self.call("config.pull", type=type)

    async def config_versions(self, type: str, limit: int = 100) -> dict[str, Any]:
        return await self.call("config.versions", type=type, limit=limit)

    async def config_show(self, version_id: str) -> dict[str, Any]:
        return await self.call("config.show", version_id=version_id)

    async def config_set_main(self, type: str, version_id: str) -> dict[str, Any]:
        return await self.call("config.set_main", type=type, version_id=version_id)

    async def config_history(self, type: str, limit: int = 100) -> dict[str, Any]:
        return await self.call("config.history", type=type, limit=limit)

    async def config_diff(self, a: str, b: str) -> str:
        return (await self.call("config.diff", a=a, b=b))["diff"]

    async def config_verify(self) -> dict[str, Any]:
        return await self.call("config.verify")

    async def config_types(self) -> list[dict[str, Any]]:
        return (await self.call("config.types"))["types"]

    async def load_data(self, job_id: str) -> dict[str, Any]:
        """Arrays, merged config and config contents from the job's HDF5 file."""
        from labd.data_file import load
        job = await self.get(job_id)
        if not job.data_file_path:
            raise LabdError(f"{job_id} has no data file ({job.status}"
                            f"{': ' + job.error_message if job.error_message else ''})")
        return await asyncio.to_thread(load, Path(job.data_file_path))


def _clean(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}

