"""Data files are written by a child process or, on a small machine, by labd's save and
analysis threads themselves. With the child, those threads hand each write over and go on
with the next job; the ``DataWriter``'s thread runs each write's continuation (``then``),
in order, once the file is durable, or with the error the write raised (the same errors
as ``data_file``'s). Without it, the continuation runs at once on the calling thread.

Why a child: building an HDF5 file holds the GIL (h5py never releases it) and was two
thirds of labd's CPU per job; when jobs come faster than their files are written (short
acquisitions), the child writes them on a core of its own: mock T1 jobs drained at about
190-250/s instead of 110-145/s. Why not always: on a 2-core machine a second busy process
slowed the board's next acquisition (idle gap p99 of a mock Rabi: 3.5-4 ms instead of
1.3-1.6; so did a CPU burner at nice 19: it is the machine, not the priority).
So on such a machine (``data_writer = "auto"`` below 4 CPUs: "when_behind") labd's threads
write the files while they keep up with the board, and the child takes them only once the
files fall behind (``behind()``: a backlog of acquisitions waiting to be saved), until
they catch up: the second core is spent only when the files, not the board, are what the
queue waits for. ``writer_mode`` decides by the ``data_writer`` setting. The child keeps
each raw file it wrote open in memory until its results are added, so the file is not read
back for them.

The child is a plain ``python -m labd.data_writer FD``: it inherits nothing but one end of
a socket pair, ignores SIGINT and SIGTERM from birth (labd's shutdown decides when saving
ends; under systemd the whole unit gets the SIGTERM) and exits when labd closes its end,
or dies. If the child cannot start, or dies with writes unanswered, labd does those
writes itself, so no data file is lost to it; a new child starts after RESTART_AFTER_S."""
from __future__ import annotations

import itertools
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from . import data_file

log = logging.getLogger(__name__)

RESTART_AFTER_S = 10.0   # after a child failed, labd writes the files itself this long
MIN_CPUS_FOR_PROCESS = 4   # data_writer = "auto": the child when labd may use this many
BEHIND_LINGER_S = 1.0      # "when_behind": the child takes the writes this long after the
                           # last sign that the files lag (and until it answered them all)
BEHIND_LOG_EVERY_S = 600.0  # a long drain of short jobs lags again every second or two
KEEP_OPEN = 256                    # raw files the child keeps in memory for their results,
KEEP_OPEN_BYTES = 64 * 1024 * 1024  # the newest ones, up to this size together

Then = Callable[[BaseException | None], None]
_SHUTDOWN_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass
class _Child:
    proc: subprocess.Popen
    sock: socket.socket
    conn: Connection
    gen: int
    dead: bool = False


@dataclass
class _Write:
    fn: str
    args: tuple
    then: Then
    child: _Child | None    # None: labd writes it itself


def writer_mode(setting: str) -> str:
    """The ``data_writer`` setting ("process", "thread", "when_behind" or "auto") as the
    mode a DataWriter takes: "auto" is the child with 4 or more CPUs, else "when_behind"."""
    if setting != "auto":
        return setting
    return "process" if len(os.sched_getaffinity(0)) >= MIN_CPUS_FOR_PROCESS \
        else "when_behind"


