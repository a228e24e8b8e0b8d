"""The in-memory priority queue of runnable pending jobs: highest priority first, FIFO
(submit order) within a priority. Push, pop, remove, reprioritize and a job's position are
all O(log n), and the first N in run order cost O(log n + N), so neither dispatch nor a
queue listing scans a million pending jobs. The sorted list (sortedcontainers) holds the
small slotted records themselves, ordered by (-priority, order, job_id): no key tuple and no
second index per job, since a million pending jobs must fit in a few hundred MB (the full
job is in SQLite; the scheduler's ``active`` dict finds a record by its ID)."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace
from functools import lru_cache
from operator import attrgetter
from typing import Any, TypeVar

from sortedcontainers import SortedList

_untrack = ctypes.pythonapi.PyObject_GC_UnTrack
_untrack.argtypes = [ctypes.py_object]
_untrack.restype = None

T = TypeVar("T")


@lru_cache(maxsize=4096)
def shared(value: T) -> T:
    """The one instance of an immutable value (among the latest 4096 distinct ones): a
    million pending jobs hold a handful of distinct origins and extras."""
    return value


@dataclass(frozen=True, slots=True)
class Origin:
    """Who submitted a job and what it runs: the same for every job of a batch and for a
    user's repeated submits of an experiment, so records share one (``shared``)."""
    user: str
    os_user: str
    os_uid: int
    experiment_class: str
    experiment_module: str
    batch_id: str | None


@dataclass(frozen=True, slots=True)
class Extras:
    """The fields almost every job leaves at their defaults, out of the record: it holds
    the shared default instance until one is set (then a shared copy that has it)."""
    held: bool = False
    after: str | None = None         # job that must complete first
    not_before: float | None = None  # epoch seconds
    attempts: int = 0                # times handed to the executor and taken back
    preemptible: bool = True         # the submit did not opt out (issue #16)
    preemptions: int = 0             # times preempted so far
    preempted_by: str | None = None  # the latest preemption: by whom, since when
    preempted_at: str | None = None
    resume: bool = False             # preempted: resumes from its checkpoint


NO_EXTRAS = shared(Extras())


def _from_origin(name: str) -> property:
    return property(attrgetter(f"origin.{name}"))


def _from_extras(name: str) -> property:
    def set_(job: "PendingJob", value: Any) -> None:
        if getattr(job.extras, name) != value:
            job.extras = shared(replace(job.extras, **{name: value}))
    return property(attrgetter(f"extras.{name}"), set_)


@dataclass(slots=True, eq=False)   # identity: records are compared by run order only
class PendingJob:
    """An active (not yet final) job as the scheduler tracks it: six slots, since a
    million pending jobs must fit in a few hundred MB. Who submitted it and what it runs
    (``origin``) and its rarely set fields (``extras``) are immutable values shared among
    jobs; its submit time is read from the database where it is shown. Every field is an
    atomic value or such a value object (holding only atomic values), so a record can
    never be part of a reference cycle: ``untrack`` takes it out of the cyclic GC's
    sight, and a million pending jobs cost a full collection nothing (reference counting
    still frees them)."""
    job_id: str
    origin: Origin
    priority: int
    order: int = -1                  # submit order: FIFO within a priority
    phase: str = "waiting"           # a scheduler.states.RunPhase
    extras: Extras = NO_EXTRAS

    user = _from_origin("user")
    os_user = _from_origin("os_user")
    os_uid = _from_origin("os_uid")
    experiment_class = _from_origin("experiment_class")
    experiment_module = _from_origin("experiment_module")
    batch_id = _from_origin("batch_id")
    held = _from_extras("held")
    after = _from_extras("after")
    not_before = _from_extras("not_before")
    attempts = _from_extras("attempts")
    preemptible = _from_extras("preemptible")
    preemptions = _from_extras("preemptions")
    preempted_by = _from_extras("preempted_by")
    preempted_at = _from_extras("preempted_at")
    resume = _from_extras("resume")

    def shown_phase(self) -> str:
        """The phase people see: a preempted job stays "preempted" while it is prepared to
        resume, until the board has it again."""
        return "preempted" if self.resume and self.phase == "starting" else str(self.phase)

    def __lt__(self, other: "PendingJob") -> bool:
        """Run order: higher priority first, then submit order (then ID, never equal)."""
        if self.priority != other.priority:
            return self.priority > other.priority
        if self.order != other.order:
            return self.order < other.order
        return self.job_id < other.job_id

    def summary(self, created_at: str | None = None) -> dict[str, Any]:
        """Its fields for people; its submit time is the caller's (from the database)."""
        return {"job_id": self.job_id, "user": self.user, "os_user": self.os_user,
                "os_uid": self.os_uid, "experiment_class": self.experiment_class,
                "experiment_module": self.experiment_module, "priority": self.priority,
                "created_at": created_at, "batch_id": self.batch_id,
                "phase": self.shown_phase(), **({
                    "preemptions": self.preemptions, "preempted_by": self.preempted_by,
                    "preempted_at": self.preempted_at} if self.preemptions else {})}


def untrack(record: PendingJob) -> PendingJob:
    """Remove a record from the cyclic GC (safe: it holds no container it could be in a
    cycle through)."""
    _untrack(record)
    return record


class PendingQueue:
    """Runnable jobs in run order. A record's priority or order must not change while it
    is in here: take it out, change it, push it again."""

    def __init__(self) -> None:
        self._order = SortedList()                 # PendingJob records, in run order
        self._next_order = 0

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, job: PendingJob) -> bool:
        i = self._order.bisect_left(job)
        return i < len(self._order) and self._order[i] is job

    def push(self, job: PendingJob) -> None:
        """Add a runnable job; it keeps its submit order (a job given none, -1, gets the
        next; a preempted job's is below every submit's: the head of its priority)."""
        if job.order == -1:
            job.order = self._next_order
        self._next_order = max(self._next_order, job.order + 1)
        self._order.add(job)

    def peek(self) -> PendingJob | None:
        return self._order[0] if self._order else None

    def pop(self) -> PendingJob | None:
        return self._order.pop(0) if self._order else None

    def remove(self, job: PendingJob) -> bool:
        if job not in self:
            return False
        self._order.remove(job)
        return True

    def position(self, job: PendingJob) -> int | None:
        """1-based place in the run order."""
        return self._order.bisect_left(job) + 1 if job in self else None

    def ordered(self, limit: int | None = None) -> list[PendingJob]:
        """Pending jobs in the order they will run (the first ``limit`` of them)."""
        return list(self._order.islice(0, limit))
