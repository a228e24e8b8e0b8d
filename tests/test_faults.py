"""Experiment faults, resource limits and storage faults: each ends in a clear state and
the daemon, its database and the next job carry on."""
from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import pytest

from labd_client import Client, InvalidParams, LimitExceeded, Unavailable

FAULTS = "labtest_experiments.faults"
NOOP = ("NoOpExperiment", "experiments.diagnostics.noop")


@pytest.mark.parametrize("cls,config,status,message", [
    ("RaiseInAcquire", {}, "failed", "ValueError: the sample holder is on fire"),
    ("NotArrays", {}, "failed", "data key 'xpts' is not numeric data"),
    ("NotADict", {}, "failed", "acquire() must return a non-empty dict of arrays, got list"),
    ("MemoryHungry", {"size_mb": 50}, "failed", "MemoryError"),
    ("IgnoresStop", {"seconds": 60}, "failed", "ignored the stop request"),
])
def test_faulty_experiment_then_next_job_runs(client, cls, config, status, message):
    job = client.wait(client.submit(cls, FAULTS, config, time_limit_s=0.5), timeout=30)
    assert job.status == status and message in job.error_message, job.error_message
    assert client.wait(client.submit(*NOOP), timeout=30).is_successful()
    assert client.health()["status"] == "ok"


def test_nan_and_inf_are_saved_and_flagged(client):
    job = client.wait(client.submit("NonFinite", FAULTS), timeout=30)
    assert job.is_successful()
    with h5py.File(job.data_file_path) as f:
        assert json.loads(f.attrs["nonfinite_keys"]) == ["avgi"]
        avgi = f["avgi"][()]
    assert avgi[0] == 1.0 and avgi[1] != avgi[1] and avgi[2] == float("inf")


def test_huge_output_is_capped_per_job(make_daemon):
    d = make_daemon(max_log_bytes=20_000)
    with Client(d.socket) as c:
        job = c.wait(c.submit("HugeOutput", FAULTS, {"lines": 5000}), timeout=60)
        assert job.is_successful()
        size = Path(job.log_path).stat().st_size
        assert 20_000 <= size < 20_200
        assert Path(job.log_path).read_text().endswith("[labd: log truncated at 20000 bytes]\n")
        assert c.wait(c.submit(*NOOP), timeout=30).is_successful()


def test_size_and_count_limits(make_daemon):
    d = make_daemon(max_pending_per_user=3, max_config_bytes=2048)
    with Client(d.socket) as c:
        c.pause()
        for _ in range(3):
            c.submit(*NOOP)
        with pytest.raises(LimitExceeded, match="has 3 pending jobs; the limit is 3"):
            c.submit(*NOOP)
        c.cancel_user("root")
        with pytest.raises(InvalidParams, match="experiment_config exceeds 2048 bytes"):
            c.submit(*NOOP, {"value": 1.0, "pad": "x" * 4000})
        with pytest.raises(InvalidParams, match="content exceeds 2048 bytes"):
            c.config_push("multiphoton_config", "a: " + "x" * 4000)
        assert c.health()["status"] == "paused"


TINY_FS_BYTES = 2 * 1024 * 1024  # room for a fresh database with its indexes, and a batch


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TINY_FS_BYTES}", "tmpfs",
                        str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_data_writer_killed_jobs_still_complete_with_their_files(make_daemon):
    """The data files are written by a child process; killed, it loses no job's file."""
    import psutil
    d = make_daemon(data_writer="process")
    t1 = ("T1Experiment", "experiments.single_qubit.t1", {"expts": 20, "reps": 10})

    def writers() -> list[psutil.Process]:
        return [p for p in psutil.Process(d.proc.pid).children()
                if "labd.data_writer" in " ".join(p.cmdline())]
    with Client(d.socket) as c:
        assert c.wait(c.submit(*t1), timeout=30).is_successful()
        [writer] = writers()
        assert c.health()["data_writer_pid"] == writer.pid
        writer.kill()
        batch = c.submit_batch([{"experiment_class": t1[0], "experiment_module": t1[1],
                                 "experiment_config": t1[2]}] * 5)
        for job_id in batch["job_ids"]:
            job = c.wait(job_id, timeout=60)
            assert job.is_successful(), job.error_message
            with h5py.File(job.data_file_path) as f:
                assert f.attrs["analysis"] == "done" and "T1" in f
        assert writers() == []   # labd writes itself for a while (RESTART_AFTER_S)
        health = c.health()
        assert health["status"] == "ok" and health["data_writer_pid"] is None


def test_thread_data_writer_writes_the_files_itself(make_daemon):
    """data_writer = "thread": no child process."""
    import psutil
    d = make_daemon(data_writer="thread")
    with Client(d.socket) as c:
        job = c.wait(c.submit("T1Experiment", "experiments.single_qubit.t1",
                              {"expts": 20, "reps": 10}), timeout=30)
        assert job.is_successful(), job.error_message
        with h5py.File(job.data_file_path) as f:
            assert f.attrs["analysis"] == "done" and "T1" in f
        assert c.health()["data_writer_pid"] is None
        assert psutil.Process(d.proc.pid).children() == []


