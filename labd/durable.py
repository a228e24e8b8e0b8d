"""Files that are never overwritten: data files and config snapshots are written under a
unique temp name, fsynced, then *linked* to their final name, which fails if that name
exists. Whatever the database or the clock says, an existing file is never replaced."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = fsync_path   # a directory: makes the names in it (links, renames) durable


def write_new_file(path: Path, data: bytes, mode: int = 0o444, replace: bool = False,
                   tmp: Path | None = None) -> None:
    """Write ``data`` under ``path`` atomically and durably. Raises FileExistsError if the
    name is taken, unless ``replace`` (a repair, or a writer rewriting its own file).
    ``tmp``: a fixed temp name (one writer per name), else a unique one."""
    if tmp is None:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".",
                                        suffix=".part")
    else:
        tmp_name = os.fspath(tmp)
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp_name, path)
        else:
            try:
                os.link(tmp_name, path)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, "already exists; labd never overwrites "
                                      "a data file or config snapshot", str(path)) from None
    finally:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
    fsync_dir(path.parent)
