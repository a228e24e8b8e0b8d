"""Loads experiment classes, but only from the allowed packages: the predecessor imported any
module name a client sent into the process that owns the hardware.

A module is re-executed when its source changes (by SHA256), so an edited experiment is
picked up by the next job without a restart; a job already running keeps its own module
object. An edit to a shared module of the package (``common.py``, ``fitting.py``)
re-executes that module and every module of the package that imports it, directly or not.
``<package>.base`` is never re-executed: the executor holds its classes (``Experiment``,
``Stopped``), so a change there needs a restart (logged).

Per job, the module's hash, the whole package's hash and the git revision are recorded
(``labd.provenance``: cached by file identity, no subprocess per job)."""
from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from labd_client.protocol import InvalidParams
from .provenance import GitRevision, PackageHasher

log = logging.getLogger(__name__)
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class LoadedClass:
    cls: type
    module: ModuleType
    sha256: str                  # the module's source
    path: Path
    package_sha256: str          # every .py file of the package it belongs to
    _git: GitRevision

    def git_rev(self) -> str | None:
        """HEAD (+"-dirty" if the package differs from it); runs git only when HEAD, the
        index or the package changed since the last call."""
        return self._git.revision(self.package_sha256)


@dataclass
class _Cached:
    stat: tuple[int, int]
    sha256: str
    module: ModuleType


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Package:
    """One allowed package: its files' hashes, git revision and import graph."""

    def __init__(self, name: str, root: Path) -> None:
        self.name, self.root = name, root
        self.hasher = PackageHasher(root)
        self.git = GitRevision(root)
        self.state = self.hasher.scan()
        self.git.prefetch(self.state.sha256)
        self.scanned_in: asyncio.AbstractEventLoop | None = None  # see ExperimentLoader._sync

    def module_name(self, rel: str) -> str:
        parts = rel[:-3].split("/")
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join([self.name, *parts])

    def imports(self, rel: str) -> set[str]:
        """Modules of this package that ``rel`` imports (absolute or relative)."""
        try:
            tree = ast.parse((self.root / rel).read_bytes())
        except (OSError, SyntaxError, ValueError):
            return set()
        here = self.module_name(rel).split(".")
        if not rel.endswith("__init__.py"):
            here = here[:-1]
        out: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = here[:len(here) - node.level + 1]
                    base = ".".join([*pkg, base]) if base else ".".join(pkg)
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
        return {m for m in out if m == self.name or m.startswith(self.name + ".")}


