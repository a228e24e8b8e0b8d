"""The dashboard: server-rendered pages over HTTP on a second Unix socket (never TCP),
served by the daemon in its own event loop (aiohttp). Who asks comes from SO_PEERCRED
through the same AdminPolicy as RPC calls; every page and action calls the same RPC
handler functions (labd.api), so the rules live in one place. Live updates are pushed
from the EventBus as server-sent events."""
from __future__ import annotations

from .server import WebServer

__all__ = ["WebServer"]
