"""The systemd integration: unit files, socket activation and the notify protocol."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from labd_client import Client
from daemon_harness import REPO

SYSTEMD = REPO / "systemd"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd tools not installed")


def fake_root(tmp_path: Path) -> Path:
    """A root with systemd's own units and a stub at the unit's ExecStart path, so the
    shipped files are verified exactly as they are."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    exe = root / "opt/labd/.venv/bin/labd"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for name in ("labd.socket", "labd.service"):
        shutil.copy(SYSTEMD / name, units / name)
    return root


def test_units_verify_clean(tmp_path):
    root = fake_root(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                        "/etc/systemd/system/labd.socket", "/etc/systemd/system/labd.service"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr


def test_service_exposure_at_most_4():
    r = subprocess.run(["systemd-analyze", "security", "--offline=true",
                        str(SYSTEMD / "labd.service")], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for labd.service: ([\d.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 4.0


def test_socket_unit_settings():
    text = (SYSTEMD / "labd.socket").read_text()
    assert "SocketMode=0660" in text and "SocketGroup=labd" in text
    listen = re.search(r"ListenStream=(\S+)", text).group(1)
    runtime = re.search(r"RuntimeDirectory=(\S+)",
                        (SYSTEMD / "labd.service").read_text()).group(1)
    assert not listen.startswith(f"/run/{runtime}/")
    assert "Type=notify" in (SYSTEMD / "labd.service").read_text()


def test_sysusers_and_tmpfiles_apply(tmp_path):
    (tmp_path / "etc").mkdir()
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "labd.sysusers")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    groups = (tmp_path / "etc/group").read_text()
    assert re.search(r"^labd:", passwd, re.M) and re.search(r"^labd-admin:", groups, re.M)
    r = subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create",
                        str(SYSTEMD / "labd.tmpfiles")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run/labd-socket").is_dir()
    assert oct((tmp_path / "data/labd").stat().st_mode & 0o7777) == "0o2770"


def test_socket_activation(make_daemon):
    """Both sockets of labd.socket are systemd's: RPC and the dashboard's HTTP socket."""
    d = make_daemon(start=False)
    activated = d.root / "activated.sock"
    web = d.root / "activated-web.sock"
    env = d.environment()
    d.command_prefix = ["systemd-socket-activate", "-l", str(activated), "-l", str(web),
                        *[f"-E{k}={env[k]}" for k in ("PYTHONPATH", "HOME") if k in env]]
    d.socket = activated  # the harness connects here; labd's own socket_path stays unused
    d.start()
    assert d.rpc("health")["result"]["status"] == "ok"
    assert not (d.root / "labd.sock").exists()  # it used the passed fds, bound nothing
    assert not (d.root / "web.sock").exists()
    with Client(activated) as c:
        assert c.wait(c.submit("NoOpExperiment", "experiments.diagnostics.noop"),
                      timeout=20).is_successful()
    with socket.socket(socket.AF_UNIX) as s:   # the dashboard answers on systemd's socket
        s.connect(str(web))
        s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        assert s.makefile("rb").readline().startswith(b"HTTP/1.")
    assert d.terminate() == 0
    assert activated.exists() and web.exists()  # systemd's sockets: labd leaves them


class NotifyListener:
    """A fake $NOTIFY_SOCKET, drained by a thread (as systemd would) so no message is lost."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            with self._lock:
                self.messages.append(fields)

    def take(self) -> list[dict[str, str]]:
        with self._lock:
            out, self.messages = self.messages, []
        return out

    def until(self, pred, timeout: float = 20.0) -> dict[str, str]:
        seen: list[dict[str, str]] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for m in self.take():
                seen.append(m)
                if pred(m):
                    return m
            time.sleep(0.02)
        raise AssertionError(f"no such notify message; got {seen}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_sd_notify_ready_status_watchdog_and_stuck_executor(make_daemon):
    d = make_daemon(start=False, stop_grace_s=0.3)
    listener = NotifyListener(d.root / "notify.sock")
    d.env_extra.update(NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="300000")
    d.start()
    ready = listener.until(lambda m: m.get("READY") == "1")
    assert "0 pending" in ready["STATUS"]
    listener.until(lambda m: m.get("WATCHDOG") == "1")
    with Client(d.socket) as c:
        job = c.wait(c.submit("NoOpExperiment", "experiments.diagnostics.noop"), timeout=20)
        assert job.is_successful()
        listener.until(lambda m: job.job_id in m.get("STATUS", ""))
        stuck = c.submit("StuckInC", "labtest_experiments.faults", {"seconds": 60},
                         time_limit_s=0.3)
        failed = c.wait(stuck, timeout=20)
        assert failed.status == "failed" and "labd must be restarted" in failed.error_message
        assert c.health()["status"].startswith("degraded: executor stuck")
    listener.until(lambda m: "EXECUTOR STUCK" in m.get("STATUS", ""))
    listener.take()
    time.sleep(1.0)  # 10 watchdog periods' worth: no ping while stuck
    assert not [m for m in listener.take() if m.get("WATCHDOG") == "1"]
    listener.close()


def test_sd_notify_stopping(make_daemon):
    d = make_daemon(start=False)
    listener = NotifyListener(d.root / "notify.sock")
    d.env_extra["NOTIFY_SOCKET"] = str(listener.path)
    d.start()
    listener.until(lambda m: m.get("READY") == "1")
    assert d.terminate() == 0
    listener.until(lambda m: m.get("STOPPING") == "1", timeout=5)
    listener.close()
