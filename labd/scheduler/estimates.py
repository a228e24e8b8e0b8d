"""Expected run times and ETAs: from the recent completed runs of each experiment class, and
for the running job from its own progress."""
from __future__ import annotations

import time
from collections import deque
from datetime import datetime
from typing import Iterable

HISTORY = 20


class Estimates:
    def __init__(self) -> None:
        self._recent: dict[str, deque[float]] = {}

    def note(self, experiment_class: str, seconds: float) -> None:
        self._recent.setdefault(experiment_class, deque(maxlen=HISTORY)).append(seconds)

    def load(self, rows: Iterable) -> None:
        """Rows of (experiment_class, started_at, finished_at), oldest first."""
        for r in rows:
            self.note(r["experiment_class"], (datetime.fromisoformat(r["finished_at"]) -
                                              datetime.fromisoformat(r["started_at"])
                                              ).total_seconds())

    def typical(self) -> dict[str, float]:
        """Mean of the recent runs per experiment class."""
        return {cls: sum(r) / len(r) for cls, r in self._recent.items()}

    def remaining(self, experiment_class: str, started_mono: float,
                  progress: float) -> float | None:
        """Seconds until a running job is expected to end (None if unknown): from its own
        progress once it reports any, else from past runs of its class."""
        elapsed = time.monotonic() - started_mono
        if progress > 0:
            return elapsed * (1 - progress) / progress
        recent = self._recent.get(experiment_class)
        if not recent:
            return None
        return max(0.0, sum(recent) / len(recent) - elapsed)
