"""Reading a job's HDF5 file in the client (h5py only: no daemon code in a notebook env).
``SlabFile`` is the predecessor's reader: an ``h5py.File`` with ``load_config()``, the same
as ``json.loads(f.attrs['config'])``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py


def _text(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def load(path: str | Path) -> dict[str, Any]:
    """Arrays, merged config, per-type config contents and metadata of a data file."""
    with h5py.File(path, "r") as f:
        attrs = {k: _text(v) for k, v in f.attrs.items()}
        arrays = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        configs, versions = {}, {}
        if "configs" in f:
            configs = {k: _text(f["configs"][k][()]) for k in f["configs"].keys()}
            versions = json.loads(_text(f["configs"].attrs.get("versions", "{}")))
    config = json.loads(attrs.pop("config", "{}"))
    return {"data": arrays, "config": config, "configs": configs, "versions": versions,
            "attrs": attrs}


class SlabFile(h5py.File):
    """The predecessor's ``slab.datamanagement.SlabFile`` for reading labd data files."""

    def load_config(self) -> dict[str, Any]:
        """The merged config the job ran with (device, hw, aliases, expt, ...)."""
        return json.loads(_text(self.attrs["config"]))
