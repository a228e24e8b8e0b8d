"""Safe points and checkpoints (issue #16): how a running job yields the board to a more
urgent one and later continues where it stopped, with no code in the experiment.

An experiment whose class declares ``safe_points`` acquires through ``ctx.board.acquire``
with ``rounds``; labd's board proxy hands each such call to ``SafePoints.acquire``, which
runs the real board one round at a time and sums the round averages (their mean is what
one R-round acquire returns). Between rounds, if the scheduler asked the job to yield, the
checkpoint is written durably beside its data file and ``Preempted`` ends the run. The
checkpoint holds the results of the job's completed ``board.acquire`` calls (in call
order), the rounds done and the running sum of the call in progress, the code and config
versions it ran with, and every interval it had the board.

A resumed job runs again from the top (same code, same config versions): its completed
calls are replayed from the checkpoint without hardware, the call in progress continues
with its next round, and the checkpoint is rewritten after every round (a kill -9 then
loses no completed round). Those per-round rewrites are atomic renames done before the
next round starts, which is all a killed process needs (the kernel has the data); their
fsyncs (against a power loss) run on a background thread, so the board does not wait for
the disk each round. The checkpoint written when the job yields is fsynced before the
board is handed over. Its data equal those of an uninterrupted run: the same rounds
summed in the same order (with a seeded mock board, the same noise per round)."""
from __future__ import annotations

import inspect
import io
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .durable import fsync_dir, write_new_file
from .models import utcnow

job_log = logging.getLogger("labd.job")
log = logging.getLogger(__name__)
_fsyncs = ThreadPoolExecutor(1, thread_name_prefix="labd-ckpt-fsync")


