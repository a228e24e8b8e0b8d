"""Job and config-version IDs: ``PREFIX-YYYYMMDD-NNNNN`` from a persistent daily counter.

The daemon is the only writer, so allocation is an in-memory increment; the counter row is
written in the same transaction as the rows that use it, so an ID is never handed out twice,
even across crashes."""
from __future__ import annotations

from datetime import datetime, timezone


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d")


class DailyCounter:
    """Allocates IDs for one prefix; ``state`` maps prefix to (day, last number)."""

    def __init__(self, prefix: str, day: str | None = None, last: int = 0) -> None:
        self.prefix = prefix
        self.day = day or today()
        self.last = last

    def next(self) -> str:
        d = today()
        if d != self.day:
            self.day, self.last = d, 0
        self.last += 1
        return f"{self.prefix}-{self.day}-{self.last:05d}"

    def row(self) -> tuple[str, str, int]:
        """The (prefix, day, last) row to persist alongside newly allocated IDs."""
        return (self.prefix, self.day, self.last)
