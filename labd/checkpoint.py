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
with its next round, and its state is saved after every round (a kill -9 then loses no
completed round). Its data equal those of an uninterrupted run: the same rounds summed in
the same order (with a seeded mock board, the same noise per round).

Those per-round states are records appended to a journal
beside the checkpoint (``<job_id>.ckpt.rounds``: length, CRC32, payload), one write each
before the next round starts, which is all a killed process needs (the kernel has the
data); their fsyncs (against a power loss) run on a background thread, so the board does
not wait for the disk each round (a rename over the checkpoint cost ~1 ms on ext4). A
record names the checkpoint generation it extends; loading applies the valid records of
the current generation (a torn last record is ignored). The checkpoint written when the
job yields is complete and starts a new generation; it is renamed into place before the
board is handed over (a kill -9 from then on loses nothing), and fsynced (file, then
directory) on the background thread while the urgent job already acquires: the scheduler
records the preemption in the database only once that fsync is done, so after a power
loss the database never says "preempted" without a checkpoint on disk."""
from __future__ import annotations

import inspect
import io
import json
import struct
import zlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .durable import fsync_dir, fsync_path, write_new_file
from .models import utcnow

job_log = logging.getLogger("labd.job")
log = logging.getLogger(__name__)
_fsyncs = ThreadPoolExecutor(1, thread_name_prefix="labd-ckpt-fsync")


_HEAD = struct.Struct("<II")   # journal record: payload length, CRC32


def _fsync_file(path: Path) -> None:
    fsync_path(path)
    fsync_dir(path.parent)


def _fsync_later(fd: int, path: Path) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        log.warning("fsync of checkpoint journal %s failed: %s", path, exc)


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
    generation: int = 0                # full saves so far; journal records extend one

    def save(self, path: Path, sync: bool = True) -> Future | None:
        """Complete, atomically and durably (temp file, fsync, rename, directory fsync);
        a new generation: the journal of the previous one is void. Without ``sync`` the
        rename is done at once and the fsyncs on the background thread: the returned
        future says when the checkpoint is durable."""
        self.generation += 1
        meta = {"module_sha256": self.module_sha256, "package_sha256": self.package_sha256,
                "config_versions": self.config_versions, "calls": len(self.completed),
                "rounds_done": self.rounds_done, "rounds_total": self.rounds_total,
                "intervals": self.intervals, "generation": self.generation,
                "saved_at": utcnow()}
        arrays = {f"call{k}": a for k, a in enumerate(self.completed)}
        if self.total is not None:
            arrays["total"] = self.total
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
        tmp = path.with_name(path.name + ".part")
        if sync:
            write_new_file(path, buf.getvalue(), 0o644, replace=True, tmp=tmp)
            journal_path(path).unlink(missing_ok=True)
            return None
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
        os.replace(tmp, path)
        journal_path(path).unlink(missing_ok=True)
        return _fsyncs.submit(_fsync_file, path)

    @staticmethod
    def record(generation: int, kind: str, k: int, rounds_done: int, rounds_total: int,
               array: np.ndarray | None, interval: list[str] | None) -> bytes:
        """A journal record: after round ``rounds_done`` of call ``k`` (kind "round",
        ``array`` its running sum), or call ``k`` completed (kind "call", its result)."""
        head = {"gen": generation, "kind": kind, "k": k, "r": rounds_done,
                "n": rounds_total, "interval": interval}
        if array is not None:
            head.update(dtype=array.dtype.str, shape=list(array.shape))
        h = json.dumps(head).encode()
        payload = struct.pack("<I", len(h)) + h + (
            np.ascontiguousarray(array).tobytes() if array is not None else b"")
        return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def load(cls, path: Path) -> "Checkpoint":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            completed = [z[f"call{k}"] for k in range(meta["calls"])]
            total = z["total"] if "total" in z.files else None
        ck = cls(meta["module_sha256"], meta["package_sha256"], meta["config_versions"],
                 completed, meta["rounds_done"], meta["rounds_total"], total,
                 meta["intervals"], meta.get("generation", 0))
        ck._apply(journal_path(path))
        return ck

    def _apply(self, journal: Path) -> None:
        """The rounds a resumed run took after this checkpoint, from its journal."""
        try:
            data = journal.read_bytes()
        except FileNotFoundError:
            return
        pos, runs = 0, {}   # each resumed run's interval, by its start
        while pos + _HEAD.size <= len(data):
            size, crc = _HEAD.unpack_from(data, pos)
            payload = data[pos + _HEAD.size: pos + _HEAD.size + size]
            if len(payload) < size or zlib.crc32(payload) != crc:
                break   # torn by a kill mid-write: the records before it stand
            pos += _HEAD.size + size
            (hlen,) = struct.unpack_from("<I", payload)
            head = json.loads(payload[4:4 + hlen])
            if head["gen"] != self.generation:
                continue
            arr = np.frombuffer(payload[4 + hlen:], dtype=head["dtype"]).reshape(
                head["shape"]).copy() if "dtype" in head else None
            if head["kind"] == "call" and head["k"] == len(self.completed):
                self.completed.append(arr)
                self.total, self.rounds_done = None, 0
            elif head["kind"] == "round" and head["k"] == len(self.completed):
                self.total, self.rounds_done = arr, head["r"]
                self.rounds_total = head["n"]
            if head["interval"]:
                runs[head["interval"][0]] = head["interval"]
        self.intervals = self.intervals + list(runs.values())

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


def journal_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".rounds")


def remove(ckpt: Path) -> None:
    """The checkpoint and its journal (the data file holds it all now)."""
    ckpt.unlink(missing_ok=True)
    journal_path(ckpt).unlink(missing_ok=True)


class _RoundCtx:
    """The context a board call for rounds ``done`` .. ``done + span`` of a call sees: its
    progress maps to the whole call."""

    def __init__(self, ctx: Any, done: int, rounds: int, span: int = 1) -> None:
        self._ctx, self._done, self._rounds, self._span = ctx, done, rounds, span

    def progress(self, done: float, total: float) -> None:
        frac = float(done) / float(total) if total else 1.0
        self._ctx.progress(self._done + self._span * frac, self._rounds)

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
        self._journal: int | None = None   # fd, opened for appending on the first record
        self._requested = threading.Event()
        self.requested_by: str | None = None
        self.preempted = False             # it yielded: the checkpoint is in place
        self.durable: Future | None = None  # ... and once this is done, fsynced

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
        if self._journal is not None:
            fd, self._journal = self._journal, None
            _fsyncs.submit(os.close, fd)   # after the fsyncs queued before it
        if self._open is not None:
            self.ckpt.intervals.append([self._open, utcnow()])
            self._open = None

    def intervals(self) -> list[list[str]]:
        return self.ckpt.intervals + ([[self._open, utcnow()]] if self._open else [])

    def _save(self, k_rounds: tuple[int, int], total: np.ndarray | None) -> None:
        """The complete checkpoint, in place (the job yields next; fsynced in the
        background, see ``durable``)."""
        self.ckpt.rounds_done, self.ckpt.rounds_total = k_rounds
        self.ckpt.total = total
        self.durable = self.ckpt.save(self.path, sync=False)

    def _journal_record(self, kind: str, k: int, r: int, rounds: int,
                        array: np.ndarray) -> None:
        """One round (or a completed call) of a resumed run, appended to the journal."""
        t0 = time.monotonic()
        if self._journal is None:
            self._journal = os.open(journal_path(self.path),
                                    os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            fsync_dir(self.path.parent)   # the journal's name, once
        rec = Checkpoint.record(self.ckpt.generation, kind, k, r, rounds, array,
                                [self._open, utcnow()] if self._open else None)
        os.write(self._journal, rec)
        _fsyncs.submit(_fsync_later, self._journal, self.path)
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
        # a board that steps through the rounds of one loaded program itself (the real
        # one) yields them one by one; any other runs one round per call
        stream = getattr(getattr(board_acquire, "__self__", None), "acquire_rounds", None)
        gen = stream(prog, rounds=rounds - start, ctx=_RoundCtx(
            ctx_arg, start, rounds, rounds - start), **kwargs) if stream else None
        index = _accepts_round_index(board_acquire)
        try:
            for r in range(start, rounds):
                if self._requested.is_set() and not ctx.should_stop():
                    if gen is not None:
                        gen.close()
                    self.end()
                    self._save((r, rounds), total)   # in place before the handover
                    self.preempted = True
                    raise Preempted(self.requested_by)
                if self.resumed and self.replay_s is None:
                    self.replay_s = time.monotonic() - self._began
                    job_log.info("resumed from its checkpoint: %d acquisitions replayed, "
                                 "acquisition %d continues at round %d of %d (replay "
                                 "%.3f ms)", self._replay, k, r + 1, rounds,
                                 1e3 * self.replay_s)
                if gen is not None:
                    res = np.asarray(next(gen))
                else:
                    extra = {"round_index": (k, r)} if index else {}
                    res = np.asarray(board_acquire(
                        prog, rounds=1, ctx=_RoundCtx(ctx_arg, r, rounds), **kwargs, **extra))
                total = res if total is None else total + res
                if self.resumed and r + 1 < rounds:
                    self._journal_record("round", k, r + 1, rounds, total)
        finally:
            if gen is not None:
                gen.close()
        result = total / rounds if total is not None else np.zeros(0, dtype=complex)
        self.ckpt.completed.append(result)
        self.ckpt.total, self.ckpt.rounds_done = None, 0
        if self.resumed:
            self._journal_record("call", k, rounds, rounds, result)
        return result
