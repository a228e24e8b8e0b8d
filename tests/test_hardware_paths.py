"""Real-hardware path over Pyro4 on 127.0.0.1, the pre-job setpoint, and experiment source
tracking / hot reload."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

import h5py
import pytest

from labd_client import Client

T1 = ("T1Experiment", "experiments.single_qubit.t1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


class PyroBench:
    """A real Pyro4 nameserver (qick's) and a simulated board registered in it."""

    def __init__(self, name: str = "simqick") -> None:
        self.port = free_port()
        self.name = name
        self.ns = subprocess.Popen(
            [sys.executable, "-c", "from qick.pyro import start_nameserver; "
             f"start_nameserver('127.0.0.1', {self.port})"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.board: subprocess.Popen | None = None
        self.start_board()

    def start_board(self) -> None:
        self.board = subprocess.Popen(
            [sys.executable, "-m", "labd.hardware.simulated_soc", "--ns-port", str(self.port),
             "--name", self.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.board.stdout.readline()
        assert "simulated soc" in line, line

    def board_calls(self) -> dict[str, int]:
        import Pyro4
        Pyro4.config.SERIALIZER = "pickle"
        with Pyro4.Proxy(Pyro4.locateNS("127.0.0.1", self.port).lookup(self.name)) as soc:
            return soc.get_calls()

    def stop_board(self) -> None:
        if self.board is not None:
            self.board.kill()
            self.board.wait()

    def close(self) -> None:
        self.stop_board()
        self.ns.kill()
        self.ns.wait()


@pytest.fixture
def pyro():
    bench = PyroBench()
    yield bench
    bench.close()


def test_job_runs_through_pyro_nameserver_and_board(make_daemon, pyro):
    d = make_daemon(hardware="pyro", pyro={"ns_host": "127.0.0.1", "ns_port": pyro.port,
                                           "name": pyro.name, "timeout_s": 5.0})
    with Client(d.socket) as c:
        job = c.wait(c.submit(*T1, {"reps": 10, "rounds": 3}), timeout=60)
        assert job.status == "completed", job.error_message
        with h5py.File(job.data_file_path) as f:
            assert f["avgi"].shape == (51,)
            hw = json.loads(f.attrs["hardware"])
            assert hw["kind"] == "pyro" and hw["name"] == pyro.name
        calls = pyro.board_calls()  # qick's own acquire loop ran on the board side
        assert calls["load_bin_program"] == 1 and calls["start_readout"] == 3
        # the board goes away: a clear failure, and the next job reconnects
        pyro.stop_board()
        job = c.wait(c.submit(*T1, {"reps": 10}), timeout=60)
        assert job.status == "failed"
        assert "board" in job.error_message and pyro.name in job.error_message
        pyro.start_board()
        job = c.wait(c.submit(*T1, {"reps": 10}), timeout=60)
        assert job.status == "completed", job.error_message


def test_unreachable_nameserver_is_a_clear_job_error(make_daemon):
    port = free_port()
    d = make_daemon(hardware="pyro", pyro={"ns_host": "127.0.0.1", "ns_port": port,
                                           "name": "nothere", "timeout_s": 2.0})
    with Client(d.socket) as c:
        job = c.wait(c.submit(*T1, {"reps": 10}), timeout=60)
    assert job.status == "failed"
    assert f"cannot reach Pyro4 nameserver 127.0.0.1:{port}" in job.error_message


def test_unknown_board_name_is_a_clear_job_error(make_daemon, pyro):
    d = make_daemon(hardware="pyro", pyro={"ns_host": "127.0.0.1", "ns_port": pyro.port,
                                           "name": "other-board", "timeout_s": 2.0})
    with Client(d.socket) as c:
        job = c.wait(c.submit(*T1, {"reps": 10}), timeout=60)
    assert job.status == "failed"
    assert "board 'other-board' is not registered" in job.error_message


def test_setpoint_ramped_recorded_and_limit_enforced(make_daemon):
    d = make_daemon(setpoint={"enabled": True, "limit": 0.5, "ramp_step": 0.1})
    with Client(d.socket) as c:
        job = c.wait(c.submit(*T1, {"reps": 10}), timeout=60)
        assert job.status == "completed", job.error_message
        with h5py.File(job.data_file_path) as f:
            sp = json.loads(f.attrs["setpoint"])
        assert sp["name"] == "coupler_current" and sp["target"] == 0.25
        assert sp["final"] == pytest.approx(0.25) and sp["limit"] == 0.5
        hw = c.config_pull("hardware_config")["content"]
        c.config_push("hardware_config", hw.replace("coupler_current: 0.25",
                                                    "coupler_current: 0.9"))
        job = c.wait(c.submit(*T1, {"reps": 10}), timeout=60)
        assert job.status == "failed"
        assert "exceeds the safety limit 0.5 mA" in job.error_message
        assert job.data_file_path is None


def test_edited_experiment_is_picked_up_without_restart(make_daemon, tmp_path):
    pkg = tmp_path / "labtest_edit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    src = textwrap.dedent("""
        from experiments.base import Experiment
        from pydantic import BaseModel, ConfigDict

        class Cfg(BaseModel):
            model_config = ConfigDict(extra="forbid")
            {field}

        class Edit(Experiment):
            config_model = Cfg

            def acquire(self):
                return {{"xpts": [{value}]}}
    """)
    mod = pkg / "edit.py"
    mod.write_text(src.format(field="pass", value="1.0"))
    d = make_daemon(start=False, allowed_packages=["experiments", "labtest_edit"])
    d.env_extra["PYTHONPATH_PREPEND"] = str(tmp_path)
    d.start()
    with Client(d.socket) as c:
        j1 = c.wait(c.submit("Edit", "labtest_edit.edit"), timeout=30)
        mod.write_text(src.format(field="gain: float = 2.0", value="2.0"))
        j2 = c.wait(c.submit("Edit", "labtest_edit.edit", {"gain": 3.0}), timeout=30)
    assert j1.is_successful() and j2.is_successful(), (j1.error_message, j2.error_message)
    assert j1.raw["module_sha256"] != j2.raw["module_sha256"]
    with h5py.File(j1.data_file_path) as f1, h5py.File(j2.data_file_path) as f2:
        assert f1["xpts"][()].tolist() == [1.0] and f2["xpts"][()].tolist() == [2.0]
        assert f2.attrs["module_sha256"] == j2.raw["module_sha256"]
