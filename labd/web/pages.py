"""The dashboard's pages and actions. Each one calls the RPC handler functions of labd.api
with the caller's identity (a Call like an RPC request's), so data and rules (owner or
admin, priority caps, ...) are exactly those of labctl; templates autoescape everything."""
from __future__ import annotations

import asyncio
import html
import json
import os
import re
from datetime import date, datetime, time as dtime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup
from aiohttp import web
from pydantic import ValidationError

from labd_client import views
from labd_client.protocol import InvalidParams, NotFound
from ..api import Call
from ..api import configs as configs_api
from ..api import jobs as jobs_api
from ..api import queue as queue_api
from ..api.params import (ConfigDiff, ConfigList, HistoryParams, JobRef, LogsParams,
                          NoParams, PriorityParams, QueueParams, VersionRef)
from ..experiment_loader import describe_validation
from .server import WebConn

if TYPE_CHECKING:
    from .server import WebServer

STATIC = {"app.js": "application/javascript", "style.css": "text/css"}
LOG_TAIL_BYTES = 16 * 1024
HISTORY_PAGE = 50
MAX_QUEUE_ROWS = 10_000     # pending rows one queue page may ask for (?rows=)
_SAFE_NEXT = re.compile(r"/[A-Za-z0-9/_.~%?=&+-]*")   # no scheme, host, tab or backslash
STATUSES = ("pending", "running", "completed", "failed", "cancelled")


def fmt_duration(seconds: float | None) -> str:
    return views.fmt_duration(seconds, unknown="unknown", sep=" ")


def fmt_time(iso: str | None) -> str:
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso


def pending_rows_html(rows: list[list[Any]], cols: list[str], me: str, admin: bool,
                      paused: bool) -> Markup:
    """The pending table's rows: the one hot spot (10k rows), so built with f-strings
    instead of the template engine (~10x faster); every text goes through html.escape
    (memoized: the same few user and experiment names repeat)."""
    memo: dict[str, str] = {}

    def e(v: Any) -> str:
        v = "" if v is None else str(v)
        out = memo.get(v)
        if out is None:
            out = memo[v] = html.escape(v, quote=True)
        return out
    ipos, ijob, iprio, iuser, ios, iexp, ieta, iphase, iby, iat = (cols.index(c) for c in (
        "position", "job_id", "priority", "user", "os_user", "experiment_class", "eta_s",
        "phase", "preempted_by", "preempted_at"))
    unknown = "paused" if paused else "unknown"
    out = []
    for r in rows:
        jid = html.escape(r[ijob], quote=True)
        user, os_user = r[iuser], r[ios]
        owner = e(user) if user == os_user else f"{e(user)} ({e(os_user)})"
        eta = unknown if r[ieta] is None else fmt_duration(r[ieta])
        pos = int(r[ipos])
        why = "paused" if paused else ("next" if pos == 1 else "queue")
        if r[iphase] == "preempted":  # (#16) it yielded the board: to whom, since when
            why = f"preempted by {e(r[iby])} at {e(fmt_time(r[iat]))}; resumes {why}"
        prio = int(r[iprio])
        acts = ""
        if admin or os_user == me:
            acts = (f'<button formaction="/jobs/{jid}/cancel" data-action="cancel">'
                    f'Cancel</button><button formaction="/jobs/{jid}/hold" '
                    f'data-action="hold">Hold</button><button formaction="/jobs/'
                    f'{jid}/priority" name="priority" value="{prio - 1}" title="lower '
                    f'priority">−</button>')
        out.append(f'<tr data-job="{jid}"><td>{pos}<td><a href="/jobs/{jid}">{jid}</a>'
                   f'<td>{prio}<td>{owner}<td>{e(r[iexp])}<td>{eta}<td class="why">{why}'
                   f'<td class="acts">{acts}</tr>\n')
    return Markup("".join(out))


def _params(model: Any, **values: Any) -> Any:
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise InvalidParams(describe_validation(exc)) from None


def _page_query(offset: int, rows: int, default_rows: int) -> str:
    q = {k: v for k, v in (("offset", offset), ("rows", rows)) if v and
         not (k == "rows" and v == default_rows)}
    return "?" + urlencode(q) if q else ""


