"""The built wheel works outside the repository: installed into a fresh venv, ``labd
--mock`` started from an unrelated directory finds its shipped soccfg and first-start
configs (package data) and runs a T1 job to completed."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import h5py
import pytest

from daemon_harness import REPO

pytestmark = pytest.mark.timeout(180)


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)])
    (whl,) = out.glob("labd-*.whl")
    return whl


def test_wheel_holds_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("soccfg_zcu216.json", "hardware_config.yml", "multiphoton_config.yml",
              "floquet_storage_swap.csv", "man1_storage_swap.csv"):
        assert f"labd/defaults/{f}" in names
    assert "experiments/single_qubit/t1.py" in names


def test_wheel_in_a_fresh_venv_runs_a_job_from_another_directory(wheel, tmp_path):
    """The wheel itself is installed (not editable); its dependencies come from this
    test's environment through a .pth line, which is what ``make install`` already
    resolved: installing numpy, scipy, qick... again would take minutes, and what can
    break in a wheel is labd's own files. Nothing from the repository is on the path."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)])
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                      "['purelib'])"]).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LABD_CONFIG")}
    where = _run([str(py), "-c", "import labd, experiments; print(labd.__file__); "
                  "print(experiments.__file__)"], cwd=elsewhere, env=env).stdout.split()
    assert all(p.startswith(str(site)) for p in where), where

    sock, state = tmp_path / "labd.sock", tmp_path / "state"
    log = open(tmp_path / "labd.log", "wb")
    proc = subprocess.Popen([str(venv / "bin" / "labd"), "--mock", "--socket", str(sock),
                             "--state-dir", str(state)], cwd=elsewhere, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        from labd_client import Client
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None, (tmp_path / "labd.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with Client(sock) as c:
            job = c.wait(c.submit("T1Experiment", "experiments.single_qubit.t1",
                                  {"start": 0, "step": 0.5, "expts": 100, "reps": 200}),
                         timeout=60)
        assert job.status == "completed", (job.error_message,
                                           (tmp_path / "labd.log").read_text())
        assert Path(job.data_file_path).is_relative_to(state)
        with h5py.File(job.data_file_path) as f:
            assert "hardware_config" in f["configs"]
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
