"""The one executor thread that owns the hardware. It runs a job start to finish:
load the experiment (allow-listed), apply the pre-job setpoint, acquire, save the raw data,
analyze, add the fit results. It never touches the database: it returns an Outcome and the
scheduler records it."""
from __future__ import annotations

import copy
import ctypes
import logging
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from experiments.base import Experiment, Stopped

from . import __version__, data_file
from .experiment_loader import ExperimentLoader
from .hardware.setpoint import Setpoint
from .job_log import JobLog, LogRouter
from .models import JobStatus, utcnow

log = logging.getLogger(__name__)
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available
job_log = logging.getLogger("labd.job")


class DataSaveError(RuntimeError):
    """The data file could not be written (disk full, read-only, permissions)."""


class JobInterrupted(BaseException):
    """Raised asynchronously in the executor thread when a job ignores its stop flag."""


@dataclass
class JobSpec:
    job_id: str
    user: str
    os_user: str
    experiment_module: str
    experiment_class: str
    experiment_config: dict[str, Any]
    priority: int
    created_at: str
    started_at: str
    batch_id: str | None
    data_path: Path
    log_path: Path
    configs: dict[str, Any]           # type name -> config_versions row
    output_root: Path


@dataclass
class Outcome:
    status: JobStatus
    error_message: str | None = None
    data_file_path: str | None = None
    module_sha256: str | None = None
    module_git_rev: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    finished_at: str = field(default_factory=utcnow)  # stamped when the run really ended


class JobContext:
    """What the experiment sees of labd while it runs (experiments.base.RunContext)."""

    def __init__(self, job_id: str, board: Any,
                 on_progress: Callable[[str, float], None]) -> None:
        self.job_id = job_id
        self.board = board
        self.hardware_config: dict[str, Any] = {}
        self.log = job_log
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._on_progress = on_progress
        self._last_progress = 0.0

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def check_stop(self) -> None:
        if self._stop.is_set():
            raise Stopped(self.stop_reason or "stopped")

    def progress(self, done: float, total: float) -> None:
        now = time.monotonic()
        if done >= total or now - self._last_progress >= 0.2:  # throttle the push events
            self._last_progress = now
            self._on_progress(self.job_id, float(done) / float(total) if total else 1.0)


def _scalars(results: dict[str, Any]) -> dict[str, Any]:
    """The small, JSON-able part of the fit results, kept in the job record."""
    out = {}
    for k, v in results.items():
        a = np.asarray(v)
        if a.ndim == 0 and a.dtype.kind in "biuf":
            x = a.item()
            out[k] = x if np.isfinite(x) else None
    return out


