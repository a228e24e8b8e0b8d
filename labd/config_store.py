"""Versioned physics configs. A version is an immutable, read-only snapshot file named by its
ID (``CFG-HW-YYYYMMDD-NNNNN``), deduplicated per type by SHA256; each type has one "main"
version, and every change of main is kept (who, when). Clients send content, never paths."""
from __future__ import annotations

import asyncio
import csv
import functools
import hashlib
import io
import json
import os
import sys
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any, AsyncContextManager, Callable

import yaml

from . import defaults
from .durable import write_new_file
from labd_client.protocol import Conflict, InvalidParams, LimitExceeded, NotFound, Unavailable
from .ids import DailyCounter, floor_from_files, later
from .settings import ConfigType, Settings
from .store import PreconditionFailed, Store

EXAMPLES_DIR = defaults.DIR  # first-start example configs: package data
_EXT = {"yaml": ".yml", "csv": ".csv"}


class SnapshotDamaged(Unavailable):
    """A snapshot file is missing or no longer matches its stored SHA256."""


# Hostile YAML: an alias bomb stays small as text and as a node graph (aliases share
# nodes) but explodes once constructed, and then in every data file's merged config.
# So the graph is checked before anything is built.
MAX_YAML_DEPTH = 64
MAX_YAML_ALIASES = 1000
MAX_YAML_ALIAS_NODES = 100_000      # nodes aliases may add once expanded


