"""An in-process scheduler over a real Store (SQLite file) and real ConfigStore, with a fake
executor and gates on store writes, so tests drive races step by step with events they
control instead of sleeps."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

from labd.checkpoint import Checkpoint, SafePoints
from labd.config_store import ConfigStore
from labd.events import EventBus
from labd.executor import Handle, Outcome, Readying
from labd.identity import Peer
from labd.scheduler.core import Scheduler
from labd.scheduler.states import EndReason
from labd.settings import Settings
from labd.store import Store

ALICE = Peer(uid=1000, gid=1000, pid=1, username="alice", is_admin=False)
ROOT = Peer(uid=0, gid=0, pid=1, username="root", is_admin=True)


class FakeExecutor:
    """A board the test drives: jobs handed over wait, in order, until the board is free;
    the test decides when each acquisition ends and with what outcome."""
    board = None
    state = "idle"
    busy_with: str | None = None
    backlog_bytes = 0
    clock = None
    safe_points = False       # (#16) jobs get safe points: they can be asked to yield

    def __init__(self) -> None:
        self.started: asyncio.Queue = asyncio.Queue()
        self.handles: dict[str, Handle] = {}
        self._waiting: list[Handle] = []

    @staticmethod
    def later(fn: Any, *args: Any) -> None:
        fn(*args)

    def warm_up(self) -> None:   # no data writer to start
        pass

    readying = Readying()

    def submit(self, spec: Any, ctx: Any, on_log: Any = None) -> Handle:
        handle = Handle(spec, ctx, on_log)
        if self.safe_points:
            ctx.safe = SafePoints(Path("/nonexistent.ckpt"), Checkpoint("", "", {}), False)
        self.handles[spec.job_id] = handle
        self._waiting.append(handle)
        self._next()
        return handle

    def _next(self) -> None:
        """The board takes the next prepared job if it is free (as the board thread)."""
        while self.busy_with is None and self._waiting:
            handle = self._waiting.pop(0)
            if not handle._take():
                handle._never_starts(None)
                continue
            if handle.ctx.stop_kind is not None:
                handle._never_starts(Outcome(handle.ctx.stop_kind, handle.ctx.stop_reason))
                continue
            self.busy_with = handle.spec.job_id
            handle.started.set_result(True)
            self.started.put_nowait(handle.spec.job_id)

    def acquired(self, job_id: str) -> None:
        """The job's acquisition ended: the board is free, its analysis runs."""
        handle = self.handles[job_id]
        if not handle.acquired.done():
            handle.acquired.set_result(None)
        if self.busy_with == job_id:
            self.busy_with = None
            self._next()

    def finish(self, job_id: str, reason: EndReason = EndReason.COMPLETED) -> None:
        self.acquired(job_id)
        self.handles[job_id].done.set_result(Outcome(reason))

    def yielded(self, job_id: str) -> None:
        """(#16) The job yielded the board at a safe point (its checkpoint written)."""
        handle = self.handles[job_id]
        handle.ctx.safe.preempted = True
        self.acquired(job_id)
        handle.done.set_result(Outcome(EndReason.SHUTDOWN, "preempted", preempted=True))

    def interrupt(self, job_id: str) -> bool:
        return False

    def clear_interrupt(self) -> None:
        pass


class GatedStore(Store):
    """A real Store whose writes can be held at a gate the test opens."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gates: list[tuple[Callable[[str], bool], asyncio.Event, asyncio.Event]] = []

    def gate(self, match: Callable[[str], bool]) -> tuple[asyncio.Event, asyncio.Event]:
        """Hold the next write with an op whose SQL matches; returns (reached, open)."""
        reached, release = asyncio.Event(), asyncio.Event()
        self.gates.append((match, reached, release))
        return reached, release

    async def write(self, *ops: Any) -> None:
        for g in list(self.gates):
            match, reached, release = g
            if any(match(op[0]) for op in ops):
                self.gates.remove(g)
                reached.set()
                await release.wait()
                break
        await super().write(*ops)


class Harness:
    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.settings = Settings(state_dir=tmp / "state", socket_path=tmp / "s.sock",
                                 **settings)
        self.store = GatedStore(self.settings.db_path)
        self.executor = FakeExecutor()
        self.events = EventBus()
        self.log: list[dict[str, Any]] = []
        self.events.listeners.append(self.log.append)

    async def __aenter__(self) -> "Harness":
        await self.store.open()
        counters = await self.store.counters()
        self.configs = ConfigStore(self.settings, self.store)
        await self.configs.open(counters)
        self.sched = Scheduler(self.settings, self.store, self.configs, self.executor,
                               self.events)
        await self.sched.start(counters)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for handle in self.executor.handles.values():
            handle._never_starts(Outcome(EndReason.SHUTDOWN))
        await self.sched.stop()
        await self.store.close()

    @staticmethod
    def job(peer: Peer = ALICE, **fields: Any) -> dict[str, Any]:
        """A validated submit's fields (what the submit method hands the scheduler)."""
        return {"user": peer.username, "experiment_class": "NoOpExperiment",
                "experiment_module": "experiments.diagnostics.noop", "experiment_config": {},
                "priority": 0, "time_limit_s": None, "pinned_versions": {},
                "batch_id": None, "held": 0, "after_job": None, "retry_of": None,
                "not_before": None, **fields}

    async def submit(self, peer: Peer = ALICE, **fields: Any) -> str:
        [job_id] = await self.sched.enqueue(peer, [self.job(peer, **fields)])
        return job_id

    async def started(self, recorded: bool = True) -> str:
        """The next job the (fake) board began; with ``recorded``, once its start is
        stored as well (the board does not wait for that commit)."""
        job_id = await asyncio.wait_for(self.executor.started.get(), 10)
        if recorded:
            await wait_for_condition(self.executor.handles[job_id].claimed.is_set)
        return job_id

    async def final(self, job_id: str) -> Any:
        """Wait until the job's outcome is stored; returns the stored job."""
        fut = self.events.waiter(job_id)
        job = await self.store.get_job(job_id)
        if not job.is_terminal():
            await asyncio.wait_for(fut, 10)
        self.events.drop_waiter(job_id, fut)
        return await self.store.get_job(job_id)


async def wait_for_condition(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Yield to the loop until ``pred()`` holds (bounded): for states reached through a
    store thread, where there is no event to await."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)
