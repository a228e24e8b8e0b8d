"""Dashboard benchmark (issue #12): the queue page with 10k pending jobs in headless
Chromium, and what an open page costs submits. Prints one JSON object, each number with
its floor beside it. Not a test: it reports, it does not assert.

    .venv/bin/python benchmarks/bench_web.py [--quick]

- ``queue_page_10k_ms``: navigation start -> DOMContentLoaded of ``/`` (the default page:
  the first ``web_queue_rows`` rows, the 10k count and paging), median of several loads;
  ``queue_page_10k_all_rows_ms``: the same with all 10k rows in one table (``?rows=10000``).
- ``submits_per_s_*``: 8 clients submitting as fast as they can with no page open, with a
  page open taking the live events (it re-fetches its fragment), and with a page being
  reloaded in a loop; runs interleaved, medians compared. Floor: >= 90% of no page.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from daemon_harness import Daemon  # noqa: E402

from labd_client import AsyncClient  # noqa: E402

NOOP = {"experiment_class": "NoOpExperiment",
        "experiment_module": "experiments.diagnostics.noop"}
SLEEP = {"experiment_class": "SleepExperiment",
         "experiment_module": "experiments.diagnostics.sleep",
         "experiment_config": {"seconds": 86400, "steps": 86400}}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FLOORS = {"queue_page_10k_ms": 300, "submit_slowdown_pct": 10}


def nav_ms(page, url: str) -> float:
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector("#pending-table", timeout=60_000)
    return page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
                                    return n.domContentLoadedEventEnd - n.startTime; }""")


async def submit_rate(sock: Path, n: int, clients: int = 8) -> float:
    cs = [AsyncClient(sock) for _ in range(clients)]
    for c in cs:
        await c.connect()

    async def worker(c: AsyncClient) -> None:
        for _ in range(n // clients):
            await c.call("submit", **NOOP)
    t = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in cs))
    dt = time.perf_counter() - t
    for c in cs:
        await c.close()
    return clients * (n // clients) / dt


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def submits_in_process(sock: Path, n: int) -> subprocess.Popen:
    """The submitting clients in their own process: in this one they would share the GIL
    with Playwright's driver and measure the benchmark, not the daemon."""
    return subprocess.Popen([sys.executable, __file__, "--submit-only", str(sock), str(n)],
                            stdout=subprocess.PIPE, text=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--submit-only", nargs=2, metavar=("SOCKET", "N"))
    a = ap.parse_args()
    if a.submit_only:
        print(asyncio.run(submit_rate(Path(a.submit_only[0]), int(a.submit_only[1]))))
        return
    loads, rounds, n_submit = (3, 2, 1000) if a.quick else (9, 5, 4000)
    out: dict = {}
    from playwright.sync_api import sync_playwright
    d = Daemon(max_pending_per_user=1_000_000, max_batch=10_000,
               job_time_limit_s=86400).start()
    fwd = None
    try:
        assert "result" in d.rpc("submit", **SLEEP)     # a running job: its card and log
        r = d.rpc("submit_batch", jobs=[NOOP] * 10_000)
        assert "result" in r, r
        fwd = subprocess.Popen([sys.executable, str(ROOT / "tests" / "web_forward.py"),
                                str(d.root / "web.sock"), "3600"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        url = f"http://localhost:{int(fwd.stdout.readline())}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            nav_ms(page, url + "/")   # warm-up
            default = [nav_ms(page, url + "/") for _ in range(loads)]
            full = [nav_ms(page, url + "/?rows=10000") for _ in range(loads)]
            out["pending"] = d.rpc("health")["result"]["pending"]
            out["queue_page_10k_ms"] = round(statistics.median(default), 1)
            out["queue_page_10k_ms_floor"] = FLOORS["queue_page_10k_ms"]
            out["queue_page_10k_all_rows_ms"] = round(statistics.median(full), 1)
            out["queue_page_10k_all_rows_ms_floor"] = FLOORS["queue_page_10k_ms"]

            # submits with no page / a live page / a page reloaded in a loop, interleaved
            rates: dict[str, list[float]] = {"none": [], "live": [], "reload": []}
            cpu: dict[str, list[float]] = {"none": [], "live": [], "reload": []}
            pid = d.proc.pid
            for _ in range(rounds):
                for mode in ("none", "live", "reload"):
                    page.goto("about:blank")
                    if mode != "none":
                        page.goto(url + "/", wait_until="domcontentloaded", timeout=60_000)
                        page.wait_for_selector('#live-status[data-state="live"]',
                                               timeout=60_000)
                    c0 = cpu_s(pid)
                    proc = submits_in_process(d.socket, n_submit)
                    reloads = 0
                    if mode == "reload":
                        while proc.poll() is None:
                            page.reload(wait_until="domcontentloaded", timeout=60_000)
                            reloads += 1
                        out.setdefault("reloads_during_submits", []).append(reloads)
                    rate = float(proc.communicate(timeout=600)[0])
                    cpu[mode].append((cpu_s(pid) - c0) / n_submit * 1e3)
                    rates[mode].append(rate)
            browser.close()
        base = statistics.median(rates["none"])
        for mode in ("none", "live", "reload"):
            out[f"submits_per_s_{mode}_page"] = round(statistics.median(rates[mode]))
        for mode in ("live", "reload"):
            slow = 100 * (1 - statistics.median(rates[mode]) / base)
            out[f"submit_slowdown_pct_{mode}_page"] = round(slow, 1)
            out[f"submit_slowdown_pct_{mode}_page_floor"] = FLOORS["submit_slowdown_pct"]
        out["rates_all"] = {k: [round(x) for x in v] for k, v in rates.items()}
        for mode in ("none", "live", "reload"):   # the daemon's own cost, all threads
            out[f"daemon_cpu_ms_per_submit_{mode}_page"] = round(
                statistics.median(cpu[mode]), 3)
    finally:
        if fwd is not None:
            fwd.stdin.close()
            fwd.wait(10)
        d.close()
        shutil.rmtree(d.root, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