class DataWriter:
    """Writes data files in order, fed by the executor's threads in turn: by a child
    process (mode "process"; "when_behind" while ``behind()`` said so recently), else at
    once by the thread that hands the write over."""

    def __init__(self, mode: str = "process") -> None:
        self.mode = mode
        self._child_until = -1.0   # "when_behind": the child takes writes until then
        self._behind_logged = -BEHIND_LOG_EVERY_S
        self._queued = 0     # writes queued (under _lock) and, of them, those whose
        self._finished = 0   # continuation has run (by the reader thread alone)
        self._lock = threading.Lock()    # the order writes are queued is the order sent
        self._writes: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._child: _Child | None = None
        self._gens = itertools.count(1)
        self._failed_at = -RESTART_AFTER_S
        self._reader: threading.Thread | None = None
        self._closed = False
        self._dead: list[_Child] = []       # gone; closed once no write refers to them
        self._dead_lock = threading.Lock()  # (the sender and the reader both find out)

    @property
    def has_child(self) -> bool:
        """A child is started ahead of the first write (and may take writes)."""
        return self.mode != "thread"

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.proc.pid if child is not None and not child.dead else None

    def start(self) -> None:
        """Start the child ahead of the first write (it takes ~0.3 s to import h5py)."""
        if self.has_child:
            with self._lock:
                self._current()

    def write_raw(self, then: Then, path: Path, data: dict[str, Any], config: dict[str, Any],
                  meta: dict[str, Any], configs: dict[str, Any], analysis: str) -> None:
        self._submit(then, "write_raw", path, data, config, meta, configs, analysis)

    def add_results(self, then: Then, path: Path, results: dict[str, Any],
                    analysis_error: str | None) -> None:
        self._submit(then, "add_results", path, results, analysis_error)

    def behind(self) -> None:
        """The files lag the board ("when_behind": the child takes the next writes)."""
        if self.mode == "when_behind":
            now = time.monotonic()
            if now - self._behind_logged >= BEHIND_LOG_EVERY_S:
                self._behind_logged = now
                log.info("data files fall behind the board: the data writer child "
                         "writes them until they catch up (logged once in %g s)",
                         BEHIND_LOG_EVERY_S)
            self._child_until = now + BEHIND_LINGER_S

    def _to_child(self) -> bool:
        """Whether this write goes to the child: always in mode "process"; in mode
        "when_behind" while the files lag, and while writes queued for it are unanswered
        (so the continuations run in the order the writes were handed over)."""
        return self.mode == "process" or self.mode == "when_behind" and (
            time.monotonic() < self._child_until or self._queued != self._finished)

    def _submit(self, then: Then, fn: str, *args: Any) -> None:
        if self._to_child():
            try:
                request: bytes | None = pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)
            except Exception:   # not picklable (an odd metadata value): labd writes it
                request = None
            with self._lock:
                if not self._closed:
                    self._queue(_Write(fn, args, then, None), request)
                    return
        # the thread writer, or after close: written now, by the calling thread
        then(_error_of(_own_write, fn, args, False))

    def _queue(self, w: _Write, request: bytes | None) -> None:
        """Queue a write (and send it to the child, if there is one): under the lock."""
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, name="labd-files",
                                            daemon=True)
            self._reader.start()
        w.child = child = self._current() if request is not None else None
        self._queued += 1
        self._writes.put(w)
        if child is not None:
            try:
                child.conn.send_bytes(request)   # type: ignore[arg-type]
            except OSError as exc:   # the reader finds it gone: labd writes it
                self._lost(child, exc)

    def _current(self) -> _Child | None:
        """The live child (started if needed), or None while labd writes itself."""
        if self._child is not None and not self._child.dead:
            return self._child
        if time.monotonic() - self._failed_at < RESTART_AFTER_S:
            return None
        ours, theirs = socket.socketpair()
        try:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]),
                 *filter(None, [os.environ.get("PYTHONPATH")])]))
            # born with SIGTERM and SIGINT blocked (the mask is inherited), ignored later
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SHUTDOWN_SIGNALS)
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-P", "-m", "labd.data_writer", str(theirs.fileno())],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, env=env)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        except OSError as exc:
            ours.close()
            self._failed_at = time.monotonic()
            log.error("the data writer could not start (%s); labd writes data files "
                      "itself for %g s", exc, RESTART_AFTER_S)
            return None
        finally:
            theirs.close()
        self._child = _Child(proc, ours, Connection(os.dup(ours.fileno())), next(self._gens))
        log.info("data writer started (pid %d)", proc.pid)
        return self._child

    def _lost(self, child: _Child, exc: BaseException) -> None:
        """The child is gone (or its answer unreadable): every write it had not answered
        is done by labd; no new child for RESTART_AFTER_S."""
        with self._dead_lock:
            if child.dead:
                return
            child.dead = True
            self._dead.append(child)
        self._failed_at = time.monotonic()
        log.error("the data writer (pid %d) is gone (%s); labd writes data files itself "
                  "for %g s", child.proc.pid, exc, RESTART_AFTER_S)
        try:
            child.sock.shutdown(socket.SHUT_RDWR)   # wakes a send blocked on it
        except OSError:
            pass
        child.proc.kill()

    def _read_loop(self) -> None:
        """In order: each write's answer from the child, or labd's own write; then its
        continuation."""
        newest = 0
        while (w := self._writes.get()) is not None:
            if w.child is not None and w.child.gen > newest:
                newest = w.child.gen
                self._close_older(newest)
            error = self._result(w)
            try:
                w.then(error)
            except BaseException:   # the next writes' continuations must still run
                log.exception("data writer: continuation of %s failed", w.fn)
            self._finished += 1

    def _close_older(self, gen: int) -> None:
        """A write for child ``gen`` comes after every write for the ones before it, and
        no one sends to those any more: their connections can be closed."""
        with self._dead_lock:
            older = [child for child in self._dead if child.gen < gen]
            self._dead[:] = [child for child in self._dead if child.gen >= gen]
        for child in older:
            self._close(child)

    def _result(self, w: _Write) -> BaseException | None:
        if w.child is not None and not w.child.dead:
            try:
                ok, value = w.child.conn.recv()
                return None if ok else value
            except (EOFError, OSError, pickle.UnpicklingError) as exc:
                self._lost(w.child, exc)
        return _error_of(_own_write, w.fn, w.args, w.child is not None)

    @staticmethod
    def _close(child: _Child) -> None:
        child.conn.close()
        child.sock.close()
        try:
            child.proc.wait(10)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()

    def close(self) -> None:
        """Every write queued so far is done and its continuation run; the child exits."""
        with self._lock:
            self._closed = True
            reader, self._reader = self._reader, None
            if reader is not None:
                self._writes.put(None)
        if reader is not None:   # (none: a child started ahead that never took a write)
            reader.join()
        for child in {id(c): c for c in (*self._dead, self._child) if c is not None}.values():
            self._close(child)
        self._dead.clear()
        self._child = None


