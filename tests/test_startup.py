"""A labd that cannot start says why in one line and exits with its own code, promptly;
in particular a second labd on a state dir in use refuses before touching anything."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from daemon_harness import Daemon
from labd import startup_checks as sc

SLEEP = ("SleepExperiment", "experiments.diagnostics.sleep")


def run_labd(d: Daemon, *extra: str, wrap: str | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess:
    """Start labd on ``d``'s settings and wait (bounded) for it to exit by itself.
    ``wrap``: shell lines run first in a private mount namespace (root only)."""
    cmd = [sys.executable, "-m", "labd", "--config", str(d.config_path), *extra]
    if wrap is not None:
        cmd = ["unshare", "-m", "sh", "-ec", f"{wrap}\nexec {shlex.join(cmd)}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=d.environment(), cwd=d.root)


def beside(d: Daemon, name: str, **settings) -> Daemon:
    """Another daemon's settings in a directory next to ``d``'s files."""
    (d.root / name).mkdir()
    return Daemon(d.root / name, **settings)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("labd:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def namespaces_available() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not namespaces_available(),
                                  reason="needs root and mount namespaces (unshare -m)")


@pytest.fixture
def fresh(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.close()


def test_second_daemon_on_a_state_dir_refuses_and_the_first_keeps_its_job(make_daemon):
    first = make_daemon()
    job = first.rpc("submit", experiment_class=SLEEP[0], experiment_module=SLEEP[1],
                    experiment_config={"seconds": 3, "steps": 30})["result"]["job_id"]
    deadline = time.monotonic() + 20
    while first.rpc("get", job_id=job)["result"]["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = beside(first, "second", state_dir=first.state_dir)
    proc = run_labd(second)
    assert proc.returncode == sc.EXIT_LOCKED
    line = one_line(proc)
    assert str(first.state_dir) in line and f"PID {first.proc.pid}" in line
    assert first.rpc("get", job_id=job)["result"]["status"] == "running"
    deadline = time.monotonic() + 20
    while (st := first.rpc("get", job_id=job)["result"]["status"]) == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert st == "completed"
    second.close()


def test_socket_in_use_by_a_live_daemon(make_daemon):
    first = make_daemon()
    other = beside(first, "other", socket_path=first.socket)
    proc = run_labd(other)
    assert proc.returncode == sc.EXIT_SOCKET
    assert str(first.socket) in one_line(proc)
    assert first.rpc("health")["result"]  # still serving on its socket
    other.close()


def test_damaged_database_is_refused_at_start(fresh):
    fresh.state_dir.mkdir(parents=True)
    (fresh.state_dir / "labd.sqlite3").write_bytes(b"not a database, honestly " * 200)
    proc = run_labd(fresh)
    assert proc.returncode == sc.EXIT_DATABASE
    assert "damaged" in one_line(proc) and "labd.sqlite3" in one_line(proc)


def test_unreadable_database_is_refused_at_start(fresh):
    (fresh.state_dir / "labd.sqlite3").mkdir(parents=True)  # cannot be opened as a file
    proc = run_labd(fresh)
    assert proc.returncode == sc.EXIT_DATABASE
    assert "cannot open database" in one_line(proc)


def test_damaged_pages_are_refused_at_start(make_daemon):
    d = make_daemon()
    d.rpc("submit", experiment_class="NoOpExperiment",
          experiment_module="experiments.diagnostics.noop", experiment_config={})
    assert d.terminate() == 0
    db = d.state_dir / "labd.sqlite3"
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 3 * page
    data[page + 8: 2 * page] = os.urandom(page - 8)  # scribble over page 2's cells
    db.write_bytes(bytes(data))
    proc = run_labd(d)
    assert proc.returncode == sc.EXIT_DATABASE, proc.stderr
    assert "damaged" in one_line(proc)


@needs_mounts
def test_read_only_database_is_refused_at_start(make_daemon):
    d = make_daemon()
    assert d.terminate() == 0
    db = d.state_dir / "labd.sqlite3"
    proc = run_labd(d, wrap=f"mount --bind {db} {db}; mount -o remount,bind,ro {db}")
    assert proc.returncode == sc.EXIT_DATABASE
    assert "read-only" in one_line(proc)


@needs_mounts
def test_full_state_disk_is_refused_at_start(fresh):
    fresh.state_dir.mkdir(parents=True)
    wrap = (f"mount -t tmpfs -o size=256k tmpfs {fresh.state_dir}\n"
            f"dd if=/dev/zero of={fresh.state_dir}/filler bs=4k 2>/dev/null || true")
    proc = run_labd(fresh, wrap=wrap)
    assert proc.returncode == sc.EXIT_STATE_DIR
    assert "disk is full" in one_line(proc)


def test_a_failure_after_the_checks_still_exits_promptly(fresh):
    """The socket's directory cannot be created (a file is in the way): the daemon has
    already opened its database and executor threads, and must not hang on them."""
    blocker = fresh.root / "blocker"
    blocker.write_text("")
    d = beside(fresh, "d", socket_path=blocker / "labd.sock")
    t0 = time.monotonic()
    proc = run_labd(d)
    assert time.monotonic() - t0 < 20
    assert proc.returncode == sc.EXIT_FAILED
    assert one_line(proc).startswith("labd: stopped:")
    d.close()


def test_the_daemon_log_has_one_prefix_per_line(make_daemon):
    """The journal gets "<time> LEVEL logger: message", written by the log listener
    thread (#14): the message is not formatted twice on its way through the queue."""
    import re
    from labd_client import Client
    d = make_daemon()
    with Client(d.socket) as c:
        c.wait(c.submit("NoOpExperiment", "experiments.diagnostics.noop"), timeout=30)
    lines = [line for line in d.log().splitlines() if " labd" in line]
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d [\d:,]+ INFO labd: labd \S+ ready on .*", line)
               for line in lines), lines
    assert any(" INFO labd.job: job JOB-" in line for line in lines), lines
    assert not [line for line in lines if "INFO:labd" in line]
