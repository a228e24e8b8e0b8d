"""Loads experiment classes, but only from the allowed packages: the predecessor imported any
module name a client sent into the process that owns the hardware.

A module is re-executed when its source changes (by SHA256), so an edited experiment is
picked up by the next job without a restart; a job already running keeps its own module
object. The source hash and git revision are recorded with every job."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import InvalidParams

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class LoadedClass:
    cls: type
    module: ModuleType
    sha256: str
    path: Path

    def git_rev(self) -> str | None:
        """Runs git: call it from the executor thread, never on the event loop."""
        return git_revision(self.path)


@dataclass
class _Cached:
    stat: tuple[int, int]
    sha256: str
    module: ModuleType


class ExperimentLoader:
    def __init__(self, allowed_packages: list[str]) -> None:
        self.allowed = list(allowed_packages)
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        self._roots: dict[str, Path] = {}
        self._paths: dict[str, Path] = {}      # module -> resolved, checked source path

    def _package_root(self, package: str) -> Path:
        root = self._roots.get(package)
        if root is None:
            pkg = importlib.import_module(package)
            root = Path(next(iter(pkg.__path__))).resolve()
            self._roots[package] = root
        return root

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
        if "." in name:
            importlib.import_module(name.rsplit(".", 1)[0])
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
        return module

    def load(self, module: str, class_name: str) -> LoadedClass:
        """Resolve and validate ``module.class_name``; raises InvalidParams for anything a
        client could fix (unknown module/class, not an experiment)."""
        from experiments.base import Experiment  # the contract every job class must meet

        path = self._paths.get(module) or self._source_path(module)
        with self._lock:
            try:
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
        return LoadedClass(cls=cls, module=mod, sha256=sha, path=path)

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


def describe_validation(exc: Any) -> str:
    """A pydantic ValidationError as one line a person can act on."""
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {err.get('msg')}")
    more = exc.error_count() - 10
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


_git_cache: dict[Path, tuple[float, str | None]] = {}


def git_revision(path: Path) -> str | None:
    """HEAD of the checkout containing ``path`` (+'-dirty' if it has changes), cached
    briefly; None outside git."""
    import time
    directory = path.parent
    hit = _git_cache.get(directory)
    if hit and time.monotonic() - hit[0] < 5.0:
        return hit[1]
    rev: str | None = None
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            rev = out.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(directory), "status", "--porcelain",
                                    "--", str(path)], capture_output=True, text=True, timeout=5)
            if dirty.returncode == 0 and dirty.stdout.strip():
                rev += "-dirty"
    except (OSError, subprocess.SubprocessError):
        rev = None
    _git_cache[directory] = (time.monotonic(), rev)
    return rev