def _check_yaml_graph(root: yaml.Node) -> None:
    """Refuse deep nesting, many aliases or a large expansion, before construction."""
    memo: dict[int, tuple[int, int]] = {}   # id(node) -> (expanded nodes, height)
    unique = aliases = 0

    def walk(node: yaml.Node, depth: int) -> tuple[int, int]:
        nonlocal unique, aliases
        if depth > MAX_YAML_DEPTH:
            raise ValueError(f"nested deeper than {MAX_YAML_DEPTH} levels")
        key = id(node)
        if key in memo:
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise ValueError(f"more than {MAX_YAML_ALIASES} alias references")
            size, height = memo[key]
            if size < 0:
                raise ValueError("an alias refers to a node that contains it")
            if depth + height > MAX_YAML_DEPTH:
                raise ValueError(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return size, height
        memo[key] = (-1, 0)
        unique += 1
        size, height = 1, 0
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            s, h = walk(child, depth + 1)
            size, height = size + s, max(height, h + 1)
            if size - unique > MAX_YAML_ALIAS_NODES:
                raise ValueError(f"aliases expand it by more than {MAX_YAML_ALIAS_NODES} "
                                 "nodes (an alias bomb?)")
        memo[key] = (size, height)
        return size, height
    walk(root, 0)


def _load_yaml(content: str) -> Any:
    loader = _Loader(content)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_graph(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_content(ctype: ConfigType, content: str) -> Any:
    """Parse (and so validate) config content of a type; raises InvalidParams. CPU-bound
    for large content: call it off the event loop."""
    try:
        if ctype.format == "yaml":
            value = _load_yaml(content)
            if ctype.name == "hardware_config" and not isinstance(value, dict):
                raise ValueError("hardware_config must be a YAML mapping "
                                 "(sections device, hw, aliases)")
            return value
        rows = list(csv.reader(io.StringIO(content)))
        if not rows:
            raise ValueError("empty CSV")
        return rows
    except RecursionError:
        reason = "nested too deeply"
    except (yaml.YAMLError, csv.Error, ValueError) as exc:
        reason = str(exc)
    raise InvalidParams(f"{ctype.name}: content is not valid {ctype.format}: {reason}")


_DIFF_SCRIPT = (
    "import difflib, json, sys\n"
    "a, b, name_a, name_b = json.load(sys.stdin)\n"
    "sys.stdout.buffer.write(''.join(difflib.unified_diff(a.splitlines(True), "
    "b.splitlines(True), fromfile=name_a, tofile=name_b)).encode())\n")


class ConfigStore:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.dir = settings.snapshot_dir
        self.types = {t.name: t for t in settings.config_types}
        self.main: dict[str, str] = {}          # type name -> main version ID
        self.counters: dict[str, DailyCounter] = {}
        self._rows: dict[str, Any] = {}         # version rows are immutable: cache them
        # One change of versions or main per type at a time: two pushes of identical
        # content must not both create it. The compare-and-set of main is in SQL anyway.
        self._locks = {name: asyncio.Lock() for name in self.types}
        # held around every commit that changes a main version: the scheduler sets it so
        # that no job starts on a main that is being replaced (see Dispatcher.main_changing)
        self.main_guard: Callable[[str], AsyncContextManager[Any]] = lambda _t: nullcontext()
        self._diffing = asyncio.Semaphore(1)    # see diff

    async def open(self, counters: dict[str, tuple[str, int]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for t in self.types.values():
            prefix = f"CFG-{t.code}"
            # Never below a snapshot already on disk (the database may be new or behind).
            on_disk = await asyncio.to_thread(floor_from_files, prefix, self.dir)
            day, last = later(counters.get(prefix, (None, 0)), on_disk)
            self.counters[t.name] = DailyCounter(prefix, day, last)
        self.main = await self.store.config_mains()
        for t in self.types.values():  # first start: the shipped examples become main
            example = EXAMPLES_DIR / f"{t.name}{_EXT[t.format]}"
            if t.name not in self.main and example.is_file():
                await self.push(t.name, example.read_text(), by="labd (shipped example)",
                                message="initial example config")

    def ctype(self, name: str) -> ConfigType:
        t = self.types.get(name)
        if t is None:
            raise InvalidParams(f"unknown config type {name!r} "
                                 f"(known: {', '.join(self.types)})")
        return t

    def _path(self, row: Any) -> Path:
        return self.dir / row["filename"]

    async def _row(self, version_id: str) -> Any:
        row = self._rows.get(version_id)
        if row is None:
            row = await self.store.config_version(version_id)
            if row is None:
                raise NotFound(f"config version {version_id} does not exist")
            self._rows[version_id] = row
        return row

    def read_verified(self, row: Any) -> str:
        """Snapshot content, checked against the stored SHA256 (runs in any thread)."""
        vid = row["version_id"]
        try:
            data = self._path(row).read_bytes()
        except OSError as exc:
            problem = f"snapshot file cannot be read ({exc.strerror or exc})"
        else:
            if hashlib.sha256(data).hexdigest() == row["sha256"]:
                try:
                    return data.decode()
                except UnicodeDecodeError:
                    pass
            problem = "snapshot file does not match its stored SHA256 (modified or truncated)"
        raise SnapshotDamaged(f"{vid}: {problem}; push the same content again to repair it"
                              f" (labctl config push {row['type']} FILE)")

    def content(self, row: Any) -> str:
        """A version's verified content for a job being prepared: read and checked again
        only when its file's identity (inode, size, mtime) changed, so a damaged snapshot
        is still refused, for one stat per config type per job instead of a read and a
        hash (each system call gives up the GIL while the board waits for the job)."""
        try:
            st = self._path(row).stat()
        except OSError:
            return self.read_verified(row)   # says what is wrong with it
        return self._content(row["version_id"], row["sha256"], row["filename"], row["type"],
                             (st.st_ino, st.st_size, st.st_mtime_ns))

    @functools.lru_cache(maxsize=32)
    def _content(self, version_id: str, sha256: str, filename: str, type_name: str,
                 _identity: tuple[int, int, int]) -> str:
        return self.read_verified({"version_id": version_id, "sha256": sha256,
                                   "filename": filename, "type": type_name})

    def _repair_if_damaged(self, row: Any, data: bytes) -> bool:
        """Rewrite a damaged snapshot from content known to match its hash (in a thread)."""
        try:
            self.read_verified(row)
            return False
        except SnapshotDamaged:
            try:
                write_new_file(self._path(row), data, replace=True)
            except OSError as exc:
                raise Unavailable(f"{row['version_id']} is damaged and could not be "
                                  f"repaired: {exc.strerror or exc}") from None
            return True

    async def snapshot(self, type_name: str, content: str, by: str,
                       message: str | None = None) -> tuple[str, bool]:
        """(version ID, created?) for content, reusing an identical existing version."""
        r = await self._snapshot(type_name, content, by, message, set_main=False)
        return r["version_id"], r["created"]

    async def push(self, type_name: str, content: str, by: str, message: str | None = None,
                   expected_main: str | None = None) -> dict[str, Any]:
        """Snapshot content and make it main, in one commit that checks main is still
        ``expected_main`` (or whatever it was when this push began)."""
        return await self._snapshot(type_name, content, by, message, True, expected_main)

    async def _snapshot(self, type_name: str, content: str, by: str, message: str | None,
                        set_main: bool, expected_main: str | None = None) -> dict[str, Any]:
        """A version for content: an identical one reused (and repaired if its file is
        damaged, since the content is known to match its hash), else a new one."""
        t = self.ctype(type_name)
        data = content.encode()
        if len(data) > self.settings.max_config_bytes:
            raise InvalidParams(f"{type_name}: content exceeds "
                                 f"{self.settings.max_config_bytes} bytes")
        await asyncio.to_thread(parse_content, t, content)   # CPU-bound: off the loop
        sha = hashlib.sha256(data).hexdigest()
        async with self._locks[type_name]:
            current = self.main.get(type_name)
            if expected_main is not None and current != expected_main:
                raise _main_moved(type_name, current, expected_main)
            row = await self.store.config_version_by_hash(type_name, sha)
            if row is not None:
                vid = row["version_id"]
                repaired = await asyncio.to_thread(self._repair_if_damaged, row, data)
                if set_main:
                    await self._set_main_locked(type_name, vid, by, current)
                return {"type": type_name, "version_id": vid, "created": False,
                        "repaired": repaired}
            counter = self.counters[type_name]
            vid = counter.next()
            filename = f"{vid}{_EXT[t.format]}"
            path = self.dir / filename
            try:
                await asyncio.to_thread(write_new_file, path, data)
            except OSError as exc:  # a full or read-only state disk: say so, keep running
                raise Unavailable(f"{type_name}: could not write the snapshot {path}: "
                                  f"{exc.strerror or exc}") from None
            ops = [Store.insert_config_version(vid, type_name, sha, len(data), filename, by,
                                               message),
                   Store.counter(counter.row())]
            if set_main:
                ops.append(Store.set_config_main(type_name, vid, by, current))
            try:
                async with self.main_guard(type_name) if set_main else nullcontext():
                    await self.store.write(*ops)
            except PreconditionFailed:
                path.unlink(missing_ok=True)   # rolled back: never referenced
                raise _main_moved(type_name, None, current) from None
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            if set_main:
                self.main[type_name] = vid
            return {"type": type_name, "version_id": vid, "created": True, "repaired": False}

    async def _set_main_locked(self, type_name: str, version_id: str, by: str,
                               current: str | None) -> None:
        if current == version_id:
            return
        try:
            async with self.main_guard(type_name):
                await self.store.write(Store.set_config_main(type_name, version_id, by,
                                                             current))
        except PreconditionFailed:
            raise _main_moved(type_name, None, current) from None
        self.main[type_name] = version_id

    async def _typed_row(self, type_name: str, version_id: str) -> Any:
        """The version's row, refusing a version of another type."""
        self.ctype(type_name)
        row = await self._row(version_id)
        if row["type"] != type_name:
            raise InvalidParams(f"{version_id} is a {row['type']} version, not {type_name}")
        return row

    async def set_main(self, type_name: str, version_id: str, by: str) -> dict[str, Any]:
        await self._typed_row(type_name, version_id)
        async with self._locks[type_name]:
            await self._set_main_locked(type_name, version_id, by, self.main.get(type_name))
        return {"type": type_name, "version_id": version_id}

    async def show(self, version_id: str, with_content: bool = True) -> dict[str, Any]:
        row = await self._row(version_id)
        info = {k: row[k] for k in ("version_id", "type", "sha256", "size", "created_at",
                                    "created_by", "message")}
        info["is_main"] = self.main.get(row["type"]) == version_id
        info["created_by_job_id"] = row["created_by_job_id"]   # (#13) a calibration's
        if with_content:
            info["content"] = await asyncio.to_thread(self.read_verified, row)
        return info

    async def pull(self, type_name: str) -> dict[str, Any]:
        self.ctype(type_name)
        vid = self.main.get(type_name)
        if vid is None:
            raise NotFound(f"{type_name} has no main version yet; push one first")
        return await self.show(vid)

    async def versions(self, type_name: str, limit: int) -> list[dict[str, Any]]:
        self.ctype(type_name)
        rows = await self.store.config_versions(type_name, limit)
        main = self.main.get(type_name)
        return [{**dict(r), "is_main": r["version_id"] == main} for r in rows]

    async def main_history(self, type_name: str, limit: int) -> list[dict[str, Any]]:
        self.ctype(type_name)
        rows = await self.store.config_main_history(type_name, limit)
        return [dict(r) for r in rows]

    async def diff(self, a: str, b: str) -> str:
        """A unified diff, made by difflib in a child process at nice 19, one at a time:
        its time grows about with the cube of the line count for some contents (lines
        each repeated just under its 1% "popular" cut), which on the event loop, or in a
        thread holding the GIL, would stall every client and the board; a child can be
        stopped at its time limit."""
        ra, rb = await self._row(a), await self._row(b)
        ta, tb = await asyncio.to_thread(lambda: (self.read_verified(ra),
                                                  self.read_verified(rb)))
        limit = self.settings.config_diff_timeout_s
        async with self._diffing:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-c", _DIFF_SCRIPT, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            with suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
            try:
                out, err = await asyncio.wait_for(
                    proc.communicate(json.dumps([ta, tb, a, b]).encode()), limit)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                raise LimitExceeded(
                    f"the diff of {a} and {b} took over {limit:g} s and was stopped; pull "
                    "both versions (labctl config show) and compare them locally") from None
        if proc.returncode != 0:
            raise RuntimeError(f"config diff child failed: {err.decode(errors='replace')}")
        return out.decode()

    async def verify(self) -> dict[str, Any]:
        """Every snapshot checked; each bad one says what to do about it."""
        rows = await self.store.config_versions(None, None)

        def check() -> list[dict[str, str]]:
            bad = []
            for row in rows:
                try:
                    self.read_verified(row)
                except SnapshotDamaged as exc:
                    action = (f"push its original content again (labctl config push "
                              f"{row['type']} FILE; a data file made with it holds it under "
                              f"configs/{row['type']}) to repair it")
                    if self.main.get(row["type"]) == row["version_id"]:
                        action += (f"; it is main, so jobs using main fail until then, or "
                                   f"set another main (labctl config set-main {row['type']} "
                                   f"VERSION)")
                    bad.append({"version_id": row["version_id"], "error": str(exc),
                                "action": action})
            return bad
        bad = await asyncio.to_thread(check)
        return {"checked": len(rows), "ok": not bad, "bad": bad}

    async def resolve(self, pinned: dict[str, str]) -> dict[str, Any]:
        """Version rows a job runs with: its pins, else main of each type at this moment."""
        rows = {}
        for name in self.types:
            vid = pinned.get(name) or self.main.get(name)
            if vid is not None:
                rows[name] = await self._row(vid)
        return rows

    async def check_pins(self, pins: dict[str, str]) -> None:
        for name, vid in pins.items():
            await self._typed_row(name, vid)


def _main_moved(type_name: str, current: str | None, expected: str | None) -> Conflict:
    now = f"main is {current}, not {expected}" if current else f"main is no longer {expected}"
    return Conflict(f"{type_name}: {now} (someone pushed meanwhile); pull and retry")
