"""Board and throughput benchmark (issue #14). Starts real daemons (mock board) and prints one
JSON object; every figure has the physical floor measured in the same run beside it.

- board idle gap: end of one acquire() to the start of the next, measured by the daemon's
  board thread (``board_stats``), with the queue `depth` deep, for mock T1, mock Rabi and a
  T1 whose fit takes 200 ms. The mock board takes real time per acquisition
  (``--mock-speed``, default 0.005 x a real board: ~8 ms for these sweeps), so the next
  job can be prepared meanwhile, as on hardware; floor: one thread handing an item to
  another through a queue (what the board thread's hand-off can cost at least).
  Beside each gap: how long the files of those acquisitions took to be durable after the
  last one ended (the data files' lag behind the board).
- drain: mock T1 jobs per second with data files and fits, with the data writer this
  machine gets by default (``data_writer`` "auto": "when_behind" below 4 CPUs, labd's
  threads and the child while the files lag) and with the child process; beside it, a
  mock Rabi's idle gap with the child process and with the threads alone (on a 2-core
  machine a second busy process delays the board: see labd/data_writer.py).
- submit latency with the sync Client, next to a minimal asyncio server on this machine
  that commits the same row (WAL, synchronous=FULL) before replying; beside it the same
  server committing what labd's shape must (its jobs row and table with the history
  indexes, through aiosqlite's thread), to tell what the shape costs from what labd's
  code does.
- 16 separate client processes submitting at once; floor: the same against that server.
- history over 100k finished jobs, every filter combination; floor: the daemon's SELECT
  (store.history_sql) in SQLite directly; beside it the plain SELECT of the same filters
  (no seq bound from `since`), to show what the created_max bound buys.

    .venv/bin/python benchmarks/bench_board.py [--quick] [--deep]   (--deep adds 1M pending)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from daemon_harness import Daemon  # noqa: E402

from labd_client import Client  # noqa: E402

T1 = ("T1Experiment", "experiments.single_qubit.t1", {"expts": 50, "reps": 100})
RABI = ("AmplitudeRabiExperiment", "experiments.single_qubit.amplitude_rabi",
        {"expts": 50, "reps": 100})
SLOW_FIT = ("SlowFitT1", "labtest_experiments.bench", {"expts": 50, "reps": 100})
NOOP = ("NoOpExperiment", "experiments.diagnostics.noop", {})
TARGETS = {"idle_gap_p50_ms": 0.5, "idle_gap_p99_ms": 2, "drain_t1_per_s": 200,
           "submit_p50_vs_floor": 1.3, "submits_per_s_16_procs": 4000, "history_ms": 5,
           "rss_1m_pending_mb": 400}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def stats(xs: list[float]) -> dict[str, float]:
    return {"p50": round(pct(xs, 50), 3), "p99": round(pct(xs, 99), 3)}


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


_roots: list[Path] = []


@contextlib.contextmanager
def daemon(**settings) -> Iterator[Daemon]:
    """A daemon with this machine's defaults (the test harness pins the data writer)."""
    d = Daemon(max_pending_per_user=2_000_000, max_batch=10_000, job_time_limit_s=86400,
               **{"data_writer": "auto", **settings}).start(timeout=120)
    _roots.append(d.root)
    try:
        yield d
    finally:
        d.close()


def spec(exp: tuple) -> dict:
    return {"experiment_class": exp[0], "experiment_module": exp[1],
            "experiment_config": exp[2]}


# ---- floors -------------------------------------------------------------------------
ROW = ("INSERT INTO jobs (job_id, body) VALUES (?, ?)")


def floor_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, body TEXT)")
    return db


def floor_commit_ms(n: int) -> dict[str, float]:
    """One durable commit of a job-sized row: the least any recorded start can cost."""
    with tempfile.TemporaryDirectory() as tmp:
        db = floor_db(Path(tmp) / "f.db")
        body = json.dumps(spec(T1)) * 3
        lat = []
        for i in range(n):
            t = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute(ROW, (f"J{i}", body))
            db.execute("COMMIT")
            lat.append((time.perf_counter() - t) * 1e3)
        return stats(lat)