class Executor:
    def __init__(self, loader: ExperimentLoader, board: Any, setpoint: Setpoint,
                 config_reader: Callable[[Any], str], max_log_bytes: int,
                 router: LogRouter) -> None:
        self.loader = loader
        self.board = board
        self.setpoint = setpoint
        self.read_config = config_reader
        self.max_log_bytes = max_log_bytes
        self.router = router
        self._yaml_cache: dict[str, dict[str, Any]] = {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labd-executor")
        self.thread_ident: int | None = self.pool.submit(threading.get_ident).result()
        router.thread_id = self.thread_ident

    def submit(self, spec: JobSpec, ctx: JobContext,
               on_log: Callable[[str, str], None] | None = None) -> Future:
        return self.pool.submit(self._run, spec, ctx, on_log)

    def _parsed_yaml(self, sha256: str, content: str) -> dict[str, Any]:
        """Parsed config, cached by content hash (parsing cost more than the rest of a short
        job); each job gets its own copy so an experiment cannot alter the next one's."""
        parsed = self._yaml_cache.get(sha256)
        if parsed is None:
            parsed = self._yaml_cache[sha256] = yaml.load(content, Loader=_YamlLoader) or {}
        return copy.deepcopy(parsed)

    def interrupt(self) -> None:
        """Last resort for a job that ignores its stop flag: raise in the thread."""
        if self.thread_ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.thread_ident), ctypes.py_object(JobInterrupted))

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- in the executor thread --------------------------------------------------
    def _run(self, spec: JobSpec, ctx: JobContext,
             on_log: Callable[[str, str], None] | None) -> Outcome:
        try:
            jl = JobLog(spec.log_path, self.max_log_bytes,
                        (lambda text: on_log(spec.job_id, text)) if on_log else None)
        except OSError as exc:  # nothing could be saved either: fail before any hardware
            return Outcome(JobStatus.FAILED, f"cannot write to the data directory "
                           f"{spec.log_path.parent}: {exc.strerror or exc}")
        self.router.current = jl
        try:
            out = self._run_logged(spec, ctx)
            out.finished_at = utcnow()
            return out
        except JobInterrupted:
            return Outcome(JobStatus.FAILED, f"{ctx.stop_reason or 'interrupted'}; the "
                           "experiment ignored the stop request and was interrupted")
        finally:
            self.router.current = None
            jl.close()

    def _run_logged(self, spec: JobSpec, ctx: JobContext) -> Outcome:
        out = Outcome(JobStatus.FAILED)
        saved = False
        try:
            ctx.check_stop()  # cancelled while it was being started
            job_log.info("job %s: %s.%s by %s (%s)", spec.job_id, spec.experiment_module,
                         spec.experiment_class, spec.user, spec.os_user)
            loaded = self.loader.load(spec.experiment_module, spec.experiment_class)
            out.module_sha256, out.module_git_rev = loaded.sha256, loaded.git_rev()
            cfg = self.loader.validate_config(loaded, spec.experiment_config)
            contents = {name: {"version_id": row["version_id"], "sha256": row["sha256"],
                               "content": self.read_config(row)}
                        for name, row in spec.configs.items()}
            hw = contents.get("hardware_config")
            ctx.hardware_config = self._parsed_yaml(hw["sha256"], hw["content"]) if hw else {}
            setpoint = self.setpoint.apply(ctx.hardware_config, ctx)
            exp = loaded.cls(ctx, cfg)
            exp.before_job()
            try:
                raw = exp.acquire()
            finally:
                exp.after_job()
            data = data_file.check_data(raw)
            merged = {k: ctx.hardware_config.get(k, {}) for k in ("device", "hw", "aliases")}
            merged["data_management"] = {"output_root": str(spec.output_root)}
            merged["expt"] = cfg.model_dump(mode="json")
            meta = {
                "job_id": spec.job_id, "user": spec.user, "os_user": spec.os_user,
                "experiment_class": spec.experiment_class,
                "experiment_module": spec.experiment_module, "priority": spec.priority,
                "batch_id": spec.batch_id, "created_at": spec.created_at,
                "started_at": spec.started_at, "saved_at": utcnow(),
                "config_versions": {n: c["version_id"] for n, c in contents.items()},
                "module_sha256": loaded.sha256, "module_git_rev": out.module_git_rev,
                # units + package provenance (dropin-experiments): the unit of every
                # expt key and data key, and the hash/revision of the whole package
                "expt_units": exp.expt_units(), "data_units": exp.data_units(),
                "package_sha256": loaded.package_sha256,
                "labd_version": __version__, "setpoint": setpoint,
                "hardware": self.board.describe(),
                "nonfinite_keys": [k for k, a in data.items()
                                   if a.dtype.kind in "fc" and not np.isfinite(a).all()],
            }
            has_analysis = type(exp).analyze is not Experiment.analyze
            try:
                data_file.write_raw(spec.data_path, data, merged, meta, contents,
                                    analysis="pending" if has_analysis else "none")
            except OSError as exc:
                raise DataSaveError(f"could not save data to {spec.data_path}: "
                                    f"{exc.strerror or exc}") from None
            saved = True
            out.data_file_path = str(spec.data_path)
            job_log.info("raw data saved to %s", spec.data_path)
            analysis_error = None
            if has_analysis:  # the raw file above is already safe under its final name
                results: dict[str, Any] = {}
                try:
                    results = dict(exp.analyze(dict(data)) or {})
                except Stopped:
                    raise
                except Exception as exc:
                    analysis_error = f"{type(exc).__name__}: {exc}"
                    job_log.error("analysis failed (raw data is saved):\n%s",
                                  traceback.format_exc())
                try:
                    data_file.add_results(spec.data_path, results, analysis_error)
                except Exception as exc:
                    analysis_error = f"saving fit results failed: {type(exc).__name__}: {exc}"
                out.results = _scalars(results)
            out.status = JobStatus.COMPLETED
            if analysis_error:
                out.error_message = f"analysis failed (raw data saved): {analysis_error}"
        except Stopped as exc:
            reason = ctx.stop_reason or str(exc)
            out.status = JobStatus.CANCELLED if reason.startswith("cancelled") \
                else JobStatus.FAILED
            out.error_message = reason + ("; raw data saved" if saved else "")
            job_log.warning("stopped: %s", out.error_message)
        except Exception as exc:
            out.status = JobStatus.FAILED
            out.error_message = f"{type(exc).__name__}: {exc}"
            job_log.error("job failed:\n%s", traceback.format_exc())
        return out
