"""Config versioning and reproducible data files."""
from __future__ import annotations

import os
import re
import stat
import threading
import time

import h5py
import pytest

from labd.data_file import load
from labd_client import Client, Conflict, InvalidParams, LimitExceeded, NotFound

NOOP = ("NoOpExperiment", "experiments.diagnostics.noop")
SLEEP = ("SleepExperiment", "experiments.diagnostics.sleep")


def test_first_start_uses_shipped_examples_as_main(daemon, client):
    types = {t["name"]: t for t in client.config_types()}
    assert {n: t["code"] for n, t in types.items()} == {
        "hardware_config": "HW", "multiphoton_config": "MP",
        "floquet_storage_swap": "FL", "man1_storage_swap": "M1"}
    for t in types.values():
        assert re.fullmatch(rf"CFG-{t['code']}-\d{{8}}-\d{{5}}", t["main"])
        ext = ".yml" if t["format"] == "yaml" else ".csv"
        snap = daemon.state_dir / "configs" / f"{t['main']}{ext}"
        assert stat.S_IMODE(snap.stat().st_mode) == 0o444
    hw = client.config_pull("hardware_config")
    assert "coupler_current" in hw["content"] and "data_management" not in hw["content"]


def test_push_dedupe_set_main_history_diff(client):
    base = client.config_pull("multiphoton_config")
    new = base["content"] + "  ge:\n    freq: [4500.0]\n"
    r1 = client.config_push("multiphoton_config", new, message="add ge")
    assert r1["created"] and r1["version_id"] != base["version_id"]
    r2 = client.config_push("multiphoton_config", new)
    assert r2 == {**r1, "created": False}
    assert client.config_pull("multiphoton_config")["version_id"] == r1["version_id"]
    with pytest.raises(Conflict, match="someone pushed meanwhile"):
        client.config_push("multiphoton_config", new + "#x\n",
                           expected_main=base["version_id"])
    client.config_set_main("multiphoton_config", base["version_id"])
    assert client.config_pull("multiphoton_config")["version_id"] == base["version_id"]
    hist = client.config_history("multiphoton_config")["history"]
    assert [h["version_id"] for h in hist[:2]] == [base["version_id"], r1["version_id"]]
    assert hist[0]["set_by"] == "root" and hist[0]["set_at"].endswith("+00:00")
    versions = client.config_versions("multiphoton_config")["versions"]
    assert {v["version_id"] for v in versions} >= {base["version_id"], r1["version_id"]}
    assert [v["is_main"] for v in versions].count(True) == 1
    diff = client.config_diff(base["version_id"], r1["version_id"])
    assert "+  ge:" in diff
    shown = client.config_show(r1["version_id"])
    assert shown["content"] == new and shown["message"] == "add ge"


def test_a_slow_diff_never_stalls_other_clients_and_ends_at_its_time_limit(make_daemon):
    """difflib's time grows about with the cube of the line count for contents whose lines
    each repeat just under its 1% "popular" cut: 20k such lines (58 KB, far below the
    1 MB config cap) take it about a minute. That diff ran on the event loop: every client
    waited, and past WatchdogSec systemd would have killed labd and the running job. It
    now runs in a child process that is stopped at config_diff_timeout_s."""
    d = make_daemon(config_diff_timeout_s=1.0)
    n, k = 20_000, 101
    with Client(d.socket) as c:
        va = c.config_push("floquet_storage_swap",
                           "".join(f"{i % k}\n" for i in range(n)))["version_id"]
        vb = c.config_push("floquet_storage_swap",
                           "".join(f"{(i * 37) % k}\n" for i in range(n)))["version_id"]
    outcome: list[BaseException] = []

    def differ() -> None:
        with Client(d.socket, timeout=60) as c:
            try:
                c.config_diff(va, vb)
            except LimitExceeded as exc:
                outcome.append(exc)
    thread = threading.Thread(target=differ)
    thread.start()
    worst = 0.0
    with Client(d.socket) as c:
        while thread.is_alive():   # ends: the diff is stopped after 1 s
            t0 = time.monotonic()
            c.health()
            worst = max(worst, time.monotonic() - t0)
        thread.join()
        assert worst < 2, f"health waited {worst:.1f} s behind another client's diff"
        [exc] = outcome
        assert "over 1 s" in str(exc) and "compare them locally" in str(exc)
        assert c.config_diff(va, va) == ""             # and quick ones still answer
        assert c.health()["status"] == "ok"


def test_bad_config_input(client):
    with pytest.raises(InvalidParams, match="not valid yaml"):
        client.config_push("hardware_config", "device: [unclosed")
    with pytest.raises(InvalidParams, match="must be a YAML mapping"):
        client.config_push("hardware_config", "- just\n- a list\n")
    with pytest.raises(InvalidParams, match="unknown config type 'bogus'"):
        client.config_pull("bogus")
    with pytest.raises(NotFound):
        client.config_show("CFG-HW-20000101-00001")
    mp = client.config_versions("multiphoton_config")["versions"][0]["version_id"]
    with pytest.raises(InvalidParams, match="is a multiphoton_config version"):
        client.config_set_main("hardware_config", mp)
    with pytest.raises(InvalidParams, match="is a multiphoton_config version"):
        client.submit(*NOOP, config_versions={"hardware_config": mp})


