"""Command-line conventions shared by ``covserve-train`` and ``covserve-serve``.

On/off options are switches, ``--x`` / ``--no-x`` (argparse's ``BooleanOptionalAction``); the older
spelling with a value (``--calibrate yes``, ``--access-log false``) still parses, with a deprecation
warning, through :func:`rewrite_deprecated_switches`. Every flag's help ends with its default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from enum import Enum
from typing import Final

__all__ = ["SWITCH_WORDS", "add_switch", "help_with_default", "rewrite_deprecated_switches"]

SWITCH_WORDS: Final = {
    "yes": True,
    "true": True,
    "on": True,
    "1": True,
    "no": False,
    "false": False,
    "off": False,
    "0": False,
}
"""The values the deprecated ``--x VALUE`` spelling of a switch accepts (case-insensitive)."""


def add_switch(parser: argparse._ActionsContainer, flag: str, dest: str, help_text: str) -> None:
    """Add ``flag`` and its ``--no-`` form; the parsed value is ``True``, ``False`` or ``None`` (absent)."""
    parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)


def help_with_default(description: str | None, default: object) -> str:
    """``description`` followed by ``(default X)``; switches read on/off, enums their value, ``%`` escaped."""
    text = description or ""
    if isinstance(default, Enum):
        default = default.value
    elif isinstance(default, bool):
        default = "on" if default else "off"
    if default not in (None, "", []):
        text = f"{text} (default {default})"
    return text.replace("%", "%%")


def rewrite_deprecated_switches(argv: Sequence[str], switches: Sequence[str], prog: str) -> list[str]:
    """``argv`` with ``--x VALUE`` and ``--x=VALUE`` of every switch in ``switches`` (``--x`` flags) replaced
    by ``--x`` or ``--no-x``, printing one deprecation warning per rewrite on stderr. Anything else,
    including a switch followed by a word that is not in :data:`SWITCH_WORDS`, is left to argparse."""
    rewritten: list[str] = []
    tokens = list(argv)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        flag, equals, attached = token.partition("=")
        if flag in switches:
            value = attached if equals else (tokens[index + 1] if index + 1 < len(tokens) else None)
            state = SWITCH_WORDS.get(value.lower()) if value is not None else None
            if state is not None:
                replacement = flag if state else f"--no-{flag.removeprefix('--')}"
                old = token if equals else f"{token} {value}"
                print(f"{prog}: warning: '{old}' is deprecated, use '{replacement}'", file=sys.stderr)
                rewritten.append(replacement)
                index += 1 if equals else 2
                continue
        rewritten.append(token)
        index += 1
    return rewritten
