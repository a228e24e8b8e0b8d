"""Bash completion for labctl, generated from its argparse tree (so it never goes stale):
``eval "$(labctl completion bash)"``; zsh users add ``autoload -U bashcompinit &&
bashcompinit`` first."""
from __future__ import annotations

import argparse


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...],
          out: dict[tuple[str, ...], list[str]]) -> None:
    words: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                _walk(sub, path + (name,), out)
        else:
            words.extend(o for o in action.option_strings if o.startswith("--"))
    out[path] = words


def bash_script(parser: argparse.ArgumentParser) -> str:
    table: dict[tuple[str, ...], list[str]] = {}
    _walk(parser, (), table)
    cases = []
    for path in sorted(table, key=len, reverse=True):  # the most specific path first
        pattern = '""' if not path else '" ' + " ".join(path) + '"*'
        cases.append(f'        {pattern}) words="{" ".join(table[path])}" ;;')
    return "\n".join([
        "_labctl() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" path="" w words',
        '    for w in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do',
        '        [[ $w == -* ]] || path="$path $w"',
        "    done",
        '    case "$path" in',
        *cases,
        "    esac",
        '    COMPREPLY=( $(compgen -W "$words" -- "$cur") )',
        "}",
        "complete -F _labctl labctl",
        ""])
