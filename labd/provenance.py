"""Code provenance of a job: a content hash of the whole experiment package it imported and
the git revision of the checkout holding it (+"-dirty" when the package differs from HEAD).

Both are cached by file identity (mtime_ns, size, inode): a file is re-read only when its
identity changes, and git runs once per change of the package or the repository's
HEAD/index, never per job. HEAD and refs are read from ``.git`` directly."""
from __future__ import annotations

import errno
import hashlib
import math
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .dir_watch import DirWatch

FileId = tuple[int, int, int]  # mtime_ns, size, inode


def file_id(st: os.stat_result) -> FileId:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


UNREAD: FileId = (-1, -1, -1)   # a directory that could not be listed: never "unchanged"


@dataclass(frozen=True)
class PackageState:
    sha256: str                  # over sorted relative paths + file hashes
    files: dict[str, str]        # relative path -> sha256 of the file


class PackageHasher:
    """Hashes every ``.py`` file under a package root, re-reading only changed files.

    A scan with nothing changed costs one stat per directory and per file: the tree is
    walked again only when a directory's identity changed (a file added, removed or
    replaced by an editor's rename) or inotify saw anything. A quick scan (a submit's, on
    the event loop) costs one read of an inotify queue instead, while the watch saw
    nothing and the last full scan is under QUICK_MAX_AGE_S old: that bounds how late it
    notices a change inotify cannot see (a file edited from another NFS client). Jobs
    always run after a full scan."""

    QUICK_MAX_AGE_S = 1.0

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: dict[str, FileId] = {}
        self._paths: dict[str, str] = {}                # relative -> absolute path
        self._files: dict[str, tuple[FileId, str]] = {}
        self._watch: DirWatch | None = None
        self._full_at = -math.inf                       # monotonic start of the last full scan
        self.state: PackageState | None = None

    def _walk(self) -> None:
        """Every directory is watched, then its identity taken, then listed: a change
        after any of these steps is caught by the next one or by the next scan. One that
        cannot be listed (someone's private directory) is skipped, as os.walk does, and
        tried again at the next scan: a chmod changes no mtime."""
        if self._watch is not None:
            self._watch.close()
        try:
            self._watch = DirWatch()
        except OSError:
            self._watch = None
        dirs: dict[str, FileId] = {}
        paths: dict[str, str] = {}
        todo = [str(self.root)]
        while todo:
            d = todo.pop()
            try:
                self._watch_dir(d)
                dirs[d] = file_id(os.stat(d))
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue   # gone meanwhile: its parent's identity changed
            except OSError:
                dirs[d] = UNREAD
                continue
            for e in entries:
                if e.is_dir():
                    if e.name != "__pycache__" and not e.is_symlink():
                        todo.append(e.path)
                elif e.name.endswith(".py"):
                    paths[os.path.relpath(e.path, self.root)] = e.path
        self._dirs, self._paths = dirs, paths

    def _watch_dir(self, d: str) -> None:
        if self._watch is None:
            return
        try:
            self._watch.add(d)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
                raise   # gone, or unreadable: the walk skips it
            self._watch.close()   # out of watches: every scan stats, as before
            self._watch = None

    def _dirs_changed(self) -> bool:
        try:
            return not self._dirs or any(file_id(os.stat(d)) != ident
                                         for d, ident in self._dirs.items())
        except FileNotFoundError:
            return True

    def scan(self, quick: bool = False) -> PackageState:
        # consumed before the stats; an event also walks the tree again, since a module
        # added in the clock tick of the last walk leaves its directory's identity as it was
        # (coarse timestamps: kernels before 6.13, NFS)
        event = self._watch is not None and self._watch.changed()
        now = time.monotonic()
        if quick and self._watch is not None and not event and self.state is not None \
                and now - self._full_at < self.QUICK_MAX_AGE_S:
            return self.state
        self._full_at = now
        if event or self._dirs_changed():
            self._walk()
        files: dict[str, str] = {}
        changed = False
        for rel, path in self._paths.items():
            try:
                ident = file_id(os.stat(path))
            except FileNotFoundError:
                self._dirs = {}  # gone since the walk: walk again next time
                continue
            known = self._files.get(rel)
            if known is None or known[0] != ident:
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                self._files[rel] = (ident, digest)
                changed = changed or known is None or known[1] != digest
            files[rel] = self._files[rel][1]
        for rel in self._files.keys() - files.keys():
            del self._files[rel]
        if self.state is None or changed or files.keys() != self.state.files.keys():
            h = hashlib.sha256()
            for rel in sorted(files):
                h.update(f"{rel}\0{files[rel]}\n".encode())
            self.state = PackageState(h.hexdigest(), files)
        return self.state


def _git_dirs(start: Path) -> tuple[Path, Path, Path] | None:
    """(work tree, git dir, common dir) of the checkout containing ``start``; follows the
    ``.git`` file of a linked worktree."""
    for d in (start, *start.parents):
        dot = d / ".git"
        if dot.is_dir():
            return d, dot, dot
        if dot.is_file():
            text = dot.read_text().strip()
            if not text.startswith("gitdir:"):
                return None
            gitdir = (d / text.split(":", 1)[1].strip()).resolve()
            common = gitdir
            if (gitdir / "commondir").is_file():
                common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
            return d, gitdir, common
    return None


def _read_ref(gitdir: Path, common: Path, ref: str) -> str | None:
    for base in (gitdir, common):
        p = base / ref
        if p.is_file():
            return p.read_text().strip()
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            if line.endswith(" " + ref) and not line.startswith(("#", "^")):
                return line.split(" ", 1)[0]
    return None


def _stat_id(path: Path) -> FileId | None:
    try:
        return file_id(path.stat())
    except OSError:
        return None


class GitRevision:
    """HEAD of the checkout holding a package, "-dirty" if the package has changes.

    HEAD and refs are read from files; ``git status`` runs only when HEAD, the index or the
    package's content changed since the last answer."""

    def __init__(self, package_root: Path) -> None:
        self.package_root = package_root
        self.dirs = _git_dirs(package_root)
        self._key: tuple | None = None
        self._rev: str | None = None
        self._lock = threading.Lock()

    def prefetch(self, package_sha256: str) -> None:
        """Work out the revision on a side thread (after the package changed), so the
        executor thread finds it cached."""
        threading.Thread(target=self.revision, args=(package_sha256,), daemon=True,
                         name="labd-git-rev").start()

    def head(self) -> str | None:
        if self.dirs is None:
            return None
        _, gitdir, common = self.dirs
        try:
            head = (gitdir / "HEAD").read_text().strip()
        except OSError:
            return None
        if head.startswith("ref:"):
            return _read_ref(gitdir, common, head[4:].strip())
        return head or None

    def revision(self, package_sha256: str) -> str | None:
        head = self.head()
        if head is None or self.dirs is None:
            return None
        work, gitdir, _ = self.dirs
        key = (head, _stat_id(gitdir / "index"), package_sha256)
        with self._lock:
            if key != self._key:
                self._rev = head + ("-dirty" if self._dirty(work) else "")
                self._key = key
            return self._rev

    def _dirty(self, work: Path) -> bool:
        """Any .py file of the package modified, staged or untracked (what the package
        hash covers)."""
        try:
            out = subprocess.run(["git", "-C", str(work), "status", "--porcelain",
                                  "--untracked-files=all", "--", str(self.package_root)],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return False
        return out.returncode == 0 and any(
            line[3:].rstrip('"').endswith(".py") for line in out.stdout.splitlines())