class FloorServer:
    """The least a durable submit can cost here: a minimal asyncio server on a Unix socket
    that commits the request's row (WAL, synchronous=FULL) before replying.

    With ``shape`` it commits what labd's shape must: labd's own jobs row into its jobs
    table (the history indexes, the created_max column), through aiosqlite's database
    thread (one round trip, an autocommit INSERT, as labd's single submit). labd's figure
    against it is what labd's own code costs."""

    def __init__(self, root: Path, shape: bool = False) -> None:
        name = "floor-shape" if shape else "floor"
        self.path = root / f"{name}.sock"
        self.db_path = root / f"{name}.db"
        self.shape = shape
        self.db = floor_db(self.db_path)
        self.n = itertools.count()
        self._ready = threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True).start()
        self._ready.wait(10)

    async def _serve(self) -> None:
        commit = self._commit
        if self.shape:
            import aiosqlite

            from labd.migrations import create
            from labd.store import INSERT_JOB, job_row
            self.db.execute("DROP TABLE jobs")
            create(self.db)
            self.db.close()
            adb = await aiosqlite.connect(self.db_path, isolation_level=None)
            await adb.execute("PRAGMA synchronous=FULL")   # per connection (WAL stays)

            async def commit(job_id: str, params: dict) -> None:
                now = datetime.now(timezone.utc).isoformat()
                await adb.execute(INSERT_JOB, job_row({
                    "job_id": job_id, "status": "pending", "user": "bench",
                    "os_user": "bench", "os_uid": 1000, "priority": 0, "held": 0,
                    "experiment_config": params["experiment_config"], "created_at": now,
                    "created_max": now, **{k: params[k] for k in (
                        "experiment_class", "experiment_module")}}))

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while line := await r.readline():
                req = json.loads(line)
                job_id = f"JOB-{next(self.n):09d}"
                await commit(job_id, req["params"])
                w.write(json.dumps({"jsonrpc": "2.0", "result": {"job_id": job_id},
                                    "id": req["id"]}).encode() + b"\n")
                await w.drain()
        server = await asyncio.start_unix_server(handle, path=str(self.path), backlog=1024)
        self._ready.set()
        async with server:
            await server.serve_forever()

    async def _commit(self, job_id: str, params: dict) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(ROW, (job_id, json.dumps(params)))
        self.db.execute("COMMIT")


def floor_submit(path: Path, n: int) -> list[float]:
    frame = json.dumps({"jsonrpc": "2.0", "method": "submit", "params": spec(NOOP),
                        "id": 1}).encode() + b"\n"
    lat = []
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        f = s.makefile("rb")
        for _ in range(n):
            t = time.perf_counter()
            s.sendall(frame)
            f.readline()
            lat.append((time.perf_counter() - t) * 1e3)
    return lat


# ---- phases ---------------------------------------------------------------------------
def floor_handoff_ms(n: int) -> dict[str, float]:
    """One thread waking another through a queue: the least a board hand-off costs."""
    import queue
    q_in, q_out = queue.SimpleQueue(), queue.SimpleQueue()

    def echo() -> None:
        while (t := q_in.get()) is not None:
            q_out.put(time.perf_counter() - t)
    th = threading.Thread(target=echo)
    th.start()
    lat = []
    for _ in range(n):
        q_in.put(time.perf_counter())
        lat.append(q_out.get() * 1e3)
    q_in.put(None)
    th.join()
    return stats(lat)


def gap_run(out: dict, exp: tuple, depth: int, measured: int, speed: float,
            **settings) -> None:
    """The board's idle gaps over ``measured`` acquisitions, ``depth`` jobs queued."""
    with daemon(mock_speed=speed, **settings) as d, Client(d.socket, timeout=600) as c:
        c.pause()
        first = c.submit_batch([spec(exp)] * min(depth, 10_000))["job_ids"]
        for left in range(depth - 10_000, 0, -10_000):
            c.submit_batch([spec(exp)] * min(left, 10_000))
        key = f"{exp[0]}@{depth}" + "".join(f" {k}={v}" for k, v in settings.items())
        if depth >= 1_000_000:
            out["rss_1m_pending_mb"] = rss_mb(d.proc.pid)
        n = min(depth, measured)
        before = c.call("board_stats")["acquisitions"]
        t = time.perf_counter()
        c.resume()
        deadline = time.monotonic() + 600
        while c.call("board_stats")["acquisitions"] - before < n:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        acquired = time.perf_counter()
        acquire_rate = n / (acquired - t)
        c.pause()
        gaps = c.call("board_stats")["idle_gaps_ms"][-(n - 1):]
        c.wait(first[n - 1], timeout=600)   # (pending jobs run in the order submitted)
        out[f"idle_gap_ms {key}"] = stats(gaps)
        out[f"acquisitions_per_s {key}"] = round(acquire_rate)
        out[f"files_lag_s {key}"] = round(time.perf_counter() - acquired, 2)


