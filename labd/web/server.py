"""The dashboard's HTTP server (aiohttp, in the daemon's event loop) on its own Unix socket.

Guards, in order, on every request: the Host header must be present and name this
machine (localhost, 127.0.0.1, [::1], any port) against DNS rebinding; the caller's
identity comes from SO_PEERCRED through the RPC AdminPolicy; state-changing requests need
a matching Origin and a CSRF token (HMAC of the caller's uid with a per-daemon random
secret)."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import uuid
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from labd_client.protocol import LabdError
from ..identity import AdminPolicy, Peer

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
_HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SSE_QUEUE = 2000            # events buffered per page; beyond it the page re-fetches instead
CHANGED_MIN_S = 0.25        # at most this often a page hears "something changed"
SSE_KEEPALIVE_S = 15.0      # default period of the "ping" event (setting web_keepalive_s):
                            # keeps tunnels from idling out, and a page that hears nothing
                            # for 3x this reconnects (a half-open ssh tunnel)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def host_allowed(host: str | None, extra: frozenset[str]) -> bool:
    """Host header check against DNS rebinding. A request without one is refused too:
    browsers and ``curl --unix-socket ... http://localhost/`` always send it."""
    if host is None:
        return False
    m = _HOST_RE.match(host.strip())
    if not m:
        return False
    name = m.group(1).lower()
    return name in LOCAL_HOSTS or name in extra


class WebConn:
    """What labd.api.Call needs of a connection: the caller, and a never-resolving
    ``gone`` (no page calls ``wait``)."""
    __slots__ = ("peer", "gone", "topics", "job_ids")

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.gone = None
        self.topics: set[str] = set()
        self.job_ids = None


