"""labctl as a person or a script uses it: real subprocesses, --json, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.fixture
def labctl(daemon):
    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "labd_client.labctl", "--socket", str(daemon.socket),
             *args], capture_output=True, text=True, timeout=60, input=input)
    return run


def test_health_and_json(labctl):
    r = labctl("health")
    assert r.returncode == 0 and "labd" in r.stdout and "ok" in r.stdout
    r = labctl("health", "--json")
    assert json.loads(r.stdout)["status"] == "ok"


def test_submit_params_wait_show_logs_history(labctl, tmp_path):
    cfg = tmp_path / "t1.yml"
    cfg.write_text("reps: 50\nexpts: 11\n")
    r = labctl("submit", "experiments.single_qubit.t1.T1Experiment", "-c", str(cfg),
               "-p", "step=2.5", "-p", "qubits=[0]", "--json")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["job_id"]
    r = labctl("wait", job_id, "--json")
    job = json.loads(r.stdout)
    assert r.returncode == 0 and job["status"] == "completed"
    assert job["experiment_config"] == {"reps": 50, "expts": 11, "step": 2.5, "qubits": [0]}
    r = labctl("show", job_id)
    assert r.returncode == 0 and "completed" in r.stdout and "T1" in r.stdout
    r = labctl("logs", job_id)
    assert "raw data saved" in r.stdout
    r = labctl("history", "--experiment", "T1Experiment", "--json")
    assert any(j["job_id"] == job_id for j in json.loads(r.stdout)["jobs"])
    r = labctl("logs", job_id, "-f")
    assert r.returncode == 0 and "raw data saved" in r.stdout


def test_submit_wait_failure_exit_code_and_follow(labctl):
    r = labctl("submit", "experiments.diagnostics.sleep.SleepExperiment", "-p", "seconds=0.3",
               "-p", "steps=3", "-p", "fail=true", "--wait")
    assert r.returncode == 1
    assert "failing on request" in r.stdout


def test_exit_codes(labctl, tmp_path):
    assert labctl("show", "JOB-20000101-00001").returncode == 3
    r = labctl("submit", "os.System")
    assert r.returncode == 2 and "not in an allowed package" in r.stderr
    assert labctl("submit", "experiments.diagnostics.noop.NoOpExperiment",
                  "-p", "nokey").returncode == 2
    r = subprocess.run([sys.executable, "-m", "labd_client.labctl", "--socket",
                        str(tmp_path / "none.sock"), "health"], capture_output=True, text=True)
    assert r.returncode == 6 and "not running" in r.stderr
    r = labctl("submit", "experiments.diagnostics.noop.NoOpExperiment", "--json")
    job_id = json.loads(r.stdout)["job_id"]
    labctl("wait", job_id)
    r = labctl("cancel", job_id)
    assert r.returncode == 5 and "already completed" in r.stderr
    r = labctl("wait", labctl("submit", "experiments.diagnostics.sleep.SleepExperiment",
                              "-p", "seconds=30").stdout.strip(), "--timeout", "0.2")
    assert r.returncode == 7


def test_queue_and_cancel(labctl):
    ids = [labctl("submit", "experiments.diagnostics.sleep.SleepExperiment", "-p",
                  "seconds=30").stdout.strip() for _ in range(2)]
    r = labctl("queue", "--json")
    q = json.loads(r.stdout)
    assert q["running"]["job_id"] in ids or any(j["job_id"] in ids for j in q["pending"])
    r = labctl("queue", "--mine")
    assert r.returncode == 0 and "PENDING" in r.stdout
    for job_id in reversed(ids):
        r = labctl("cancel", job_id)
        assert r.returncode == 0 and r.stdout.split(": ")[1].strip() in ("cancelled",
                                                                         "cancelling")


def test_config_commands(labctl, tmp_path):
    r = labctl("config", "pull", "multiphoton_config", "-o", str(tmp_path / "mp.yml"))
    assert r.returncode == 0
    f = tmp_path / "mp.yml"
    f.write_text(f.read_text() + "# tuned\n")
    r = labctl("config", "push", "multiphoton_config", str(f), "-m", "tuned", "--json")
    new = json.loads(r.stdout)["version_id"]
    assert labctl("config", "list", "multiphoton_config").stdout.startswith(f"* {new}")
    assert "# tuned" in labctl("config", "show", new).stdout
    assert labctl("config", "verify").returncode == 0
    assert "main=" in labctl("config", "types").stdout
    hist = json.loads(labctl("config", "history", "multiphoton_config", "--json").stdout)
    assert hist["history"][0]["version_id"] == new
    old = hist["history"][1]["version_id"]
    assert "+# tuned" in labctl("config", "diff", old, new).stdout
    assert labctl("config", "set-main", "multiphoton_config", old).returncode == 0