def phase_gaps(out: dict, depths: list[int], measured: int, speed: float) -> None:
    """Board idle gap, queue `depth` deep, for each experiment; then the drain."""
    out["floor_commit_ms"] = floor_commit_ms(300)
    out["floor_handoff_ms"] = floor_handoff_ms(1000)
    out["mock_speed"] = speed
    for exp in (T1, RABI, SLOW_FIT):
        for depth in depths:
            gap_run(out, exp, depth, measured, speed)
    for writer in ("process", "thread"):
        gap_run(out, RABI, depths[-1], measured, speed, data_writer=writer)
    from labd.data_writer import writer_mode
    out["data_writer"] = writer_mode("auto")
    for writer, key in (("auto", ""), ("process", " data_writer=process")):
        with daemon(data_writer=writer) as d, Client(d.socket, timeout=600) as c:  # drain
            c.pause()
            batch = c.submit_batch([spec(T1)] * measured)
            time.sleep(1)   # the data writer child is up (it starts when jobs are queued)
            t = time.perf_counter()
            c.resume()
            c.wait(batch["job_ids"][-1], timeout=600)   # durable outcomes
            out["drain_t1_per_s" + key] = round(measured / (time.perf_counter() - t))
            jobs = c.history(batch_id=batch["batch_id"], limit=measured)
            out["drain_t1_failed" + key] = sum(1 for j in jobs if j.status != "completed")


def _client_proc(sock: str, n: int, floor: bool, start: float, q: mp.Queue) -> None:
    while time.time() < start:
        time.sleep(0.001)
    errors = 0
    if floor:
        floor_submit(Path(sock), n)
    else:
        with Client(sock) as c:
            for _ in range(n):
                try:
                    c.submit(*NOOP[:2])
                except Exception:
                    errors += 1
    q.put((time.time(), errors))


def sixteen(sock: Path, n: int, floor: bool) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start = time.time() + 2.0  # every process is up before the clock starts
    procs = [ctx.Process(target=_client_proc, args=(str(sock), n, floor, start, q))
             for _ in range(16)]
    for p in procs:
        p.start()
    ends = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return 16 * n / (max(e for e, _ in ends) - start), sum(e for _, e in ends)


