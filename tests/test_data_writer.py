"""The data writer child (labd.data_writer): files written in order, each continuation
run once its file is durable, and nothing lost when the child dies or cannot start."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from labd import data_file, data_writer
from labd.data_writer import DataWriter

DATA = {"xpts": np.arange(5.0), "avgi": np.linspace(0, 1, 5)}


def raw_args(path: Path, job_id: str, analysis: str = "pending") -> tuple:
    return (path, DATA, {"expt": {"reps": 1}}, {"job_id": job_id}, {}, analysis)


class Continuations:
    """Records each write's continuation: (tag, error), in the order they ran, and the
    thread that ran it."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, BaseException | None]] = []
        self.threads: list[str] = []
        self.done = threading.Event()
        self.hooks: dict[str, callable] = {}

    def then(self, tag: str, last: bool = False):
        def run(error: BaseException | None) -> None:
            self.ran.append((tag, error))
            self.threads.append(threading.current_thread().name)
            if tag in self.hooks:
                self.hooks[tag]()
            if last:
                self.done.set()
        return run


@pytest.fixture
def writer():
    w = DataWriter()
    yield w
    w.close()


def test_files_are_written_by_the_child_in_order(writer, tmp_path):
    writer.start()
    pid = writer.pid
    assert pid is not None and pid != os.getpid()
    assert "labd.data_writer" in " ".join(psutil.Process(pid).cmdline())
    c = Continuations()
    for i in range(20):
        writer.write_raw(c.then(f"raw{i}"), *raw_args(tmp_path / f"J{i}.h5", f"J{i}"))
    for i in range(20):
        writer.add_results(c.then(f"fit{i}", last=i == 19), tmp_path / f"J{i}.h5",
                           {"t1": float(i)}, None)
    assert c.done.wait(30)
    assert c.ran == [(f"raw{i}", None) for i in range(20)] + \
        [(f"fit{i}", None) for i in range(20)]
    for i in range(20):
        loaded = data_file.load(tmp_path / f"J{i}.h5")
        assert loaded["attrs"]["job_id"] == f"J{i}" and loaded["data"]["t1"] == i
        assert loaded["attrs"]["analysis"] == "done"
        np.testing.assert_array_equal(loaded["data"]["avgi"], DATA["avgi"])
    assert writer.pid == pid   # one child did them all


def test_a_thread_writer_writes_in_order_with_no_child(tmp_path):
    w = DataWriter("thread")
    w.start()
    try:
        c = Continuations()
        for i in range(5):
            w.write_raw(c.then(f"raw{i}"), *raw_args(tmp_path / f"J{i}.h5", f"J{i}"))
            w.add_results(c.then(f"fit{i}", last=i == 4), tmp_path / f"J{i}.h5",
                          {"t1": float(i)}, None)
        assert c.done.wait(30) and w.pid is None
        assert c.ran == [(f"{step}{i}", None) for i in range(5) for step in ("raw", "fit")]
        assert psutil.Process().children() == []
        for i in range(5):
            assert data_file.load(tmp_path / f"J{i}.h5")["data"]["t1"] == i
    finally:
        w.close()


@pytest.mark.parametrize("setting,cpus,mode", [
    ("process", 2, "process"), ("thread", 64, "thread"), ("when_behind", 64, "when_behind"),
    ("auto", 2, "when_behind"), ("auto", 4, "process")])
