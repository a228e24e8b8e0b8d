"""Shutdown order (#11.9): calls in flight finish before the store closes under them."""
from __future__ import annotations

import asyncio

import labd.daemon
from labd.settings import Settings
from labd_client import AsyncClient
from sched_harness import GatedStore


async def test_a_submit_in_flight_at_sigterm_completes_before_the_store_closes(
        tmp_path, monkeypatch):
    monkeypatch.setattr(labd.daemon, "Store", GatedStore)
    settings = Settings(state_dir=tmp_path / "state", socket_path=tmp_path / "labd.sock")
    daemon = labd.daemon.Daemon(settings)
    run = asyncio.create_task(daemon.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not settings.socket_path.exists():
        assert loop.time() < deadline and not run.done()
        await asyncio.sleep(0.01)
    reached, release = daemon.store.gate(lambda sql: sql.startswith("INSERT INTO jobs"))
    async with AsyncClient(settings.socket_path) as client:
        submit = asyncio.create_task(client.submit("NoOpExperiment",
                                                   "experiments.diagnostics.noop"))
        await reached.wait()          # the submit is committing ...
        daemon._stop.set()            # ... when SIGTERM arrives
        while not daemon.scheduler.stopping:
            await asyncio.sleep(0.005)
        release.set()
        await asyncio.wait_for(run, 30)  # no exception: nothing ran on a closed store
        await asyncio.gather(submit, return_exceptions=True)
    import sqlite3
    with sqlite3.connect(settings.db_path) as db:
        rows = db.execute("SELECT status FROM jobs").fetchall()
    assert rows == [("pending",)]     # stored, and queued for the next start
