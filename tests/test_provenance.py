"""Code provenance: the whole experiment package's hash and the git revision are recorded
per job, an edit to a shared module reaches the next job, and a cached lookup runs no
subprocess."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from daemon_harness import REPO
from labd.dir_watch import DirWatch
from labd.experiment_loader import ExperimentLoader
from labd.provenance import GitRevision, PackageHasher

T1 = {"start": 0, "step": 0.5, "expts": 100, "reps": 200}


def copy_package(root: Path, name: str = "labprov") -> Path:
    """experiments/single_qubit copied as its own package ``name`` (relative imports)."""
    pkg = root / name
    shutil.copytree(REPO / "experiments" / "single_qubit", pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_edit_to_a_shared_module_reaches_the_next_job_and_changes_the_package_hash(
        make_daemon, tmp_path):
    from labd_client import Client
    pkg = copy_package(tmp_path)
    d = make_daemon(start=False, allowed_packages=["experiments", "labprov"])
    d.env_extra["PYTHONPATH_PREPEND"] = str(tmp_path)
    d.start()
    with Client(d.socket) as c:
        first = c.wait(c.submit("T1Experiment", "labprov.t1", T1), timeout=60)
        common = pkg / "common.py"
        src = common.read_text()
        edited = src.replace("    ground, excited = -0.5 + 0.2j, 0.5 - 0.1j",
                             "    ground, excited = 99.5 + 0.2j, 100.5 - 0.1j")
        assert edited != src
        common.write_text(edited)
        second = c.wait(c.submit("T1Experiment", "labprov.t1", T1), timeout=60)
    assert first.status == second.status == "completed", second.error_message
    with h5py.File(first.data_file_path) as a, h5py.File(second.data_file_path) as b:
        shift = np.mean(b["avgi"][()]) - np.mean(a["avgi"][()])
        assert shift == pytest.approx(100, abs=1)   # the edited readout_iq ran
        assert len(a.attrs["package_sha256"]) == 64
        assert a.attrs["package_sha256"] != b.attrs["package_sha256"]
        assert a.attrs["module_sha256"] == b.attrs["module_sha256"]  # t1.py untouched
    assert first.raw["module_sha256"] == second.raw["module_sha256"]


def test_dependents_are_reloaded_dependencies_first(tmp_path, monkeypatch):
    pkg = copy_package(tmp_path, "labprov2")
    monkeypatch.syspath_prepend(str(tmp_path))
    loader = ExperimentLoader(["labprov2"])
    before = loader.load("labprov2.t1", "T1Experiment")
    common = pkg / "common.py"
    common.write_text(common.read_text() + "\nEDITED = True\n")
    after = loader.load("labprov2.t1", "T1Experiment")
    assert after.cls is not before.cls                       # t1 re-executed ...
    assert after.cls.__mro__[1].__module__ == "labprov2.common"
    assert sys.modules["labprov2.common"].EDITED            # ... on the new common,
    assert sys.modules["labprov2"].common.EDITED             # also for `from . import`
    assert after.package_sha256 != before.package_sha256
    assert after.sha256 == before.sha256
    again = loader.load("labprov2.t1", "T1Experiment")
    assert again.cls is after.cls                            # nothing changed: no reload


async def test_on_the_loop_one_scan_serves_an_iteration_and_the_next_sees_an_edit(
        tmp_path, monkeypatch):
    """(#14) Submits handled in one event-loop iteration share one package scan (all of
    them arrived before it); a load in a later iteration scans again and sees an edit."""
    pkg = copy_package(tmp_path, "labprov3")
    monkeypatch.syspath_prepend(str(tmp_path))
    loader = ExperimentLoader(["labprov3"])
    scans = []
    real_scan = PackageHasher.scan
    monkeypatch.setattr(PackageHasher, "scan",
                        lambda self, quick=False: (scans.append(1), real_scan(self, quick))[1])
    loader.load("labprov3.t1", "T1Experiment")
    scans.clear()
    loader.load("labprov3.t1", "T1Experiment")
    assert scans == []                                        # the same iteration
    t1 = pkg / "t1.py"
    t1.write_text(t1.read_text() + "\n\nclass T1Again(T1Experiment):\n    pass\n")
    await asyncio.sleep(0)                                    # the next iteration
    assert loader.load("labprov3.t1", "T1Again").cls.__name__ == "T1Again"
    assert scans == [1]


def test_package_hash_rereads_only_changed_files(tmp_path, monkeypatch):
    pkg = copy_package(tmp_path)
    hasher = PackageHasher(pkg)
    first = hasher.scan()
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (opened.append(f),
                                                              real_open(f, *a, **k))[1])
    assert hasher.scan() is first and opened == []
    (pkg / "t1.py").write_text((pkg / "t1.py").read_text() + "\n# edited\n")
    second = hasher.scan()
    assert [Path(p).name for p in opened] == ["t1.py"]
    assert second.sha256 != first.sha256
    assert second.files["common.py"] == first.files["common.py"]


def counting_stats(monkeypatch) -> list[str]:
    stats, real_stat = [], os.stat
    monkeypatch.setattr("labd.provenance.os.stat",
                        lambda p, *a, **k: (stats.append(p), real_stat(p, *a, **k))[1])
    return stats


def test_quick_scan_costs_no_stat_and_still_sees_every_kind_of_change(tmp_path, monkeypatch):
    """(#14) A submit's quick scan reads the inotify queue instead of stat-ing every file,
    and sees at once (no sleep, no settle time) an edit in place, an editor's save by
    rename, a new module, a new subpackage, a deletion."""
    pkg = copy_package(tmp_path)
    hasher = PackageHasher(pkg)
    state = hasher.scan()
    stats = counting_stats(monkeypatch)
    assert hasher.scan(quick=True) is state and stats == []

    def changed_by(edit) -> None:
        nonlocal state
        edit()
        new = hasher.scan(quick=True)
        assert new is not state and stats != []
        state = new
        stats.clear()
        assert hasher.scan(quick=True) is state and stats == []

    t1 = pkg / "t1.py"
    changed_by(lambda: t1.write_text(t1.read_text() + "\n# edited\n"))
    tmp = pkg / ".t1.py.swp"
    tmp.write_text(t1.read_text() + "\n# saved by rename\n")
    changed_by(lambda: os.replace(tmp, t1))
    changed_by(lambda: (pkg / "new_mod.py").write_text("X = 1\n"))
    changed_by(lambda: ((pkg / "sub").mkdir(), (pkg / "sub" / "__init__.py").write_text("")))
    assert "sub/__init__.py" in state.files
    changed_by(lambda: (pkg / "sub" / "deep.py").write_text("Y = 2\n"))
    assert "sub/deep.py" in state.files
    changed_by(lambda: (pkg / "new_mod.py").unlink())
    assert "new_mod.py" not in state.files


def test_quick_scan_stats_in_full_without_inotify_and_at_least_once_a_second(
        tmp_path, monkeypatch):
    """A change inotify does not report (made on another NFS client) is seen by a quick
    scan once the last full scan is QUICK_MAX_AGE_S old; without inotify every scan is a
    full one."""
    pkg = copy_package(tmp_path)
    hasher = PackageHasher(pkg)
    first = hasher.scan()
    t1 = pkg / "t1.py"
    t1.write_text(t1.read_text() + "\n# from elsewhere\n")
    assert hasher._watch is not None and hasher._watch.changed()   # the event, hidden
    now = time.monotonic()
    monkeypatch.setattr("labd.provenance.time.monotonic", lambda: now)
    assert hasher.scan(quick=True) is first
    now += PackageHasher.QUICK_MAX_AGE_S
    assert hasher.scan(quick=True).sha256 != first.sha256

    def no_inotify():
        raise OSError("no inotify here")
    monkeypatch.setattr("labd.provenance.DirWatch", no_inotify)
    hasher = PackageHasher(pkg)
    first = hasher.scan()
    t1.write_text(t1.read_text() + "\n# again\n")
    assert hasher.scan(quick=True).sha256 != first.sha256


def test_a_module_added_in_the_walks_clock_tick_is_seen(tmp_path):
    """Coarse timestamps (kernels before 6.13, NFS): a module created in the clock tick of
    the walk's stat of its directory leaves the directory's (mtime, size, inode) as they
    were. inotify's event walks the tree again. Simulated by putting the mtime back."""
    pkg = copy_package(tmp_path)
    hasher = PackageHasher(pkg)
    hasher.scan()
    st = os.stat(pkg)
    (pkg / "new_mod.py").write_text("N = 1\n")
    os.utime(pkg, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(pkg).st_size == st.st_size   # else this would not be the tick case
    assert "new_mod.py" in hasher.scan().files


def test_an_unreadable_directory_is_skipped_and_read_once_it_can_be(tmp_path, monkeypatch):
    """Someone's private scratch directory in the package (mode 700, labd another user):
    skipped, as os.walk did, the rest of the package hashed whole, and the directory tried
    again at every full scan (a chmod changes no mtime). It used to fail every submit to
    the package, or, locked after the first walk, drop the directories not yet walked."""
    pkg = copy_package(tmp_path)
    for d in ("a_private", "b", "c"):
        (pkg / d).mkdir()
        (pkg / d / "mod.py").write_text(f"NAME = {d!r}\n")
    locked: set[str] = set()
    real_scandir = os.scandir

    def scandir(path):
        if str(path) in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)
    monkeypatch.setattr("labd.provenance.os.scandir", scandir)
    real_add = DirWatch.add

    def add(watch, path):   # inotify needs read access too
        if str(path) in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_add(watch, path)
    monkeypatch.setattr(DirWatch, "add", add)
    everything = {"a_private/mod.py", "b/mod.py", "c/mod.py", "t1.py"}
    hasher = PackageHasher(pkg)
    assert everything <= hasher.scan().files.keys()
    locked.add(str(pkg / "a_private"))
    (pkg / "new_mod.py").write_text("N = 1\n")       # the next scan walks again
    files = hasher.scan().files
    assert everything - {"a_private/mod.py"} | {"new_mod.py"} <= files.keys()
    assert "a_private/mod.py" not in files
    (pkg / "b" / "mod.py").write_text("NAME = 'b, edited'\n")
    assert hasher.scan().files["b/mod.py"] != files["b/mod.py"]
    locked.clear()
    assert everything <= hasher.scan().files.keys()

    locked.add(str(pkg / "a_private"))
    fresh = PackageHasher(pkg)                        # unreadable from the start
    assert everything - {"a_private/mod.py"} <= fresh.scan().files.keys()
    assert fresh._watch is not None   # the rest of the package is still watched


def test_git_revision_says_dirty_for_the_package_and_is_cached(tmp_path, monkeypatch):
    pkg = copy_package(tmp_path / "repo")
    repo = tmp_path / "repo"
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    head = git(repo, "rev-parse", "HEAD")
    hasher, rev = PackageHasher(pkg), GitRevision(pkg)
    assert rev.revision(hasher.scan().sha256) == head
    (pkg / "common.py").write_text((pkg / "common.py").read_text() + "# edit\n")
    assert rev.revision(hasher.scan().sha256) == head + "-dirty"
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "y")
    git(repo, "pack-refs", "--all")              # refs read from packed-refs too
    assert rev.revision(hasher.scan().sha256) == git(repo, "rev-parse", "HEAD")


def test_cached_git_revision_runs_no_subprocess(monkeypatch):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    loader = ExperimentLoader(["experiments"])
    rev = loader.load("experiments.single_qubit.t1", "T1Experiment").git_rev()
    assert rev is not None and rev.startswith(head.stdout.strip())

    def no_subprocess(*a, **k):
        raise AssertionError("subprocess on a cache hit")
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    later = time.monotonic() + 3600          # a cache that merely expires would run git
    monkeypatch.setattr(time, "monotonic", lambda: later)
    t0 = time.perf_counter()
    for _ in range(100):
        assert loader.load("experiments.single_qubit.t1", "T1Experiment").git_rev() == rev
    assert (time.perf_counter() - t0) / 100 < 0.005
