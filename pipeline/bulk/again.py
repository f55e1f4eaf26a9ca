"""The command that resumes a run: the one a stopped run ends with, and the one `pipeline status`
gives after a crash or a reboot, where no run said it (run.json keeps what it repeats)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..options import typed

# Storage options not repeated in a line that may go into a log: credentials.
SECRET = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


@dataclass(frozen=True)
class Again:
    """What a command that means what a run meant repeats besides its manifest, --out and --set
    items: the options it was given other than their defaults, as the command line spells
    them, and its storage options but credentials."""

    options: tuple[str, ...] = ()
    credentials_left_out: bool = False

    def command(self, head: Sequence[str], sets: Sequence[str] = ()) -> str:
        """`head` (`pipeline run M --out D`), the options, each --set item: one line to copy."""
        words = [*head, *self.options, *(w for item in sets for w in ("--set", item))]
        return shlex.join(words) + (" (and the credentials given by --storage-option)"
                                    if self.credentials_left_out else "")


def again(options: Sequence[str], storage: Sequence[str]) -> Again:
    """`options` as typed, and each `--storage-option` item but credentials."""
    hidden = [item for item in storage if SECRET.search(item.partition("=")[0])]
    kept = (w for item in storage if item not in hidden for w in ("--storage-option", item))
    return Again((*options, *kept), bool(hidden))


def set_items(overrides: dict[str, Any]) -> list[str]:
    """--set values typed again (`name=value`, as manifest.parse_overrides reads them): paths
    as it resolved them, so that they mean the same from another folder."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list | tuple):
            return ",".join(map(text, value))
        return typed(value)

    return [f"{name}={text(value)}" for name, value in overrides.items()]
