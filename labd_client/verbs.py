"""Every simple call of the client API, once, without I/O: each verb builds a ``Req``
(method, params, how to read the result). ``Client`` sends it on a blocking socket,
``AsyncClient`` on an asyncio stream; both expose these verbs with the same signatures."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from .protocol import LabdError, batch_params, clean, queue_rows, submit_params
from .results import JobResult
from .views import JobList, QueueView


class Req(NamedTuple):
    method: str
    params: dict[str, Any]
    convert: Callable[[Any], Any] = lambda r: r


def _jobs(out: dict[str, Any]) -> JobList:
    return JobList(JobResult.from_dict(j) for j in out["jobs"])


def health() -> Req:
    """Daemon status, counts, your identity; the predecessor's keys too."""
    return Req("health", {})


def submit(experiment_class: str, experiment_module: str,
           expt_config: dict[str, Any] | None = None, *, user: str | None = None,
           priority: int | None = None, time_limit_s: float | None = None,
           config_versions: dict[str, str] | None = None,
           inline_configs: dict[str, str] | None = None, after: str | None = None,
           not_before: str | None = None, hold: bool = False, update_main: bool = False,
           fresh: list[str] | None = None, preemptible: bool = True) -> Req:
    """Queue a job; returns its ID once the daemon has stored it durably.
    ``time_limit_s`` in seconds; ``after``: run only once that job completed;
    ``not_before``: ISO time with a timezone; ``hold``: queue it held until released;
    ``update_main``: a calibration's fit updates main when it completes; ``fresh``: config
    keys (e.g. ``device.qubit.f_ge[0]``) recalibrated first if older than allowed;
    ``preemptible=False``: a more urgent job never takes the board from it between rounds
    (an admin still may)."""
    return Req("submit", submit_params(
        experiment_class, experiment_module, expt_config, user=user, priority=priority,
        time_limit_s=time_limit_s, config_versions=config_versions,
        inline_configs=inline_configs, after=after, not_before=not_before, hold=hold,
        update_main=update_main or None, fresh=fresh or None,
        preemptible=None if preemptible else False),
        lambda r: r["job_id"])


def submit_batch(jobs: list[dict[str, Any]]) -> Req:
    """Submit many jobs atomically (all or none): returns batch_id and job_ids. Each dict
    takes submit()'s arguments (``expt_config`` or ``experiment_config``)."""
    return Req("submit_batch", batch_params(jobs))


def get(job_id: str) -> Req:
    return Req("get", {"job_id": job_id}, JobResult.from_dict)


def cancel(job_id: str) -> Req:
    return Req("cancel", {"job_id": job_id})


def cancel_batch(batch_id: str) -> Req:
    return Req("cancel_batch", {"batch_id": batch_id})


def cancel_user(os_user: str) -> Req:
    return Req("cancel_user", {"os_user": os_user})


def rerun(job_id: str) -> Req:
    """Submit again with the exact config versions and expt config the job ran with."""
    return Req("rerun", {"job_id": job_id}, lambda r: r["job_id"])


def retry(job_id: str) -> Req:
    """Submit a failed or cancelled job again, as it was submitted."""
    return Req("retry", {"job_id": job_id}, lambda r: r["job_id"])


def hold(job_id: str) -> Req:
    return Req("hold", {"job_id": job_id})


def release(job_id: str) -> Req:
    return Req("release", {"job_id": job_id})


def set_priority(job_id: str, priority: int) -> Req:
    return Req("set_priority", {"job_id": job_id, "priority": priority})


def preempt(job_id: str) -> Req:
    """Admins: the running job yields the board at its next safe point (issue #16)."""
    return Req("preempt", {"job_id": job_id})


def pause() -> Req:
    return Req("pause", {})


def resume() -> Req:
    return Req("resume", {})


def queue(user: str | None = None, os_user: str | None = None, limit: int = 100_000) -> Req:
    """Running job and pending jobs in run order (each a dict with its position)."""
    return Req("queue", clean(user=user, os_user=os_user, limit=limit),
               lambda q: QueueView(queue_rows(q)))


def history(user: str | None = None, status: str | None = None, limit: int = 50,
            **filters: Any) -> Req:
    """Jobs newest first; filters: os_user, experiment, batch_id, since, cursor."""
    return Req("history", clean(user=user, status=status, limit=limit, **filters), _jobs)


def logs(job_id: str, offset: int = 0, max_bytes: int = 65536) -> Req:
    """Log text from a byte offset."""
    return Req("logs", {"job_id": job_id, "offset": offset, "max_bytes": max_bytes})


def experiments() -> Req:
    """The experiment classes this daemon runs: module, class, docstring, config fields
    (type, default, unit, description), whether it has an analysis."""
    return Req("experiments", {}, lambda r: r["experiments"])


def config_push(type: str, content: str, message: str | None = None,
                expected_main: str | None = None) -> Req:
    return Req("config.push", clean(type=type, content=content, message=message,
                                    expected_main=expected_main))


def config_pull(type: str) -> Req:
    return Req("config.pull", {"type": type})


