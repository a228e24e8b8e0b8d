"""labd core benchmark: starts real daemons (mock board) and prints one JSON object with
the numbers issue #2 sets targets for. Not a test: it reports, it does not assert.

    .venv/bin/python benchmarks/bench_core.py [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from daemon_harness import Daemon  # noqa: E402

from labd_client import AsyncClient  # noqa: E402

NOOP = ("NoOpExperiment", "experiments.diagnostics.noop")
SLEEP = ("SleepExperiment", "experiments.diagnostics.sleep")
TARGETS = {"submit_p50_ms": 1.0, "submits_per_s_16_clients": 3000, "queue_10k_ms": 30,
           "history_100k_ms": 5, "gap_between_jobs_ms": 2, "submit_to_done_ms": 25,
           "drain_jobs_per_s": 200, "rss_100k_pending_mb": 200}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def gaps_ms(jobs: list) -> list[float]:
    """Time between one job's recorded end and the next one's recorded start (the start is
    stamped when the job is claimed, just before the claim's commit)."""
    jobs = sorted(jobs, key=lambda j: j.started_at)
    return [(ts(b.started_at) - ts(a.finished_at)) * 1e3 for a, b in zip(jobs, jobs[1:])]


def gap_stats(gaps: list[float], out: dict, suffix: str) -> None:
    out[f"gap_between_jobs_ms{suffix}_p50"] = round(pct(gaps, 50), 3)
    out[f"gap_between_jobs_ms{suffix}_p99"] = round(pct(gaps, 99), 3)


_roots: list[Path] = []


@contextlib.contextmanager
def fresh_daemon() -> Iterator[Daemon]:
    """A new daemon (own state dir) per phase, so phases do not disturb each other. State
    dirs are deleted only at the very end: deleting thousands of files slows file creation
    on some disks for a minute (ext4 mounted with ``discard``: 0.03 -> 0.7 ms here), which
    would be charged to the next phase's jobs."""
    d = Daemon(max_pending_per_user=1_000_000, max_batch=10_000,
               job_time_limit_s=86400).start()
    _roots.append(d.root)
    try:
        yield d
    finally:
        d.close()


async def phase_submit(out: dict, n_lat: int, n_tput: int) -> None:
    with fresh_daemon() as d:
        async with AsyncClient(d.socket) as c:
            await c.submit(*SLEEP, {"seconds": 86400})  # keeps everything else pending
            for _ in range(200):
                await c.submit(*NOOP)                   # warm-up
            lat = []
            for _ in range(n_lat):
                t = time.perf_counter()
                await c.submit(*NOOP)
                lat.append((time.perf_counter() - t) * 1e3)
            out["submit_p50_ms"] = round(pct(lat, 50), 3)
            out["submit_p99_ms"] = round(pct(lat, 99), 3)

        clients = [AsyncClient(d.socket) for _ in range(16)]
        for c in clients:
            await c.connect()
        errors = 0

        async def worker(c: AsyncClient, n: int) -> None:
            nonlocal errors
            for _ in range(n):
                try:
                    await c.submit(*NOOP)
                except Exception:
                    errors += 1
        t = time.perf_counter()
        await asyncio.gather(*(worker(c, n_tput // 16) for c in clients))
        dt = time.perf_counter() - t
        out["submits_per_s_16_clients"] = round(16 * (n_tput // 16) / dt)
        out["submit_errors_16_clients"] = errors
        for c in clients:
            await c.close()



async def phase_queue(out: dict) -> None:
    with fresh_daemon() as d:
        async with AsyncClient(d.socket) as c:
            await c.submit(*SLEEP, {"seconds": 86400})
            await c.submit_batch([{"experiment_class": NOOP[0],
                                   "experiment_module": NOOP[1]}] * 10_000)
            raw, expanded = [], []
            for _ in range(10):
                t = time.perf_counter()
                q = await c.call("queue")
                raw.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                await c.queue()
                expanded.append((time.perf_counter() - t) * 1e3)
            out["queue_pending"] = q["total_pending"]
            out["queue_10k_ms"] = round(statistics.median(raw), 2)
            out["queue_10k_as_dicts_ms"] = round(statistics.median(expanded), 2)


async def phase_100k(out: dict, total: int, drain_n: int) -> None:
    with fresh_daemon() as d:
        async with AsyncClient(d.socket, timeout=600) as c:
            blocker = await c.submit(*SLEEP, {"seconds": 86400})
            spec = {"experiment_class": NOOP[0], "experiment_module": NOOP[1]}
            t = time.perf_counter()
            batches = [await c.submit_batch([spec] * 10_000) for _ in range(total // 10_000)]
            out["batch_submit_jobs_per_s"] = round(total / (time.perf_counter() - t))
            out["rss_100k_pending_mb"] = round(rss_mb(d.proc.pid), 1)
            out["pending_for_rss"] = (await c.health())["pending"]
            times = []
            for i in range(50):
                t = time.perf_counter()
                await c.call("history", limit=50, status="pending" if i % 2 else None)
                times.append((time.perf_counter() - t) * 1e3)
            out["history_100k_ms"] = round(statistics.median(times), 2)
            t = time.perf_counter()
            await c.queue(limit=100)
            out["queue_100k_first100_ms"] = round((time.perf_counter() - t) * 1e3, 2)

            # drain with ~100k still queued behind: gaps at full depth
            t = time.perf_counter()
            await c.cancel(blocker)
            await c.wait(batches[0]["job_ids"][drain_n - 1])  # FIFO: the first drain_n run
            dt = time.perf_counter() - t
            out["drain_jobs_per_s_at_100k_depth"] = round(drain_n / dt)
            gap_stats(gaps_ms(await c.history(status="completed", limit=drain_n)), out,
                      "_at_100k_depth")


async def phase_drain(out: dict, n: int, n_done: int, rounds: int) -> None:
    with fresh_daemon() as d:
        async with AsyncClient(d.socket, timeout=600) as c:
            lat = []
            for _ in range(n_done):  # idle daemon: submit -> client sees completion
                t = time.perf_counter()
                await c.wait(await c.submit(*NOOP))
                lat.append((time.perf_counter() - t) * 1e3)
            out["submit_to_done_p50_ms"] = round(pct(lat, 50), 2)
            out["submit_to_done_p99_ms"] = round(pct(lat, 99), 2)

            rates, jobs, gaps = [], [], []
            for _ in range(rounds):  # this VM's speed drifts: report each round and the median
                blocker = await c.submit(*SLEEP, {"seconds": 86400})
                r = await c.submit_batch([{"experiment_class": NOOP[0],
                                           "experiment_module": NOOP[1]}] * n)
                t = time.perf_counter()
                await c.cancel(blocker)
                await c.wait(r["job_ids"][-1])
                rates.append(n / (time.perf_counter() - t))
                done = await c.history(batch_id=r["batch_id"], limit=n)
                jobs += done
                gaps += gaps_ms(done)
            out["drain_jobs_per_s"] = round(statistics.median(rates))
            out["drain_jobs_per_s_rounds"] = [round(x) for x in rates]
            out["drain_failed_jobs"] = sum(1 for j in jobs if j.status != "completed")
            gap_stats(gaps, out, "")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    a = ap.parse_args()
    q = a.quick
    out: dict = {}
    await phase_submit(out, 500 if q else 3000, 1600 if q else 16000)
    await phase_queue(out)
    await phase_drain(out, 500 if q else 2000, 50 if q else 300, 1 if q else 3)
    await phase_100k(out, 20_000 if q else 100_000, 300 if q else 2000)
    out["targets"] = TARGETS
    print(json.dumps(out, indent=2))
    for root in _roots:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
