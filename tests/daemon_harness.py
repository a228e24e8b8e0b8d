"""Starts real labd daemons (subprocesses on real Unix sockets) for the tests."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def to_toml(d: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for settings files: scalars, lists of scalars, nested tables."""
    scalars, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append(f"\n[{prefix}{k}]\n" + to_toml(v, f"{prefix}{k}."))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                tables.append(f"\n[[{prefix}{k}]]\n" + to_toml(item))
        else:
            scalars.append(f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}")
    return "\n".join(scalars) + "".join(tables) + "\n"


class Daemon:
    def __init__(self, root: Path | None = None, **settings: Any) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="labd-t-", dir="/tmp"))
        self.root.chmod(0o711)  # traversable: the socket's own mode decides who connects
        self.state_dir = self.root / "state"
        self.socket = self.root / "labd.sock"
        self.settings = {"state_dir": self.state_dir, "socket_path": self.socket,
                         "allowed_packages": ["experiments", "labtest_experiments"],
                         "stop_grace_s": 1.0, "mock_speed": 0,
                         # the lab's station has more than 4 CPUs: its data writer is a
                         # child process (the "auto" of a 2-core CI machine is a thread)
                         "data_writer": "process", **settings}
        self.config_path = self.root / "labd.toml"
        self.config_path.write_text(to_toml(self.settings))
        self.log_path = self.root / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.env_extra: dict[str, str] = {}
        self.command_prefix: list[str] = []   # e.g. systemd-socket-activate ...

    def environment(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(TESTS), str(REPO), *self.env_extra.get("PYTHONPATH_PREPEND", "").split(
                os.pathsep)]).rstrip(os.pathsep),
            **{k: v for k, v in self.env_extra.items() if k != "PYTHONPATH_PREPEND"})

    def start(self, timeout: float = 30.0) -> "Daemon":
        env = self.environment()
        env.pop("LISTEN_FDS", None)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", "labd", "--config",
             str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"labd exited with {self.proc.returncode}:\n{self.log()}")
            if self.rpc("health", _quiet=True) is not None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"labd not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rpc(self, method: str, _quiet: bool = False, **params: Any) -> Any:
        """One raw JSON-RPC call on a fresh connection; returns the whole response."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(30)
                s.connect(str(self.socket))
                s.sendall(json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                                      "id": 1}).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    buf += chunk
            return json.loads(buf)
        except (OSError, ValueError):
            if _quiet:
                return None
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self) -> "Daemon":
        self.kill()
        return self.start()

    def close(self) -> None:
        self.kill()
        if getattr(self, "_log", None):
            self._log.close()
