"""Issue #13: config updates from calibration jobs, and calibrate-when-stale.

End to end on real daemons (real SQLite, real HDF5, the mock board); the races between a
job's config update and a push are driven step by step in-process (sched_harness gates)."""
from __future__ import annotations

import asyncio
import difflib
import html
import json
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import h5py
import pytest
from sched_harness import Harness
from test_config_races import SpyLock

from experiments.base import CalibrationUpdate
from labd.executor import Outcome
from labd.scheduler.states import EndReason
from labd_client.protocol import Conflict
from labd_client.views import QueueView

HW = "hardware_config"
RABI = ("AmplitudeRabiExperiment", "experiments.single_qubit.amplitude_rabi")
FAKE = ("FakeT1Calibration", "labtest_experiments.calib")
NOOP = ("NoOpExperiment", "experiments.diagnostics.noop")
T1_KEY = "device.qubit.T1[0]"
INVALID_PARAMS = -32602


def call(d, method, **params):
    r = d.rpc(method, **params)
    assert "error" not in r, r["error"]
    return r["result"]


def refused(d, method, **params) -> str:
    r = d.rpc(method, **params)
    assert "error" in r, r
    assert r["error"]["code"] == INVALID_PARAMS, r["error"]
    return r["error"]["message"]


def submit(d, exp, config=None, **kw):
    cls, module = exp
    return call(d, "submit", experiment_class=cls, experiment_module=module,
                experiment_config=config or {}, **kw)


def wait(d, job_id):
    job = call(d, "wait", job_id=job_id, timeout=60)
    assert not job["timed_out"], job
    return job


def main_content(d) -> tuple[str, str]:
    m = call(d, "config.pull", type=HW)
    return m["version_id"], m["content"]


def push(d, content, **kw) -> str:
    return call(d, "config.push", type=HW, content=content, **kw)["version_id"]