def phase_submit(out: dict, n_lat: int, n_proc: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, daemon() as d:
        floor = FloorServer(Path(tmp))
        floor_shape = FloorServer(Path(tmp), shape=True)
        with Client(d.socket) as c:
            c.pause()  # everything stays pending: submits are measured alone
            for _ in range(200):
                c.submit(*NOOP[:2])
            lat = []
            for _ in range(n_lat):
                t = time.perf_counter()
                c.submit(*NOOP[:2])
                lat.append((time.perf_counter() - t) * 1e3)
        fl = floor_submit(floor.path, n_lat)
        fls = floor_submit(floor_shape.path, n_lat)
        out["submit_ms"] = stats(lat)
        out["submit_floor_ms"] = stats(fl)
        out["submit_p50_vs_floor"] = round(pct(lat, 50) / pct(fl, 50), 2)
        out["submit_shape_floor_ms"] = stats(fls)
        out["submit_p50_vs_shape_floor"] = round(pct(lat, 50) / pct(fls, 50), 2)
        rate, errors = sixteen(d.socket, n_proc, False)
        frate, _ = sixteen(floor.path, n_proc, True)
        out["submits_per_s_16_procs"] = round(rate)
        out["submit_errors_16_procs"] = errors
        out["floor_submits_per_s_16_procs"] = round(frate)


FILTERS = {"user": "u3", "os_user": "root", "status": "failed",
           "experiment": "T1Experiment", "batch_id": "BATCH-000000000007",
           "since": "2026-01-01T12:00:00.000000+00:00", "cursor": 50_000}


def fill_history(db_path: Path, n: int) -> None:
    """n finished jobs written straight into a new database (before its daemon starts)."""
    from labd.migrations import create
    from labd.store import INSERT_JOB, job_row
    db = sqlite3.connect(db_path)
    create(db)
    classes = ["T1Experiment", "AmplitudeRabiExperiment", "T2RamseyExperiment", "NoOp"]
    statuses = ["completed", "failed", "cancelled"]
    rows = []
    for i in range(n):
        t = f"2026-01-01T{(i * 24 // n):02d}:00:00.000000+00:00"   # as labd stamps them
        rows.append(job_row({
            "job_id": f"JOB-20260101-{i + 1:05d}", "status": statuses[i % 3],
            "user": f"u{i % 10}", "os_user": "root", "os_uid": 0,
            "experiment_class": classes[i % 4], "experiment_module": "experiments.x",
            "experiment_config": {"reps": 100, "expts": 50}, "priority": 0,
            "created_at": t, "started_at": t, "finished_at": t,
            "batch_id": f"BATCH-{i // 1000:012d}", "held": 0,
            "end_reason": "completed"}))
    db.executemany(INSERT_JOB, rows)
    db.execute("INSERT INTO counters VALUES ('JOB', '20260101', ?)", (n,))
    db.commit()
    db.close()


def naive_history_sql(keys: tuple[str, ...]) -> tuple[str, list]:
    """The plain SELECT of those filters (what labd ran before `since` bounded seq)."""
    where = [f"{'experiment_class' if key == 'experiment' else key} = ?"
             for key in keys if key not in ("since", "cursor")]
    args: list = [FILTERS[key] for key in keys if key not in ("since", "cursor")]
    if "since" in keys:
        where.append("created_at >= ?")
        args.append(FILTERS["since"])
    if "cursor" in keys:
        where.append("seq < ?")
        args.append(FILTERS["cursor"])
    return ("SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY seq DESC LIMIT 50", args)


def phase_history(out: dict, n: int) -> None:
    from labd.store import history_sql
    state = Path(tempfile.mkdtemp(prefix="labd-bench-"))
    _roots.append(state)
    fill_history(state / "labd.sqlite3", n)
    worst, worst_floor, worst_naive, combos = (0.0, ()), 0.0, 0.0, 0

    def p50_ms(run) -> float:
        lat = []
        for _ in range(10):
            t = time.perf_counter()
            run()
            lat.append((time.perf_counter() - t) * 1e3)
        return pct(lat, 50)

    with daemon(state_dir=str(state)) as d, Client(d.socket) as c:
        direct = sqlite3.connect(state / "labd.sqlite3")
        for k in range(len(FILTERS) + 1):
            for keys in itertools.combinations(FILTERS, k):
                params = {key: FILTERS[key] for key in keys}
                ms = p50_ms(lambda: c.call("history", limit=50, **params))
                # the floor: the daemon's own SQL for these filters, in SQLite directly
                sql, args = history_sql(**{f: params.get(f) for f in (
                    "user", "os_user", "status", "experiment", "since", "batch_id")},
                    before_seq=params.get("cursor"), limit=50)
                worst = max(worst, (ms, keys))
                worst_floor = max(worst_floor, p50_ms(lambda: direct.execute(sql, args)
                                                      .fetchall()))
                naive, nargs = naive_history_sql(keys)
                worst_naive = max(worst_naive, p50_ms(lambda: direct.execute(naive, nargs)
                                                      .fetchall()))
                combos += 1
    out["history_filter_combinations"] = combos
    out["history_worst_p50_ms"] = round(worst[0], 2)
    out["history_worst_filters"] = "+".join(worst[1]) or "none"
    out["history_floor_worst_p50_ms"] = round(worst_floor, 2)
    out["history_naive_select_worst_p50_ms"] = round(worst_naive, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    ap.add_argument("--deep", action="store_true", help="also 1M pending (minutes, ~GBs)")
    ap.add_argument("--mock-speed", type=float, default=0.005,
                    help="mock board time per acquisition, x a real board's (gap phase)")
    a = ap.parse_args()
    out: dict = {"cpus": os.cpu_count()}
    phase_submit(out, 300 if a.quick else 3000, 100 if a.quick else 1000)
    phase_history(out, 10_000 if a.quick else 100_000)
    depths = [100] if a.quick else [100, 10_000] + ([1_000_000] if a.deep else [])
    phase_gaps(out, depths, 50 if a.quick else 300, a.mock_speed)
    out["targets"] = TARGETS
    print(json.dumps(out, indent=2))
    for root in _roots:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
