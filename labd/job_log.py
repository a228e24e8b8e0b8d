"""Per-job log files: everything the experiment prints or logs from the executor thread goes
to ``<job_id>.log`` beside its data. Readers page through it by byte offset and only ever get
whole lines (``\\n`` or ``\\r`` terminated), so a progress bar is never duplicated."""
from __future__ import annotations

import errno
import io
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Callable

_LINE_ENDS = (b"\n", b"\r")


class JobLog:
    """An open, size-capped log file for one job. Written by the thread working on the job;
    with ``defer``, text is buffered and written by whatever ``defer`` hands the flush to
    (the board thread's helper: a write is a system call, which would give up the GIL
    between two acquisitions). ``close`` writes what is still buffered, so a job's log is
    whole before its outcome is recorded."""

    def __init__(self, path: Path, max_bytes: int,
                 on_text: Callable[[str], None] | None = None, resume: bool = False,
                 defer: Callable[[Callable[[], None]], None] | None = None) -> None:
        """``resume``: the job's own earlier attempt may have left its log (it was taken
        back before the board started it, or labd died just after the start): add to it."""
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self.truncated = False
        self._on_text = on_text
        self._defer = defer
        self._lock = threading.Lock()     # the buffer; never held across I/O
        self._flushing = threading.Lock()  # one flush at a time: lines stay in order
        self._buffered: list[bytes] = []
        try:  # a new file: a job ID reused after a lost database must not add to another's log
            try:
                self._fh = open(path, "xb", buffering=0)
            except FileNotFoundError:  # the day's first job: no mkdir for every job
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(path, "xb", buffering=0)
        except FileExistsError:
            if resume:
                self._fh = open(path, "ab", buffering=0)
                self.size = self._fh.tell()
                return
            raise FileExistsError(errno.EEXIST, "a log for this job ID already exists; labd "
                                  "never writes into another job's files", str(path)) from None

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self.truncated:
                return
            data = text.encode("utf-8", "replace")
            room = self.max_bytes - self.size
            if len(data) > room:
                data = data[:max(room, 0)]
                data += f"\n[labd: log truncated at {self.max_bytes} bytes]\n".encode()
                self.truncated = True
            self.size += len(data)
            self._buffered.append(data)
            first = len(self._buffered) == 1
        if self._defer is None:
            self.flush()
        elif first:
            self._defer(self.flush)

    def flush(self) -> None:
        """Write the buffered text and pass it on (``on_text``), in order."""
        with self._flushing:
            with self._lock:
                if not self._buffered or self._fh.closed:
                    return
                data = b"".join(self._buffered)
                self._buffered.clear()
            try:
                self._fh.write(data)
            except OSError as exc:  # disk full: the experiment's print() must not fail
                self.truncated = True
                failed: OSError | None = exc
            else:
                failed = None
                if self._on_text is not None:
                    self._on_text(data.decode("utf-8", "replace"))
        if failed is not None:  # logged outside the lock: it may be routed back here
            logging.getLogger(__name__).error("job log %s: %s; not written further",
                                              self.path, failed.strerror or failed)

    def close(self) -> None:
        """Write what is buffered and close; never raises (the threads that close logs
        must go on: a job's outcome is delivered whatever its log does)."""
        self.flush()
        with self._flushing:
            try:
                self._fh.close()
            except OSError as exc:
                logging.getLogger(__name__).error("job log %s: %s", self.path,
                                                  exc.strerror or exc)

    def reopen(self) -> None:
        """Open it again (appending) after ``close``: a job waiting for its fit holds no
        file descriptor, however many wait."""
        with self._flushing:
            if self._fh.closed:
                self._fh = open(self.path, "ab", buffering=0)
        self.flush()   # anything written while it was closed


class LogRouter:
    """Installs itself as sys.stdout/sys.stderr and as a logging handler; text from a thread
    working on a job (the board thread while it acquires, the analysis thread while it
    saves and fits) goes to that job's log, everything else passes through."""

    def __init__(self) -> None:
        # thread ident -> (its job's log, that job's safe point or None). The safe point
        # interrupts a job that ignored its stop request at its next print or log call
        # (raised here, outside any lock of ours).
        self._routes: dict[int, tuple[JobLog, Callable[[], None] | None]] = {}
        self._handler = _JobLogHandler(self)

    def attach(self, log: JobLog, interrupt_point: Callable[[], None] | None = None) -> None:
        """Route this thread's output to ``log`` until ``detach``."""
        self._routes[threading.get_ident()] = (log, interrupt_point)

    def detach(self) -> None:
        self._routes.pop(threading.get_ident(), None)

    def line(self, record: logging.LogRecord) -> str:
        """A record as a job log line."""
        return self._handler.format(record) + "\n"

    def install(self) -> None:
        sys.stdout = _Tee(sys.stdout, self)
        sys.stderr = _Tee(sys.stderr, self)
        self._handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._handler)

    def uninstall(self) -> None:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if isinstance(stream, _Tee) and stream.router is self:
                setattr(sys, name, stream.fallback)
        logging.getLogger().removeHandler(self._handler)

    def target(self) -> JobLog | None:
        route = self._routes.get(threading.get_ident())
        if route is None:
            return None
        if route[1] is not None:
            route[1]()
        return route[0]


class _Tee(io.TextIOBase):
    def __init__(self, fallback, router: LogRouter) -> None:
        self.fallback = fallback
        self.router = router

    def write(self, s: str) -> int:
        log = self.router.target()
        if log is not None:
            log.write(s)
        else:
            self.fallback.write(s)
        return len(s)

    def flush(self) -> None:
        self.fallback.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.fallback.fileno()


class UnlockedHandler(logging.Handler):
    """A handler without the per-handler lock logging takes around ``emit``: a thread
    holding it while it waits for the GIL (formatting is Python) would stall every other
    thread's log call, the board thread's between two acquisitions included. For handlers
    whose ``emit`` is thread-safe by itself."""

    def createLock(self) -> None:
        self.lock = None  # type: ignore[assignment]   # acquire/release are no-ops then


class _JobLogHandler(UnlockedHandler):   # JobLog.write has its own (short) lock
    def __init__(self, router: LogRouter) -> None:
        super().__init__(level=logging.DEBUG)
        self.router = router

    def emit(self, record: logging.LogRecord) -> None:
        log = self.router.target()
        if log is not None:
            log.write(self.format(record) + "\n")


def read_log(path: Path, offset: int, max_bytes: int, final: bool) -> tuple[str, int]:
    """Text from ``offset`` ending at a line end (unless the log is final), and the offset to
    continue from. A single line longer than ``max_bytes`` is returned in pieces cut at a
    UTF-8 character boundary. An offset past the end (even beyond what a file offset can
    hold) just has nothing to read yet."""
    if offset < 0:
        raise ValueError("log offset must be >= 0")
    try:
        with open(path, "rb") as fh:
            if offset >= os.fstat(fh.fileno()).st_size:
                return "", offset
            fh.seek(offset)
            data = fh.read(max_bytes)
    except FileNotFoundError:
        return "", offset
    if not data:
        return "", offset
    at_eof = len(data) < max_bytes or os.path.getsize(path) == offset + len(data)
    if not (final and at_eof):
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if cut >= 0:
            data = data[:cut + 1]
        elif len(data) >= max_bytes:  # one very long line: hand it out in pieces
            while data and (data[-1] & 0xC0) == 0x80:
                data = data[:-1]
            if data and data[-1] >= 0xC0:
                data = data[:-1]
        else:
            return "", offset
    return data.decode("utf-8", "replace"), offset + len(data)
