"""A job's way through four threads (and helpers). The prepare thread loads the experiment
(allow-listed), validates its config, reads its config versions and builds and compiles its
programs while the job before it still acquires. The board thread owns the hardware only
for acquisition: it takes the prepared job the moment the previous acquisition ends (no
round trip through the event loop), applies the pre-job setpoint and acquires. The raw
data then go to the save thread, which describes the job and hands the data file to the
data writer (labd/data_writer.py: a child process, or on a small machine this thread
while the files keep up with the board); only once the file is durable under its final
name does the job go to the analysis thread, which fits and hands the results to the
writer in turn (fits wait while the board's next jobs are made ready: the board must not
wait). A helper thread does the board thread's side effects (log writes, waking the event
loop), so between two acquisitions it makes no system call. None of them touches the
database: the scheduler records the start and the outcome."""
from __future__ import annotations

import contextlib
import copy
import ctypes
import importlib
import logging
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from experiments.base import Experiment, Stopped

from . import __version__, data_file
from .checkpoint import Checkpoint, Preempted, SafePoints, checkpoint_path
from .checkpoint import remove as remove_checkpoint
from .data_writer import DataWriter, writer_mode
from .experiment_loader import ExperimentLoader
from .hardware.setpoint import Setpoint
from .job_log import JobLog, LogRouter
from .models import utcnow
from .scheduler.states import EndReason

log = logging.getLogger(__name__)
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available
job_log = logging.getLogger("labd.job")


PREPARE_FIRST_S = 1.0            # how long a fit waits for the board's next jobs to be ready
FILES_BEHIND_JOBS = 4   # acquisitions waiting to be saved: the data files lag the board


