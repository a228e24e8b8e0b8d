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
           fresh: list[str] | None = None) -> Req:
    """Queue a job; returns its ID once the daemon has stored it durably.
    ``time_limit_s`` in seconds; ``after``: run only once that job completed;
    ``not_before``: ISO time with a timezone; ``hold``: queue it held until released;
    ``update_main``: a calibration's fit updates main when it completes; ``fresh``: config
    keys (e.g. ``device.qubit.f_ge[0]``) recalibrated first if older than allowed."""
    return Req("submit", submit_params(
        experiment_class, experiment_module, expt_config, user=user, priority=priority,
        time_limit_s=time_limit_s, config_versions=config_versions,
        inline_configs=inline_configs, after=after, not_before=not_before, hold=hold,
        update_main=update_main or None, fresh=fresh or None),
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


VERBS = [health, submit, submit_batch, get, cancel, cancel_batch, cancel_user, rerun, retry,
         hold, release, set_priority, pause, resume, queue, history, logs, experiments,
         config_push, config_pull, config_versions, config_show, config_set_main,
         config_history, config_diff, config_verify, config_types]


def data_path(job: JobResult) -> str:
    """The job's data file, or why there is none."""
    if not job.data_file_path:
        raise LabdError(f"{job.job_id} has no data file ({job.status}"
                        f"{': ' + job.error_message if job.error_message else ''})")
    return job.data_file_path
