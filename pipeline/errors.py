"""Error types that the CLI turns into one-line messages and exit codes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the known name nearest a misspelt one, as click says it for
    options; '' when none is near."""
    near = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


class InputError(ValueError):
    """Bad user input (file, image, parameter): reported in one line, exit code 2."""


class StoreUnavailable(InputError):
    """A store that does not answer (unreachable, timed out): the store's problem, not the
    input's. One command reports it as any input it cannot read; a run stops on it and leaves
    the job pending, for a plain rerun once the store is back."""


class RowError(InputError):
    """A manifest row that cannot run; `row` is its number (from 0)."""

    def __init__(self, row: int, message: object):
        self.row, self.reason = row, str(message)
        super().__init__(f"row {row}: {message}")


class NonFiniteError(ArithmeticError):
    """A loss or target became inf or NaN: a failed job, never an output (one line, exit 1)."""


class SourceMissingError(RuntimeError):
    """A weight source or model that is not installed here: the message says how to get it."""
