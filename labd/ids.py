"""Job and config-version IDs: ``PREFIX-YYYYMMDD-NNNNN`` from a persistent daily counter.

The daemon is the only writer, so allocation is an in-memory increment; the counter row is
written in the same transaction as the rows that use it (job IDs need none: the jobs table
holds them, see ``Store.counters``). Two things can still make a stored counter lag behind
IDs already used: a lost or recreated database, and a wall clock stepped back. So the
counter is raised on start to the highest ID found on disk (``floor_from_files``), and its
day never goes backwards: after a clock step back, IDs keep the later day until the clock
catches up. Together, an ID names one file forever."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

State = tuple[str | None, int]          # (day YYYYMMDD, last number used that day)


_day: tuple[int, str] = (-1, "")   # (days since the epoch, its YYYYMMDD)


def today() -> str:
    """The UTC day, formatted once per day (strftime per job ID was a tenth of the event
    loop's time per submit under 16 clients)."""
    global _day
    n = int(time.time() // 86400)   # a UTC day is 86400 s of epoch time
    if n != _day[0]:
        _day = (n, time.strftime("%Y%m%d", time.gmtime(n * 86400)))
    return _day[1]


def later(a: State, b: State) -> State:
    """The later of two counter states (a state with no day is the earliest)."""
    return max(a, b, key=lambda s: (s[0] or "", s[1]))


def floor_from_files(prefix: str, *roots: Path) -> State:
    """The highest ``PREFIX-YYYYMMDD-N`` among file names in each root and in its
    ``YYYYMMDD`` subdirectories (the data layout), whatever the extension (``.h5``,
    ``.log``, ``.h5.part``, ``.yml``...). ``(None, 0)`` when there is none."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d{{8}})-(\d+)(?:\.|$)")
    best: State = (None, 0)

    def scan(directory: str) -> None:
        nonlocal best
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            m = pattern.match(e.name)
            if m:
                best = later(best, (m[1], int(m[2])))
            elif len(e.name) == 8 and e.name.isdigit() and e.is_dir(follow_symlinks=False):
                scan(e.path)
    for root in roots:
        scan(os.fspath(root))
    return best


class DailyCounter:
    """Allocates IDs for one prefix from its (day, last number) state."""

    def __init__(self, prefix: str, day: str | None = None, last: int = 0) -> None:
        self.prefix = prefix
        self.day = day or today()
        self.last = last

    def next(self) -> str:
        d = today()
        if d > self.day:   # never back: a clock stepped back would reuse the day's IDs
            self.day, self.last = d, 0
        self.last += 1
        return f"{self.prefix}-{self.day}-{self.last:05d}"

    def row(self) -> tuple[str, str, int]:
        """The (prefix, day, last) row to persist alongside newly allocated IDs."""
        return (self.prefix, self.day, self.last)