def test_job_uses_main_as_of_its_start_and_file_is_self_contained(client):
    blocker = client.submit(*SLEEP, {"seconds": 30, "steps": 300})
    job_id = client.submit(*NOOP)
    hw = client.config_pull("hardware_config")
    changed = hw["content"].replace("f_ge: [4500.0]", "f_ge: [4500.5]")
    pushed = client.config_push("hardware_config", changed)["version_id"]
    client.cancel(blocker)
    job = client.wait(job_id, timeout=30)
    assert job.config_versions["hardware_config"] == pushed
    loaded = load(job.data_file_path)
    assert loaded["configs"]["hardware_config"] == changed
    assert loaded["config"]["device"]["qubit"]["f_ge"] == [4500.5]
    assert loaded["attrs"]["job_id"] == job_id
    client.config_push("hardware_config", hw["content"])  # restore for other tests


def test_pins_inline_configs_and_rerun(client):
    hw = client.config_pull("hardware_config")
    pinned = client.submit(*NOOP, {"value": 7.0},
                           config_versions={"hardware_config": hw["version_id"]})
    client.config_push("hardware_config", hw["content"] + "# later edit\n")
    job = client.wait(pinned, timeout=30)
    assert job.config_versions["hardware_config"] == hw["version_id"]
    inline = "mode,freq_MHz,gain,length_us\n1,1.0,0.1,0.1\n"
    a = client.wait(client.submit(*NOOP, inline_configs={"man1_storage_swap": inline}), 30)
    b = client.wait(client.submit(*NOOP, inline_configs={"man1_storage_swap": inline}), 30)
    assert a.config_versions["man1_storage_swap"] == b.config_versions["man1_storage_swap"]
    assert load(a.data_file_path)["configs"]["man1_storage_swap"] == inline
    again = client.wait(client.rerun(pinned), timeout=30)
    assert again.config_versions == job.config_versions
    assert again.experiment_config == {"value": 7.0}
    client.config_push("hardware_config", hw["content"])


def test_verify_detects_tampering_and_jobs_refuse_it(make_daemon):
    d = make_daemon()
    with Client(d.socket) as c:
        # (#14) a job read and checked it already: the next one checks it again all the
        # same (jobs cache verified content by the file's identity, which tampering changes)
        assert c.wait(c.submit(*NOOP), timeout=30).status == "completed"
        assert c.config_verify()["ok"]
        main = c.config_pull("floquet_storage_swap")["version_id"]
        snap = d.state_dir / "configs" / f"{main}.csv"
        os.chmod(snap, 0o644)
        snap.write_text(snap.read_text() + "3,1,1,1\n")
        r = c.config_verify()
        assert not r["ok"] and r["bad"][0]["version_id"] == main
        assert "does not match its stored SHA256" in r["bad"][0]["error"]
        job = c.wait(c.submit(*NOOP), timeout=30)
        assert job.status == "failed" and "does not match its stored SHA256" in \
            job.error_message
        assert job.config_versions["floquet_storage_swap"] == main
        r = d.rpc("config.pull", type="floquet_storage_swap")   # a clear error, not internal
        assert r["error"]["code"] == -32005 and "push the same content again" in \
            r["error"]["message"]
        assert "push its original content again" in c.config_verify()["bad"][0]["action"]


def test_pushing_matching_content_repairs_a_damaged_snapshot(make_daemon):
    d = make_daemon()
    with Client(d.socket) as c:
        good = c.config_pull("floquet_storage_swap")
        snap = d.state_dir / "configs" / f"{good['version_id']}.csv"
        snap.unlink()
        assert c.wait(c.submit(*NOOP), timeout=30).status == "failed"
        again = c.config_push("floquet_storage_swap", good["content"])
        assert again["version_id"] == good["version_id"] and again["repaired"]
        assert c.config_verify()["ok"]
        assert c.wait(c.submit(*NOOP), timeout=30).status == "completed"


def test_output_root_is_a_daemon_setting(make_daemon, tmp_path):
    out = tmp_path / "lab-data"
    d = make_daemon(output_root=str(out))
    with Client(d.socket) as c:
        job = c.wait(c.submit(*NOOP), timeout=30)
    assert job.data_file_path.startswith(str(out) + "/")
    with h5py.File(job.data_file_path) as f:
        assert '"output_root": "%s"' % out in f.attrs["config"]


def test_a_job_needing_a_config_type_without_main_says_how_to_push_one(make_daemon):
    """#10: no main hardware_config -> a sentence naming the type and the command (it was a
    raw TypeError), before any hardware is touched."""
    d = make_daemon(config_types=[{"name": "multiphoton_config", "code": "MP",
                                   "format": "yaml"}])
    with Client(d.socket) as c:
        job = c.wait(c.submit("T1Experiment", "experiments.single_qubit.t1"), timeout=30)
        assert job.status == "failed" and job.end_reason == "start_failed"
        assert job.error_message.startswith("T1Experiment needs a hardware_config, and there "
                                            "is no main version of it: push one with "
                                            "`labctl config push hardware_config FILE`")
        assert c.wait(c.submit("NoOpExperiment", "experiments.diagnostics.noop"),
                      timeout=30).is_successful()
