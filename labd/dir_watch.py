"""Has anything in these directories changed since the last question? Linux inotify, read
without blocking: the kernel queues an event as a change is made, so a change made before
the question is always seen (no watcher thread whose delivery could lag behind a submit).
Via ctypes: the standard library has no inotify, and these are three libc calls."""
from __future__ import annotations

import ctypes
import os

# IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE |
# IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF: anything that changes a file's identity or a
# directory's entries (IN_Q_OVERFLOW comes regardless)
MASK = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800


class DirWatch:
    def __init__(self) -> None:
        """Raises OSError where inotify is not available (not Linux, out of instances)."""
        self.fd = -1
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError) as exc:
            raise OSError(f"no inotify here: {exc}") from None
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd

    def add(self, directory: str) -> None:
        """Watch one directory (not what is below it). Raises OSError (e.g. ENOSPC: the
        user's inotify watches are used up)."""
        if self._libc.inotify_add_watch(self.fd, os.fsencode(directory), MASK) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), directory)

    def changed(self) -> bool:
        """Whether any event came since the last call (they are consumed)."""
        got = False
        while True:
            try:
                if not os.read(self.fd, 65536):
                    return got
            except BlockingIOError:
                return got
            got = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()