def test_when_behind_files_that_lag_the_board_go_to_the_child(make_daemon):
    """data_writer = "when_behind" (what "auto" picks below 4 CPUs): a queue of quick
    acquisitions outruns the save thread's files, and the child takes them until they
    catch up; every job completes with its file and fit."""
    d = make_daemon(data_writer="when_behind")
    t1 = {"experiment_class": "T1Experiment", "experiment_module":
          "experiments.single_qubit.t1", "experiment_config": {"expts": 20, "reps": 10}}
    with Client(d.socket) as c:
        c.pause()
        batch = c.submit_batch([t1] * 40)
        c.resume()
        for job_id in batch["job_ids"]:
            job = c.wait(job_id, timeout=120)
            assert job.is_successful(), job.error_message
            with h5py.File(job.data_file_path) as f:
                assert f.attrs["analysis"] == "done" and "T1" in f
        assert "data files fall behind the board" in d.log()
        assert c.health()["data_writer_pid"] is not None


def test_disk_full_fails_job_clearly_and_daemon_survives(make_daemon, tiny_fs):
    d = make_daemon(output_root=str(tiny_fs))
    (tiny_fs / "filler").write_bytes(b"\0" * (TINY_FS_BYTES - 8192))  # leave ~8 kB
    with Client(d.socket) as c:
        job = c.wait(c.submit("T1Experiment", "experiments.single_qubit.t1",
                              {"expts": 2000, "reps": 10}), timeout=60)
        assert job.status == "failed"
        assert "No space left on device" in job.error_message, job.error_message
        assert not list(tiny_fs.rglob("*.part"))
        (tiny_fs / "filler").unlink()
        assert c.wait(c.submit(*NOOP), timeout=30).is_successful()
        assert c.history(limit=2)[1].job_id == job.job_id  # the database has both


def test_read_only_output_root(make_daemon, tiny_fs):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    d = make_daemon(output_root=str(tiny_fs))
    with Client(d.socket) as c:
        job = c.wait(c.submit(*NOOP), timeout=30)
        assert job.status == "failed"
        assert "cannot write to the data directory" in job.error_message
        assert "Read-only file system" in job.error_message
        assert c.health()["status"] == "ok"


def fill(fs: Path) -> Path:
    """Write to ``fs`` until it is full; returns the filler file."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_database_full_when_a_job_starts_keeps_it_pending(make_daemon, tiny_fs, tmp_path):
    """The commit that marks a job running fails (state disk full): the board took the
    job the moment it was free (#14), so the attempt is stopped and its data dropped; the
    job stays pending and runs once there is space again."""
    d = make_daemon(state_dir=str(tiny_fs / "state"), output_root=str(tmp_path / "data"))
    with Client(d.socket) as c:
        start = datetime.now(timezone.utc) + timedelta(seconds=1)
        job_id = c.submit(*NOOP, not_before=start.isoformat())
        filler = fill(tiny_fs)
        deadline = time.monotonic() + 30
        while f"could not start {job_id}" not in d.log():
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.1)
        assert c.get(job_id).status == "pending"
        assert c.health()["status"] == "ok"
        filler.unlink()
        job = c.wait(job_id, timeout=30)
        assert job.is_successful(), job.error_message
        log = (tmp_path / "data" / job_id.split("-")[1] / f"{job_id}.log").read_text()
        dropped = log.count("this attempt is dropped: its start could not be recorded")
        assert dropped >= 1 and log.count(f"job {job_id}:") == dropped + 1  # one run kept


def test_state_disk_full_refuses_clearly_retries_outcomes_and_recovers(make_daemon, tiny_fs,
                                                                       tmp_path):
    """#15: with the state disk full, a submit is refused with a message naming the full
    disk (not "cannot rollback"); a job that ends meanwhile keeps its outcome in memory,
    shown as not stored yet, and it is stored without a restart once there is room."""
    d = make_daemon(state_dir=str(tiny_fs / "state"), output_root=str(tmp_path / "data"))
    batch = [{"experiment_class": NOOP[0], "experiment_module": NOOP[1]}] * 300
    with Client(d.socket) as c:
        running = c.submit("SleepExperiment", "experiments.diagnostics.sleep",
                           {"seconds": 60, "steps": 600})
        deadline = time.monotonic() + 30
        while c.get(running).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        c.pause()
        filler = fill(tiny_fs)
        with pytest.raises(Unavailable, match="the disk holding the labd database .* is full"):
            for _ in range(20):  # until the WAL has to grow
                c.submit_batch(batch)
        c.cancel(running)
        while "not stored yet" not in (c.get(running).error_message or ""):
            assert time.monotonic() < deadline + 30
            time.sleep(0.02)
        job = c.get(running)
        assert job.status == "cancelled" and job.phase == "finishing"
        assert c.health()["status"].startswith("degraded: 1 job outcomes not stored yet")
        filler.unlink()
        job = c.wait(running, timeout=30)
        assert job.status == "cancelled" and job.phase is None
        assert c.health()["status"] == "paused"
        c.submit_batch(batch)


def test_config_push_on_a_full_state_disk_is_refused_clearly(make_daemon, tiny_fs, tmp_path):
    """#15: a push that cannot be written says the disk is full (it answered an internal
    error) and leaves no temp file; once there is room it works."""
    d = make_daemon(state_dir=str(tiny_fs / "state"), output_root=str(tmp_path / "data"))
    content = "a: 1\n# " + "x" * 20_000 + "\n"
    with Client(d.socket) as c:
        filler = fill(tiny_fs)
        with pytest.raises(Unavailable, match="No space left on device"):
            c.config_push("multiphoton_config", content)
        assert not list((tiny_fs / "state").rglob("*.part"))
        filler.unlink()
        assert c.config_push("multiphoton_config", content)["created"]
        assert c.health()["status"] == "ok"
