"""Job events inside the daemon: state changes, progress and log lines. Connections that
subscribed get them pushed as JSON-RPC notifications; ``wait`` calls park on a future that
the terminal event resolves (no polling anywhere)."""
from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, Callable, Protocol


class Subscriber(Protocol):
    def wants(self, event: dict[str, Any]) -> bool: ...
    def deliver(self, event: dict[str, Any]) -> None: ...


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscriber] = set()
        self._waiters: dict[str, set[asyncio.Future]] = defaultdict(set)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def subscribe(self, sub: Subscriber) -> None:
        self._subs.add(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    def publish(self, event: dict[str, Any]) -> None:
        for sub in list(self._subs):
            if sub.wants(event):
                sub.deliver(event)
        for listener in self.listeners:
            listener(event)
        if event.get("type") == "job" and event.get("terminal"):
            for fut in self._waiters.pop(event["job_id"], ()):
                if not fut.done():
                    fut.set_result(event)

    def waiter(self, job_id: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters[job_id].add(fut)
        return fut

    def waiting(self) -> int:
        """Number of ``wait`` calls parked (for health)."""
        return sum(len(w) for w in self._waiters.values())

    def drop_waiter(self, job_id: str, fut: asyncio.Future) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del self._waiters[job_id]