def config_versions(type: str, limit: int = 100) -> Req:
    return Req("config.versions", {"type": type, "limit": limit})


def config_show(version_id: str) -> Req:
    return Req("config.show", {"version_id": version_id})


def config_set_main(type: str, version_id: str) -> Req:
    return Req("config.set_main", {"type": type, "version_id": version_id})


def config_history(type: str, limit: int = 100) -> Req:
    return Req("config.history", {"type": type, "limit": limit})


def config_diff(a: str, b: str) -> Req:
    return Req("config.diff", {"a": a, "b": b}, lambda r: r["diff"])


def config_verify() -> Req:
    return Req("config.verify", {})


def config_types() -> Req:
    return Req("config.types", {}, lambda r: r["types"])


# ---- (sched) recurring schedules and config trace, issue #13 ---------------------------
def parse_every(every: str | float) -> float:
    """A period as seconds: a number (seconds) or ``90s``, ``30m``, ``2h``, ``1d``, ``1h30m``."""
    if isinstance(every, (int, float)):
        return float(every)
    import re
    text = every.strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"every {every!r}: give a period like 90s, 30m, 2h, 1d or 1h30m")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)


def schedule(experiment_class: str, experiment_module: str, every: str | float,
             expt_config: dict[str, Any] | None = None, *, start: str | None = None,
             **submit: Any) -> Req:
    """Submit this job every ``every`` (seconds, or "2h", "30m", "1d"), as you, from
    ``start`` (ISO time with timezone; default: one period from now). ``submit`` takes
    submit()'s keyword arguments (priority, config_versions, time_limit_s, update_main...);
    the daemon validates them now, as a submit. Returns the schedule (its schedule_id)."""
    return Req("schedule.add", clean(
        every_s=parse_every(every), start=start,
        submit=submit_params(experiment_class, experiment_module, expt_config, **submit)))


def schedules(os_user: str | None = None) -> Req:
    """Schedules with next fire time, last job and its status, skips."""
    return Req("schedule.list", clean(os_user=os_user), lambda r: r["schedules"])


def schedule_pause(schedule_id: int) -> Req:
    return Req("schedule.pause", {"schedule_id": schedule_id})


def schedule_resume(schedule_id: int) -> Req:
    return Req("schedule.resume", {"schedule_id": schedule_id})


def schedule_remove(schedule_id: int) -> Req:
    return Req("schedule.remove", {"schedule_id": schedule_id})


def schedule_fires(schedule_id: int, limit: int = 20) -> Req:
    """A schedule's firings, newest first (submitted with its job, skipped, failed)."""
    return Req("schedule.fires", {"schedule_id": schedule_id, "limit": limit},
               lambda r: r["fires"])


def config_trace(type: str, key: str) -> Req:
    """Each value a key (dotted path, list indices as .0 or [0]) has had in main, oldest
    first: value, version_id, since (when it became main), set_by, created_by,
    created_by_job_id."""
    return Req("config.trace", {"type": type, "key": key}, lambda r: r["changes"])


SCHED_VERBS = [schedule, schedules, schedule_pause, schedule_resume, schedule_remove,
               schedule_fires, config_trace]
# ---- end of (sched) --------------------------------------------------------------------


VERBS = [health, submit, submit_batch, get, cancel, cancel_batch, cancel_user, rerun, retry,
         hold, release, set_priority, preempt, pause, resume, queue, history, logs, experiments,
         config_push, config_pull, config_versions, config_show, config_set_main,
         config_history, config_diff, config_verify, config_types, *SCHED_VERBS]


def data_path(job: JobResult) -> str:
    """The job's data file, or why there is none."""
    if not job.data_file_path:
        raise LabdError(f"{job.job_id} has no data file ({job.status}"
                        f"{': ' + job.error_message if job.error_message else ''})")
    return job.data_file_path


# ---- notifications (notify branch, issue #12) -----------------------------------------
def notify(url: str, on: str = "all") -> Req:
    """Have labd POST to a webhook (JSON with a ``text`` field, Slack/Mattermost style)
    when one of your jobs ends (``on="all"``), fails (``"failures"``) or when the last job
    of one of your batches ends (``"batch"``). The host must be on the admin's
    ``notify_allowed_hosts``. Returns the target (its ``id`` for remove/test)."""
    return Req("notify_add", {"url": url, "on": on})


def notify_list(all: bool = False) -> Req:
    """Your notification targets (``all=True``: everyone's, admins only)."""
    return Req("notify_list", {"all": all}, lambda r: r["targets"])


def notify_remove(target_id: str) -> Req:
    return Req("notify_remove", {"id": target_id})


def notify_test(target_id: str) -> Req:
    """Send a test message now; returns ``{"ok": ..., "error": ...}``."""
    return Req("notify_test", {"id": target_id})


def notify_status(all: bool = False) -> Req:
    """Delivery queue (length, dropped) and each target's latest outcome and counters."""
    return Req("notify_status", {"all": all})


VERBS += [notify, notify_list, notify_remove, notify_test, notify_status]
# ---- end of notifications ----------------------------------------------------------------