def _safe_next(value: str | None, default: str = "/") -> str:
    """Where a no-JS form goes back to: a path on this site only."""
    if value and _SAFE_NEXT.fullmatch(value) and not value.startswith("//"):
        return value
    return default


class Pages:
    def __init__(self, server: "WebServer") -> None:
        self.server = server
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("labd.web", "templates"),
            autoescape=True, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(duration=fmt_duration, time=fmt_time,
                                tojson_compact=lambda v: json.dumps(v, sort_keys=True,
                                                                    default=str))
        self._static = {name: resources.files("labd.web").joinpath("static", name)
                        .read_bytes() for name in STATIC}

    @property
    def app(self):
        return self.server.ctx

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/", self.queue_page)
        r.add_get("/queue", self.queue_page)
        r.add_get("/fragment/queue", self.queue_fragment)
        r.add_get("/history", self.history_page)
        r.add_get("/jobs/{job_id}", self.job_page)
        r.add_get("/fragment/jobs/{job_id}", self.job_fragment)
        r.add_get("/jobs/{job_id}/data.h5", self.job_data)
        r.add_post("/jobs/{job_id}/{action}", self.job_action)
        r.add_post("/queue/{action}", self.queue_action)
        r.add_get("/configs", self.configs_page)
        r.add_get("/configs/diff", self.config_diff)
        r.add_get("/configs/version/{version_id}", self.config_version)
        r.add_get("/configs/{type}", self.config_type)
        r.add_get("/experiments", self.experiments_page)
        r.add_get("/static/{name}", self.static)

    # ---- helpers ---------------------------------------------------------------------
    def call(self, request: web.Request) -> Call:
        return Call(self.app, WebConn(request["peer"]))  # type: ignore[arg-type]

    def html(self, request: web.Request, template: str, status: int = 200,
             **ctx: Any) -> web.Response:
        peer = request["peer"]
        text = self.env.get_template(template).render(
            peer=peer, is_admin=peer.is_admin, csrf=self.server.csrf_token(peer),
            instance=self.server.instance, path=request.path_qs,
            next_path=request.path_qs.removeprefix("/fragment"), **ctx)
        return web.Response(text=text, status=status, content_type="text/html",
                            charset="utf-8")

    def error(self, request: web.Request, status: int, message: str) -> web.Response:
        if self._wants_json(request):
            return web.json_response({"ok": False, "error": message}, status=status)
        return self.html(request, "error.html", status=status, status_code=status,
                         message=message, title="Error", page="error")

    @staticmethod
    def _wants_json(request: web.Request) -> bool:
        return "application/json" in request.headers.get("Accept", "")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], content_type=STATIC[name],
                            headers={"Cache-Control": "no-cache"})

    # ---- queue -------------------------------------------------------------------------
    async def _queue_ctx(self, request: web.Request) -> dict[str, Any]:
        call = self.call(request)
        try:
            offset = max(0, int(request.query.get("offset", "0")))
            rows_per_page = min(MAX_QUEUE_ROWS, max(1, int(request.query.get(
                "rows", self.app.settings.web_queue_rows))))
        except ValueError:
            raise InvalidParams("offset and rows must be whole numbers") from None
        q = await queue_api.queue(call, _params(QueueParams, limit=offset + rows_per_page))
        cols = q["columns"]
        pending = q["pending"][offset:]
        peer = request["peer"]
        rows = pending_rows_html(pending, cols, peer.username, peer.is_admin, q["paused"])
        running = q["running"]
        log_tail = ""
        if running is not None:
            log_tail = await self._log_tail(call, running["job_id"])
        return {"q": q, "pending": pending, "pending_rows": rows,
                "waiting_total": len(self.app.scheduler.waiting), "running": running,
                "log_tail": log_tail,
                "offset": offset, "rows_per_page": rows_per_page,
                "page_query": _page_query(offset, rows_per_page,
                                          self.app.settings.web_queue_rows),
                "eta_running": self.app.scheduler.time_to_free() if running else None}

    async def _log_tail(self, call: Call, job_id: str) -> str:
        job = await self.app.scheduler.get(job_id)
        if not job.log_path:
            return ""
        try:
            size = (await asyncio.to_thread(os.stat, job.log_path)).st_size
        except OSError:
            return ""
        start = max(0, size - LOG_TAIL_BYTES)
        out = await jobs_api.logs(call, _params(LogsParams, job_id=job_id, offset=start,
                                               max_bytes=LOG_TAIL_BYTES))
        text = out["text"]
        if start > 0 and "\n" in text:
            text = text.split("\n", 1)[1]  # from the first whole line
        return text

    async def queue_page(self, request: web.Request) -> web.Response:
        return self.html(request, "queue.html", title="Queue", page="queue",
                         **await self._queue_ctx(request))

    async def queue_fragment(self, request: web.Request) -> web.Response:
        return self.html(request, "queue_fragment.html", **await self._queue_ctx(request))

    # ---- history -----------------------------------------------------------------------
    async def history_page(self, request: web.Request) -> web.Response:
        q = request.query
        f = {k: (q.get(k) or "").strip() or None
             for k in ("user", "os_user", "status", "experiment", "date", "cursor")}
        since = None
        day_end = None
        if f["date"]:
            try:
                day = date.fromisoformat(f["date"])
            except ValueError:
                raise InvalidParams("date must look like 2026-01-31") from None
            since = datetime.combine(day, dtime(), timezone.utc)
            day_end = (since + timedelta(days=1)).isoformat(timespec="microseconds")
        if f["status"] and f["status"] not in STATUSES:
            raise InvalidParams(f"status must be one of {', '.join(STATUSES)}")
        params = _params(HistoryParams, user=f["user"], os_user=f["os_user"],
                         status=f["status"], experiment=f["experiment"], since=since,
                         cursor=f["cursor"], limit=HISTORY_PAGE)
        out = await jobs_api.history(self.call(request), params)
        jobs = out["jobs"]
        if day_end is not None:  # one day: drop the newer days' jobs (newest come first)
            for _ in range(100):  # bounded: a page of newer days' jobs, then the next
                if not (jobs and out["next_cursor"] and
                        all(j["created_at"] >= day_end for j in jobs)):
                    break
                params = params.model_copy(update={"cursor": out["next_cursor"]})
                out = await jobs_api.history(self.call(request), params)
                jobs = out["jobs"]
            jobs = [j for j in jobs if j["created_at"] < day_end]
        keep = {k: v for k, v in f.items() if v and k != "cursor"}
        next_url = None
        if out["next_cursor"] is not None:
            next_url = "/history?" + urlencode({**keep, "cursor": out["next_cursor"]})
        return self.html(request, "history.html", title="History", page="history",
                         jobs=jobs, f=f, statuses=STATUSES, next_url=next_url,
                         first_url="/history?" + urlencode(keep))

    # ---- one job -----------------------------------------------------------------------
    async def _job_ctx(self, request: web.Request) -> dict[str, Any]:
        call = self.call(request)
        job_id = request.match_info["job_id"]
        job = await jobs_api.get(call, _params(JobRef, job_id=job_id))
        plot = None
        if job.get("data_file_path") and job["status"] == "completed":
            from .plot import render_job_plot
            plot = await asyncio.to_thread(render_job_plot, self._data_path(job),
                                           job["experiment_class"], job.get("results") or {})
        peer = request["peer"]
        mine = peer.uid == job["os_uid"] or peer.is_admin
        wait = None
        pj = self.app.scheduler.active.get(job_id)
        if pj is not None:
            from ..scheduler.admission import describe_wait
            wait = describe_wait(pj)
        log_text = await self._log_tail(call, job_id)
        return {"job": job, "plot": plot, "may_act": mine, "waiting_for": wait,
                "paused": self.app.scheduler.paused, "log_text": log_text}

    def _data_path(self, job: dict[str, Any]) -> Path | None:
        p = job.get("data_file_path")
        if not p:
            return None
        path = Path(p).resolve()
        root = Path(self.app.settings.output_root).resolve()
        return path if path.is_relative_to(root) else None

    async def job_page(self, request: web.Request) -> web.Response:
        ctx = await self._job_ctx(request)
        return self.html(request, "job.html", title=ctx["job"]["job_id"], page="job",
                         **ctx)

    async def job_fragment(self, request: web.Request) -> web.Response:
        return self.html(request, "job_fragment.html", **await self._job_ctx(request))

    async def job_data(self, request: web.Request) -> web.StreamResponse:
        job = await jobs_api.get(self.call(request),
                                 _params(JobRef, job_id=request.match_info["job_id"]))
        path = self._data_path(job)
        if path is None or not path.exists():
            raise NotFound(f"{job['job_id']} has no data file")
        return web.FileResponse(path, headers={
            "Content-Disposition": f'attachment; filename="{job["job_id"]}.h5"',
            "Content-Type": "application/x-hdf5"})

    # ---- actions: the same handlers (and so the same rules) as labctl ------------------
    async def job_action(self, request: web.Request) -> web.StreamResponse:
        call = self.call(request)
        job_id, action = request.match_info["job_id"], request.match_info["action"]
        form = await request.post()
        if action == "cancel":
            out = await jobs_api.cancel(call, _params(JobRef, job_id=job_id))
        elif action == "hold":
            out = await queue_api.hold(call, _params(JobRef, job_id=job_id))
        elif action == "release":
            out = await queue_api.release(call, _params(JobRef, job_id=job_id))
        elif action == "priority":
            try:
                prio = int(str(form.get("priority", "")))
            except ValueError:
                raise InvalidParams("priority must be a whole number") from None
            out = await queue_api.set_priority(call, _params(PriorityParams, job_id=job_id,
                                                             priority=prio))
        else:
            raise web.HTTPNotFound()
        return self._done(request, form, out)

    async def queue_action(self, request: web.Request) -> web.StreamResponse:
        call = self.call(request)
        form = await request.post()
        action = request.match_info["action"]
        if action == "pause":
            out = await queue_api.pause(call, NoParams())
        elif action == "resume":
            out = await queue_api.resume(call, NoParams())
        else:
            raise web.HTTPNotFound()
        return self._done(request, form, out)

    def _done(self, request: web.Request, form: Any, out: dict[str, Any]
              ) -> web.StreamResponse:
        self.server.hub.touch()
        if self._wants_json(request):
            return web.json_response({"ok": True, "result": out})
        raise web.HTTPSeeOther(_safe_next(form.get("next") if form else None))

    # ---- configs -------------------------------------------------------------------
    async def configs_page(self, request: web.Request) -> web.Response:
        out = await configs_api.config_types(self.call(request), NoParams())
        return self.html(request, "configs.html", title="Configs", page="configs",
                         types=out["types"])

    async def config_type(self, request: web.Request) -> web.Response:
        call = self.call(request)
        name = request.match_info["type"]
        p = _params(ConfigList, type=name, limit=200)
        versions = await configs_api.config_versions(call, p)
        history = await configs_api.config_history(call, p)
        return self.html(request, "config_type.html", title=name, page="configs",
                         ctype=name, versions=versions, history=history["history"])

    async def config_version(self, request: web.Request) -> web.Response:
        v = await configs_api.config_show(self.call(request), _params(
            VersionRef, version_id=request.match_info["version_id"]))
        return self.html(request, "config_version.html", title=v["version_id"],
                         page="configs", v=v)

    async def config_diff(self, request: web.Request) -> web.Response:
        p = _params(ConfigDiff, a=request.query.get("a"), b=request.query.get("b"))
        out = await configs_api.config_diff(self.call(request), p)
        return self.html(request, "config_diff.html", title=f"{p.a} → {p.b}",
                         page="configs", a=p.a, b=p.b, lines=out["diff"].splitlines())

    # ---- experiments -----------------------------------------------------------------
    async def experiments_page(self, request: web.Request) -> web.Response:
        out = await jobs_api.experiments(self.call(request), NoParams())
        return self.html(request, "experiments.html", title="Experiments",
                         page="experiments", experiments=out["experiments"])
