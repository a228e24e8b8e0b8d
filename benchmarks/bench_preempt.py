"""Preemption benchmark (issue #16). Starts a real daemon (mock board, seeded) and prints one
JSON object; the floor is measured in the same run beside each figure.

- preemption latency: an urgent job's submit (client call begins) -> the board takes it
  (its ``started_at``, stamped by the board thread), while a T1 of ``rounds`` rounds is
  acquiring. Floor: one round of the running job (the urgent job waits for the round in
  progress to end); target: <= one round + 5 ms. Split into the wait for the round in
  progress (submit -> the preempted job's safe point) and the handover (safe point ->
  urgent job on the board: checkpoint written durably, the board thread takes the
  prepared urgent job).
- resume overhead: board time of the preempted+resumed T1 (the sum of its acquisition
  intervals) minus that of the same T1 uninterrupted; split into the resume itself (the
  replay before its first new round: checkpoint read, completed calls answered from it)
  and the per-round checkpoints a resumed job writes (so a kill -9 loses no round).

    .venv/bin/python benchmarks/bench_preempt.py [--runs N] [--speed S]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from daemon_harness import Daemon  # noqa: E402

from labd_client import Client  # noqa: E402

T1 = ("T1Experiment", "experiments.single_qubit.t1")
NOOP = ("NoOpExperiment", "experiments.diagnostics.noop", {})


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def intervals(path: str) -> list[tuple[float, float]]:
    with h5py.File(path, "r") as f:
        raw = f.attrs["acquisitions"]
    return [(ts(a), ts(b)) for a, b in json.loads(raw)]


def until(pred, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.002)
    return v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--speed", type=float, default=0.15, help="mock_speed (round length)")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    cfg = {"reps": 100, "expts": 24, "rounds": args.rounds}
    d = Daemon(mock_seed=3, mock_speed=args.speed).start()
    out: dict = {}
    try:
        with Client(d.socket) as c:
            # the uninterrupted run: its board time and its round length (the floor)
            c.wait(c.submit(*T1, cfg), timeout=120)     # warm: programs compiled, cached
            ref = c.wait(c.submit(*T1, cfg), timeout=120)
            [(a, b)] = intervals(ref.data_file_path)
            ref_board = b - a
            round_s = ref_board / args.rounds
            lat, wait_round, handover, overhead, replay, writes = [], [], [], [], [], []
            # the noise floor of board time: the same T1 uninterrupted, a few times
            spread = [ref_board]
            for _ in range(3):
                j = c.wait(c.submit(*T1, cfg), timeout=120)
                [(a, b)] = intervals(j.data_file_path)
                spread.append(b - a)
            for i in range(args.runs):
                job = c.submit(*T1, cfg)
                # preempt somewhere in the middle, at a different point in a round each time
                frac = 0.2 + 0.6 * i / max(1, args.runs - 1)
                until(lambda: (c.get(job).progress or 0) >= frac)
                t0 = time.time()
                u = c.submit(*NOOP, priority=10)
                done = c.wait(job, timeout=120)
                urgent = c.get(u)
                assert done.status == "completed" and done.preemptions == 1, done
                iv = intervals(done.data_file_path)
                start_u = ts(urgent.started_at)
                lat.append(start_u - t0)
                wait_round.append(iv[0][1] - t0)
                handover.append(start_u - iv[0][1])
                overhead.append(sum(b - a for a, b in iv) - ref_board)
                r_s, w_s = _from_log(d, job)
                replay.append(r_s)
                writes.append(w_s)
    finally:
        d.close()
        shutil.rmtree(d.root, ignore_errors=True)
    ms = lambda xs: {"p50": round(1e3 * statistics.median(xs), 2),  # noqa: E731
                     "max": round(1e3 * max(xs), 2)}
    out = {
        "round_ms (floor)": round(1e3 * round_s, 2),
        "preemption_latency_ms": ms(lat),
        "latency_minus_one_round_ms": ms([x - round_s for x in lat]),
        "  waiting for the round in progress_ms": ms(wait_round),
        "  handover (checkpoint + board takes urgent)_ms": ms(handover),
        "resume_overhead_ms (replay + per-round checkpoint writes, measured on the "
        "board thread)": ms([r + w for r, w in zip(replay, writes)]),
        "  resume itself (board taken -> first new round)_ms": ms(replay),
        "  per-round checkpoint writes after resuming (all rounds)_ms": ms(writes),
        "board_time_difference_ms (resumed - uninterrupted; noisy)": ms(overhead),
        "  noise: board time of identical uninterrupted runs, max - min_ms":
            round(1e3 * (max(spread) - min(spread)), 2),
        "runs": args.runs, "rounds": args.rounds,
        "target": "latency <= one round + 5 ms; resume overhead <= 5 ms",
    }
    print(json.dumps(out, indent=1))


def _from_log(d: Daemon, job_id: str) -> tuple[float, float]:
    """(replay, per-round checkpoint writes) of the resumed run, as its job log says."""
    log = (d.state_dir / "data" / job_id.split("-")[1] / f"{job_id}.log").read_text()
    replay = writes = float("nan")
    for ln in log.splitlines():
        if "(replay " in ln:
            replay = float(ln.rsplit("(replay ", 1)[1].split()[0]) / 1e3
        if "per-round checkpoints:" in ln:
            writes = float(ln.rsplit(", ", 1)[1].split()[0]) / 1e3
    return replay, writes


if __name__ == "__main__":
    main()
