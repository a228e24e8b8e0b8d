"""config.push races (issue #11 item 3), driven step by step: an in-process ConfigStore over
a real Store on a temp SQLite file, with its writes held at gates the test opens."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sched_harness import GatedStore

from labd.config_store import ConfigStore
from labd_client.protocol import Conflict
from labd.settings import Settings

HW = "hardware_config"
NEW_VERSION = "INSERT INTO config_versions"


class SpyLock(asyncio.Lock):
    """Signals when a second caller has to wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.contended = asyncio.Event()

    async def acquire(self) -> bool:
        if self.locked():
            self.contended.set()
        return await super().acquire()


@pytest.fixture
async def configs(tmp_path: Path):
    settings = Settings(state_dir=tmp_path / "state", socket_path=tmp_path / "s.sock")
    store = GatedStore(settings.db_path)
    await store.open()
    cs = ConfigStore(settings, store)
    await cs.open(await store.counters())
    cs._locks = {name: SpyLock() for name in cs.types}
    yield cs
    await store.close()


def hw(n: int) -> str:
    return f"device:\n  qubit:\n    f_ge: [{n}.0]\nhw: {{}}\naliases: {{}}\n"


async def first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()


async def two_pushes(cs: ConfigStore, a: dict, b: dict) -> list:
    """Push A up to its commit, then B as far as it gets (its own commit, or waiting for
    A), then let both finish."""
    store: GatedStore = cs.store  # type: ignore[assignment]
    reached_a, open_a = store.gate(lambda sql: sql.startswith(NEW_VERSION))
    reached_b, open_b = store.gate(lambda sql: sql.startswith(NEW_VERSION))
    ta = asyncio.create_task(cs.push(HW, by="alice", **a))
    await reached_a.wait()
    tb = asyncio.create_task(cs.push(HW, by="bob", **b))
    await first(reached_b, cs._locks[HW].contended)
    open_a.set()
    open_b.set()
    return await asyncio.gather(ta, tb, return_exceptions=True)


def orphans(cs: ConfigStore, rows: list) -> set[str]:
    return {p.name for p in cs.dir.iterdir()} - {r["filename"] for r in rows}


async def test_concurrent_pushes_expecting_the_same_main_one_wins(configs):
    base = configs.main[HW]
    ra, rb = await two_pushes(configs, {"content": hw(1), "expected_main": base},
                              {"content": hw(2), "expected_main": base})
    assert ra["created"] and configs.main[HW] == ra["version_id"]
    assert isinstance(rb, Conflict) and "someone pushed meanwhile" in rb.message
    history = await configs.main_history(HW, 10)
    assert [h["version_id"] for h in history] == [ra["version_id"], base]
    rows = await configs.store.fetchall("SELECT filename FROM config_versions")
    assert not orphans(configs, rows)


async def test_identical_content_pushed_concurrently_is_one_version(configs):
    ra, rb = await two_pushes(configs, {"content": hw(3)}, {"content": hw(3)})
    assert not isinstance(rb, BaseException), rb
    assert ra["version_id"] == rb["version_id"] and ra["created"] and not rb["created"]
    rows = await configs.store.fetchall("SELECT filename FROM config_versions")
    assert not orphans(configs, rows)
    assert (await configs.verify())["ok"]


async def test_main_is_compared_and_set_inside_the_commit(configs):
    """Main changed behind this store's back (e.g. by a set_main committed while the push
    was in flight): the push's own commit must see it and roll back, file and all."""
    base = configs.main[HW]
    other = (await configs.snapshot(HW, hw(4), by="bob"))[0]
    reached, release = configs.store.gate(lambda sql: sql.startswith(NEW_VERSION))
    push = asyncio.create_task(configs.push(HW, hw(5), by="alice", expected_main=base))
    await reached.wait()
    await configs.store.write((
        "INSERT INTO config_main_history(type, version_id, set_at, set_by) "
        "VALUES (?, ?, '2026-11-25T00:00:00+00:00', 'bob')", (HW, other)))
    release.set()
    with pytest.raises(Conflict, match="someone pushed meanwhile"):
        await push
    rows = await configs.store.fetchall("SELECT filename, version_id FROM config_versions")
    assert not orphans(configs, rows)
    assert len(rows) == 5     # the four shipped examples and bob's; none from the push
    history = await configs.main_history(HW, 1)
    assert history[0]["version_id"] == other
