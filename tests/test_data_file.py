"""The data file writer uses h5py's low-level API for speed; what a reader sees must be
what h5py's high-level API would have written."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from labd import data_file

DATA = {"xpts": np.linspace(0, 1, 5), "avgi": np.array([1.0]), "ampé": np.arange(3),
        "c": np.array([1 + 2j]), "flags": np.array([True, False]), "empty": np.zeros(0),
        "scalar": np.float32(3), "names": data_file.as_array("names", ["q0", "q1"]),
        "raw": np.array([b"x"]), "grid": np.ones((2, 3))}
META = {"job_id": "JOB-20261124-00001", "user": "alice", "priority": 3,
        "config_versions": {"hardware_config": "CFG-HW-20261124-00001"}, "batch_id": None,
        "nonfinite_keys": []}
CONFIG = {"device": {"qubit": {"f_ge": 4.1e9}}, "expt": {"reps": 10}}


def reference(path: Path) -> None:
    """The same content, written the straightforward h5py way."""
    with h5py.File(path, "w") as f:
        f.attrs["config"] = json.dumps(CONFIG)
        f.attrs["job_id"] = META["job_id"]
        f.attrs["user"] = META["user"]
        f.attrs["priority"] = META["priority"]
        f.attrs["config_versions"] = json.dumps(META["config_versions"])
        f.attrs["analysis"] = "none"
        for key, arr in DATA.items():
            f[key] = arr  # (unlike create_dataset, this marks non-ASCII names UTF-8)


def describe(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        for k, v in f.attrs.items():
            out["@" + k] = (repr(v), type(v).__name__)
        for k in DATA:
            d = f[k]
            out[k] = (repr(d[()]), d.dtype.str, d.shape, d.chunks,
                      f.id.links.get_info(k.encode()).cset)
    return out


def test_low_level_writer_matches_h5py(tmp_path):
    ours, theirs = tmp_path / "ours.h5", tmp_path / "theirs.h5"
    data_file.write_raw(ours, DATA, CONFIG, META, {}, analysis="none")
    reference(theirs)
    assert describe(ours) == describe(theirs)


def test_results_and_config_contents_round_trip(tmp_path):
    path = tmp_path / "job.h5"
    content = "qubit:\n  f_ge: 4.1e9  # é\n"
    data_file.write_raw(path, {"xpts": np.arange(3.0)}, CONFIG, META,
                        {"hardware_config": {"version_id": "CFG-HW-1", "sha256": "abc",
                                             "content": content}})
    data_file.add_results(path, {"t1_us": 12.5, "xpts": 1.0}, None)
    loaded = data_file.load(path)
    assert loaded["configs"] == {"hardware_config": content}
    assert loaded["versions"] == {"hardware_config": {"version_id": "CFG-HW-1",
                                                      "sha256": "abc"}}
    assert loaded["config"] == CONFIG
    assert loaded["data"]["t1_us"] == 12.5
    attrs = loaded["attrs"]
    assert attrs["analysis"] == "failed" and "clashes with a data key" in attrs["analysis_error"]
    assert json.loads(attrs["result_keys"]) == ["t1_us"]
    with h5py.File(path) as f:
        assert f["configs/hardware_config"].asstr()[()] == content