def until(pred, timeout=30.0):
    """A bounded wait for a state the daemon reaches on its own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def changed_lines(a: str, b: str) -> list[str]:
    return [line for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="")
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


# ---- update_main --------------------------------------------------------------------
def test_the_qubit_of_a_key_is_read_however_the_config_model_holds_qubits():
    """``{qubit}`` in a calibration key is the config's first qubit: a field, an extra of a
    model that allows extras, or a property; 0 when it has none."""
    from pydantic import BaseModel, ConfigDict

    from labd.calibration import first_qubit

    class Field_(BaseModel):
        qubits: list[int] = [2]

    class Extra(BaseModel):
        model_config = ConfigDict(extra="allow")

    class Prop(BaseModel):
        qubit: int = 3

        @property
        def qubits(self) -> list[int]:
            return [self.qubit]

    class Neither(BaseModel):
        reps: int = 1
    assert [first_qubit(Field_()), first_qubit(Extra(qubits=[1])), first_qubit(Prop()),
            first_qubit(Neither())] == [2, 1, 3, 0]


def test_rabi_with_update_main_updates_pi_gain_and_keeps_the_yaml_comments(make_daemon):
    d = make_daemon()
    _, shipped = main_content(d)
    assert "gain: [1800]        # DAC units" in shipped
    miscalibrated = shipped.replace("gain: [1800]", "gain: [1500]") + "# drifted\n"
    base = push(d, miscalibrated)
    r = submit(d, RABI, {"start": 0, "step": 100, "expts": 50, "reps": 1000},
               update_main=True)
    job = wait(d, r["job_id"])
    assert job["status"] == "completed", job
    upd = job["config_update"]
    assert upd["applied"] is True and upd["base_version"] == base, upd
    change = upd["changes"]["device.qubit.pulses.pi_ge.gain[0]"]
    assert change["old"] == 1500
    assert isinstance(change["new"], int) and abs(change["new"] - 1800) < 90  # the truth
    new_vid, new = main_content(d)
    assert new_vid == upd["version_id"] != base
    # only the gain's value changed: comments, flow lists and alignment survive
    assert changed_lines(miscalibrated, new) == [
        "-        gain: [1500]        # DAC units (full scale 32766), as the predecessor's",
        f"+        gain: [{change['new']}]" + " " * (8 - len(str(change["new"])) + 4)
        + "# DAC units (full scale 32766), as the predecessor's"]
    shown = call(d, "config.show", version_id=new_vid)
    assert shown["created_by_job_id"] == r["job_id"]
    assert shown["message"].startswith(f"{r['job_id']} AmplitudeRabiExperiment: "
                                       "device.qubit.pulses.pi_ge.gain[0] 1500 -> ")
    with h5py.File(job["data_file_path"]) as f:   # the fit's result and error are data
        assert abs(f["pi_gain_dac"][()] - change["new"]) <= 0.5
        assert f["pi_gain_dac_err"][()] > 0
    # a job that ran with the old version is not rewritten: the new main is new
    assert call(d, "config.show", version_id=base)["content"].count("[1500]") == 1


def _gated(tmp_path: Path, name: str) -> Path:
    gate = tmp_path / name
    gate.mkdir()
    gate.chmod(0o777)
    return gate


def _push_while_it_runs(d, tmp_path, old: str, new: str) -> tuple[str, str, str, dict]:
    """An update_main job sets T1 to 33.3 while main is pushed with ``old`` replaced by
    ``new``: (the job's base version, its content, the pushed version, the job)."""
    base, text = main_content(d)
    gate = _gated(tmp_path, "gate")
    r = submit(d, FAKE, {"value": 33.3, "gate": str(gate)}, update_main=True)
    until(lambda: (gate / "started").exists())
    pushed = push(d, text.replace(old, new))
    (gate / "go").touch()
    return base, text, pushed, wait(d, r["job_id"])


def test_push_of_another_key_while_the_job_runs_is_merged(make_daemon, tmp_path):
    d = make_daemon()
    base, text, pushed, job = _push_while_it_runs(d, tmp_path, "f_ge: [4500.0]",
                                                  "f_ge: [4501.5]")
    upd = job["config_update"]
    assert job["status"] == "completed" and upd["applied"] is True, job
    assert upd["base_version"] == base and upd["merged_with"] == pushed
    assert upd["changes"] == {T1_KEY: {"old": 20.0, "new": 33.3}}
    vid, new = main_content(d)
    assert vid == upd["version_id"]
    assert changed_lines(text, new) == [
        "-    f_ge: [4500.0]          # MHz", "+    f_ge: [4501.5]          # MHz",
        "-    T1: [20.0]              # us, a starting guess for fits",
        "+    T1: [33.3]              # us, a starting guess for fits"]
    history = call(d, "config.history", type=HW)["history"]
    assert [h["version_id"] for h in history[:3]] == [vid, pushed, base]


def test_push_of_the_same_key_while_the_job_runs_leaves_the_proposal_unapplied(
        make_daemon, tmp_path):
    d = make_daemon()
    _, _, pushed, job = _push_while_it_runs(d, tmp_path, "T1: [20.0]", "T1: [25.0]")
    upd = job["config_update"]
    assert job["status"] == "completed" and upd["applied"] is False, job
    assert f"changed {T1_KEY} too" in upd["reason"] and pushed in upd["reason"]
    assert main_content(d)[0] == pushed                     # main left alone
    proposal = call(d, "config.show", version_id=upd["version_id"])
    assert not proposal["is_main"] and "T1: [33.3]" in proposal["content"]
    assert f"set-main {HW} {upd['version_id']}" in upd["reason"]


@pytest.mark.parametrize("config, reason", [
    ({"value": 5000.0}, "outside its sane range [1, 1000]"),
    ({"value": 30.0, "err": 20.0}, "relative fit error 66.7% is above the limit 20%"),
    ({"value": float("nan")}, "the fit gave no finite T1"),
])
def test_bad_fits_are_not_applied_and_say_why(make_daemon, config, reason):
    d = make_daemon()
    base, _ = main_content(d)
    versions = len(call(d, "config.versions", type=HW)["versions"])
    cfg = {k: (v if v == v else "nan") for k, v in config.items()}  # NaN: no JSON number
    job = wait(d, submit(d, FAKE, cfg, update_main=True)["job_id"])
    assert job["status"] == "completed"
    assert job["config_update"]["applied"] is False
    assert reason in job["config_update"]["reason"]
    assert main_content(d)[0] == base
    assert len(call(d, "config.versions", type=HW)["versions"]) == versions   # no version made


def test_failed_or_cancelled_jobs_never_update(make_daemon, tmp_path):
    d = make_daemon()
    base, _ = main_content(d)
    job = wait(d, submit(d, FAKE, {"fail": True}, update_main=True)["job_id"])
    assert job["status"] == "failed"
    assert job["config_update"]["applied"] is False
    assert "only a job that completed" in job["config_update"]["reason"]
    gate = _gated(tmp_path, "g3")
    r = submit(d, FAKE, {"gate": str(gate), "value": 44.0}, update_main=True)
    until(lambda: (gate / "started").exists())
    call(d, "cancel", job_id=r["job_id"])
    job = wait(d, r["job_id"])
    assert job["status"] == "cancelled" and job["config_update"]["applied"] is False
    # cancelled while still pending: it never ran, and says so
    r = submit(d, FAKE, {"value": 45.0}, update_main=True, hold=True)
    call(d, "cancel", job_id=r["job_id"])
    job = wait(d, r["job_id"])
    assert job["config_update"] == {"applied": False,
                                    "reason": "the job ended before it ran (cancelled)"}
    assert main_content(d)[0] == base


def test_bad_submits_are_refused_with_a_clear_message(make_daemon):
    d = make_daemon()

    def bad(exp, **kw):
        return refused(d, "submit", experiment_class=exp[0], experiment_module=exp[1],
                       experiment_config={}, **kw)
    assert "NoOpExperiment is not a calibration" in bad(NOOP, update_main=True)
    msg = bad(("StringKeyCalibration", FAKE[1]), update_main=True)
    assert "aliases.soc" in msg and "holds a str" in msg and "types differ" in msg
    msg = bad(("MissingKeyCalibration", FAKE[1]), update_main=True)
    assert "device.qubit.T3[0]" in msg and "does not exist" in msg
    # a qubit the config has no entry for
    msg = refused(d, "submit", experiment_class=FAKE[0], experiment_module=FAKE[1],
                  experiment_config={"qubits": [3]}, update_main=True)
    assert "device.qubit.T1[3] does not exist" in msg
    msg = bad(NOOP, fresh=[T1_KEY])
    assert "no calibration in the daemon settings covers device.qubit.T1[0]" in msg
    assert "is not a key path" in bad(NOOP, fresh=["device..T1"])
    # nothing was stored
    assert call(d, "history")["jobs"] == []


# ---- calibrate when stale -------------------------------------------------------------
def _setting(name: str, key: str, exp: tuple[str, str], config: dict,
             max_age_s: float) -> str:
    cfg = ", ".join(f"{k} = {json.dumps(v)}" for k, v in config.items())
    return (f'\n[[calibrations]]\nname = "{name}"\nkeys = ["{key}"]\n'
            f'experiment = "{exp[1]}.{exp[0]}"\nconfig = {{{cfg}}}\nmax_age_s = {max_age_s}\n')


def _calibrating_daemon(make_daemon, max_age_s: float, *more: str, **fake_config) -> object:
    """A daemon whose settings calibrate T1 of qubit 0 with FakeT1Calibration."""
    d = make_daemon(start=False)
    with open(d.config_path, "a") as fh:
        fh.write(_setting("t1_q0", T1_KEY, FAKE, {"value": 31.5, **fake_config}, max_age_s))
        fh.write("".join(more))
    return d.start()


def test_stale_key_runs_its_calibration_first_and_the_job_uses_the_new_main(make_daemon):
    d = _calibrating_daemon(make_daemon, max_age_s=3600)
    # the key was set at the first start: fresh, nothing to calibrate
    r = submit(d, NOOP, fresh=[T1_KEY])
    assert "calibrations" not in r
    assert wait(d, r["job_id"])["status"] == "completed"
    # make main's history an old one: T1 is now older than an hour
    d.terminate()
    with sqlite3.connect(d.state_dir / "labd.sqlite3") as conn:
        conn.execute("UPDATE config_main_history SET set_at = '2026-01-01T00:00:00+00:00'")
    d.start()
    r = submit(d, NOOP, fresh=[T1_KEY], priority=5)
    [cal_id] = r["calibrations"]
    job = wait(d, r["job_id"])
    cal = wait(d, cal_id)
    assert cal["status"] == "completed" and cal["config_update"]["applied"], cal
    assert cal["priority"] == 5 and cal["update_main"] and cal["experiment_class"] == FAKE[0]
    assert job["status"] == "completed", job
    assert job["calibrated_by"] == [cal_id] and job["fresh"] == [T1_KEY]
    assert job["config_versions"][HW] == cal["config_update"]["version_id"]
    assert job["started_at"] > cal["finished_at"]
    assert "T1: [31.5]" in main_content(d)[1]
    # now fresh again: no second calibration; an experiment's own needs_fresh works too
    r = submit(d, ("NeedsFreshT1", FAKE[1]))
    assert "calibrations" not in r


def test_needs_fresh_of_the_experiment_triggers_the_calibration(make_daemon):
    d = _calibrating_daemon(make_daemon, max_age_s=0)
    r = submit(d, ("NeedsFreshT1", FAKE[1]))
    [cal_id] = r["calibrations"]
    job = wait(d, r["job_id"])
    assert job["status"] == "completed"
    assert job["config_versions"][HW] == wait(d, cal_id)["config_update"]["version_id"]


def test_retried_and_scheduled_jobs_needing_fresh_keys_calibrate_first(make_daemon):
    """A retry, or a schedule's firing, is a submit: stale calibrations go first for it
    too (a rerun pins the exact versions it ran with instead)."""
    d = _calibrating_daemon(make_daemon, max_age_s=0)
    r = submit(d, NOOP, fresh=[T1_KEY], hold=True)
    call(d, "cancel", job_id=r["job_id"])
    wait(d, r["calibrations"][0])
    again = call(d, "retry", job_id=r["job_id"])
    job = wait(d, again["job_id"])
    assert job["status"] == "completed" and job["fresh"] == [T1_KEY]
    [cal_id] = job["calibrated_by"]
    assert cal_id != r["calibrations"][0]
    assert job["config_versions"][HW] == wait(d, cal_id)["config_update"]["version_id"]
    start = datetime.now(timezone.utc).isoformat()
    s = call(d, "schedule.add", every_s=3600, start=start, submit={
        "experiment_class": NOOP[0], "experiment_module": NOOP[1], "fresh": [T1_KEY]})
    fired = until(lambda: call(d, "history", batch_id=f"SCHED-{s['schedule_id']}")["jobs"])
    job = wait(d, fired[0]["job_id"])
    [cal_id] = job["calibrated_by"]
    assert job["config_versions"][HW] == wait(d, cal_id)["config_update"]["version_id"]


@pytest.mark.parametrize("fake, why", [
    ({"fail": True}, "it failed (RuntimeError: the qubit is gone)"),
    ({"value": 5000.0}, "its update was not applied: device.qubit.T1[0]: fitted value "
                        "5000 is outside its sane range"),
])
def test_failing_calibration_leaves_the_dependent_held_with_the_reason(make_daemon, fake,
                                                                       why):
    d = _calibrating_daemon(make_daemon, max_age_s=0, **fake)
    r = submit(d, NOOP, fresh=[T1_KEY])
    [cal_id] = r["calibrations"]
    wait(d, cal_id)
    job = until(lambda: (j := call(d, "get", job_id=r["job_id"]))["hold_reason"] and j)
    assert job["status"] == "pending" and job["held"] and job["started_at"] is None
    assert f"calibration {cal_id} did not refresh its keys ({why}" in job["hold_reason"]
    assert "release it to run anyway" in job["hold_reason"]
    # and `labctl queue` says why, not only "held"
    out = subprocess.run([sys.executable, "-m", "labd_client.labctl", "--socket",
                          str(d.socket), "queue"], capture_output=True, text=True,
                         timeout=60).stdout
    [line] = [ln for ln in out.splitlines() if r["job_id"] in ln]
    assert line.rstrip().endswith(f"held: {job['hold_reason']}"), out
    assert html.escape(f"held: {job['hold_reason']}") in \
        QueueView(call(d, "queue"))._repr_html_()                     # and in Jupyter
    # stays held across a restart; released, it runs
    d.restart()
    job = call(d, "get", job_id=r["job_id"])
    assert job["held"] and job["status"] == "pending"
    call(d, "release", job_id=r["job_id"])
    assert wait(d, r["job_id"])["status"] == "completed"


# ---- the races, step by step ------------------------------------------------------------
T1_UPDATE = {"config_type": HW, "updates": [CalibrationUpdate(
    "device.qubit.T1[{qubit}]", result="T1", error="T1_err", bounds=(1.0, 1000.0),
    ndigits=3).resolved(0)]}
NEW_VERSION = "INSERT INTO config_versions"
JOB_END = "UPDATE jobs SET status=?"


async def _running_update_job(h: Harness, value: float = 33.3) -> tuple[str, str]:
    base = h.configs.main[HW]
    job_id = await h.submit(update_main=True, calibration=T1_UPDATE)
    assert await h.started() == job_id
    return job_id, base


def _complete(h: Harness, job_id: str, value: float = 33.3) -> None:
    h.executor.acquired(job_id)
    h.executor.handles[job_id].done.set_result(
        Outcome(EndReason.COMPLETED, results={"T1": value, "T1_err": 0.1}))


async def _content(h: Harness, vid: str) -> str:
    return (await h.configs.show(vid))["content"]


@pytest.mark.parametrize("pushed_key, merged", [("f_ge", True), ("T1", False),
                                               ("T1 same", True)])
async def test_push_in_flight_when_the_job_completes(tmp_path, pushed_key, merged):
    """A push holds the config lock (at its commit) when the job's outcome arrives: the
    update waits for it, then sees the new main and merges (or keeps its proposal; a push
    that set the key to the fitted value is no conflict)."""
    async with Harness(tmp_path) as h:
        h.configs._locks[HW] = lock = SpyLock()
        job_id, base = await _running_update_job(h)
        text = await _content(h, base)
        edited = {"f_ge": text.replace("f_ge: [4500.0]", "f_ge: [4501.5]"),
                  "T1": text.replace("T1: [20.0]", "T1: [25.0]"),
                  "T1 same": text.replace("T1: [20.0]", "T1: [33.3]")}[pushed_key]
        reached, release = h.store.gate(lambda sql: sql.startswith(NEW_VERSION))
        push = asyncio.create_task(h.configs.push(HW, edited, by="bob"))
        await reached.wait()                       # bob's push is committing
        _complete(h, job_id)
        await lock.contended.wait()                # the update waits for bob's push
        release.set()
        pushed = (await push)["version_id"]
        job = await h.final(job_id)
        upd = job.config_update
        assert job.status == "completed" and upd["base_version"] == base
        if pushed_key == "T1 same":
            assert upd["applied"] and upd["unchanged"] and upd["version_id"] == pushed
            assert h.configs.main[HW] == pushed
        elif merged:
            assert upd["applied"] and upd["merged_with"] == pushed
            assert h.configs.main[HW] == upd["version_id"]
            new = await _content(h, upd["version_id"])
            assert "f_ge: [4501.5]" in new and "T1: [33.3]" in new
            history = [r["version_id"] for r in await h.configs.main_history(HW, 3)]
            assert history == [upd["version_id"], pushed, base]
        else:
            assert not upd["applied"] and "changed device.qubit.T1[0] too" in upd["reason"]
            assert h.configs.main[HW] == pushed
            assert "T1: [33.3]" in await _content(h, upd["version_id"])


async def test_push_expecting_the_old_main_loses_to_the_job_update(tmp_path):
    """The job's update holds the lock up to its commit (the job's end, its new version
    and main's compare-and-set in one write): a push expecting the old main that arrives
    meanwhile waits, then is refused; main's history has no gap."""
    async with Harness(tmp_path) as h:
        h.configs._locks[HW] = lock = SpyLock()
        job_id, base = await _running_update_job(h)
        text = await _content(h, base)
        reached, release = h.store.gate(lambda sql: sql.startswith(JOB_END))
        _complete(h, job_id)
        await reached.wait()                        # the job's end + update, committing
        assert (await h.store.get_job(job_id)).status == "running"
        push = asyncio.create_task(h.configs.push(
            HW, text.replace("f_ge: [4500.0]", "f_ge: [4501.5]"), by="bob",
            expected_main=base))
        await lock.contended.wait()
        release.set()
        with pytest.raises(Conflict, match="someone pushed meanwhile"):
            await push
        job = await h.final(job_id)
        assert job.config_update["applied"] and h.configs.main[HW] == \
            job.config_update["version_id"]
        history = [r["version_id"] for r in await h.configs.main_history(HW, 2)]
        assert history == [job.config_update["version_id"], base]


async def test_a_failed_commit_of_the_update_leaves_no_version_behind(tmp_path):
    """The job's end and its update are one write: if it is rolled back (here: the job
    was already ended behind the scheduler's back), neither the version nor main
    changes, and the snapshot file is removed."""
    async with Harness(tmp_path) as h:
        job_id, base = await _running_update_job(h)
        await h.store.write(("UPDATE jobs SET status='failed' WHERE job_id=?", (job_id,)))
        files = set(h.configs.dir.iterdir())
        reached, release = h.store.gate(lambda sql: sql.startswith(JOB_END))
        _complete(h, job_id)
        await reached.wait()                 # the job's end + update, about to commit
        assert len(set(h.configs.dir.iterdir()) - files) == 1   # the proposed snapshot
        release.set()
        await asyncio.wait(set(h.sched._tasks), timeout=10)
        assert h.configs.main[HW] == base
        assert set(h.configs.dir.iterdir()) == files
        assert len(await h.store.config_versions(HW, 100)) == 1


PI_KEY = "device.qubit.pulses.pi_ge.gain[0]"


def test_two_stale_keys_run_two_chained_calibrations_then_the_job(make_daemon):
    rabi = _setting("pi_q0", PI_KEY, RABI, {"start": 0, "step": 100, "expts": 50,
                                             "reps": 1000}, 0)
    d = _calibrating_daemon(make_daemon, 0, rabi)
    r = submit(d, NOOP, fresh=[PI_KEY, T1_KEY])
    first, second = r["calibrations"]               # in settings order
    job = wait(d, r["job_id"])
    c1, c2 = wait(d, first), wait(d, second)
    assert c1["experiment_class"] == FAKE[0] and c2["experiment_class"] == RABI[0]
    assert c2["after_job"] == first and job["after_job"] == second
    assert job["calibrated_by"] == [first, second] and job["status"] == "completed"
    assert c1["finished_at"] < c2["started_at"] and c2["finished_at"] < job["started_at"]
    assert c2["config_update"]["applied"]
    # the job ran with the version holding both updates
    content = call(d, "config.show", version_id=job["config_versions"][HW])["content"]
    assert "T1: [31.5]" in content
    assert f"gain: [{c2['config_update']['changes'][PI_KEY]['new']}]" in content


def test_a_calibration_already_under_way_is_reused(make_daemon, tmp_path):
    gate = _gated(tmp_path, "g4")
    d = _calibrating_daemon(make_daemon, 0, gate=str(gate))
    a = submit(d, NOOP, fresh=[T1_KEY])
    until(lambda: (gate / "started").exists())
    b = submit(d, NOOP, fresh=[T1_KEY])
    assert a["calibrations"] == b["calibrations"]
    (gate / "go").touch()
    version = wait(d, a["calibrations"][0])["config_update"]["version_id"]
    for r in (a, b):
        job = wait(d, r["job_id"])
        assert job["status"] == "completed" and job["config_versions"][HW] == version


def test_a_reused_calibration_runs_at_the_priority_of_the_most_urgent_job(make_daemon):
    d = _calibrating_daemon(make_daemon, 0)
    call(d, "pause")
    a = submit(d, NOOP, fresh=[T1_KEY])
    [cal_id] = a["calibrations"]
    assert call(d, "get", job_id=cal_id)["priority"] == 0
    b = submit(d, NOOP, fresh=[T1_KEY], priority=5)
    assert b["calibrations"] == [cal_id]
    assert call(d, "get", job_id=cal_id)["priority"] == 5   # b must not wait behind a 0
    call(d, "resume")
    assert wait(d, b["job_id"])["status"] == "completed"


def test_a_batch_needing_the_same_stale_key_runs_one_calibration(make_daemon):
    d = _calibrating_daemon(make_daemon, 0)
    spec = {"experiment_class": NOOP[0], "experiment_module": NOOP[1], "fresh": [T1_KEY]}
    r = call(d, "submit_batch", jobs=[spec, spec])
    [cal_id] = r["calibrations"]
    for job_id in r["job_ids"]:
        job = wait(d, job_id)
        assert job["after_job"] == cal_id and job["status"] == "completed"
        assert job["batch_id"] == r["batch_id"]


# ---- the declarations against the fits (no daemon) ------------------------------------
@pytest.mark.parametrize("path, truth, config_edit, expt, tol", [
    ("amplitude_rabi.AmplitudeRabiExperiment", {}, ("pulses", 1500), {"reps": 2000}, 60),
    ("amplitude_rabi.AmplitudeRabiExperiment", {}, ("pulses", 1500),
     {"reps": 2000, "gain_unit": "fraction", "start": 0, "step": 0.003}, 60),
    ("t2_ramsey.T2RamseyExperiment", {"f_ge": 4500.05}, None, {"reps": 4000}, 0.01),
    ("t1.T1Experiment", {"T1": 35.0}, None, {"reps": 4000}, 4.0),
    ("resonator_spectroscopy.ResonatorSpectroscopyExperiment", {"f_res": 7052.0}, None,
     {"reps": 1000}, 0.3),
])
def test_each_calibration_moves_its_key_to_the_simulated_truth(path, truth, config_edit,
                                                               expt, tol):
    import copy
    import importlib
    import logging

    import yaml

    from labd.calibration import new_value
    from labd.hardware import SHIPPED_SOCCFG, load_soccfg_dict
    from labd.hardware.simulated import DEFAULT_TRUTH, SimulatedBoard
    from labd.yaml_roundtrip import get_path, parse_key

    hw = yaml.safe_load(open(SHIPPED_SOCCFG.parent / "hardware_config.yml"))
    if config_edit:
        hw = copy.deepcopy(hw)
        hw["device"]["qubit"]["pulses"]["pi_ge"]["gain"] = [config_edit[1]]

    class Ctx:
        job_id = "JOB-TEST"
        log = logging.getLogger("test")
        board = SimulatedBoard(load_soccfg_dict(None), truth=truth, seed=7)
        hardware_config = hw

        def check_stop(self):
            pass

        def should_stop(self):
            return False

        def progress(self, done, total):
            pass

    module, name = ("experiments.single_qubit." + path).rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    exp = cls(Ctx(), cls.config_model.model_validate(expt))
    results = exp.analyze(exp.acquire())
    [u] = [d.resolved(0) for d in cls.calibrates]
    old = get_path(hw, parse_key(u["key"]))
    new = new_value(u, {k: float(v) for k, v in results.items()
                        if isinstance(v, (int, float))}, old)
    want = {**DEFAULT_TRUTH, **truth}
    target = {"pulses": want["pi_gain"], "f_ge": want["f_ge"], "T1": want["T1"],
              "frequency": want["f_res"]}[next(p for p in parse_key(u["key"])
                                              if p in ("pulses", "f_ge", "T1", "frequency"))]
    assert new == pytest.approx(target, abs=tol), (u["key"], old, new, results)
    assert new != old


def test_labctl_update_main_and_fresh(make_daemon):
    d = _calibrating_daemon(make_daemon, 0)

    def labctl(*args):
        return subprocess.run([sys.executable, "-m", "labd_client.labctl", "--socket",
                               str(d.socket), *args], capture_output=True, text=True,
                              timeout=60, env=d.environment())
    r = labctl("submit", f"{FAKE[1]}.{FAKE[0]}", "-p", "value=42.5", "--update-main",
               "--wait")
    assert r.returncode == 0, r.stderr
    assert re.search(r"config upd: applied: main CFG-HW-\S+ \(device\.qubit\.T1\[0\] "
                     r"20\.0 -> 42\.5\)", r.stdout), r.stdout
    r = labctl("submit", f"{NOOP[1]}.{NOOP[0]}", "--fresh", T1_KEY, "--wait")
    assert r.returncode == 0, r.stderr
    assert re.search(r"calibrated: JOB-\S+", r.stdout), r.stdout
    r = labctl("submit", f"{NOOP[1]}.{NOOP[0]}", "--update-main")
    assert r.returncode != 0 and "is not a calibration" in r.stderr


def test_a_pending_update_main_job_still_updates_after_a_restart(make_daemon):
    d = make_daemon()
    r = submit(d, FAKE, {"value": 27.5}, update_main=True, hold=True)
    d.restart()
    call(d, "release", job_id=r["job_id"])
    job = wait(d, r["job_id"])
    assert job["config_update"]["applied"] and "T1: [27.5]" in main_content(d)[1]
    assert job["calibration"]["updates"][0]["key"] == T1_KEY
