"""The in-memory priority heap of pending jobs: highest priority first, FIFO within a
priority, O(log n) push/pop. Only a small slotted record per job lives here (the full job
stays in SQLite), so 100k pending jobs cost a few tens of MB."""
from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(slots=True)
class PendingJob:
    job_id: str
    user: str
    os_user: str
    os_uid: int
    experiment_class: str
    experiment_module: str
    priority: int
    created_at: str
    batch_id: str | None
    order: int = -1         # submit order, assigned by the queue on first push
    held: bool = False
    after: str | None = None        # job that must complete first
    not_before: float | None = None  # epoch seconds

    def waiting_for(self) -> str | None:
        """Why this job cannot run yet (None: it can)."""
        import time
        if self.held:
            return "held"
        if self.after is not None:
            return f"after {self.after}"
        if self.not_before is not None and self.not_before > time.time():
            return "not before " + _iso(self.not_before)
        return None

    def key(self) -> tuple[int, int]:
        return (-self.priority, self.order)

    def summary(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "user": self.user, "os_user": self.os_user,
                "os_uid": self.os_uid, "experiment_class": self.experiment_class,
                "experiment_module": self.experiment_module, "priority": self.priority,
                "created_at": self.created_at, "batch_id": self.batch_id}


class PendingQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._jobs: dict[str, PendingJob] = {}
        self._by_priority: dict[int, list[int]] = {}  # sorted submit orders: O(log n) rank
        self._next_order = 0
        self._sorted: list[PendingJob] | None = None  # run order, until the next change

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def __iter__(self) -> Iterator[PendingJob]:
        return iter(self._jobs.values())

    def get(self, job_id: str) -> PendingJob | None:
        return self._jobs.get(job_id)

    def push(self, job: PendingJob) -> None:
        """Add a job; one pushed back (after hold or a wait) keeps its submit order."""
        if job.order < 0:
            job.order = self._next_order
            self._next_order += 1
        self._jobs[job.job_id] = job
        insort(self._by_priority.setdefault(job.priority, []), job.order)
        heapq.heappush(self._heap, (*job.key(), job.job_id))
        self._sorted = None

    def peek(self) -> PendingJob | None:
        """The next job to run, discarding stale heap entries (removed or re-prioritized)."""
        while self._heap:
            prio, order, job_id = self._heap[0]
            job = self._jobs.get(job_id)
            if job is not None and job.key() == (prio, order):
                return job
            heapq.heappop(self._heap)
        return None

    def pop(self) -> PendingJob | None:
        job = self.peek()
        if job is not None:
            heapq.heappop(self._heap)
            del self._jobs[job.job_id]
            self._unrank(job)
        return job

    def _unrank(self, job: PendingJob) -> None:
        self._sorted = None
        orders = self._by_priority[job.priority]
        del orders[bisect_left(orders, job.order)]
        if not orders:
            del self._by_priority[job.priority]

    def remove(self, job_id: str) -> PendingJob | None:
        """Lazy delete: the heap entry is dropped when it reaches the top."""
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._unrank(job)
        if len(self._heap) > 64 and len(self._heap) > 3 * len(self._jobs):
            self._heap = [(*j.key(), j.job_id) for j in self._jobs.values()]
            heapq.heapify(self._heap)
        return job

    def reprioritize(self, job_id: str, priority: int) -> None:
        job = self._jobs[job_id]
        self._unrank(job)
        job.priority = priority
        self._sorted = None
        insort(self._by_priority.setdefault(priority, []), job.order)
        heapq.heappush(self._heap, (*job.key(), job.job_id))  # the old entry goes stale

    def position(self, job_id: str) -> int | None:
        """1-based place in the run order; cost grows with the number of distinct
        priorities, not with the number of jobs."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        ahead = sum(len(o) for p, o in self._by_priority.items() if p > job.priority)
        return ahead + bisect_left(self._by_priority[job.priority], job.order) + 1

    def ordered(self, limit: int | None = None) -> list[PendingJob]:
        """Pending jobs in the order they will run (the first ``limit`` of them)."""
        if self._sorted is None and limit is not None and limit < len(self._jobs) // 8:
            return heapq.nsmallest(limit, self._jobs.values(), key=PendingJob.key)
        if self._sorted is None:
            self._sorted = sorted(self._jobs.values(), key=PendingJob.key)
        return self._sorted if limit is None else self._sorted[:limit]


def _iso(epoch: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")
