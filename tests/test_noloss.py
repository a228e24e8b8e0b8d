"""Nothing lost, nothing overwritten (issue #15): ID counters rebuilt from the files on disk,
IDs and snapshots unique whatever the wall clock does, damaged snapshots repaired by a push,
hostile YAML refused without blocking the daemon. In-process over a real Store (SQLite file)
and real files, plus a real daemon where the event loop matters."""
from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import labd.ids
from labd.config_store import ConfigStore
from labd.data_file import add_results, write_raw
from labd_client.protocol import InvalidParams, Unavailable
from labd.ids import DailyCounter
from labd.settings import Settings
from labd.store import Store
from sched_harness import ROOT, Harness

HW = "hardware_config"


class Configs:
    """A ConfigStore over a real Store in ``tmp``; reopen() after losing the database."""

    def __init__(self, tmp: Path) -> None:
        self.settings = Settings(state_dir=tmp / "state", socket_path=tmp / "s.sock")

    async def __aenter__(self) -> ConfigStore:
        self.store = Store(self.settings.db_path)
        await self.store.open()
        self.configs = ConfigStore(self.settings, self.store)
        await self.configs.open(await self.store.counters())
        return self.configs

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()

    def lose_database(self) -> None:
        for p in self.settings.state_dir.glob("labd.sqlite3*"):
            p.unlink()


def hw(n: int) -> str:
    return f"device:\n  qubit:\n    f_ge: [{n}.0]\nhw: {{}}\naliases: {{}}\n"


def snapshot_files(settings: Settings) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in settings.snapshot_dir.iterdir()}


# ---- 1. counters never below the files on disk --------------------------------------

def test_floor_from_files_sees_data_logs_and_partial_files(tmp_path):
    day = tmp_path / "20261125"
    day.mkdir()
    for name in ("JOB-20261125-00007.h5", "JOB-20261125-00009.log",
                 "JOB-20261125-00012.h5.part", "notes.txt", "JOBX-20261125-00099.h5"):
        (day / name).write_bytes(b"")
    (tmp_path / "20261124").mkdir()
    (tmp_path / "20261124" / "JOB-20261124-00050.h5").write_bytes(b"")
    assert labd.ids.floor_from_files("JOB", tmp_path) == ("20261125", 12)
    assert labd.ids.floor_from_files("JOB", tmp_path / "missing") == (None, 0)


async def test_a_lost_database_never_reuses_a_snapshot_name(tmp_path):
    cs = Configs(tmp_path)
    async with cs as configs:
        first = await configs.push(HW, hw(1), by="alice")
    before = snapshot_files(cs.settings)
    cs.lose_database()
    async with cs as configs:
        second = await configs.push(HW, hw(2), by="alice")
        assert (await configs.verify())["ok"]
    assert second["version_id"] != first["version_id"]
    after = snapshot_files(cs.settings)
    assert {k: after[k] for k in before} == before     # no snapshot rewritten


def test_a_data_file_is_never_replaced(tmp_path):
    path = tmp_path / "JOB-20261125-00001.h5"
    write_raw(path, {"xpts": np.arange(3.0)}, {}, {"job_id": "a"}, {})
    add_results(path, {"fit": 1.0}, None)     # the job's own file: extended in place
    original = path.read_bytes()
    with pytest.raises(FileExistsError, match="never overwrites"):
        write_raw(path, {"xpts": np.arange(5.0)}, {}, {"job_id": "b"}, {})
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # no temp file left


# ---- 2. the wall clock stepping back --------------------------------------------------

async def test_stored_job_ids_are_never_handed_out_again(tmp_path):
    """A submit writes no counter row: the jobs table keeps its IDs from being reused after
    a restart, also for jobs that left no file on disk (pending when labd stopped)."""
    async with Harness(tmp_path) as h:
        await h.sched.set_paused(ROOT, True)
        before = {await h.submit() for _ in range(3)}
    async with Harness(tmp_path) as h:
        assert await h.submit() not in before


def test_job_counter_day_never_goes_back(monkeypatch):
    days = iter(["20261125", "20261124", "20261126"])
    monkeypatch.setattr(labd.ids, "today", lambda: next(days))
    c = DailyCounter("JOB", "20261125", 3)
    assert [c.next(), c.next(), c.next()] == [
        "JOB-20261125-00004", "JOB-20261125-00005", "JOB-20261126-00001"]


async def test_clock_stepped_back_keeps_snapshots_unique_and_intact(tmp_path, monkeypatch):
    clock = ["20261124"]
    monkeypatch.setattr(labd.ids, "today", lambda: clock[0])
    cs = Configs(tmp_path)
    async with cs as configs:
        await configs.push(HW, hw(1), by="alice")
        clock[0] = "20261125"
        await configs.push(HW, hw(2), by="alice")
        before = snapshot_files(cs.settings)
        clock[0] = "20261124"       # NTP steps the clock back a day
        third = await configs.push(HW, hw(3), by="alice")
        assert third["created"] and third["version_id"].startswith("CFG-HW-20261125-")
        assert (await configs.verify())["ok"]
    after = snapshot_files(cs.settings)
    assert {k: after[k] for k in before} == before


