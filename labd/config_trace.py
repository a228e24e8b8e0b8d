"""The history of one parameter (issue #13): each value a key has had in a config type's
main, when it became main, the version, and who made it (a person's push, or the job whose
results created it). Consecutive mains with the same value collapse into one entry.

Keys are dotted paths; list indices as ``.0`` or ``[0]``: ``device.qubit.f_ge[0]``.
Content is parsed off the event loop with the config store's safe loader (hostile-YAML
limits included), each version once."""
from __future__ import annotations

import asyncio
import difflib
import re
from typing import Any

from labd_client.protocol import InvalidParams, NotFound
from .config_store import ConfigStore, parse_content

_ABSENT = object()
_TOKEN = re.compile(r"\[(-?\d+)\]")


def parse_key(key: str) -> list[str]:
    """``a.b[0].c`` / ``a.b.0.c`` -> ["a", "b", "0", "c"]."""
    text = _TOKEN.sub(r".\1", key.strip())
    parts = text.split(".")
    if not text or any(p == "" for p in parts):
        raise InvalidParams(f"key {key!r}: give a dotted path like "
                            "device.qubit.pulses.pi_ge.gain or device.qubit.f_ge[0]")
    return parts


def lookup(doc: Any, parts: list[str]) -> Any:
    """The value at a path, or _ABSENT."""
    node = doc
    for p in parts:
        if isinstance(node, dict):
            if p in node:
                node = node[p]
                continue
            for k in node:  # YAML keys need not be strings (1: x, true: y)
                if str(k) == p:
                    node = node[k]
                    break
            else:
                return _ABSENT
        elif isinstance(node, list):
            try:
                i = int(p)
            except ValueError:
                return _ABSENT
            if not -len(node) <= i < len(node):
                return _ABSENT
            node = node[i]
        else:
            return _ABSENT
    return node


def key_paths(doc: Any, prefix: str = "", limit: int = 100_000) -> list[str]:
    """Every path in a document (lists by index), breadth-limited."""
    out: list[str] = []
    stack = [(prefix, doc)]
    while stack and len(out) < limit:
        path, node = stack.pop()
        if path:
            out.append(path)
        if isinstance(node, dict):
            items = [(str(k), v) for k, v in node.items()]
        elif isinstance(node, list):
            items = [(str(i), v) for i, v in enumerate(node)]
        else:
            continue
        for k, v in reversed(items):
            stack.append((f"{path}.{k}" if path else k, v))
    return out


def nearest_keys(doc: Any, parts: list[str], n: int = 5) -> list[str]:
    """Close matches for an unknown key: the children of the deepest prefix that exists,
    and paths spelled nearly the same."""
    found: list[str] = []
    depth = 0
    for depth in range(len(parts), 0, -1):
        node = lookup(doc, parts[:depth - 1]) if depth > 1 else doc
        if node is not _ABSENT and isinstance(node, (dict, list)):
            base = ".".join(parts[:depth - 1])
            keys = node.keys() if isinstance(node, dict) else range(len(node))
            children = [f"{base}.{k}" if base else str(k) for k in keys]
            found = difflib.get_close_matches(".".join(parts[:depth]), children, n, 0.0)
            break
    paths = key_paths(doc)
    if not any(p.lstrip("-").isdigit() for p in parts):  # list elements only if asked
        paths = [k for k in paths if not k.rsplit(".", 1)[-1].isdigit()]
    close = difflib.get_close_matches(".".join(parts), paths, n, 0.6)
    return list(dict.fromkeys([*found, *close]))[:n]


def _value(v: Any) -> Any:
    """A JSON-safe value (YAML may hold dates or other scalars)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _value(x) for k, x in v.items()}
    return str(v)


async def trace(configs: ConfigStore, type_name: str, key: str,
                limit: int = 10_000) -> dict[str, Any]:
    """The changes of ``key`` in main, oldest first (over the last ``limit`` changes of
    main). Raises NotFound, with the nearest existing keys, if no main ever had it."""
    ctype = configs.ctype(type_name)
    parts = parse_key(key)
    rows = await configs.store.config_trace_rows(type_name)
    rows = rows[-limit:]
    if not rows:
        raise NotFound(f"{type_name} has no main version yet")

    def build() -> tuple[list[dict[str, Any]], Any]:
        docs: dict[str, Any] = {}
        changes: list[dict[str, Any]] = []
        prev: Any = _ABSENT
        first = True
        for r in rows:
            vid = r["version_id"]
            if vid not in docs:
                docs[vid] = parse_content(ctype, configs.read_verified(r))
            value = lookup(docs[vid], parts)
            if not first and value == prev and type(value) is type(prev):
                continue
            first, prev = False, value
            changes.append({
                "since": r["set_at"], "version_id": vid, "set_by": r["set_by"],
                "created_at": r["created_at"], "created_by": r["created_by"],
                "created_by_job_id": r["created_by_job_id"],
                "absent": value is _ABSENT,
                "value": None if value is _ABSENT else _value(value)})
        return changes, docs[rows[-1]["version_id"]]

    changes, latest = await asyncio.to_thread(build)
    if all(c["absent"] for c in changes):
        near = await asyncio.to_thread(nearest_keys, latest, parts)
        hint = f"; nearest existing keys: {', '.join(near)}" if near else ""
        raise NotFound(f"{type_name} has no key {key!r} in any main version{hint}")
    if changes and changes[0]["absent"]:
        changes = changes[1:]   # before the key existed: not a value it had
    return {"type": type_name, "key": key, "main": configs.main.get(type_name),
            "changes": changes}
