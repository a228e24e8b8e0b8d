"""labctl as a person or a script uses it: real subprocesses, --json, exit codes."""
from __future__ import annotations

import argparse
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time

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
    sleeper = labctl("submit", "experiments.diagnostics.sleep.SleepExperiment",
                     "-p", "seconds=30").stdout.strip()
    r = labctl("wait", sleeper, "--timeout", "0.2")
    assert r.returncode == 7
    labctl("cancel", sleeper)   # the module's daemon is shared: the next tests queue behind it


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


# ---- discoverability ------------------------------------------------------------------
def test_experiments_table_and_json(labctl):
    r = labctl("experiments")
    assert r.returncode == 0
    block = re.search(r"^experiments\.single_qubit\.t1\.T1Experiment\n((?: .*\n)+)",
                      r.stdout, re.M)
    assert block and re.search(r"^ +step +float +\S+ +us +\S", block.group(1), re.M), r.stdout
    cat = json.loads(labctl("experiments", "--json").stdout)
    t1 = next(e for e in cat if e["class"] == "T1Experiment")
    assert {f["name"]: f["unit"] for f in t1["fields"]}["start"] == "us"


def test_submit_by_bare_class_name(labctl):
    r = labctl("submit", "T1Experiment", "-p", "expts=5", "-p", "reps=10", "--wait", "--json")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert (job["experiment_module"], job["status"]) == ("experiments.single_qubit.t1",
                                                         "completed")
    r = labctl("submit", "NoOpExperiment")  # also in labtest_experiments.hostile
    assert r.returncode == 2
    assert "experiments.diagnostics.noop.NoOpExperiment" in r.stderr
    assert "labtest_experiments.hostile.NoOpExperiment" in r.stderr
    r = labctl("submit", "T1Experimnt")
    assert r.returncode == 2 and "experiments.single_qubit.t1.T1Experiment" in r.stderr


# ---- scripts: JSON errors -------------------------------------------------------------
def test_json_errors_keep_exit_codes(labctl, tmp_path):
    def err(r: subprocess.CompletedProcess) -> dict:
        return json.loads(r.stdout)["error"]
    r = labctl("show", "JOB-20000101-00001", "--json")
    assert r.returncode == 3 and err(r)["type"] == "NotFound" and err(r)["exit_code"] == 3
    r = labctl("show", "--json")  # usage error from argparse
    assert r.returncode == 2 and "job_id" in err(r)["message"]
    r = labctl("submit", "os.System", "--json")
    assert r.returncode == 2 and "allowed package" in err(r)["message"]
    r = subprocess.run([sys.executable, "-m", "labd_client.labctl", "--socket",
                        str(tmp_path / "none.sock"), "queue", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 6 and str(tmp_path / "none.sock") in err(r)["message"]


def test_every_option_help_says_its_unit():
    from labd_client.labctl import build_parser
    seen = 0

    def walk(parser: argparse.ArgumentParser) -> None:
        nonlocal seen
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for p in a.choices.values():
                    walk(p)
            elif a.type in (int, float):
                seen += 1
                assert a.help and re.search(r"seconds|integer|number of", a.help), a.dest
    walk(build_parser())
    assert seen >= 6


# ---- terminal safety ------------------------------------------------------------------
def test_human_output_escapes_control_characters(labctl):
    r = labctl("submit", "labtest_experiments.hostile.EscapeInOutput", "--wait")
    assert r.returncode == 1
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "error \\x1b]0;pwned\\x07 end" in r.stdout
    job_id = json.loads(labctl("history", "--experiment", "EscapeInOutput", "--json")
                        .stdout)["jobs"][0]["job_id"]
    for args in (("logs", job_id), ("logs", job_id, "-f"), ("history", "--limit", "3"),
                 ("show", job_id)):
        out = labctl(*args).stdout
        assert "\x1b" not in out and "\x07" not in out and "pwned" in out, args
    assert "log line \x1b]0;pwned\x07 end" in json.loads(labctl("logs", job_id,
                                                                "--json").stdout)["text"]
    assert json.loads(labctl("show", job_id, "--json").stdout)["error_message"] \
        .endswith("error \x1b]0;pwned\x07 end")


def test_a_hold_reason_with_newlines_stays_on_its_queue_row():
    """A calibration's error may span lines (an exception's message): its row holds it."""
    from labd_client.views import format_queue
    q = {"running": None, "pending": [], "waiting": [
        {"job_id": "JOB-20260101-00002", "user": "ann", "experiment_class": "NoOpExperiment",
         "waiting_for": "held", "hold_reason": "calibration JOB-20260101-00001 did not "
         "refresh its keys (it failed (ValueError: first\n  second))"}]}
    *_, row = format_queue(q).splitlines()
    assert row.startswith("         JOB-20260101-00002") and \
        row.endswith("held: calibration JOB-20260101-00001 did not refresh its keys (it "
                     "failed (ValueError: first second))")


# ---- watch across a restart -----------------------------------------------------------
def test_watch_shows_disconnected_and_the_state_after_a_restart(make_daemon):
    from labd_client import Client
    d = make_daemon()
    proc = subprocess.Popen([sys.executable, "-m", "labd_client.labctl", "--socket",
                             str(d.socket), "watch", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()

    def next_frame(pred, what: str) -> dict:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                frame = json.loads(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
            if pred(frame):
                return frame
        raise AssertionError(f"watch never showed {what}")
    try:
        next_frame(lambda f: "queue" in f, "a first frame")
        d.kill()
        next_frame(lambda f: f.get("disconnected"), "disconnected")
        d.start()
        with Client(d.socket) as c:
            job_id = c.submit("NoOpExperiment", "experiments.diagnostics.noop", hold=True)
        next_frame(lambda f: any(j["job_id"] == job_id
                                 for j in f.get("queue", {}).get("waiting", [])),
                   "the job submitted after the restart")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
