"""Versioned physics configs. A version is an immutable, read-only snapshot file named by its
ID (``CFG-HW-YYYYMMDD-NNNNN``), deduplicated per type by SHA256; each type has one "main"
version, and every change of main is kept (who, when). Clients send content, never paths."""
from __future__ import annotations

import asyncio
import csv
import difflib
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import Conflict, InvalidParams, NotFound
from .ids import DailyCounter
from .models import utcnow
from .settings import ConfigType, Settings
from .store import UPSERT_COUNTER, Store

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "configs"
_EXT = {"yaml": ".yml", "csv": ".csv"}


class ChecksumMismatch(RuntimeError):
    pass


def _write_snapshot(path: Path, data: bytes) -> None:
    """Durable and read-only before anything refers to it."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)


def parse_content(ctype: ConfigType, content: str) -> Any:
    """Parse (and so validate) config content of a type; raises InvalidParams."""
    try:
        if ctype.format == "yaml":
            value = yaml.safe_load(content)
            if ctype.name == "hardware_config" and not isinstance(value, dict):
                raise ValueError("hardware_config must be a YAML mapping "
                                 "(sections device, hw, aliases)")
            return value
        rows = list(csv.reader(io.StringIO(content)))
        if not rows:
            raise ValueError("empty CSV")
        return rows
    except (yaml.YAMLError, csv.Error, ValueError) as exc:
        raise InvalidParams(f"{ctype.name}: content is not valid {ctype.format}: {exc}"
                             ) from None


class ConfigStore:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.dir = settings.snapshot_dir
        self.types = {t.name: t for t in settings.config_types}
        self.main: dict[str, str] = {}          # type name -> main version ID
        self.counters: dict[str, DailyCounter] = {}
        self._rows: dict[str, Any] = {}         # version rows are immutable: cache them

    async def open(self, counters: dict[str, tuple[str, int]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for t in self.types.values():
            prefix = f"CFG-{t.code}"
            day, last = counters.get(prefix, (None, 0))
            self.counters[t.name] = DailyCounter(prefix, day, last)
        rows = await self.store.fetchall(
            "SELECT type, version_id FROM config_main_history WHERE id IN "
            "(SELECT max(id) FROM config_main_history GROUP BY type)")
        self.main = {r["type"]: r["version_id"] for r in rows}
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
            row = await self.store.fetchone(
                "SELECT * FROM config_versions WHERE version_id = ?", (version_id,))
            if row is None:
                raise NotFound(f"config version {version_id} does not exist")
            self._rows[version_id] = row
        return row

    def read_verified(self, row: Any) -> str:
        """Snapshot content, checked against the stored SHA256 (runs in any thread)."""
        data = self._path(row).read_bytes()
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise ChecksumMismatch(f"{row['version_id']}: snapshot file does not match its "
                                   f"stored SHA256 (modified or corrupt)")
        return data.decode()

    async def snapshot(self, type_name: str, content: str, by: str,
                       message: str | None = None) -> tuple[str, bool]:
        """(version ID, created?) for content, reusing an identical existing version."""
        t = self.ctype(type_name)
        if len(content.encode()) > self.settings.max_config_bytes:
            raise InvalidParams(f"{type_name}: content exceeds "
                                 f"{self.settings.max_config_bytes} bytes")
        parse_content(t, content)
        data = content.encode()
        sha = hashlib.sha256(data).hexdigest()
        row = await self.store.fetchone(
            "SELECT version_id FROM config_versions WHERE type = ? AND sha256 = ?",
            (type_name, sha))
        if row is not None:
            return row["version_id"], False
        counter = self.counters[type_name]
        vid = counter.next()
        filename = f"{vid}{_EXT[t.format]}"
        await asyncio.to_thread(_write_snapshot, self.dir / filename, data)
        await self.store.write(
            ("INSERT INTO config_versions(version_id, type, sha256, size, filename, created_at,"
             " created_by, message) VALUES (?,?,?,?,?,?,?,?)",
             (vid, type_name, sha, len(data), filename, utcnow(), by, message)),
            (UPSERT_COUNTER, counter.row()))
        return vid, True

    async def push(self, type_name: str, content: str, by: str, message: str | None = None,
                   expected_main: str | None = None) -> dict[str, Any]:
        if expected_main is not None and self.main.get(type_name) != expected_main:
            raise Conflict(f"{type_name}: main is {self.main.get(type_name)}, not "
                           f"{expected_main} (someone pushed meanwhile); pull and retry")
        vid, created = await self.snapshot(type_name, content, by, message)
        await self.set_main(type_name, vid, by)
        return {"type": type_name, "version_id": vid, "created": created}

    async def _typed_row(self, type_name: str, version_id: str) -> Any:
        """The version's row, refusing a version of another type."""
        self.ctype(type_name)
        row = await self._row(version_id)
        if row["type"] != type_name:
            raise InvalidParams(f"{version_id} is a {row['type']} version, not {type_name}")
        return row

    async def set_main(self, type_name: str, version_id: str, by: str) -> dict[str, Any]:
        await self._typed_row(type_name, version_id)
        if self.main.get(type_name) != version_id:
            await self.store.write((
                "INSERT INTO config_main_history(type, version_id, set_at, set_by) "
                "VALUES (?,?,?,?)", (type_name, version_id, utcnow(), by)))
            self.main[type_name] = version_id
        return {"type": type_name, "version_id": version_id}

    async def show(self, version_id: str, with_content: bool = True) -> dict[str, Any]:
        row = await self._row(version_id)
        info = {k: row[k] for k in ("version_id", "type", "sha256", "size", "created_at",
                                    "created_by", "message")}
        info["is_main"] = self.main.get(row["type"]) == version_id
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
        rows = await self.store.fetchall(
            "SELECT version_id, sha256, size, created_at, created_by, message "
            "FROM config_versions WHERE type = ? ORDER BY created_at DESC, version_id DESC "
            "LIMIT ?", (type_name, limit))
        main = self.main.get(type_name)
        return [{**dict(r), "is_main": r["version_id"] == main} for r in rows]

    async def main_history(self, type_name: str, limit: int) -> list[dict[str, Any]]:
        self.ctype(type_name)
        rows = await self.store.fetchall(
            "SELECT version_id, set_at, set_by FROM config_main_history WHERE type = ? "
            "ORDER BY id DESC LIMIT ?", (type_name, limit))
        return [dict(r) for r in rows]

    async def diff(self, a: str, b: str) -> str:
        ra, rb = await self._row(a), await self._row(b)
        ta, tb = await asyncio.to_thread(lambda: (self.read_verified(ra),
                                                  self.read_verified(rb)))
        return "".join(difflib.unified_diff(ta.splitlines(keepends=True),
                                            tb.splitlines(keepends=True), fromfile=a, tofile=b))

    async def verify(self) -> dict[str, Any]:
        rows = await self.store.fetchall("SELECT * FROM config_versions ORDER BY version_id")

        def check() -> list[dict[str, str]]:
            bad = []
            for row in rows:
                try:
                    self.read_verified(row)
                except (OSError, ChecksumMismatch, UnicodeDecodeError) as exc:
                    bad.append({"version_id": row["version_id"], "error": str(exc)})
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