def _fsync_later(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
    except FileNotFoundError:   # replaced or removed meanwhile: that one is synced
        pass
    except OSError as exc:
        log.warning("fsync of checkpoint %s failed: %s", path, exc)


class Preempted(BaseException):
    """Ends a run at a safe point once its checkpoint is durable. A BaseException, so an
    experiment's ``except Exception`` cannot swallow it."""


@dataclass
class Checkpoint:
    module_sha256: str
    package_sha256: str
    config_versions: dict[str, str]
    completed: list[np.ndarray] = field(default_factory=list)  # finished calls' results
    rounds_done: int = 0               # of the call in progress (index len(completed))
    rounds_total: int = 0
    total: np.ndarray | None = None    # its sum of round averages
    intervals: list[list[str]] = field(default_factory=list)   # [[start, end], ...] UTC

    def save(self, path: Path, sync: bool = True) -> None:
        """Atomically and durably (temp file, fsync, rename, directory fsync); without
        ``sync`` the rename is atomic at once and the fsyncs follow in the background."""
        meta = {"module_sha256": self.module_sha256, "package_sha256": self.package_sha256,
                "config_versions": self.config_versions, "calls": len(self.completed),
                "rounds_done": self.rounds_done, "rounds_total": self.rounds_total,
                "intervals": self.intervals, "saved_at": utcnow()}
        arrays = {f"call{k}": a for k, a in enumerate(self.completed)}
        if self.total is not None:
            arrays["total"] = self.total
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
        tmp = path.with_name(path.name + ".part")
        if sync:
            write_new_file(path, buf.getvalue(), 0o644, replace=True, tmp=tmp)
            return
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
        os.replace(tmp, path)
        _fsyncs.submit(_fsync_later, path)

    @classmethod
    def load(cls, path: Path) -> "Checkpoint":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            completed = [z[f"call{k}"] for k in range(meta["calls"])]
            total = z["total"] if "total" in z.files else None
        return cls(meta["module_sha256"], meta["package_sha256"], meta["config_versions"],
                   completed, meta["rounds_done"], meta["rounds_total"], total,
                   meta["intervals"])

    def partial_data(self) -> dict[str, np.ndarray]:
        """What was acquired, for a job that cannot resume: each completed call's result,
        and the average of the rounds done of the call in progress."""
        data = {f"acquisition{k}": a for k, a in enumerate(self.completed)}
        if self.total is not None and self.rounds_done:
            data["partial"] = self.total / self.rounds_done
            data["partial_rounds"] = np.array([self.rounds_done, self.rounds_total])
        if not data:
            data["partial_rounds"] = np.array([0, self.rounds_total])
        return data


def checkpoint_path(data_path: Path) -> Path:
    """``<job_id>.ckpt`` beside ``<job_id>.h5``."""
    return data_path.with_suffix(".ckpt")


class _RoundCtx:
    """The context one round's board call sees: its progress maps to the whole call."""

    def __init__(self, ctx: Any, done: int, rounds: int) -> None:
        self._ctx, self._done, self._rounds = ctx, done, rounds

    def progress(self, done: float, total: float) -> None:
        frac = float(done) / float(total) if total else 1.0
        self._ctx.progress(self._done + frac, self._rounds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


_ACCEPTS_INDEX: dict[Any, bool] = {}


def _accepts_round_index(fn: Callable[..., Any]) -> bool:
    key = getattr(fn, "__func__", fn)
    if key not in _ACCEPTS_INDEX:
        try:
            params = inspect.signature(fn).parameters.values()
            _ACCEPTS_INDEX[key] = any(p.name == "round_index" or p.kind is p.VAR_KEYWORD
                                      for p in params)
        except (TypeError, ValueError):
            _ACCEPTS_INDEX[key] = False
    return _ACCEPTS_INDEX[key]


class SafePoints:
    """One run of one job's acquisitions, round by round (see the module docstring). Lives
    in the board thread; ``request`` is the only thing other threads touch."""

    def __init__(self, path: Path, ckpt: Checkpoint, resumed: bool) -> None:
        self.path = path
        self.ckpt = ckpt                   # the state so far (loaded when resumed)
        self.resumed = resumed             # checkpoint after every round from now on
        self._replay = len(ckpt.completed)  # calls answered from the checkpoint
        self._calls = 0
        self._open: str | None = None      # start of the current interval on the board
        self._began = 0.0                  # monotonic, when the board took it
        self.replay_s: float | None = None  # resumed: board taken -> its first new round
        self.writes, self.write_s = 0, 0.0  # per-round checkpoints: how many, board time
        self._requested = threading.Event()
        self.requested_by: str | None = None
        self.preempted = False             # it yielded: the checkpoint is on disk

    # ---- from any thread --------------------------------------------------------
    def request(self, by: str) -> bool:
        """Ask the job to yield at its next safe point; False if already asked."""
        if self._requested.is_set():
            return False
        self.requested_by = by
        self._requested.set()
        return True

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    # ---- in the board thread ----------------------------------------------------
    def begin(self) -> None:
        self._open = utcnow()
        self._began = time.monotonic()

    def end(self) -> None:
        if self.writes:
            job_log.info("per-round checkpoints: %d written, %.3f ms on the board",
                         self.writes, 1e3 * self.write_s)
            self.writes, self.write_s = 0, 0.0
        if self._open is not None:
            self.ckpt.intervals.append([self._open, utcnow()])
            self._open = None

    def intervals(self) -> list[list[str]]:
        return self.ckpt.intervals + ([[self._open, utcnow()]] if self._open else [])

    def _save(self, k_rounds: tuple[int, int], total: np.ndarray | None,
              sync: bool = False) -> None:
        self.ckpt.rounds_done, self.ckpt.rounds_total = k_rounds
        self.ckpt.total = total
        closed = self.ckpt.intervals
        self.ckpt.intervals = self.intervals()
        t0 = time.monotonic()
        try:
            self.ckpt.save(self.path, sync)
        finally:
            self.ckpt.intervals = closed
        if not sync:
            self.writes += 1
            self.write_s += time.monotonic() - t0

    def acquire(self, board_acquire: Callable[..., Any], ctx: Any, prog: Any, *,
                rounds: int, ctx_arg: Any, **kwargs: Any) -> np.ndarray:
        k = self._calls
        self._calls += 1
        if k < self._replay:                       # done before it yielded: no hardware
            ctx_arg.progress(rounds, rounds)
            return self.ckpt.completed[k].copy()
        start, total = 0, None
        if k == self._replay and self.ckpt.total is not None and self.ckpt.rounds_done:
            start, total = self.ckpt.rounds_done, self.ckpt.total.copy()
        index = _accepts_round_index(board_acquire)
        for r in range(start, rounds):
            if self._requested.is_set() and not ctx.should_stop():
                self.end()
                self._save((r, rounds), total, sync=True)   # durable before the handover
                self.preempted = True
                raise Preempted(self.requested_by)
            if self.resumed and self.replay_s is None:
                self.replay_s = time.monotonic() - self._began
                job_log.info("resumed from its checkpoint: %d acquisitions replayed, "
                             "acquisition %d continues at round %d of %d (replay %.3f ms)",
                             self._replay, k, r + 1, rounds, 1e3 * self.replay_s)
            extra = {"round_index": (k, r)} if index else {}
            res = np.asarray(board_acquire(prog, rounds=1, ctx=_RoundCtx(ctx_arg, r, rounds),
                                           **kwargs, **extra))
            total = res if total is None else total + res
            if self.resumed and r + 1 < rounds:
                self._save((r + 1, rounds), total)
        result = total / rounds if total is not None else np.zeros(0, dtype=complex)
        self.ckpt.completed.append(result)
        self.ckpt.total, self.ckpt.rounds_done = None, 0
        if self.resumed:
            self._save((0, 0), None)
        return result
