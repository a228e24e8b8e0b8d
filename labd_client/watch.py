"""``labctl watch``: a live terminal view of the running job, the queue and recent history.
It redraws when the daemon pushes an event; between events a local 1 s tick only moves the
elapsed time and the ETAs, without asking the daemon anything."""
from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO

from .async_client import DISCONNECTED, AsyncClient
from .protocol import LOST, ConnectionFailed, backoff
from .views import fmt_duration, format_job_line, format_queue, safe


def render(q: dict[str, Any], history: list, since_fetch: float, user: str | None,
           width: int, height: int) -> str:
    aged = dict(q, pending=[dict(j, eta_s=None if j.get("eta_s") is None
                                 else max(0.0, j["eta_s"] - since_fetch))
                            for j in q["pending"]])
    run = q.get("running")
    head = f"labd watch  {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC" + \
        (f"  user={user}" if user else "")
    lines = [head, ""]
    if run:
        started = datetime.fromisoformat(run["started_at"]) if run.get("started_at") else None
        elapsed = (datetime.now(timezone.utc) - started).total_seconds() if started else 0
        bar_w = max(10, min(40, width - 60))
        done = int(bar_w * (run.get("progress") or 0))
        lines.append(f"[{'#' * done}{'.' * (bar_w - done)}] running for "
                     f"{fmt_duration(elapsed)}")
    queue_rows = max(3, height - 12 - min(8, len(history)))
    lines += format_queue(aged, max_rows=queue_rows).splitlines()
    lines += ["", "RECENT"] + [format_job_line(j) for j in history[:8]]
    return "\n".join(line[:width] for line in lines[:height - 1])


async def watch(socket_path: str | None, user: str | None = None,
                os_user: str | None = None, once: bool = False, as_json: bool = False,
                out: TextIO = sys.stdout) -> None:
    """Runs until interrupted. When labd goes away it shows "disconnected" and reconnects
    with backoff; after a restart it shows the new state (``--once`` fails instead)."""
    c = AsyncClient(socket_path)
    delay = None
    try:
        while True:
            try:
                await c.connect()
                while not c.events.empty():  # a stale "disconnected" from the last link
                    c.events.get_nowait()
                await c.subscribe(["job", "progress", "queue"])
                delay = None
                await _view(c, user, os_user, once, as_json, out)
                return
            except ConnectionFailed as exc:
                if once:
                    raise
                _show(out, as_json, {"disconnected": True, "error": exc.message},
                      f"labd watch  {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC  "
                      f"DISCONNECTED: {exc.message}\nreconnecting ...")
            await c.close()
            delay = backoff(delay)
            await asyncio.sleep(delay)  # reconnect backoff while labd restarts
    finally:
        await c.close()


def _show(out: TextIO, as_json: bool, data: dict[str, Any], text: str,
          once: bool = False) -> None:
    if as_json:
        out.write(json.dumps(data) + "\n")
    else:
        out.write(safe(text) + "\n" if once else "\x1b[H\x1b[2J" + safe(text))
    out.flush()


async def _view(c: AsyncClient, user: str | None, os_user: str | None, once: bool,
                as_json: bool, out: TextIO) -> None:
    """Draw until the connection is lost (raises ConnectionFailed) or, with once, once."""
    refetch = True
    while True:
        if refetch:
            q = await c.queue(user=user, os_user=os_user, limit=500)
            history = await c.history(user=user, os_user=os_user, limit=8)
            fetched = time.monotonic()
            refetch = False
        size = shutil.get_terminal_size((120, 40))
        _show(out, as_json, {"queue": q, "history": [j.raw for j in history]},
              "" if as_json else render(q, history, time.monotonic() - fetched,
                                        user or os_user, size.columns, size.lines), once)
        if once:
            return
        try:
            ev = await asyncio.wait_for(c.events.get(), timeout=1.0)
        except asyncio.TimeoutError:
            continue  # local tick: elapsed time and ETAs move on
        await asyncio.sleep(0.05)  # let a burst of events arrive, then redraw once
        events = [ev]
        while not c.events.empty():
            events.append(c.events.get_nowait())
        for e in events:
            if e == DISCONNECTED:
                raise ConnectionFailed(LOST)
            if e.get("type") == "progress" and q.get("running") and \
                    q["running"]["job_id"] == e["job_id"]:
                q["running"]["progress"] = e["progress"]
            else:
                refetch = True