def test_which_writer_the_setting_picks(monkeypatch, setting, cpus, mode):
    monkeypatch.setattr(data_writer.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert data_writer.writer_mode(setting) == mode


def test_when_behind_the_child_writes_only_while_the_files_lag(tmp_path):
    """Mode "when_behind" (a small machine's default): labd's threads write while the
    files keep up; after ``behind()`` the child takes the writes for BEHIND_LINGER_S and
    until it has answered them all, then the calling threads write again."""
    w = DataWriter("when_behind")
    w.start()
    try:
        assert w.pid is not None   # started ahead, used only when behind
        c = Continuations()
        release = threading.Event()   # raw1's continuation waits: the child's writes
        c.hooks["raw1"] = lambda: release.wait(30)   # are unanswered until the test says
        me = threading.current_thread().name
        w.write_raw(c.then("raw0"), *raw_args(tmp_path / "J0.h5", "J0"))
        assert c.threads == [me]                  # written at once, by this thread
        w.behind()
        for i in (1, 2, 3):
            w.write_raw(c.then(f"raw{i}"), *raw_args(tmp_path / f"J{i}.h5", f"J{i}"))
        w._child_until = 0.0   # BEHIND_LINGER_S later: the lag is over, but the child has
        w.add_results(c.then("fit1", last=True), tmp_path / "J1.h5", {"t1": 1.0}, None)
        release.set()                             # not answered all: it takes this one
        assert c.done.wait(30)
        assert c.ran == [(tag, None) for tag in ("raw0", "raw1", "raw2", "raw3", "fit1")]
        assert c.threads == [me] + ["labd-files"] * 4
        for _ in range(3000):   # (the reader counts fit1 answered once its continuation
            if w._queued == w._finished:   # has returned)
                break
            time.sleep(0.01)
        w.add_results(c.then("fit2"), tmp_path / "J2.h5", {"t1": 2.0}, None)
        assert c.ran[-1] == ("fit2", None) and c.threads[-1] == me   # caught up: this
        # thread again
        for i in range(3):
            loaded = data_file.load(tmp_path / f"J{i}.h5")
            assert loaded["attrs"]["job_id"] == f"J{i}"
        assert data_file.load(tmp_path / "J2.h5")["data"]["t1"] == 2.0
    finally:
        w.close()


def test_behind_changes_nothing_for_a_thread_or_process_writer(tmp_path):
    me = threading.current_thread().name
    for mode, expect in (("thread", me), ("process", "labd-files")):
        w = DataWriter(mode)
        try:
            c = Continuations()
            w.behind()
            w.write_raw(c.then(mode, last=True), *raw_args(tmp_path / f"{mode}.h5", mode))
            assert c.done.wait(30) and c.ran == [(mode, None)] and c.threads == [expect]
        finally:
            w.close()


def test_errors_come_back_with_their_type(writer, tmp_path):
    (tmp_path / "taken.h5").write_bytes(b"someone else's")
    c = Continuations()
    writer.write_raw(c.then("taken", last=True), *raw_args(tmp_path / "taken.h5", "J1"))
    assert c.done.wait(30)
    [(_, error)] = c.ran
    assert isinstance(error, FileExistsError) and "never overwrites" in str(error)
    assert (tmp_path / "taken.h5").read_bytes() == b"someone else's"


def test_a_child_killed_mid_stream_loses_no_file(writer, tmp_path):
    """Killed while writes are queued to it: the ones it did not answer are written by
    labd itself, in order; none is lost, none fails, none is written twice wrong."""
    writer.start()
    c = Continuations()
    c.hooks["raw3"] = lambda: os.kill(writer.pid, signal.SIGKILL)
    n = 30
    for i in range(n):
        writer.write_raw(c.then(f"raw{i}"), *raw_args(tmp_path / f"J{i}.h5", f"J{i}"))
    for i in range(n):
        writer.add_results(c.then(f"fit{i}", last=i == n - 1), tmp_path / f"J{i}.h5",
                           {"t1": float(i)}, None)
    assert c.done.wait(60)
    assert c.ran == [(f"raw{i}", None) for i in range(n)] + \
        [(f"fit{i}", None) for i in range(n)]
    for i in range(n):
        loaded = data_file.load(tmp_path / f"J{i}.h5")
        assert loaded["attrs"]["job_id"] == f"J{i}" and loaded["data"]["t1"] == i
        assert loaded["attrs"]["analysis"] == "done", loaded["attrs"]   # added once
    assert writer.pid is None   # labd writes itself until RESTART_AFTER_S has passed


def test_labd_writes_itself_when_the_child_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setattr(data_writer.sys, "executable", str(tmp_path / "no-python"))
    w = DataWriter()
    try:
        c = Continuations()
        w.write_raw(c.then("raw"), *raw_args(tmp_path / "J1.h5", "J1"))
        w.add_results(c.then("fit", last=True), tmp_path / "J1.h5", {"t1": 2.0}, None)
        assert c.done.wait(30)
        assert c.ran == [("raw", None), ("fit", None)] and w.pid is None
        assert data_file.load(tmp_path / "J1.h5")["data"]["t1"] == 2.0
    finally:
        w.close()


def test_a_file_the_dead_child_linked_is_taken_only_if_it_is_this_jobs(tmp_path):
    """The child may die after linking a raw file: it is complete, and labd's own write of
    the same job replaces it; another job's file is never replaced."""
    path = tmp_path / "J1.h5"
    data_file.write_raw(*raw_args(path, "J1"))
    data_writer._own_write("write_raw", raw_args(path, "J1"), maybe_done=True)
    assert data_file.root_attr(path, "job_id") == "J1"
    with pytest.raises(FileExistsError):   # no child did it: the name was taken before
        data_writer._own_write("write_raw", raw_args(path, "J1"), maybe_done=False)
    with pytest.raises(FileExistsError):   # another job's
        data_writer._own_write("write_raw", raw_args(path, "J2"), maybe_done=True)
    assert data_file.root_attr(path, "job_id") == "J1"


def test_results_the_dead_child_added_are_not_added_twice(tmp_path):
    path = tmp_path / "J1.h5"
    data_file.write_raw(*raw_args(path, "J1"))
    data_file.add_results(path, {"t1": 1.0}, None)
    data_writer._own_write("add_results", (path, {"t1": 1.0}, None), maybe_done=True)
    loaded = data_file.load(path)
    assert loaded["attrs"]["analysis"] == "done" and "analysis_error" not in loaded["attrs"]


def test_the_child_ignores_sigterm_and_exits_when_labd_closes(tmp_path):
    """Under systemd the whole unit gets SIGTERM: labd's shutdown decides when saving ends."""
    w = DataWriter()
    w.start()
    child = psutil.Process(w.pid)
    os.kill(child.pid, signal.SIGTERM)
    c = Continuations()
    w.write_raw(c.then("raw", last=True), *raw_args(tmp_path / "J1.h5", "J1"))
    assert c.done.wait(30) and c.ran == [("raw", None)]
    assert w.pid == child.pid
    w.close()
    assert child.wait(10) is not None or not child.is_running()


@pytest.mark.parametrize("mode", ["process", "when_behind"])
def test_close_ends_a_child_that_never_took_a_write(mode):
    """The usual "when_behind" life on a small machine: the child is started ahead and the
    files never lag. close() used to leave it running, with its socket open."""
    w = DataWriter(mode)
    w.start()
    child = psutil.Process(w.pid)
    w.close()
    assert w.pid is None and not child.is_running()


@pytest.mark.parametrize("cap,kept", [(data_writer.KEEP_OPEN_BYTES, [True] * 3),
                                      (150_000, [False, True, True]), (1, [False] * 3)])
def test_serve_keeps_the_newest_raw_files_within_its_bounds(tmp_path, monkeypatch, cap,
                                                            kept):
    """The child's loop, run in a thread: the raw files it keeps open for their results
    are the newest within KEEP_OPEN_BYTES (each ~64 kB here); older ones are read back."""
    from multiprocessing.connection import Pipe
    monkeypatch.setattr(data_writer, "KEEP_OPEN_BYTES", cap)
    given = []
    add_results = data_file.add_results
    monkeypatch.setattr(data_file, "add_results", lambda *a, image=None: (
        given.append(image is not None), add_results(*a, image=image)))
    ours, theirs = Pipe()
    server = threading.Thread(target=data_writer.serve, args=(theirs,))
    server.start()
    for i in range(3):
        ours.send(("write_raw", raw_args(tmp_path / f"J{i}.h5", f"J{i}")))
        assert ours.recv() == (True, None)
    for i in range(3):
        ours.send(("add_results", (tmp_path / f"J{i}.h5", {"t1": float(i)}, None)))
        assert ours.recv() == (True, None)
    ours.send(("write_raw", raw_args(tmp_path / "J0.h5", "J0")))   # its name is taken
    ok, error = ours.recv()
    assert not ok and isinstance(error, FileExistsError)
    ours.close()
    server.join(10)
    assert not server.is_alive()   # EOF ends it
    assert given == kept
    for i in range(3):
        assert data_file.load(tmp_path / f"J{i}.h5")["data"]["t1"] == i


def test_writes_after_close_are_done_by_labd_at_once(tmp_path):
    w = DataWriter()
    w.close()
    c = Continuations()
    w.write_raw(c.then("raw"), *raw_args(tmp_path / "J1.h5", "J1"))
    assert c.ran == [("raw", None)] and w.pid is None
    assert data_file.root_attr(tmp_path / "J1.h5", "job_id") == "J1"
