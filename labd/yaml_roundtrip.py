"""Round-trip edits of a YAML config: set a few keys and keep everything else as the lab
wrote it (comments, key order, flow or block style, quotes, indentation). ruamel.yaml's
round-trip mode does this; PyYAML drops comments. Content is first checked with the
config store's hostile-YAML limits (depth, aliases, expansion), which ruamel does not
have, so a snapshot can never make this module build an alias bomb."""
from __future__ import annotations

import io
import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.util import load_yaml_guess_indent

from .config_store import parse_content
from .settings import ConfigType

Path = tuple[str | int, ...]
_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def parse_key(key: str) -> Path:
    """``device.qubit.pulses.pi_ge.gain[0]`` -> ('device', ..., 'gain', 0)."""
    path: list[str | int] = []
    for part in key.split("."):
        m = _SEGMENT.fullmatch(part)
        if m is None:
            raise ValueError(f"{key!r} is not a key path like device.qubit.f_ge[0]")
        path.append(m.group(1))
        path.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return tuple(path)


def key_text(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def get_path(data: Any, path: Path) -> Any:
    """The value at ``path``; KeyError naming the first missing part."""
    node = data
    for i, p in enumerate(path):
        if isinstance(p, int):
            ok = isinstance(node, list) and 0 <= p < len(node)
        else:
            ok = isinstance(node, dict) and p in node
        if not ok:
            raise KeyError(f"{key_text(path[:i + 1])} does not exist")
        node = node[p]
    return node


def _mapping_indent(content: str) -> int | None:
    """Indentation of a mapping nested in a mapping, as the file has it (ruamel guesses
    only a sequence's)."""
    prev: tuple[int, str] | None = None
    for line in content.splitlines():
        text = line.split(" #")[0].rstrip()
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        ind, body = len(text) - len(text.lstrip()), text.strip()
        if (prev is not None and ind > prev[0] and not body.startswith("-")
                and prev[1].endswith(":") and not prev[1].startswith("-")):
            return ind - prev[0]
        prev = (ind, body)
    return None


def _yaml(content: str) -> tuple[YAML, Any]:
    _, seq_indent, offset = load_yaml_guess_indent(content)
    mapping = _mapping_indent(content)
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096                       # never re-wrap a long line
    mapping = mapping or seq_indent or 2
    y.indent(mapping=mapping, sequence=seq_indent if offset is not None else mapping,
             offset=offset or 0)
    return y, y.load(content)


def set_values(ctype: ConfigType, content: str, values: dict[Path, Any]) -> str:
    """``content`` with each path set to its value; nothing else changes."""
    parse_content(ctype, content)        # the hostile-YAML limits, before ruamel builds it
    y, data = _yaml(content)
    for path, value in values.items():
        parent = get_path(data, path[:-1])
        get_path(data, path)             # must exist: never adds a key
        parent[path[-1]] = value
    out = io.StringIO()
    y.dump(data, out)
    return out.getvalue()
