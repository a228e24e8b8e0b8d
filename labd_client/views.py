"""How the queue and job lists look: plain text (labctl, print_queue, watch) and HTML
(Jupyter's ``_repr_html_``). The data stay ordinary dicts and lists."""
from __future__ import annotations

import html
import re
from typing import Any

from .results import JobResult


def fmt_duration(seconds: float | None, unknown: str = "?", sep: str = "") -> str:
    """A duration the way people say it: 45s, 3m05s, 2h07m, 3d4h (``sep`` between the
    parts: the dashboard writes "3m 05s")."""
    if seconds is None:
        return unknown
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{sep}{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{sep}{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{sep}{s % 86400 // 3600}h"


def _running_line(run: dict[str, Any] | None) -> str:
    if not run:
        return "RUNNING  (none)"
    stop = f"  [{run['stop_reason']}]" if run.get("stop_reason") else ""
    if run.get("preempting_for"):   # (#16)
        stop += f"  [yielding the board to {run['preempting_for']} at its next safe point]"
    if run.get("preemptions"):
        stop += f"  (resumed; preempted {run['preemptions']}x)"
    return (f"RUNNING  {run['job_id']}  {run['experiment_class']}  {run['user']}  "
            f"{round(100 * (run.get('progress') or 0))}%{stop}")


def format_queue(q: dict[str, Any], max_rows: int | None = None) -> str:
    lines = [_running_line(q.get("running"))]
    paused = "  (queue PAUSED: no new job starts)" if q.get("paused") else ""
    lines.append(f"PENDING  {q.get('total_pending', len(q['pending']))}{paused}")
    rows = q["pending"][:max_rows] if max_rows else q["pending"]
    if rows:
        lines.append(f"{'POS':>5}  {'JOB':<20}  {'PRIO':>5}  {'USER':<16}  {'EXPERIMENT':<34}"
                     f"  ETA")
        for j in rows:
            eta = "in " + fmt_duration(j["eta_s"]) if j.get("eta_s") is not None else "?"
            pre = f"  PREEMPTED by {j['preempted_by']} since {j['preempted_at'][11:19]}" \
                if j.get("phase") == "preempted" and j.get("preempted_at") else ""   # (#16)
            lines.append(f"{j['position']:>5}  {j['job_id']:<20}  {j['priority']:>5}  "
                         f"{j['user'][:16]:<16}  {j['experiment_class'][:34]:<34}  {eta}"
                         f"{pre}")
        if max_rows and len(q["pending"]) > max_rows:
            lines.append(f"  ... {len(q['pending']) - max_rows} more")
    if q.get("waiting"):
        lines.append(f"WAITING  {len(q['waiting'])}")
        for j in q["waiting"][:max_rows] if max_rows else q["waiting"]:
            lines.append(f"         {j['job_id']:<20}  {j['user'][:16]:<16}  "
                         f"{j['experiment_class'][:34]:<34}  {_waiting_for(j)}")
    return "\n".join(lines)


def _waiting_for(j: dict[str, Any]) -> str:
    """What a waiting job waits for, with the reason when labd held it (a calibration), on
    one line (an experiment's error in it may span several)."""
    return f"{j['waiting_for']}: {' '.join(j['hold_reason'].split())}" \
        if j.get("hold_reason") else j["waiting_for"]


def format_job_line(j: JobResult) -> str:
    err = f"  {j.error_message}" if j.error_message else ""
    return (f"{j.job_id}  {j.status:<9}  {j.priority:>4}  {j.user[:16]:<16}  "
            f"{j.experiment_class}  {j.finished_at or j.created_at or ''}{err}")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th style='text-align:left'>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class QueueView(dict):
    """The queue as returned by Client.queue(): a dict, shown as tables in Jupyter."""

    def _repr_html_(self) -> str:
        run = self.get("running")
        top = f"<p><b>Running:</b> {html.escape(_running_line(run)[9:])}</p>"
        if self.get("paused"):
            top += "<p><b>Queue paused</b>: no new job starts.</p>"
        pending = _table(["#", "job", "priority", "user", "experiment", "ETA"], [
            [j["position"], j["job_id"], j["priority"], j["user"], j["experiment_class"],
             fmt_duration(j.get("eta_s"))] for j in self["pending"][:500]])
        waiting = _table(["job", "user", "experiment", "waiting for"], [
            [j["job_id"], j["user"], j["experiment_class"], _waiting_for(j)]
            for j in self.get("waiting", [])]) if self.get("waiting") else ""
        return top + pending + waiting

    def __str__(self) -> str:
        return format_queue(self)


class JobList(list):
    """Jobs as returned by Client.history(): a list of JobResult, a table in Jupyter."""

    def _repr_html_(self) -> str:
        return _table(["job", "status", "user", "experiment", "finished", "error"], [
            [j.job_id, j.status, j.user, j.experiment_class, j.finished_at or "",
             j.error_message or ""] for j in self])

    def __str__(self) -> str:
        return "\n".join(format_job_line(j) for j in self)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe(text: str) -> str:
    """Text for a terminal: control characters (escape sequences, carriage returns, bidi
    overrides) shown as ``\\x1b``-style escapes so job names, users, log lines and error
    messages cannot drive the terminal. Newlines and tabs stay."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
