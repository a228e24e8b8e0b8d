"""What must hold before the daemon starts, checked in this order, each failure one clear
line and its own exit code (systemd and scripts can tell them apart):

1. the state dir is ours: an exclusive ``flock`` on ``<state_dir>/labd.lock``, held for the
   process lifetime (a second labd on the same state dir would otherwise run crash recovery
   and mark the first one's running job failed);
2. the state dir is writable and its disk not full (a write probe);
3. the database opens, passes ``PRAGMA quick_check`` and takes a write lock (a read-only
   or damaged database is refused now, not at the first submit);
4. no live daemon answers on the socket path (binding would steal it from that daemon).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import sqlite3
from pathlib import Path

EXIT_FAILED = 1          # anything else that stops a start
EXIT_SETTINGS = 2        # the settings file is bad
EXIT_LOCKED = 3          # another labd holds the state dir
EXIT_SOCKET = 4          # another daemon answers on the socket path
EXIT_DATABASE = 5        # the database is unreadable, read-only or damaged
EXIT_STATE_DIR = 6       # the state dir is not writable or its disk is full

LOCK_NAME = "labd.lock"


class StartupError(RuntimeError):
    """A reason not to start, worded for the person reading the log, with an exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "it is read-only or not writable by this user"
    return exc.strerror or str(exc)


def lock_state_dir(state_dir: Path) -> int:
    """Take the state dir's lock; returns the fd, which must stay open while labd runs."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot use state dir {state_dir}: {_os_reason(exc)}",
                           EXIT_STATE_DIR) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"state dir {state_dir} is in use by another labd (PID {other}); "
                           "stop it first or give this one another --state-dir",
                           EXIT_LOCKED) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise StartupError(f"cannot write to state dir {state_dir}: {_os_reason(exc)}",
                           EXIT_STATE_DIR) from None
    return fd


def check_writable(directory: Path, size: int = 64 * 1024) -> None:
    """Write, fsync and remove a probe file: a full or read-only disk fails here."""
    probe = directory / f".labd-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot write to {directory}: {_os_reason(exc)}",
                           EXIT_STATE_DIR) from None


def check_database(db_path: Path) -> None:
    """Open an existing database, check its pages and take (and drop) its write lock."""
    if not db_path.exists() and not db_path.is_symlink():
        return  # a first start creates it
    what = f"database {db_path}"
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=rw", uri=True, timeout=5,
                              isolation_level=None)
    except sqlite3.Error as exc:
        raise StartupError(f"cannot open {what}: {exc}", EXIT_DATABASE) from None
    try:
        rows = con.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            problems = "; ".join(str(r[0]) for r in rows[:3])
            raise StartupError(f"{what} is damaged ({problems}): restore it from a backup or "
                               "move it away (labd then starts with an empty one)",
                               EXIT_DATABASE)
        con.execute("BEGIN IMMEDIATE")
        con.execute("PRAGMA user_version = " +
                    str(con.execute("PRAGMA user_version").fetchone()[0]))
        con.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "readonly" in text or "read-only" in text:
            reason = "it is read-only: give the labd user write access to it and its directory"
        elif "not a database" in text or "malformed" in text:
            reason = (f"it is damaged ({text}): restore it from a backup or move it away "
                      "(labd then starts with an empty one)")
        elif "locked" in text:
            reason = "another process holds it locked"
        else:
            reason = text
        raise StartupError(f"cannot use {what}: {reason}", EXIT_DATABASE) from None
    finally:
        con.close()


def check_socket_free(path: Path) -> None:
    """Refuse to start when a live process answers on the socket path."""
    if os.environ.get("LISTEN_FDS"):
        return  # socket activation: systemd owns the socket
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return  # a stale socket file: the daemon replaces it
    raise StartupError(f"socket {path} is in use by a running daemon; stop it first or give "
                       "this one another --socket", EXIT_SOCKET)


def run_all(state_dir: Path, db_path: Path, socket_path: Path) -> int:
    """All checks in order; returns the state-dir lock's fd (keep it open)."""
    fd = lock_state_dir(state_dir)
    check_writable(state_dir)
    check_database(db_path)
    check_socket_free(socket_path)
    return fd
