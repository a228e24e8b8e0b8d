"""The in-memory priority heap of pending jobs: highest priority first, FIFO within a
priority, O(log n) push/pop. Only a small slotted record per job lives here (the full job
stays in SQLite), so 100k pending jobs cost a few tens of MB."""
from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass
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
    order: int = 0          # submit order, assigned by the queue

    def key(self) -> tuple[int, int]:
        return (-self.priority, self.order)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        del d["order"]
        return d


class PendingQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._jobs: dict[str, PendingJob] = {}
        self._next_order = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def __iter__(self) -> Iterator[PendingJob]:
        return iter(self._jobs.values())

    def get(self, job_id: str) -> PendingJob | None:
        return self._jobs.get(job_id)

    def push(self, job: PendingJob) -> None:
        job.order = self._next_order
        self._next_order += 1
        self._jobs[job.job_id] = job
        heapq.heappush(self._heap, (*job.key(), job.job_id))

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
        return job

    def remove(self, job_id: str) -> PendingJob | None:
        """Lazy delete: the heap entry is dropped when it reaches the top."""
        job = self._jobs.pop(job_id, None)
        if len(self._heap) > 64 and len(self._heap) > 3 * len(self._jobs):
            self._heap = [(*j.key(), j.job_id) for j in self._jobs.values()]
            heapq.heapify(self._heap)
        return job

    def ordered(self) -> list[PendingJob]:
        """All pending jobs in the order they will run."""
        return sorted(self._jobs.values(), key=PendingJob.key)