class Readying:
    """Counts the jobs on their way to the board that are not prepared yet: from the
    moment the dispatcher takes one from the queue (and reads what it needs from the
    database) until the prepare thread is done with it. Fits wait while there are any,
    for at most PREPARE_FIRST_S: a fit holds the GIL for milliseconds at a time (its
    Python residuals), and the way of the board's next job through the loop, the
    database and the prepare thread is a dozen GIL hand-offs."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()

    def add(self, k: int) -> None:
        with self._lock:
            self._n += k
            if self._n:
                self.idle.clear()
            else:
                self.idle.set()

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        self.add(1)
        try:
            yield
        finally:
            self.add(-1)


class JobInterrupted(BaseException):
    """Ends a job that ignored its stop request past the grace time. A BaseException, so an
    experiment's ``except Exception`` cannot swallow it. Raised synchronously at the job's
    next labd call (board, log, print, progress, check_stop), or, for a pure-Python loop
    that makes none, injected only while the thread is executing experiment code (see
    ``Executor.interrupt``)."""


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
    resume_log: bool = False          # its log may exist: an earlier attempt (revoked, crash)
    preemptions: int = 0              # times preempted before this run (issue #16)


@dataclass
class Outcome:
    reason: EndReason
    error_message: str | None = None
    data_file_path: str | None = None
    module_sha256: str | None = None
    module_git_rev: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    finished_at: str = field(default_factory=utcnow)  # stamped when the run really ended
    config_versions: dict[str, str] | None = None     # set for a job that never started
    preempted: bool = False   # it yielded the board at a safe point: not an end (#16)


class BoardClock:
    """When the board acquires: the idle gap between the end of one ``board.acquire`` and
    the start of the next is what the board-idle benchmark reports (``board_stats``)."""

    def __init__(self) -> None:
        self.acquisitions = 0
        self.gaps: deque[float] = deque(maxlen=100_000)  # seconds
        self._last_end: float | None = None

    def timed(self, acquire: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        if self._last_end is not None:
            self.gaps.append(start - self._last_end)
        try:
            return acquire(*args, **kwargs)
        finally:
            self._last_end = time.monotonic()
            self.acquisitions += 1


class _Board:
    """The board as a job sees it: every call is a safe point where a job that ignored its
    stop request is interrupted, and acquisitions are timed. Outside the board stage
    (``prepare`` runs while another job acquires) only attributes such as ``soccfg``
    may be read."""

    def __init__(self, board: Any, ctx: "JobContext", clock: BoardClock | None) -> None:
        self._board = board
        self._ctx = ctx
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._board, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            self._ctx.interrupt_point()
            if not self._ctx.board_stage:
                raise RuntimeError(f"board.{name}() called outside acquire(): prepare() "
                                   "runs while another job has the board")
            if name == "acquire" and self._ctx.safe is not None:  # round by round (#16)
                safe = self._ctx.safe

                def value_(prog: Any, *, rounds: int, ctx: Any, **kw: Any) -> Any:
                    return safe.acquire(value, self._ctx, prog, rounds=rounds, ctx_arg=ctx,
                                        **kw)
                if self._clock is not None:
                    return self._clock.timed(value_, *args, **kwargs)
                return value_(*args, **kwargs)
            if name == "acquire" and self._clock is not None:
                return self._clock.timed(value, *args, **kwargs)
            return value(*args, **kwargs)
        return call


class JobContext:
    """What the experiment sees of labd while it runs (experiments.base.RunContext)."""

    def __init__(self, job_id: str, board: Any, on_progress: Callable[[str, float], None],
                 clock: BoardClock | None = None) -> None:
        self.job_id = job_id
        self.board = _Board(board, self, clock)
        self.hardware_config: dict[str, Any] = {}
        # (type, sha256) of the configs it runs with: a key for caching built programs
        self.config_key: tuple[tuple[str, str], ...] = ()
        self.board_stage = False       # True while the board thread runs it
        self.log = job_log
        self.stop_kind: EndReason | None = None
        self.stop_reason: str | None = None       # the message, for people
        self._stop = threading.Event()
        self._hard = False
        self._on_progress = on_progress
        self._last_progress = 0.0
        # issue #16: round-by-round acquisition with checkpoints, for an experiment class
        # with safe points (set when it is prepared); None: it cannot be preempted
        self.safe: SafePoints | None = None
        self.preempt_by: str | None = None      # who asked it to yield

    def request_preempt(self, by: str) -> bool:
        """Ask the job to yield the board at its next safe point (False if it has none,
        or was asked already)."""
        if self.safe is None or self.safe.requested:
            return False
        self.preempt_by = by   # before the board thread can see the request
        return self.safe.request(by)

    @property
    def preempted(self) -> bool:
        return self.safe is not None and self.safe.preempted

    def request_stop(self, kind: EndReason, message: str) -> None:
        if self.stop_kind is None:
            self.stop_kind, self.stop_reason = kind, message
        self._stop.set()

    def hard_stop(self) -> None:
        """The job ignored its stop request: interrupt it at its next labd call."""
        self._hard = True
        self._stop.set()

    def interrupt_point(self) -> None:
        if self._hard:
            raise JobInterrupted(self.stop_reason)

    def should_stop(self) -> bool:
        self.interrupt_point()
        return self._stop.is_set()

    def check_stop(self) -> None:
        self.interrupt_point()
        if self._stop.is_set():
            raise Stopped(self.stop_reason or "stopped")

    def progress(self, done: float, total: float) -> None:
        self.interrupt_point()
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


def _after_job(exp: Experiment) -> str | None:
    """The after_job hook once the acquisition succeeded: its failure is reported on the
    job, and the data it acquired are saved all the same."""
    try:
        exp.after_job()
    except Exception as exc:
        job_log.error("after_job failed (the data are kept):\n%s", traceback.format_exc())
        return f"after_job failed: {type(exc).__name__}: {exc}"
    return None


def _units(method: Callable[[], Any]) -> dict[str, str]:
    """An experiment's units, as text; a unit it does not know (None) is left out, and a
    method that fails costs the file its units, never its data."""
    try:
        return {str(k): str(v) for k, v in dict(method() or {}).items() if v is not None}
    except Exception:
        job_log.warning("%s() failed; the data file is saved without those units:\n%s",
                        method.__name__, traceback.format_exc())
        return {}


def _partial_outcome(message: str, path: Path, module_sha256: str | None) -> Outcome:
    return Outcome(EndReason.ERROR, f"{message}; its partial data (the rounds done) are "
                   f"saved in the data file", data_file_path=str(path),
                   module_sha256=module_sha256)   # the code that took them


def partial_saved(spec: JobSpec) -> Outcome | None:
    """(#16) The outcome of a job whose partial data are saved already: a pause or a more
    urgent job took it back while it was being prepared, and that outcome went with it.
    It ends the same way again, instead of acquiring anew onto its own data file."""
    path = spec.data_path
    if not path.exists() or data_file.root_attr(path, "job_id") != spec.job_id:
        return None
    message = data_file.root_attr(path, "partial")
    return None if message is None else \
        _partial_outcome(message, path, data_file.root_attr(path, "module_sha256"))


@dataclass
class Acquired:
    """A finished acquisition on its way from the board thread to the analysis thread."""
    spec: JobSpec
    ctx: JobContext
    log: JobLog
    exp: Experiment
    data: dict[str, np.ndarray] | None   # None: spilled, the fit reads the saved file
    contents: dict[str, Any]
    loaded: Any
    cfg: Any
    setpoint: Any
    ended_at: str        # when its acquisition ended
    held: int = 0        # bytes of data it holds in the executor's backlog
    note: str | None = None   # what went wrong after a good acquisition (its after_job)


class Handle:
    """One job on its way through the executor; the dispatcher awaits its futures.
    ``started`` resolves True when the board begins it, or False when it never will
    (``done`` then holds the outcome of a failed preparation, or None if the job was
    revoked and stays pending). ``acquired``: the board is free again. ``done``: the
    Outcome, once data and fits are saved. The save thread writes nothing before the
    scheduler has durably recorded the start (``claimed``)."""

    def __init__(self, spec: JobSpec, ctx: JobContext,
                 on_log: Callable[[str, str], None] | None) -> None:
        self.spec, self.ctx, self.on_log = spec, ctx, on_log
        self.started: Future = Future()
        self.acquired: Future = Future()
        self.done: Future = Future()
        self.started_mono: float | None = None
        self.claim_ok: bool | None = None        # set with ``claimed``
        self.claimed = threading.Event()
        self._lock = threading.Lock()
        self._state = "waiting"                  # -> started | revoked

    def revoke(self) -> bool:
        """Take the job back before the board starts it (a more urgent job came, main
        changed, pause, shutdown); True if it will not start. Thread-safe."""
        with self._lock:
            if self._state == "waiting":
                self._state = "revoked"
            return self._state == "revoked"

    def _take(self) -> bool:
        with self._lock:
            if self._state != "waiting":
                return False
            self._state = "started"
        self.started_mono = time.monotonic()
        self.spec.started_at = utcnow()
        return True

    def set_claimed(self, ok: bool) -> None:
        self.claim_ok = ok
        self.claimed.set()

    def _never_starts(self, outcome: Outcome | None) -> None:
        for fut, value in ((self.done, outcome), (self.acquired, None), (self.started, False)):
            _resolve(fut, value)


def _resolve(fut: Future, value: Any) -> None:
    """Set a result unless one is set already (the job ended another way first)."""
    with contextlib.suppress(InvalidStateError):
        fut.set_result(value)


@dataclass
class Prepared:
    """A job made ready off the board: experiment loaded, validated, configured, its
    programs built."""
    log: JobLog
    loaded: Any
    exp: Experiment
    cfg: Any
    contents: dict[str, Any]


class Executor:
    """Owns the prepare, board, save and analysis threads. None can be killed by a job
    (each step is wrapped); ``state`` tells health whether the board thread is idle, busy
    or dead. ``clock`` times the board's acquisitions."""

    def __init__(self, loader: ExperimentLoader, board: Any, setpoint: Setpoint,
                 config_reader: Callable[[Any], str], max_log_bytes: int,
                 router: LogRouter, fit_backlog_bytes: int,
                 data_writer: str = "auto") -> None:
        self.loader = loader
        self.board = board
        self.setpoint = setpoint
        self.read_config = config_reader
        self.max_log_bytes = max_log_bytes
        self.fit_backlog_bytes = fit_backlog_bytes
        self.router = router
        self._yaml_cache: dict[str, dict[str, Any]] = {}
        self._experiment_roots = tuple(
            str(Path(p).resolve()) + os.sep for pkg in loader.allowed
            for p in importlib.import_module(pkg).__path__)
        self.busy_with: str | None = None         # job ID the board thread is running
        self.backlog_bytes = 0                    # raw data waiting to be saved and fitted
        self._backlog_lock = threading.Lock()     # updated from two threads
        self.clock = BoardClock()
        self._to_prepare: queue.SimpleQueue = queue.SimpleQueue()
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._to_save: queue.SimpleQueue = queue.SimpleQueue()
        self._to_fit: queue.SimpleQueue = queue.SimpleQueue()
        self._io: queue.SimpleQueue = queue.SimpleQueue()
        self.readying = Readying()
        self.files = DataWriter(writer_mode(data_writer))
        self._files_started = False
        self._thread = threading.Thread(target=self._loop, name="labd-board", daemon=True)
        self._thread.start()
        for name, loop in (("labd-prepare", self._prepare_loop),
                           ("labd-save", self._save_loop), ("labd-analysis", self._fit_loop),
                           ("labd-board-io", self._io_loop)):
            threading.Thread(target=loop, name=name, daemon=True).start()

    @property
    def state(self) -> str:
        if not self._thread.is_alive():
            return "dead"
        return "idle" if self.busy_with is None else "busy"

    def submit(self, spec: JobSpec, ctx: JobContext,
               on_log: Callable[[str, str], None] | None = None) -> Handle:
        """Prepare the job now; the board takes it as soon as it is free."""
        handle = Handle(spec, ctx, on_log)
        self.readying.add(1)   # until the prepare thread is done with it
        self._to_prepare.put(handle)
        return handle

    def warm_up(self) -> None:
        """A job is queued: the data writer starts now (it imports h5py, ~0.3 s), not
        while the first save waits for it. (On the helper thread: not the loop's.)"""
        if not self._files_started and self.files.has_child:
            self._files_started = True
            self.later(self.files.start)

    # ---- the board thread's side effects ---------------------------------------------
    # Between two acquisitions the board thread makes no system call: each one gives up the
    # GIL, and taking it back from a fit or a save can cost a switch interval (5 ms) or a
    # whole C call. Its log writes and the futures the event loop awaits (whose callbacks
    # write to the loop's wake-up pipe) are run by this helper thread, in order.
    def later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the board's helper thread (FIFO); never blocks."""
        self._io.put((fn, args))

    def _io_loop(self) -> None:
        while (item := self._io.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # never let one side effect take the thread down
                log.exception("executor: %r failed", fn)

    def _log_start(self, spec: JobSpec, ctx: JobContext, jl: JobLog) -> None:
        """The job's first line. A logging call cost the board thread more than the rest
        of its way to the next acquisition: the record is made here and written into the
        job's log (buffered), and the daemon's log gets it from the helper thread."""
        if not job_log.isEnabledFor(logging.INFO):
            return
        record = logging.LogRecord(
            job_log.name, logging.INFO, __file__, 0, "job %s: %s.%s by %s (%s)%s",
            (spec.job_id, spec.experiment_module, spec.experiment_class, spec.user,
             spec.os_user, " resuming from its checkpoint" if ctx.safe and ctx.safe.resumed
             else ""), None)
        jl.write(self.router.line(record))
        self.later(job_log.handle, record)   # no job log is routed on the helper thread

    def _unstarted(self, handle: Handle, prep: Prepared, outcome: Outcome | None) -> None:
        prep.log.close()
        handle._never_starts(outcome)

    # ---- in the prepare thread -------------------------------------------------------
    def _prepare_loop(self) -> None:
        while (handle := self._to_prepare.get()) is not None:
            try:
                result = self._prepare_job(handle)
            except BaseException:  # never let a job take the thread down
                log.exception("executor: preparing %s failed", handle.spec.job_id)
                result = Outcome(EndReason.START_FAILED, "internal error while preparing "
                                 "the job; the daemon log has the details")
            if isinstance(result, Outcome):
                handle._never_starts(result)
            elif result is not None:
                self._work.put((handle, result))
            self.readying.add(-1)

    def _prepare_job(self, handle: Handle) -> Prepared | Outcome | None:
        spec, ctx = handle.spec, handle.ctx
        if handle._state == "revoked":  # taken back while it waited
            handle._never_starts(None)
            return None
        try:
            jl = JobLog(spec.log_path, self.max_log_bytes,
                        (lambda text: handle.on_log(spec.job_id, text)) if handle.on_log
                        else None, resume=spec.resume_log, defer=self.later)
        except OSError as exc:  # nothing could be saved either: fail before any hardware
            return Outcome(EndReason.START_FAILED, f"cannot write to the data directory "
                           f"{spec.log_path.parent}: {exc.strerror or exc}")
        self.router.attach(jl, ctx.interrupt_point)
        try:
            result = self._prepare(spec, ctx, jl)
        except JobInterrupted:
            result = Outcome(ctx.stop_kind or EndReason.ERROR, ctx.stop_reason or "stopped")
        finally:
            self.router.detach()
        if isinstance(result, Outcome):
            jl.close()
        return result

    def _prepare(self, spec: JobSpec, ctx: JobContext, jl: JobLog) -> Prepared | Outcome:
        try:
            loaded = self.loader.load(spec.experiment_module, spec.experiment_class)
            if (failed := self._safe_points(spec, ctx, loaded)) is not None:
                return failed
            cfg = self.loader.validate_config(loaded, spec.experiment_config)
            for name in loaded.cls.requires_configs:
                if name not in spec.configs:
                    return Outcome(EndReason.START_FAILED, (
                        f"{spec.experiment_class} needs a {name}, and there is no main "
                        f"version of it: push one with `labctl config push {name} FILE` "
                        "(or pin a version with --pin), then `labctl retry` this job"))
            contents = {name: {"version_id": row["version_id"], "sha256": row["sha256"],
                               "content": self.read_config(row)}
                        for name, row in spec.configs.items()}
            hw = contents.get("hardware_config")
            ctx.hardware_config = self._parsed_yaml(hw["sha256"], hw["content"]) if hw else {}
            ctx.config_key = tuple(sorted((n, c["sha256"]) for n, c in contents.items()))
            exp = loaded.cls(ctx, cfg)
            exp.prepare()
        except Stopped as exc:
            return Outcome(ctx.stop_kind or EndReason.ERROR, ctx.stop_reason or str(exc))
        except Exception as exc:  # the experiment's own code failed, as in acquire
            job_log.error("job failed:\n%s", traceback.format_exc())
            return Outcome(EndReason.ERROR, f"{type(exc).__name__}: {exc}")
        return Prepared(jl, loaded, exp, cfg, contents)

    def _safe_points(self, spec: JobSpec, ctx: JobContext, loaded: Any) -> Outcome | None:
        """(#16) An experiment with safe points acquires round by round; one preempted
        before resumes from its checkpoint, unless its code changed meanwhile: then it
        fails, its partial data saved."""
        path = checkpoint_path(spec.data_path)
        try:
            resume = Checkpoint.load(path) if path.exists() else None
        except Exception as exc:
            return Outcome(EndReason.ERROR, f"its checkpoint {path} cannot be read "
                           f"({type(exc).__name__}: {exc}); it cannot resume")
        if resume is not None and resume.module_sha256 != loaded.sha256:
            message = (f"cannot resume: the code of {spec.experiment_module} changed while "
                       f"the job was preempted (sha256 {resume.module_sha256[:12]} -> "
                       f"{loaded.sha256[:12]})")
            return self._save_partial(spec, loaded, resume, message)
        if resume is None and (saved := partial_saved(spec)) is not None:
            return saved
        if not getattr(loaded.cls, "safe_points", False):
            return None
        ckpt = resume or Checkpoint(loaded.sha256, loaded.package_sha256,
                                    {n: r["version_id"] for n, r in spec.configs.items()})
        ctx.safe = SafePoints(path, ckpt, resumed=resume is not None)
        return None

    def _save_partial(self, spec: JobSpec, loaded: Any, ckpt: Checkpoint,
                      message: str) -> Outcome:
        data = ckpt.partial_data()
        meta = {"job_id": spec.job_id, "user": spec.user, "os_user": spec.os_user,
                "experiment_class": spec.experiment_class,
                "experiment_module": spec.experiment_module, "created_at": spec.created_at,
                "config_versions": ckpt.config_versions,
                "module_sha256": ckpt.module_sha256, "package_sha256": ckpt.package_sha256,
                "acquisitions": ckpt.intervals, "preemptions": spec.preemptions,
                "partial": message, "labd_version": __version__}
        contents = {name: {"version_id": row["version_id"], "sha256": row["sha256"],
                           "content": self.read_config(row)}
                    for name, row in spec.configs.items()}
        try:
            data_file.write_raw(spec.data_path, data, {}, meta, contents, analysis="none")
        except OSError as exc:
            job_log.error("%s; saving its partial data failed: %s", message, exc)
            return Outcome(EndReason.ERROR, f"{message}; its partial data could not be saved "
                           f"({exc.strerror or exc}), the checkpoint "
                           f"{checkpoint_path(spec.data_path)} holds them")
        job_log.error("%s; partial data saved to %s", message, spec.data_path)
        remove_checkpoint(checkpoint_path(spec.data_path))   # the data file holds it now
        return _partial_outcome(message, spec.data_path, ckpt.module_sha256)

    # ---- in the board thread ---------------------------------------------------------
    def _loop(self) -> None:
        while True:
            handle: Handle | None = None
            try:
                item = self._work.get()
                if item is None:
                    self._io.put(None)  # after every side effect queued before it
                    return
                handle, prep = item
                ctx = handle.ctx
                if not handle._take():
                    self.later(self._unstarted, handle, prep, None)
                    continue
                if ctx.stop_kind is not None:  # cancelled while it waited for the board
                    self.later(self._unstarted, handle, prep,
                               Outcome(ctx.stop_kind, ctx.stop_reason))
                    continue
                self.busy_with = handle.spec.job_id
                self.later(_resolve, handle.started, True)
                result = self._run(handle, prep)
                self.busy_with = None
                self.later(_resolve, handle.acquired, None)
                if isinstance(result, Outcome):
                    result.finished_at = utcnow()
                else:
                    result.held = sum(a.nbytes for a in result.data.values())
                    with self._backlog_lock:
                        self.backlog_bytes += result.held
                self._to_save.put((result, handle, prep.log))
            except BaseException as exc:  # never let a job take the thread down
                if not isinstance(exc, JobInterrupted):
                    log.exception("executor: a job raised outside its run")
                if handle is not None:
                    self.later(handle._never_starts, Outcome(
                        EndReason.ERROR, "interrupted outside the experiment; the daemon "
                        "log has the details"))
            finally:
                self.busy_with = None

    def _parsed_yaml(self, sha256: str, content: str) -> dict[str, Any]:
        """Parsed config, cached by content hash (parsing cost more than the rest of a short
        job); each job gets its own copy so an experiment cannot alter the next one's."""
        parsed = self._yaml_cache.get(sha256)
        if parsed is None:
            parsed = self._yaml_cache[sha256] = yaml.load(content, Loader=_YamlLoader) or {}
        return copy.deepcopy(parsed)

    def interrupt(self, job_id: str) -> bool:
        """Inject JobInterrupted into the board thread, but only while it runs ``job_id``
        and its current frame is experiment code: the interpreter raises it at the next
        bytecode check, i.e. in that code or on entry to the next function it calls, never
        inside a lock taken further down (the logging deadlock of an unrestricted async
        exception). A stray one that lands in labd's own code after the job returned is
        caught by the thread's loop; ``clear_interrupt`` cancels one not yet raised."""
        ident = self._thread.ident
        if self.busy_with != job_id or ident is None:
            return False
        frame = sys._current_frames().get(ident)
        if frame is None or not frame.f_code.co_filename.startswith(self._experiment_roots):
            return False
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                   ctypes.py_object(JobInterrupted))
        return True

    def clear_interrupt(self) -> None:
        if self._thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread.ident),
                                                       ctypes.c_void_p(0))

    def shutdown(self) -> None:
        for q in (self._to_prepare, self._work, self._to_save, self._to_fit):
            q.put(None)

    def _run(self, handle: Handle, prep: Prepared) -> Acquired | Outcome:
        spec, ctx = handle.spec, handle.ctx
        self.router.attach(prep.log, ctx.interrupt_point)
        try:
            result = self._acquire(spec, ctx, prep)
        except JobInterrupted:
            result = Outcome(ctx.stop_kind or EndReason.ERROR,
                             f"{ctx.stop_reason or 'interrupted'}; the experiment ignored "
                             "the stop request and was interrupted at its next labd call")
        except Preempted:   # its checkpoint is in place: it resumes later (#16)
            job_log.info("preempted by %s at a safe point; checkpoint saved", ctx.preempt_by)
            result = Outcome(EndReason.SHUTDOWN, f"preempted by {ctx.preempt_by}",
                             preempted=True)
        finally:
            self.router.detach()
        return result

    def _acquire(self, spec: JobSpec, ctx: JobContext, prep: Prepared) -> Acquired | Outcome:
        exp, loaded = prep.exp, prep.loaded
        try:
            ctx.board_stage = True
            self._log_start(spec, ctx, prep.log)
            if ctx.safe is not None:
                ctx.safe.begin()
            setpoint = self.setpoint.apply(ctx.hardware_config, ctx)
            exp.before_job()
            try:
                raw = exp.acquire()
            except BaseException:
                exp.after_job()
                raise
            note = _after_job(exp)
            data = data_file.check_data(raw)
        except Stopped as exc:
            message = ctx.stop_reason or str(exc)
            job_log.warning("stopped: %s", message)
            return Outcome(ctx.stop_kind or EndReason.ERROR, message)
        except Exception as exc:
            job_log.error("job failed:\n%s", traceback.format_exc())
            return Outcome(EndReason.ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            ctx.board_stage = False
            if ctx.safe is not None:
                ctx.safe.end()
        return Acquired(spec, ctx, prep.log, exp, data, prep.contents, loaded, prep.cfg,
                        setpoint, utcnow(), note=note)

    def _describe(self, acq: Acquired) -> tuple[dict[str, Any], dict[str, Any]]:
        """The data file's merged config and metadata; built by the save thread, so the
        board thread goes straight on to the next acquisition."""
        spec, ctx, exp, loaded = acq.spec, acq.ctx, acq.exp, acq.loaded
        merged = {k: ctx.hardware_config.get(k, {}) for k in ("device", "hw", "aliases")}
        merged["data_management"] = {"output_root": str(spec.output_root)}
        merged["expt"] = acq.cfg.model_dump(mode="json")
        meta = {
            "job_id": spec.job_id, "user": spec.user, "os_user": spec.os_user,
            "experiment_class": spec.experiment_class,
            "experiment_module": spec.experiment_module, "priority": spec.priority,
            "batch_id": spec.batch_id, "created_at": spec.created_at,
            "started_at": spec.started_at,
            "config_versions": {n: c["version_id"] for n, c in acq.contents.items()},
            "module_sha256": loaded.sha256, "package_sha256": loaded.package_sha256,
            # the unit of every expt key and data key
            "expt_units": _units(exp.expt_units), "data_units": _units(exp.data_units),
            "labd_version": __version__, "setpoint": acq.setpoint,
            "hardware": self.board.describe(),
            "nonfinite_keys": [k for k, a in acq.data.items()
                               if a.dtype.kind in "fc" and not np.isfinite(a).all()],
            # (#16) every interval it had the board, and how often it yielded it
            "acquisitions": ctx.safe.ckpt.intervals if ctx.safe is not None
            else [[spec.started_at, acq.ended_at]],
            "preemptions": spec.preemptions,
        }
        return merged, meta

    # ---- in the save thread, then the analysis thread ----------------------------------
    # Two threads, so a long fit never delays saving (and completing) the jobs after it.
    def _save_loop(self) -> None:
        while (item := self._to_save.get()) is not None:
            self._save_one(*item)

    def _save_one(self, result: Acquired | Outcome, handle: Handle, jl: JobLog) -> None:
        if isinstance(result, Outcome):  # nothing to save
            jl.close()
            handle.done.set_result(result)
            return
        handle.claimed.wait()  # never a data file for a job not recorded as started
        if not handle.claim_ok:  # it stays pending and runs again: drop this attempt
            result.log.write("labd: this attempt is dropped: its start could not be "
                             "recorded; the job stays pending\n")
            self._deliver(result, None, handle.done)
            return
        self._step(result, handle.done, self._save, result, handle.done)

    def _step(self, acq: Acquired, done: Future, step: Callable[..., Outcome | None],
              *args: Any) -> None:
        """One step of a job after its acquisition, in its log; delivered if it returns
        the outcome (None: it handed the job on)."""
        out = self._in_job_log(acq, step, *args)
        if out is not None:
            self._deliver(acq, out, done)

    def _fit_loop(self) -> None:
        while (item := self._to_fit.get()) is not None:
            self._fit_one(*item)
        self.files.close()   # (after the save thread's last write: the queues are FIFO)

    def _fit_one(self, acq: Acquired, out: Outcome, done: Future) -> None:
        # The board's next jobs are prepared first: a fit can wait, the board should not
        # (a Python-heavy fit would otherwise take the GIL from the prepare thread).
        self.readying.idle.wait(PREPARE_FIRST_S)
        try:
            acq.log.reopen()
        except OSError as exc:  # the fit runs all the same; only its log lines are lost
            log.error("job log %s cannot be reopened for the fit: %s", acq.log.path,
                      exc.strerror or exc)
        self._step(acq, done, self._fit, acq, out, done)

    def _release(self, acq: Acquired) -> None:
        with self._backlog_lock:
            self.backlog_bytes -= acq.held
        acq.held = 0

    def _in_job_log(self, acq: Acquired, step: Callable[..., Outcome | None],
                    *args: Any) -> Outcome | None:
        self.router.attach(acq.log)
        try:
            return step(*args)
        except BaseException as exc:  # the outcome must always be delivered
            log.exception("%s of %s failed", step.__name__, acq.spec.job_id)
            error = f"internal error in {step.__name__.strip('_')}: {type(exc).__name__}"
            saved = next((a for a in args if isinstance(a, Outcome) and a.data_file_path),
                         None)
            if saved is None:
                return Outcome(EndReason.ERROR, error)
            # after the raw data were saved: the record still points to them
            saved.reason, saved.error_message = EndReason.ERROR, f"{error} (raw data saved)"
            return saved
        finally:
            self.router.detach()

    def _deliver(self, acq: Acquired, out: Outcome | None, done: Future) -> None:
        self._release(acq)
        acq.log.close()
        if out is not None:
            out.finished_at = utcnow()
        done.set_result(out)

    def _save(self, acq: Acquired, done: Future) -> None:
        """Hand the raw data to the data writer; ``_saved`` goes on once they are durable
        (meanwhile this thread describes the next job)."""
        if self._to_save.qsize() >= FILES_BEHIND_JOBS:
            self.files.behind()
        out = Outcome(EndReason.ERROR, module_sha256=acq.loaded.sha256,
                      module_git_rev=acq.loaded.git_rev())
        merged, meta = self._describe(acq)
        meta.update(saved_at=utcnow(), module_git_rev=out.module_git_rev)
        has_analysis = type(acq.exp).analyze is not Experiment.analyze
        self.files.write_raw(
            lambda error: self._step(acq, done, self._saved, acq, out, done, has_analysis,
                                     error),
            acq.spec.data_path, acq.data, merged, meta, acq.contents,
            "pending" if has_analysis else "none")

    def _saved(self, acq: Acquired, out: Outcome, done: Future, has_analysis: bool,
               error: BaseException | None) -> Outcome | None:
        """The raw data are durable (or could not be saved): the job goes to its fit, or
        this is its outcome."""
        spec = acq.spec
        if isinstance(error, OSError):
            out.error_message = (f"DataSaveError: could not save data to {spec.data_path}: "
                                 f"{error.strerror or error}")
            job_log.error("%s", out.error_message)
            return out
        if error is not None:
            raise error
        out.data_file_path = str(spec.data_path)
        job_log.info("raw data saved to %s", spec.data_path)
        if acq.ctx.safe is not None and acq.ctx.safe.resumed:  # the data file holds it all
            remove_checkpoint(checkpoint_path(spec.data_path))  # now (#16; only a resumed
            # job has a checkpoint: a preempted one ends before its save)
        out.reason, out.error_message = EndReason.COMPLETED, acq.note
        if not has_analysis:
            return out
        # Fits may fall far behind the board (a 200 ms fit after each 7 ms acquisition):
        # a job waiting for its fit holds no open file, and past fit_backlog_bytes no data
        # either (its fit reads them from the saved file).
        acq.log.close()
        if self.backlog_bytes > self.fit_backlog_bytes:
            self._release(acq)
            acq.data = None
        self._to_fit.put((acq, out, done))
        return None

    def _fit(self, acq: Acquired, out: Outcome, done: Future) -> None:
        """Run the analysis on the saved raw data; the writer adds its results to the
        file, and ``_fitted`` delivers the outcome once they are durable."""
        results: dict[str, Any] = {}
        analysis_error = None
        try:
            data = acq.data if acq.data is not None else \
                data_file.load(acq.spec.data_path)["data"]
            results = dict(acq.exp.analyze(dict(data)) or {})
        except BaseException as exc:   # a fit script's sys.exit() too: the raw data stay
            analysis_error = f"{type(exc).__name__}: {exc}"
            job_log.error("analysis failed (raw data is saved):\n%s", traceback.format_exc())
        results, unstorable = data_file.storable_results(results)
        if unstorable:
            job_log.error("fit results: %s", unstorable)
            analysis_error = "; ".join(filter(None, (analysis_error, unstorable)))
        self.files.add_results(
            lambda error: self._step(acq, done, self._fitted, out, results, analysis_error,
                                     error),
            acq.spec.data_path, results, analysis_error)

    @staticmethod
    def _fitted(out: Outcome, results: dict[str, Any], analysis_error: str | None,
                error: BaseException | None) -> Outcome:
        if error is not None:
            analysis_error = f"saving fit results failed: {type(error).__name__}: {error}"
        out.results = _scalars(results)
        if analysis_error:
            out.error_message = "; ".join(filter(None, (
                out.error_message, f"analysis failed (raw data saved): {analysis_error}")))
        return out