class SseClient:
    """One open page's event stream, an EventBus subscriber. Progress and log lines go
    out as they come; job and queue changes are coalesced into one "changed" message at
    most every CHANGED_MIN_S (the page then re-fetches its fragment), so a burst of 10k
    submits costs a page a few messages, not 10k. The viewer's own jobs ending are sent
    as themselves (for browser notifications). Delivery is O(1) and never blocks."""

    def __init__(self, hub: "EventHub", peer: Peer, job_id: str | None) -> None:
        self.hub, self.peer, self.job_id = hub, peer, job_id
        self.items: deque[dict[str, Any]] = deque()
        self.changed = False
        self.closed = False
        self.wake = asyncio.Event()

    def wants(self, event: dict[str, Any]) -> bool:
        if event.get("type") in ("queue", "job"):   # any own job ending notifies
            return True
        return self.job_id is None or event.get("job_id") == self.job_id

    def deliver(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "job":
            if self.job_id is None or event.get("job_id") == self.job_id:
                self.changed = True
            if event.get("terminal"):
                ev = self.hub.enrich(event)
                if ev.get("os_uid") == self.peer.uid:
                    self._push(ev)
        elif kind == "queue":
            self.changed = True
        else:
            self._push(event)
        if self.changed or self.items:
            self.wake.set()

    def _push(self, event: dict[str, Any]) -> None:
        if len(self.items) >= SSE_QUEUE:   # the page fell behind: it re-fetches instead
            self.items.clear()
            self.changed = True
            return
        self.items.append(event)

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class EventHub:
    """SSE pages subscribed to the EventBus. Job events are given their owner (uid, user,
    experiment) so a page can notify its viewer of their own jobs ending."""

    def __init__(self, app: "AppContext") -> None:
        self.app = app
        self.clients: set[SseClient] = set()
        self._owners: OrderedDict[str, tuple[int, str, str, str]] = OrderedDict()
        self.closing = False

    def enrich(self, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("type") != "job":
            return event
        job_id = event.get("job_id")
        owner = self._owners.get(job_id)
        if owner is None:
            pj = self.app.scheduler.active.get(job_id)
            if pj is not None:
                owner = (pj.os_uid, pj.os_user, pj.user, pj.experiment_class)
                self._owners[job_id] = owner
                while len(self._owners) > 20_000:
                    self._owners.popitem(last=False)
        if owner is None:
            return event
        return {**event, "os_uid": owner[0], "os_user": owner[1], "user": owner[2],
                "experiment_class": owner[3]}

    def add(self, client: SseClient) -> None:
        self.clients.add(client)
        self.app.events.subscribe(client)

    def remove(self, client: SseClient) -> None:
        self.clients.discard(client)
        self.app.events.unsubscribe(client)

    def touch(self) -> None:
        """Tell every open page to re-fetch: after a change the scheduler publishes no
        event for (hold, release, priority)."""
        for c in list(self.clients):
            c.changed = True
            c.wake.set()

    def close(self) -> None:
        self.closing = True
        for c in list(self.clients):
            c.close()


def _sse(event: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n" if name else ""
    return (head + "data: " + json.dumps(event, separators=(",", ":"),
                                         default=str) + "\n\n").encode()


_CHANGED = b'data: {"type":"changed"}\n\n'
_PING = b"event: ping\ndata: {}\n\n"


def http_status(exc: LabdError) -> int:
    """The HTTP status of an RPC error (by its JSON-RPC code's class name)."""
    return {"PermissionDenied": 403, "NotFound": 404, "Conflict": 409,
            "InvalidParams": 400, "LimitExceeded": 429, "Unavailable": 503}.get(
                type(exc).__name__, 500)


class WebServer:
    def __init__(self, app: "AppContext", policy: AdminPolicy) -> None:
        self.ctx = app
        self.policy = policy
        self.secret = os.urandom(32)          # per daemon run: tokens die with it
        self.instance = os.urandom(6).hex()   # pages notice a restart by this
        self.extra_hosts = frozenset(h.lower() for h in app.settings.web_allowed_hosts)
        self.keepalive_s = float(getattr(app.settings, "web_keepalive_s", SSE_KEEPALIVE_S))
        self.hub = EventHub(app)
        self._runner: web.AppRunner | None = None
        from .pages import Pages
        self.pages = Pages(self)
        self.web_app = self._make_app()

    # ---- identity and request guards ---------------------------------------------------
    def csrf_token(self, peer: Peer) -> str:
        return hmac.new(self.secret, f"labd-web-csrf:{peer.uid}".encode(),
                        hashlib.sha256).hexdigest()

    def _peer(self, request: web.Request) -> Peer:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is None:
            raise web.HTTPForbidden(text="no peer credentials")
        return self.policy.peer(sock)

    def _check_write(self, request: web.Request, peer: Peer, token: str | None) -> None:
        origin = request.headers.get("Origin")
        host = request.headers.get("Host")
        if origin is None or host is None or origin not in (f"http://{host}",
                                                            f"https://{host}"):
            raise web.HTTPForbidden(text="refused: the request's Origin does not match "
                                         "this page (cross-site request?)")
        if token is None or not hmac.compare_digest(token, self.csrf_token(peer)):
            raise web.HTTPForbidden(text="refused: missing or stale CSRF token; reload "
                                         "the page and try again")

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host"), self.extra_hosts):
            return web.Response(status=421, text="misdirected request: this dashboard "
                                "answers only to localhost (open it through ssh -L)")
        peer = self._peer(request)
        request["peer"] = peer
        if request.method not in SAFE_METHODS:
            token = request.headers.get("X-CSRF-Token")
            if token is None and request.content_type in (
                    "application/x-www-form-urlencoded", "multipart/form-data"):
                token = (await request.post()).get("csrf")
            self._check_write(request, peer, token if isinstance(token, str) else None)
        try:
            resp = await handler(request)
        except LabdError as exc:
            resp = self.pages.error(request, http_status(exc), exc.message)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("dashboard: %s %s failed (ref %s)", request.method, request.path,
                          ref)
            resp = self.pages.error(request, 500, f"internal error; the daemon log has the "
                                    f"details under ref {ref}")
        h = resp.headers
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "same-origin")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Cache-Control", "no-store")
        return resp

    # ---- live events ---------------------------------------------------------------
    async def events(self, request: web.Request) -> web.StreamResponse:
        if self.hub.closing:   # labd is stopping: the page reconnects to the next one
            raise web.HTTPServiceUnavailable(text="labd is stopping")
        peer: Peer = request["peer"]
        job_id = request.query.get("job") or None
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        client = SseClient(self.hub, peer, job_id)
        self.hub.add(client)
        try:
            await resp.write(b"retry: 2000\n" + _sse(
                {"instance": self.instance, "uid": peer.uid, "user": peer.username,
                 "csrf": self.csrf_token(peer), "keepalive_s": self.keepalive_s},
                "hello"))
            last_changed = 0.0
            while not client.closed:
                try:
                    await asyncio.wait_for(client.wake.wait(), self.keepalive_s)
                except asyncio.TimeoutError:   # a real event: the page's watchdog sees it
                    await resp.write(_PING)
                    continue
                client.wake.clear()
                if client.closed:
                    break
                if client.items:
                    items = list(client.items)
                    client.items.clear()
                    await resp.write(b"".join(_sse(e) for e in items))
                if client.changed:
                    loop = asyncio.get_running_loop()
                    pause = last_changed + CHANGED_MIN_S - loop.time()
                    if pause > 0:   # let more changes pile up into this one message
                        await asyncio.sleep(pause)
                    client.changed = False
                    last_changed = loop.time()
                    await resp.write(_CHANGED)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.hub.remove(client)
        return resp

    # ---- lifecycle -----------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024,
                              handler_args={"max_field_size": 16 * 1024})
        self.pages.add_routes(app.router)
        app.router.add_get("/events", self.events)
        return app

    async def start(self, sock: socket.socket) -> None:
        self._runner = web.AppRunner(self.web_app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock, backlog=256)
        await site.start()

    async def close(self) -> None:
        self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
