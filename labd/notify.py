"""Webhook notifications when a job or a whole batch ends (issue #12), for people away from
the notebook. (Not to be confused with ``sd_notify.Notifier``, which talks to systemd.)

Targets are per account (the kernel's uid, like job ownership), stored in SQLite and kept in
memory. The EventBus listener only does ``put_nowait`` into a bounded queue: it never
awaits, never raises, and a full queue drops the event and counts it (``notify status``),
so a job's state is never delayed or lost because of a notification. One worker task turns
events into messages (one indexed read per event; a batch's status counts only when the
owner has a batch target) and hands each to a delivery task, at most
``notify_concurrency`` at a time, which POSTs with a timeout and retries with backoff.

HTTP is a minimal HTTP/1.1 POST over asyncio streams (``Connection: close``, status line
read, redirects never followed: a redirect must not lead off the allow-list). URLs are
checked against the admin's ``notify_allowed_hosts`` when added and again before every
delivery, by the same parse that picks the host and port to connect to."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from labd_client.protocol import InvalidParams
from . import __version__
from .models import utcnow
from .settings import Settings, parse_host_entry
from .store import Store, StoreError

log = logging.getLogger(__name__)

FILTERS = ("all", "failures", "batch")
MAX_URL = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
_URL_CHARS = re.compile(r"^[\x21-\x7e]+$")   # printable ASCII, no spaces or controls
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})")


class Endpoint(NamedTuple):
    """Where a URL sends: exactly what was checked against the allow-list."""
    scheme: str
    host: str
    port: int
    target: str   # request target: path and query

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def display(self) -> str:
        return f"{self.scheme}://{self.host_header}"


def parse_url(url: str) -> Endpoint:
    """Parse a webhook URL strictly; raises InvalidParams saying what is wrong."""
    if len(url) > MAX_URL:
        raise InvalidParams(f"url: at most {MAX_URL} characters")
    if not _URL_CHARS.match(url) or "\\" in url:
        raise InvalidParams("url: only printable ASCII without spaces or backslashes (give "
                            "an international host name in its xn-- form)")
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as exc:
        raise InvalidParams(f"url: bad port or address ({exc})") from None
    scheme = u.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidParams("url: must start with http:// or https://")
    if "@" in u.netloc:
        raise InvalidParams("url: a user name or password in the URL (user@host) is not "
                            "accepted")
    if not u.hostname:
        raise InvalidParams("url: no host name")
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    if not target.startswith("/"):
        raise InvalidParams("url: the path must start with /")
    return Endpoint(scheme, u.hostname, port if port is not None else DEFAULT_PORTS[scheme],
                    target)


class AllowList:
    """``notify_allowed_hosts``: ``host`` (the scheme's default port only) or
    ``host:port``. Compared as parsed (host name, port) pairs, exactly."""

    def __init__(self, entries: list[str]) -> None:
        self.entries = list(entries)
        self._pairs = [parse_host_entry(e) for e in entries]

    def allows(self, ep: Endpoint) -> bool:
        return any(ep.host == h and ep.port == (p if p is not None else
                                                DEFAULT_PORTS[ep.scheme])
                   for h, p in self._pairs)

    def check(self, url: str) -> Endpoint:
        if not self._pairs:
            raise InvalidParams("webhooks are disabled on this labd: the admin setting "
                                "notify_allowed_hosts lists the hosts they may go to, and it "
                                "is empty")
        ep = parse_url(url)
        if not self.allows(ep):
            raise InvalidParams(
                f"url: {ep.host}:{ep.port} is not on this labd's notify_allowed_hosts ("
                + ", ".join(self.entries) + "); ask an admin to add it")
        return ep


def redact(url: str) -> str:
    """Scheme, host and port only: a webhook's path is often its secret."""
    try:
        return parse_url(url).display() + "/…"
    except InvalidParams:
        return "(invalid URL)"


@dataclass
class Target:
    id: str
    os_uid: int
    os_user: str
    url: str
    on: str
    created_at: str
    last_status: str | None = None       # "ok" / "failed", persisted
    last_error: str | None = None        # persisted
    last_attempt_at: str | None = None   # persisted
    last_ok_at: str | None = None        # persisted
    attempts: int = 0                    # counters: in memory, since the daemon started
    delivered: int = 0
    failed: int = 0
    failing: bool = field(default=False, repr=False)  # last message gave up: 1 try only
    stored: tuple = field(default=(), repr=False)     # (status, error) last persisted
    stored_at: float = field(default=0.0, repr=False)  # loop time of that write

    def public(self, full_url: bool) -> dict[str, Any]:
        return {"id": self.id, "os_user": self.os_user, "on": self.on,
                "url": self.url if full_url else redact(self.url),
                "created_at": self.created_at, "last_status": self.last_status,
                "last_error": self.last_error, "last_attempt_at": self.last_attempt_at,
                "last_ok_at": self.last_ok_at, "attempts": self.attempts,
                "delivered": self.delivered, "failed": self.failed}


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def job_message(row: Any) -> dict[str, Any]:
    job = {k: row[k] for k in ("job_id", "status", "end_reason", "user", "os_user",
                               "experiment_class", "experiment_module", "batch_id",
                               "created_at", "started_at", "finished_at", "error_message",
                               "data_file_path")}
    if job["error_message"] and len(job["error_message"]) > 4000:
        job["error_message"] = job["error_message"][:4000] + "…"
    text = f"labd: {job['job_id']} {job['experiment_class']} ({job['user']}) {job['status']}"
    if job["status"] != "completed" and job["error_message"]:
        text += f": {job['error_message'][:500]}"
    return {"text": _slack_escape(text), "event": "job_end", "job": job}


def batch_message(batch_id: str, row: Any, counts: dict[str, int]) -> dict[str, Any]:
    total = sum(counts.values())
    parts = ", ".join(f"{counts[s]} {s}" for s in ("completed", "failed", "cancelled")
                      if counts.get(s))
    text = f"labd: batch {batch_id} ({row['user']}) done: {total} jobs, {parts}"
    return {"text": _slack_escape(text), "event": "batch_end",
            "batch": {"batch_id": batch_id, "user": row["user"], "os_user": row["os_user"],
                      "total": total, **{s: counts.get(s, 0) for s in
                                         ("completed", "failed", "cancelled")},
                      "last_job_id": row["job_id"]}}


class WebhookSender:
    """Targets, the bounded event queue, the worker and the delivery tasks."""

    BATCHES_REMEMBERED = 10_000
    PERSIST_EVERY_S = 60.0

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.allow = AllowList(settings.notify_allowed_hosts)
        self.targets: dict[str, Target] = {}
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(settings.notify_queue_max)
        self.dropped = 0          # events not queued because the queue was full
        self.unfinished = 0       # events queued or being turned into messages
        self.in_flight = 0        # messages being delivered (including their retries)
        self.delivered = 0
        self.failed = 0
        self._slots = asyncio.Semaphore(settings.notify_concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._worker: asyncio.Task | None = None
        self._batches_done: OrderedDict[str, int] = OrderedDict()  # batch -> newest seq
        self._ssl: ssl.SSLContext | None = None

    # ---- life cycle -----------------------------------------------------------------
    async def start(self) -> None:
        for r in await self.store.notify_targets():
            self.targets[r["id"]] = Target(
                id=r["id"], os_uid=r["os_uid"], os_user=r["os_user"], url=r["url"],
                on=r["on_filter"], created_at=r["created_at"], last_status=r["last_status"],
                last_error=r["last_error"], last_attempt_at=r["last_attempt_at"],
                last_ok_at=r["last_ok_at"], failing=r["last_status"] == "failed",
                stored=(r["last_status"], r["last_error"]))
        self._worker = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self, timeout: float) -> None:
        """Deliver what is queued for at most ``timeout`` seconds, then cancel the rest
        (counted as failed where a message was under way)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.unfinished or self._tasks) and loop.time() < deadline:
            waits = [asyncio.ensure_future(asyncio.sleep(0.02))]
            await asyncio.wait(waits + list(self._tasks), timeout=deadline - loop.time(),
                               return_when=asyncio.FIRST_COMPLETED)
            waits[0].cancel()
        for task in [self._worker, *self._tasks]:
            if task is not None:
                task.cancel()
        pending = [t for t in (self._worker, *self._tasks) if t is not None]
        if pending:
            await asyncio.wait(pending, timeout=1)
        if self.unfinished or self.queue.qsize():
            log.warning("notifications: %d events not sent at shutdown", self.unfinished)

    # ---- the EventBus listener: never awaits, never raises ---------------------------
    def on_event(self, event: dict[str, Any]) -> None:
        try:
            if event.get("type") != "job" or not event.get("terminal") or not self.targets:
                return
            self.queue.put_nowait({"job_id": event["job_id"]})
            self.unfinished += 1
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("notification queue full (%d): %d events dropped so far",
                            self.queue.maxsize, self.dropped)
        except Exception:  # a notification must never break a job's transition
            log.exception("notification listener failed")

    # ---- targets --------------------------------------------------------------------
    async def add(self, os_uid: int, os_user: str, url: str, on: str) -> Target:
        self.allow.check(url)
        if on not in FILTERS:
            raise InvalidParams(f"on: one of {', '.join(FILTERS)}")
        t = Target(id=f"NTF-{uuid.uuid4().hex[:8]}", os_uid=os_uid, os_user=os_user, url=url,
                   on=on, created_at=utcnow())
        await self.store.write(Store.insert_notify_target(
            t.id, os_uid, os_user, url, on, t.created_at,
            self.settings.notify_max_targets_per_user))
        self.targets[t.id] = t
        return t

    async def remove(self, target_id: str) -> None:
        await self.store.write(Store.delete_notify_target(target_id))
        self.targets.pop(target_id, None)

    def of(self, os_uid: int | None) -> list[Target]:
        return sorted((t for t in self.targets.values()
                       if os_uid is None or t.os_uid == os_uid),
                      key=lambda t: (t.os_user, t.created_at))

    def status(self) -> dict[str, Any]:
        return {"enabled": bool(self.allow.entries), "allowed_hosts": self.allow.entries,
                "queue_length": self.queue.qsize(), "queue_max": self.queue.maxsize,
                "dropped": self.dropped, "backlog": self.unfinished + self.in_flight,
                "in_flight": self.in_flight, "delivered": self.delivered,
                "failed": self.failed}

    # ---- worker: events -> messages -------------------------------------------------
    async def _run(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                await self._handle(event["job_id"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notification for %s not prepared", event.get("job_id"))
            finally:
                self.unfinished -= 1

    async def _handle(self, job_id: str) -> None:
        row = await self.store.notify_job_row(job_id)
        if row is None:
            return
        mine = [t for t in self.targets.values() if t.os_uid == row["os_uid"]]
        if not mine:
            return
        batch_msg = None
        if row["batch_id"] and any(t.on == "batch" for t in mine):
            batch_msg = await self._batch_done(row)
        job_msg = job_message(row)
        for t in mine:
            if t.on == "all" or (t.on == "failures" and row["status"] == "failed"):
                await self._spawn(t, job_msg)
            elif t.on == "batch" and batch_msg is not None:
                await self._spawn(t, batch_msg)

    async def _batch_done(self, row: Any) -> dict[str, Any] | None:
        """The batch message if this job's end finished its batch, once per batch. A job
        the batch message already covered (its seq is not newer than the newest job the
        batch had then) costs nothing; a ``retry`` into a finished batch adds a newer job,
        whose end reports the batch done again, with the new total."""
        batch_id = row["batch_id"]
        covered = self._batches_done.get(batch_id)
        if covered is not None and row["seq"] <= covered:
            return None
        if await self.store.notify_batch_unfinished(batch_id):
            return None
        counts, newest = await self.store.notify_batch_counts(batch_id)
        if counts.get("pending") or counts.get("running"):  # a retry came in meanwhile
            return None
        self._batches_done[batch_id] = newest
        self._batches_done.move_to_end(batch_id)
        if len(self._batches_done) > self.BATCHES_REMEMBERED:
            self._batches_done.popitem(last=False)
        return batch_message(batch_id, row, counts)

    async def _spawn(self, t: Target, message: dict[str, Any]) -> None:
        """Wait for a free delivery slot (the queue absorbs events meanwhile), then
        deliver in a task of its own."""
        await self._slots.acquire()
        self.in_flight += 1
        task = asyncio.create_task(self._deliver(t, message))
        self._tasks.add(task)

        def done(task: asyncio.Task) -> None:
            self._tasks.discard(task)
            self._slots.release()
            self.in_flight -= 1
        task.add_done_callback(done)

    # ---- delivery -------------------------------------------------------------------
    async def _deliver(self, t: Target, message: dict[str, Any]) -> str | None:
        s = self.settings
        tries = 1 if t.failing else 1 + s.notify_retries  # a dead receiver: no retry storm
        error = None
        try:
            for attempt in range(tries):
                if attempt:
                    await asyncio.sleep(s.notify_backoff_s * 2 ** (attempt - 1))
                if t.id not in self.targets:
                    return "target removed"
                error = await self.post(t.url, message)
                t.attempts += 1
                if error is None:
                    break
        except asyncio.CancelledError:
            error = "not sent: labd stopped"
            await self._record(t, error, final=True)
            raise
        await self._record(t, error)
        return error

    async def deliver_now(self, t: Target, message: dict[str, Any]) -> str | None:
        """One attempt, awaited (``notify_test``); recorded like any delivery."""
        error = await self.post(t.url, message)
        t.attempts += 1
        await self._record(t, error)
        return error

    async def _record(self, t: Target, error: str | None, final: bool = False) -> None:
        now = utcnow()
        t.last_attempt_at = now
        if error is None:
            if t.failing:
                log.info("notification %s to %s works again", t.id, redact(t.url))
            t.delivered += 1
            self.delivered += 1
            t.last_status, t.last_error, t.last_ok_at, t.failing = "ok", None, now, False
        else:
            if not t.failing or t.last_error != error:  # once per change, not per message
                log.warning("notification %s to %s failed: %s", t.id, redact(t.url), error)
            t.failed += 1
            self.failed += 1
            t.last_status, t.last_error, t.failing = "failed", error, True
        if final:
            return  # shutting down: the store may be gone next
        # stored when the outcome changes, else at most once a minute: a flood of job ends
        # must not become a flood of commits
        loop_now = asyncio.get_running_loop().time()
        key = (t.last_status, t.last_error)
        if key == t.stored and loop_now - t.stored_at < self.PERSIST_EVERY_S:
            return
        t.stored, t.stored_at = key, loop_now
        try:
            await self.store.write(Store.record_notify_delivery(
                t.id, t.last_status, t.last_error, now, t.last_ok_at))
        except StoreError as exc:
            log.warning("notification status of %s not stored: %s", t.id, exc)

    async def post(self, url: str, message: dict[str, Any]) -> str | None:
        """POST the message as JSON; None if the receiver answered 2xx, else why not."""
        try:
            ep = self.allow.check(url)   # the allow-list may have shrunk since the add
        except InvalidParams as exc:
            return f"not sent: {exc.message}"
        body = json.dumps(message).encode()
        head = (f"POST {ep.target} HTTP/1.1\r\nHost: {ep.host_header}\r\n"
                f"User-Agent: labd/{__version__}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        timeout = self.settings.notify_timeout_s
        ctx = None
        if ep.scheme == "https":
            if self._ssl is None:
                self._ssl = await asyncio.to_thread(ssl.create_default_context)
            ctx = self._ssl
        writer = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    ep.host, ep.port, ssl=ctx, server_hostname=ep.host if ctx else None)
                writer.write(head + body)
                await writer.drain()
                line = await reader.readline()
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except ConnectionRefusedError:
            return f"connection refused by {ep.host}:{ep.port}"
        except ssl.SSLError as exc:
            return f"TLS error: {exc.reason or exc}"
        except OSError as exc:
            return f"cannot reach {ep.host}:{ep.port}: {exc.strerror or exc}"
        except ValueError:  # a status line longer than the stream limit
            return "the receiver's answer is not HTTP/1.x"
        except Exception as exc:  # never let a delivery die unrecorded
            log.exception("webhook POST to %s", ep.display())
            return f"failed: {type(exc).__name__}"
        finally:
            if writer is not None:
                writer.close()
        if not line:
            return "the receiver closed the connection without an answer"
        m = _STATUS_LINE.match(line)
        if not m:
            return "the receiver's answer is not HTTP/1.x"
        code = int(m.group(1))
        return None if 200 <= code < 300 else f"HTTP {code}"
