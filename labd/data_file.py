"""One HDF5 file per job, written to a temp name and linked to its final name (never over
an existing file), so a file under its final name is always complete. Layout (readers of
the predecessor's files keep working):

- root attr ``config``: JSON of the full merged config (device, hw, aliases,
  data_management, expt), plus job metadata attrs (job_id, user, os_user, versions, ...)
- one dataset per data key (``xpts``, ``avgi``, ``avgq``, ``amps``, ``phases``)
- fit results as root datasets named in attr ``result_keys``; ``analysis_error`` if a fit failed
- group ``configs``: the exact content of each config version the job ran with; its attr
  ``versions`` maps each to its version_id and sha256."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
from h5py import h5a, h5d, h5f, h5g, h5p, h5s, h5t

from .durable import write_new_file


class DataError(ValueError):
    """The experiment returned something that is not savable data."""


def as_array(key: str, value: Any, what: str = "data key") -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise DataError(f"{what} {key!r}: cannot convert to an array ({exc})") from None
    if arr.dtype == object or arr.dtype.kind not in "biufcSU":
        raise DataError(f"{what} {key!r} is not numeric data (got {type(value).__name__})")
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


class _Image:
    """An HDF5 file that lives in memory, built with h5py's low-level API: HDF5 itself never
    writes to disk (it crashed the process on a full disk), and skipping h5py's high-level
    wrappers halves the cost of a small file (they were most of a no-op job's time). What a
    reader sees is the same as with h5py.File: str attributes are variable-length UTF-8,
    numbers are native scalars, datasets are contiguous without timestamps."""

    _names = itertools.count()
    _str_type = h5t.py_create(h5py.string_dtype(), logical=True)
    _scalar = h5s.create(h5s.SCALAR)
    _fapl = h5p.create(h5p.FILE_ACCESS)
    _fapl.set_fapl_core(backing_store=False)
    _fapl.set_libver_bounds(h5f.LIBVER_EARLIEST, h5f.LIBVER_LATEST)  # as h5py.File does
    _dcpl = h5p.create(h5p.DATASET_CREATE)
    _dcpl.set_obj_track_times(False)
    _utf8_names = h5p.create(h5p.LINK_CREATE)
    _utf8_names.set_char_encoding(h5t.CSET_UTF8)

    def __init__(self, source: Path | None = None) -> None:
        if source is None:
            name = f"labd-{os.getpid()}-{next(self._names)}.h5".encode()
            self.fid = h5f.create(name, h5f.ACC_TRUNC, fapl=self._fapl)
        else:
            self.fid = h5f.open(os.fsencode(source), h5f.ACC_RDWR, fapl=self._fapl)
        self.root = h5g.open(self.fid, b"/")

    def __enter__(self) -> "_Image":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.fid.close()

    @property
    def size(self) -> int:
        return self.fid.get_filesize()

    def has(self, name: str) -> bool:
        return self.root.links.exists(name.encode())

    def attr(self, obj: Any, name: str, value: Any) -> None:
        """A new attribute; containers are stored as JSON text."""
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, default=str)
        if isinstance(value, str):
            h5a.create(obj, name.encode(), self._str_type, self._scalar).write(
                np.array(value, dtype=object))
        else:
            arr = np.require(value, requirements="C")  # (ascontiguousarray makes 0-d 1-d)
            h5a.create(obj, name.encode(), *self._type_space(arr)).write(arr)

    def dataset(self, obj: Any, name: str, arr: np.ndarray) -> None:
        arr = np.require(arr, requirements="C")
        h5d.create(obj, name.encode(), *self._type_space(arr), dcpl=self._dcpl,
                   lcpl=self._lcpl(name)).write(h5s.ALL, h5s.ALL, arr)

    def text(self, obj: Any, name: str, content: str) -> None:
        """A UTF-8 text dataset, fixed-length: reads back like a variable-length one (bytes
        from ``[()]``, str from ``.asstr()[()]``) and costs half as much to write."""
        data = content.encode()
        arr = np.array(data, dtype=f"S{max(len(data), 1)}")
        tid = h5t.py_create(arr.dtype).copy()
        tid.set_cset(h5t.CSET_UTF8)
        h5d.create(obj, name.encode(), tid, self._scalar, dcpl=self._dcpl,
                   lcpl=self._lcpl(name)).write(h5s.ALL, h5s.ALL, arr, mtype=tid)

    def _lcpl(self, name: str) -> Any:
        """Names are marked UTF-8 when they are not ASCII, as h5py does."""
        return None if name.isascii() else self._utf8_names

    def _type_space(self, arr: np.ndarray) -> tuple[Any, Any]:
        return (h5t.py_create(arr.dtype, logical=True),
                h5s.create_simple(arr.shape) if arr.shape else self._scalar)

    def save(self, path: Path, replace: bool = False) -> None:
        h5f.flush(self.fid)
        # Written to <name>.part, then linked: never over another job's file (a reused ID).
        write_new_file(path, self.fid.get_file_image(), 0o644, replace,
                       path.with_name(path.name + ".part"))


def write_raw(path: Path, data: dict[str, np.ndarray], config: dict[str, Any],
              meta: dict[str, Any], configs: dict[str, dict[str, str]],
              analysis: str = "pending", replace: bool = False,
              keep: bool = False) -> "_Image | None":
    """Write the raw data and everything needed to reproduce it. ``analysis`` is "pending"
    until add_results() runs, or "none" for an experiment without analysis. ``replace``:
    only for this job's own file (see data_writer). ``keep``: return the file, still
    open in memory, for add_results (no reading it back)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = _Image()
    try:
        f.attr(f.root, "config", config)
        for k, v in meta.items():
            if v is not None and v != []:  # an attribute costs ~40 us: skip empty ones
                f.attr(f.root, k, v)
        f.attr(f.root, "analysis", analysis)
        units = meta.get("data_units") or {}
        for key, arr in data.items():
            f.dataset(f.root, key, arr)
            if key in units:  # e.g. xpts in DAC, us or MHz
                f.attr(h5d.open(f.root, key.encode()), "unit", units[key])
        grp = h5g.create(f.root, b"configs")
        for name, info in configs.items():
            f.text(grp, name, info["content"])
        f.attr(grp, "versions", {name: {"version_id": i["version_id"], "sha256": i["sha256"]}
                                 for name, i in configs.items()})
        f.save(path, replace)
    except BaseException:
        f.close()
        raise
    if keep:
        return f
    f.close()
    return None


def root_attr(path: Path, name: str) -> str | None:
    """A text attribute of a data file (None if it has none, or is unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get(name)
    except (OSError, KeyError):
        return None
    return value.decode() if isinstance(value, bytes) else value


def storable_results(results: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The fit results the file can store. One that is not numeric data (a ragged list,
    an object) is left out and named, so the others and the raw data still save."""
    storable, bad = {}, []
    for key, value in results.items():
        try:
            as_array(str(key), value, "result")
        except DataError as exc:
            bad.append(f"{exc}, not saved")
            continue
        except Exception as exc:   # an object whose conversion itself breaks
            bad.append(f"result {str(key)!r}: {type(exc).__name__}: {exc}, not saved")
            continue
        storable[str(key)] = value
    return storable, "; ".join(bad) or None


def add_results(path: Path, results: dict[str, Any], analysis_error: str | None,
                image: _Image | None = None) -> None:
    """Add fit results: the saved file (``image``: as write_raw kept it, else read back)
    is extended in memory and replaced atomically, so a crash here leaves the raw file
    intact."""
    with image or _Image(path) as f:
        keys = []
        for key, value in results.items():
            if f.has(key):
                analysis_error = (analysis_error or "") + \
                    f" result {key!r} clashes with a data key;"
                continue
            f.dataset(f.root, key, as_array(key, value))
            keys.append(key)
        f.attr(f.root, "result_keys", keys)
        h5a.delete(f.root, b"analysis")  # "pending" until now
        f.attr(f.root, "analysis", "failed" if analysis_error else "done")
        if analysis_error:
            f.attr(f.root, "analysis_error", analysis_error)
        f.save(path, replace=True)   # this job's own raw file, now with results


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