class ExperimentLoader:
    def __init__(self, allowed_packages: list[str]) -> None:
        self.allowed = list(allowed_packages)
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        self._packages: dict[str, _Package] = {}
        self._paths: dict[str, Path] = {}      # module -> resolved, checked source path

    def _package(self, name: str) -> _Package:
        pkg = self._packages.get(name)
        if pkg is None:
            mod = importlib.import_module(name)
            pkg = _Package(name, Path(next(iter(mod.__path__))).resolve())
            self._packages[name] = pkg
        return pkg

    def _package_root(self, package: str) -> Path:
        return self._package(package).root

    def _source_path(self, module: str) -> Path:
        if not _MODULE_RE.match(module) or len(module) > 256:
            raise InvalidParams(f"experiment_module {module!r} is not a dotted module name")
        top = module.split(".")[0]
        if top not in self.allowed:
            raise InvalidParams(
                f"experiment_module {module!r} is not in an allowed package "
                f"(allowed: {', '.join(self.allowed)})")
        root = self._package_root(top)
        parts = module.split(".")[1:]
        base = root.joinpath(*parts) if parts else root
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                resolved = candidate.resolve()
                if root not in resolved.parents:
                    break  # a symlink pointing out of the package is not the package
                return resolved
        raise InvalidParams(f"experiment_module {module!r} not found in package {top!r}")

    def _module(self, name: str, path: Path) -> tuple[ModuleType, str]:
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached.stat == key:
            return cached.module, cached.sha256
        source = path.read_bytes()
        sha = hashlib.sha256(source).hexdigest()
        if cached is not None and cached.sha256 == sha:
            cached.stat = key
            return cached.module, sha
        if cached is None and name in sys.modules and \
                getattr(sys.modules[name], "__file__", None) == str(path):
            module = sys.modules[name]  # imported normally already, same file
        else:
            module = self._execute(name, path)
        self._cache[name] = _Cached(key, sha, module)
        return module, sha

    @staticmethod
    def _execute(name: str, path: Path) -> ModuleType:
        """A fresh module object per source version; the old one stays alive for a job
        that still runs it."""
        parent = None
        if "." in name:
            parent = importlib.import_module(name.rsplit(".", 1)[0])
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        previous = sys.modules.get(name)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            if previous is not None:
                sys.modules[name] = previous
            else:
                sys.modules.pop(name, None)
            raise
        if parent is not None:  # ``from . import common`` reads the package's attribute
            setattr(parent, name.rsplit(".", 1)[1], module)
        return module

    def _sync(self, pkg: _Package) -> None:
        """Re-execute the package's changed modules and everything importing them,
        dependencies first, so the next job runs the edited code.

        On the event loop (submits), the scan is a quick one (see PackageHasher), and one
        serves every request handled in the same loop iteration: all of them arrived
        before it began, so they see the package as of after their arrival, as with a
        scan each (each a system call, a GIL hand-off). The flag is cleared by a callback
        that runs before anything the next iteration reads. Other threads (the prepare
        thread) always scan in full."""
        loop = _running_loop()
        if loop is not None:
            if pkg.scanned_in is loop:
                return
            pkg.scanned_in = loop
            loop.call_soon(setattr, pkg, "scanned_in", None)
        state = pkg.hasher.scan(quick=loop is not None)
        if state is pkg.state:
            return
        old, pkg.state = pkg.state, state
        pkg.git.prefetch(state.sha256)
        stable = f"{pkg.name}.base"
        reloaded = []
        for name, rel in _reload_order(pkg, old.files, state.files):
            self._cache.pop(name, None)
            if name == stable:
                log.warning("%s changed: it is labd's contract with experiments and is not "
                            "reloaded; restart labd to use the edit", stable)
                continue
            if name not in sys.modules or rel.endswith("__init__.py"):
                continue  # never imported: a job's load executes it fresh
            path = pkg.root / rel
            try:
                st = path.stat()
                module = self._execute(name, path)
            except Exception as exc:  # reported when a job imports it
                sys.modules.pop(name, None)
                log.warning("reloading %s failed: %s: %s", name, type(exc).__name__, exc)
                continue
            self._cache[name] = _Cached((st.st_mtime_ns, st.st_size), state.files[rel], module)
            reloaded.append(name)
        log.info("experiment package %s changed: reloaded %s", pkg.name,
                 ", ".join(reloaded) or "nothing")

    def load(self, module: str, class_name: str) -> LoadedClass:
        """Resolve and validate ``module.class_name``; raises InvalidParams for anything a
        client could fix (unknown module/class, helper class, not an experiment)."""
        from experiments.base import Experiment  # the contract every job class must meet

        path = self._paths.get(module) or self._source_path(module)
        pkg = self._package(module.split(".")[0])
        with self._lock:
            try:
                self._sync(pkg)
                mod, sha = self._module(module, path)
                self._paths[module] = path
            except InvalidParams:
                raise
            except FileNotFoundError:
                self._paths.pop(module, None)
                raise InvalidParams(f"experiment_module {module!r} not found") from None
            except Exception as exc:
                raise InvalidParams(
                    f"experiment_module {module!r} failed to import: "
                    f"{type(exc).__name__}: {exc}") from None
        cls = getattr(mod, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, Experiment) and cls is not Experiment
                and cls.__module__ == module):
            raise InvalidParams(
                f"{class_name!r} is not an experiment class defined in {module!r}")
        if inspect.isabstract(cls) or cls.acquire is Experiment.acquire:
            raise InvalidParams(
                f"{module}.{class_name} is a helper base class (it does not implement "
                "acquire); submit one of the concrete experiments built on it")
        return LoadedClass(cls=cls, module=mod, sha256=sha, path=path,
                           package_sha256=pkg.state.sha256, _git=pkg.git)

    def validate_config(self, loaded: LoadedClass, config: dict[str, Any]) -> Any:
        from pydantic import ValidationError
        try:
            return loaded.cls.config_model.model_validate(config)
        except ValidationError as exc:
            raise InvalidParams(f"experiment_config invalid for {loaded.cls.__name__}: "
                                 + describe_validation(exc)) from None

    def preload(self) -> int:
        """Import every module of the allowed packages at start-up, so a submit never
        waits for a first import on the event loop."""
        import pkgutil
        n = 0
        for top in self.allowed:
            pkg = importlib.import_module(top)
            for info in pkgutil.walk_packages(pkg.__path__, prefix=top + "."):
                try:
                    self._module(info.name, self._source_path(info.name))
                    n += 1
                except Exception:  # a broken module is reported when someone submits to it
                    pass
        return n


def _reload_order(pkg: _Package, old: dict[str, str],
                  new: dict[str, str]) -> list[tuple[str, str]]:
    """(module, relative path) of the changed files that still exist and of every module
    importing one of them, directly or not; dependencies before their importers."""
    names = {pkg.module_name(r): r for r in new}
    deps = {m: pkg.imports(r) for m, r in names.items()}
    affected = {pkg.module_name(r) for r in new if old.get(r) != new[r]}
    affected |= {pkg.module_name(r) for r in old.keys() - new.keys()}
    while more := {m for m, d in deps.items() if d & affected} - affected:
        affected |= more
    order: list[str] = []
    seen: set[str] = set()

    def visit(m: str) -> None:
        if m in seen or m not in names or m not in affected:
            return
        seen.add(m)  # before recursing: an import cycle ends here
        for d in sorted(deps[m]):
            visit(d)
        order.append(m)
    for m in sorted(affected):
        visit(m)
    return [(m, names[m]) for m in order]


def describe_validation(exc: Any) -> str:
    """A pydantic ValidationError as one line a person can act on."""
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        msg = str(err.get("msg", "")).removeprefix("Value error, ")  # our own sentences
        parts.append(f"{loc}: {msg}")
    more = exc.error_count() - 10
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
