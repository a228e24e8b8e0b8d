"""One HDF5 file per job, written to a temp name and renamed, so a file under its final name
is always complete. Layout (readers of the predecessor's files keep working):

- root attr ``config``: JSON of the full merged config (device, hw, aliases,
  data_management, expt), plus job metadata attrs (job_id, user, os_user, versions, ...)
- one dataset per data key (``xpts``, ``avgi``, ``avgq``, ``amps``, ``phases``)
- fit results as root datasets named in attr ``result_keys``; ``analysis_error`` if a fit failed
- group ``configs``: the exact content of each config version the job ran with; its attr
  ``versions`` maps each to its version_id and sha256."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np


class DataError(ValueError):
    """The experiment returned something that is not savable data."""


def as_array(key: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise DataError(f"data key {key!r}: cannot convert to an array ({exc})") from None
    if arr.dtype == object or arr.dtype.kind not in "biufcSU":
        raise DataError(f"data key {key!r} is not numeric data (got {type(value).__name__})")
    if arr.dtype.kind == "U":
        arr = arr.astype(h5py.string_dtype())
    return arr


def check_data(data: Any) -> dict[str, np.ndarray]:
    if not isinstance(data, Mapping) or not data:
        raise DataError(f"acquire() must return a non-empty dict of arrays, "
                        f"got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key or "/" in key or key in ("configs",):
            raise DataError(f"data key {key!r} is not a valid dataset name")
        out[key] = as_array(key, value)
    return out


def _attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: a file under its final name is
    always complete, and a full or read-only disk is a plain OSError."""
    tmp = path.with_name(path.name + ".part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _image(source: Path | None) -> h5py.File:
    """An HDF5 file that lives in memory (HDF5 itself never writes to disk: it crashed the
    process on a full disk); empty, or loaded from ``source``."""
    if source is None:
        return h5py.File(f"labd-{os.getpid()}-{id(object())}.h5", "w", driver="core",
                         backing_store=False)
    return h5py.File(source, "r+", driver="core", backing_store=False)


def write_raw(path: Path, data: dict[str, np.ndarray], config: dict[str, Any],
              meta: dict[str, Any], configs: dict[str, dict[str, str]],
              analysis: str = "pending") -> None:
    """Write the raw data and everything needed to reproduce it. ``analysis`` is "pending"
    until add_results() runs, or "none" for an experiment without analysis."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _image(None) as f:
        attrs = f.attrs  # h5py builds a new AttributeManager on every f.attrs
        attrs["config"] = json.dumps(config, default=str)
        for k, v in meta.items():
            if v is not None and v != []:  # each HDF5 attribute costs ~75 us
                attrs[k] = _attr(v)
        attrs["analysis"] = analysis
        for key, arr in data.items():
            f.create_dataset(key, data=arr)
        grp = f.create_group("configs")
        for name, info in configs.items():
            grp.create_dataset(name, data=info["content"], dtype=h5py.string_dtype())
        grp.attrs["versions"] = json.dumps(
            {name: {"version_id": i["version_id"], "sha256": i["sha256"]}
             for name, i in configs.items()})
        f.flush()
        image = f.id.get_file_image()
    _write_atomic(path, image)


def add_results(path: Path, results: dict[str, Any], analysis_error: str | None) -> None:
    """Add fit results: the saved file is loaded into memory, extended, and replaced
    atomically, so a crash here leaves the raw file intact."""
    with _image(path) as f:
        keys = []
        for key, value in results.items():
            if key in f:
                analysis_error = (analysis_error or "") + \
                    f" result {key!r} clashes with a data key;"
                continue
            f.create_dataset(key, data=as_array(key, value))
            keys.append(key)
        f.attrs["result_keys"] = json.dumps(keys)
        f.attrs["analysis"] = "failed" if analysis_error else "done"
        if analysis_error:
            f.attrs["analysis_error"] = analysis_error
        f.flush()
        image = f.id.get_file_image()
    _write_atomic(path, image)


def load(path: Path) -> dict[str, Any]:
    """Arrays, merged config, per-type config contents and metadata of a data file."""
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        arrays = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        configs = {k: f["configs"][k][()].decode() for k in f["configs"].keys()} \
            if "configs" in f else {}
        versions = json.loads(f["configs"].attrs.get("versions", "{}")) if "configs" in f \
            else {}
    config = json.loads(attrs.pop("config", "{}"))
    return {"data": arrays, "config": config, "configs": configs, "versions": versions,
            "attrs": attrs}
