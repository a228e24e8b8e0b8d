"""config trace (#13): the history of one parameter in main."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from labd.api.params import ConfigTrace
from labd.config_trace import lookup, parse_key, trace, _ABSENT
from labd.store import Op
from labd_client import InvalidParams, NotFound
from sched_harness import Harness

GAIN = "device.qubit.pulses.pi_ge.gain"


def with_gain(base: str, gain: str, extra: str = "") -> str:
    out = base.replace("gain: [1800]", f"gain: [{gain}]")
    assert out != base or gain == "1800"
    return out + extra


def test_parse_key_and_lookup():
    assert parse_key("device.qubit.f_ge[0]") == parse_key("device.qubit.f_ge.0") == \
        ["device", "qubit", "f_ge", "0"]
    doc = {"a": {"b": [10, {"c": 3}]}, 1: "int key"}
    assert lookup(doc, parse_key("a.b[1].c")) == 3
    assert lookup(doc, parse_key("a.b.-1.c")) == 3
    assert lookup(doc, parse_key("1")) == "int key"
    assert lookup(doc, parse_key("a.b.2")) is _ABSENT
    assert lookup(doc, parse_key("a.x")) is _ABSENT
    for bad in ("a..b", "", ".a", "a."):
        with pytest.raises(InvalidParams, match="dotted path"):
            parse_key(bad)


def test_trace_collapses_and_follows_main(client, daemon):
    base = client.config_pull("hardware_config")
    v1 = base["version_id"]
    v2 = client.config_push("hardware_config", with_gain(base["content"], "1900"))["version_id"]
    # an unrelated change: main moves, the gain does not -> no entry
    v3 = client.config_push("hardware_config", with_gain(base["content"], "1900", "# x\n")
                            )["version_id"]
    v4 = client.config_push("hardware_config", with_gain(base["content"], "2000"))["version_id"]
    client.config_set_main("hardware_config", v1)       # back to the original value
    changes = client.config_trace("hardware_config", GAIN)
    assert [(c["version_id"], c["value"]) for c in changes] == [
        (v1, [1800]), (v2, [1900]), (v4, [2000]), (v1, [1800])]
    assert v3 not in {c["version_id"] for c in changes}
    assert changes[0]["created_by"] == "labd (shipped example)"
    assert changes[1]["created_by"] == "root" and changes[1]["created_by_job_id"] is None
    assert all(c["since"].endswith("+00:00") for c in changes)
    assert changes[-1]["set_by"] == "root"
    one = client.config_trace("hardware_config", GAIN + "[0]")
    assert [c["value"] for c in one] == [1800, 1900, 2000, 1800]
    assert client.config_trace("hardware_config", GAIN + ".0") == one


def test_unknown_key_names_nearest(client):
    with pytest.raises(NotFound) as e:
        client.config_trace("hardware_config", "device.qubit.pulses.pi_ge.gian")
    assert "device.qubit.pulses.pi_ge.gain" in e.value.message
    assert "nearest existing keys" in e.value.message
    with pytest.raises(NotFound, match="device.qubit.f_ge"):
        client.config_trace("hardware_config", "device.qubit.f_eg[0]")
    with pytest.raises(InvalidParams, match="unknown config type"):
        client.config_trace("no_such_config", "a")
    with pytest.raises(InvalidParams, match="dotted path"):
        client.config_trace("hardware_config", "device..qubit")


def test_key_added_then_removed(client):
    base = client.config_pull("multiphoton_config")
    new = base["content"] + "trace_probe:\n  x: 1\n"
    v_add = client.config_push("multiphoton_config", new)["version_id"]
    v_del = client.config_push("multiphoton_config", base["content"] + "# gone\n")["version_id"]
    changes = client.config_trace("multiphoton_config", "trace_probe.x")
    # before it existed is not a value it had; its removal is one
    assert [(c["version_id"], c["absent"], c["value"]) for c in changes] == [
        (v_add, False, 1), (v_del, True, None)]


def test_labctl_config_trace(client, daemon):
    def labctl(*args):
        return subprocess.run([sys.executable, "-m", "labd_client.labctl", "--socket",
                               str(daemon.socket), *args], capture_output=True, text=True,
                              timeout=60)
    r = labctl("config", "trace", "hardware_config", "device.qubit.T1[0]")
    assert r.returncode == 0, r.stderr
    assert "20.0" in r.stdout and "CFG-HW-" in r.stdout and "by labd (shipped example)" \
        in r.stdout
    r = labctl("config", "trace", "hardware_config", "device.qubit.T1[0]", "--json")
    out = json.loads(r.stdout)
    assert out["key"] == "device.qubit.T1[0]" and out["changes"][0]["value"] == 20.0
    r = labctl("config", "trace", "hardware_config", "device.qubitt")
    assert r.returncode == 3 and "device.qubit" in r.stderr


async def test_reads_created_by_job_id_when_the_column_exists(tmp_path):
    """A version a job created (config_versions.created_by_job_id) shows that job."""
    async with Harness(tmp_path) as h:
        base = await h.configs.pull("hardware_config")
        before = await trace(h.configs, "hardware_config", GAIN)
        assert before["changes"][0]["created_by_job_id"] is None
        r = await h.configs.push("hardware_config", with_gain(base["content"], "1750"),
                                 by="alice")
        await h.store.write(Op("UPDATE config_versions SET created_by_job_id = ? WHERE "
                               "version_id = ?", ("JOB-20261125-00007", r["version_id"])))
        out = await trace(h.configs, "hardware_config", GAIN + "[0]")
        assert [(c["value"], c["created_by"], c["created_by_job_id"])
                for c in out["changes"]] == [
            (1800, "labd (shipped example)", None), (1750, "alice", "JOB-20261125-00007")]
        assert out["main"] == r["version_id"]
        assert ConfigTrace(type="hardware_config", key="x").limit == 10_000