# ---- 3. damaged snapshots -------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "delete"])
async def test_pushing_the_content_again_repairs_a_damaged_snapshot(tmp_path, damage):
    cs = Configs(tmp_path)
    async with cs as configs:
        vid = (await configs.push(HW, hw(1), by="alice"))["version_id"]
        snap = cs.settings.snapshot_dir / f"{vid}.yml"
        if damage == "truncate":
            os.chmod(snap, 0o644)
            snap.write_text(hw(1)[:10])
        else:
            snap.unlink()
        for call in (configs.pull(HW), configs.show(vid)):
            with pytest.raises(Unavailable, match="push the same content again"):
                await call
        report = await configs.verify()
        assert [b["version_id"] for b in report["bad"]] == [vid]
        assert "push its original content again" in report["bad"][0]["action"]
        assert "set another main" in report["bad"][0]["action"]     # it is main

        again = await configs.push(HW, hw(1), by="alice")
        assert again == {"type": HW, "version_id": vid, "created": False, "repaired": True}
        assert (await configs.pull(HW))["content"] == hw(1)
        assert (await configs.verify())["ok"]
        assert stat.S_IMODE(snap.stat().st_mode) == 0o444
        assert sorted(p.name for p in cs.settings.snapshot_dir.iterdir() if vid in p.name
                      ) == [snap.name]


# ---- 4. hostile YAML --------------------------------------------------------------------

def alias_bomb(levels: int = 7, width: int = 10) -> str:
    lines = ["a0: &a0 [x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "device: {}\nhw: {}\naliases: {}\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("content, reason", [
    (alias_bomb(), "alias"),
    ("device: " + "[" * 200 + "]" * 200 + "\nhw: {}\n", "nested"),
    ("device: &d {inner: *d}\nhw: {}\n", "contains it"),
])
async def test_hostile_yaml_is_refused_with_a_reason(tmp_path, content, reason):
    async with Configs(tmp_path) as configs:
        main = configs.main[HW]
        with pytest.raises(InvalidParams, match=reason):
            await configs.push(HW, content, by="mallory")
        assert configs.main[HW] == main


async def test_yaml_with_a_few_anchors_is_still_accepted(tmp_path):
    content = ("hw: {}\naliases: {}\ndevice:\n  base: &b {gain: 0.5, len: 2}\n"
               "  q0: *b\n  q1: *b\n")
    async with Configs(tmp_path) as configs:
        assert (await configs.push(HW, content, by="alice"))["created"]


def _rpc(sock: socket.socket, method: str, **params) -> dict:
    sock.sendall(json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                             "id": 1}).encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1 << 20)
        assert chunk, "daemon closed the connection"
        buf += chunk
    return json.loads(buf)


def test_a_big_push_does_not_stall_other_clients(make_daemon):
    """health answers promptly on another connection while a ~1 MiB YAML is parsed."""
    d = make_daemon()
    row = "  - {" + ", ".join(f"k{i}: {i}.5" for i in range(12)) + "}\n"
    content = "hw: {}\naliases: {}\ndevice:\n  big:\n" + row * (1_000_000 // len(row))
    result: dict = {}

    def push() -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(d.socket))
            result.update(_rpc(s, "config.push", type=HW, content=content))
    with socket.socket(socket.AF_UNIX) as h:
        h.connect(str(d.socket))
        _rpc(h, "health")
        t = threading.Thread(target=push)
        t.start()
        worst, answered = 0.0, 0
        while t.is_alive() or answered < 3:
            t0 = time.monotonic()
            assert "result" in _rpc(h, "health")
            worst, answered = max(worst, time.monotonic() - t0), answered + 1
        t.join()
    assert "result" in result, result
    assert worst < 0.5, f"health took {worst:.2f} s during the push"


# ---- a real daemon whose database is lost ----------------------------------------------

NOOP = ("NoOpExperiment", "experiments.diagnostics.noop")


def _lose_database_and_run_a_job(make_daemon):
    from labd_client import Client
    d = make_daemon()
    with Client(d.socket) as c:
        old = c.wait(c.submit(*NOOP), timeout=30)
    files = {p: p.read_bytes() for p in Path(old.data_file_path).parent.iterdir()}
    d.kill()
    for p in d.state_dir.glob("labd.sqlite3*"):
        p.unlink()
    d.start()
    with Client(d.socket) as c:
        new = c.wait(c.submit(*NOOP), timeout=30)
    return old, new, files


def test_a_lost_database_never_touches_an_existing_data_file_or_log(make_daemon):
    old, new, files = _lose_database_and_run_a_job(make_daemon)
    assert {p: p.read_bytes() for p in files} == files


def test_a_lost_database_gives_new_jobs_fresh_ids(make_daemon):
    old, new, _ = _lose_database_and_run_a_job(make_daemon)
    assert new.job_id != old.job_id and new.status == "completed"


def test_today_is_the_utc_day_and_changes_at_utc_midnight(monkeypatch):
    """today() formats the day once per day: it must still turn over at UTC midnight."""
    from datetime import datetime, timezone
    midnight = datetime(2026, 11, 26, tzinfo=timezone.utc).timestamp()
    for now, day in ((midnight - 0.001, "20261125"), (midnight, "20261126"),
                     (midnight - 86400 * 365, "20251126")):
        monkeypatch.setattr(labd.ids.time, "time", lambda now=now: now)
        assert labd.ids.today() == day