def _error_of(fn: Callable[..., None], *args: Any) -> Exception | None:
    try:
        fn(*args)
    except Exception as exc:
        return exc
    return None


def _own_write(fn: str, args: tuple, maybe_done: bool) -> None:
    """A write labd does itself. ``maybe_done``: a child that died may have done it. A raw
    file it linked is complete (linked only once fsynced) and ours if it has this job's
    ID: it is replaced by the same content (anyone else's file is never replaced); results
    it added are not added twice."""
    path = args[0]
    if fn == "add_results":
        if not (maybe_done and data_file.root_attr(path, "analysis") in ("done", "failed")):
            data_file.add_results(*args)
        return
    try:
        data_file.write_raw(*args)
    except FileExistsError:
        if not maybe_done or data_file.root_attr(path, "job_id") != args[3].get("job_id"):
            raise
        data_file.write_raw(*args, replace=True)


def serve(conn: Connection) -> None:
    """The child: one write at a time, each answered with (True, None) or (False, error).
    A raw file with a fit to come stays open in memory (the newest, within KEEP_OPEN and
    KEEP_OPEN_BYTES)."""
    kept: dict[str, Any] = {}
    kept_bytes = 0
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        try:
            if fn == "write_raw":
                image = data_file.write_raw(*args, keep=args[5] == "pending")
                if image is not None:
                    kept[str(args[0])] = image
                    kept_bytes += image.size
                    while kept and (len(kept) > KEEP_OPEN or kept_bytes > KEEP_OPEN_BYTES):
                        oldest = kept.pop(next(iter(kept)))
                        kept_bytes -= oldest.size
                        oldest.close()
            else:
                image = kept.pop(str(args[0]), None)
                if image is not None:
                    kept_bytes -= image.size
                data_file.add_results(*args, image=image)
            reply: tuple[bool, Any] = (True, None)
        except Exception as exc:
            reply = (False, exc)
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError):  # an unpicklable error
            conn.send((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))


if __name__ == "__main__":
    for signum in _SHUTDOWN_SIGNALS:   # (blocked since birth: none was missed)
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHUTDOWN_SIGNALS)
    serve(Connection(int(sys.argv[1])))
