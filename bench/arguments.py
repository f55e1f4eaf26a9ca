"""The bench scripts' command lines: `--help` prints the script's whole docstring (what it
measures, what each option picks) and every option's default."""

from __future__ import annotations

import argparse
from typing import Any


class _Parser(argparse.ArgumentParser):
    """Every option's default in its help, also of an option without a help of its own."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if kwargs.get("default") not in (None, False, "", argparse.SUPPRESS):
            kwargs["help"] = f"{kwargs.get('help') or ''} (default: %(default)s)".lstrip()
        return super().add_argument(*args, **kwargs)


def parser(doc: str | None) -> argparse.ArgumentParser:
    return _Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
