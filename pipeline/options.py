"""One declaration per user option. A field made by `option` carries its default, help, CLI
spelling and range; the CLI's options, the checks, the manifest schema and the option tables
in the docs are all made from it, so an option is added by adding its field."""

from __future__ import annotations

import functools
import math
import os
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from .errors import InputError


@dataclass(frozen=True)
class Spec:
    """What a field's `option` says beyond its default and type."""

    help: str
    lo: float | None = None       # inclusive bounds
    hi: float | None = None
    above: float | None = None    # exclusive bounds
    under: float | None = None
    choices: tuple[Any, ...] | None = None
    words: dict[str, Any] | None = None  # the CLI spells the value as one of these words
    flags: tuple[str, ...] = ()   # the CLI option's names, when not --field-name
    envvar: str | None = None
    cli: bool = True              # False: a value only a manifest or the API gives
    column: str | None = None     # the manifest column, when not the field's name
    # Whether the value decides the result (job keys hash those that do): True, False, or a
    # (test of the whole record, the same in words for the docs) pair. An option added to a
    # released version can keep the job keys of finished runs with (lambda p: p.new != its
    # default, "when not <default>").
    key: bool | tuple[Callable[[Any], bool], str] = True


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field declaring one user option (`Spec` lists the keywords). A list or tuple
    default becomes a tuple; `default=...` makes the option required."""
    meta = {"option": Spec(help, **spec)}
    if default is ...:
        return field(metadata=meta)
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def spec(f: Field) -> Spec:
    return f.metadata["option"]


def declared(cls: type) -> Iterator[Field]:
    """The fields of `cls` that are user options, in declaration order."""
    return (f for f in fields(cls) if "option" in f.metadata)


def default(f: Field) -> Any:
    """A field's default (`...` when the option is required)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return ...


@functools.cache
def _hints(owner: type) -> dict[str, Any]:
    return typing.get_type_hints(owner)


def base_type(owner: type, name: str) -> tuple[type, bool, bool]:
    """(element type, is a list, may be None) of a field's annotation: `tuple[float, ...] |
    None` -> (float, True, True)."""
    hint = _hints(owner)[name]
    args = typing.get_args(hint)
    nullable = isinstance(hint, types.UnionType) and type(None) in args
    if nullable:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True, nullable
    return hint, False, nullable


def coerce(owner: type, name: str, value: Any) -> Any:
    """A manifest cell, `--set` value or command-line string to the field's type; ValueError
    if it can't be. Lists take a list or a comma-separated string."""
    kind, is_list, _ = base_type(owner, name)
    if is_list:
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        return tuple(_scalar(kind, v.strip() if isinstance(v, str) else v) for v in items)
    return _scalar(kind, value)


def _scalar(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"not a boolean: {value!r}")
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    if kind not in (int, float):
        return kind(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {value!r}") from None
    if kind is float:
        return number
    if not number.is_integer():
        raise ValueError(f"not an integer: {value!r}")
    return int(number)


def typed(value: Any) -> str:
    """A value as a person types it, read back the same: 1, not 1.0 (a float option reads
    either); any other float exactly."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


# How the command line spells an option: what a command to type again (a resume hint, or
# `pipeline status`'s for a run started from Python) repeats.

def cli_fields(owner: type) -> list[Field]:
    return [f for f in declared(owner) if spec(f).cli]


def cli_name(f: Field) -> str:
    return spec(f).flags[0] if spec(f).flags else f"--{f.name.replace('_', '-')}"


def cli_value(owner: type, f: Field, value: Any) -> Any:
    """A value as the command line spells it: a word, a comma-separated list, or itself."""
    words = spec(f).words
    if words:
        return next(w for w, v in words.items() if v == value)
    if base_type(owner, f.name)[1] and value is not None:
        return ",".join(map(str, value))
    return value


def typed_again(*records: Any, but: tuple[str, ...] = ()) -> list[str]:
    """The options of `records` that differ from their defaults, as the command line spells
    them: what a command to type again must repeat to mean the same (a resume hint), `but`
    the fields named. One its environment variable gives is not repeated: the environment
    gives it again."""
    words: list[str] = []
    for record in records:
        owner = type(record)
        for f in cli_fields(owner):
            value, envvar = getattr(record, f.name), spec(f).envvar
            if f.name in but or value == default(f) or (
                    value is None and not spec(f).words) or (
                    envvar and value == os.environ.get(envvar)):
                continue
            if isinstance(value, bool) and not spec(f).words:  # --name/--no-name
                words.append(cli_name(f) if value else f"--no-{cli_name(f)[2:]}")
            else:
                words += [cli_name(f), typed(cli_value(owner, f, value))]
    return words


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def range_text(s: Spec) -> str:
    """The declared range in words ('' when there is none)."""
    if s.choices is not None:
        return "one of " + ", ".join(map(str, s.choices))
    if s.lo is not None and s.hi is not None:
        return f"between {_num(s.lo)} and {_num(s.hi)}"
    if s.lo is not None and s.under is not None:
        return f"in [{_num(s.lo)}, {_num(s.under)})"
    if s.lo is not None:
        return f">= {_num(s.lo)}"
    return f"> {_num(s.above)}" if s.above is not None else ""


def range_sentence(s: Spec) -> str:
    """The declared bounds as a sentence to follow a help text ('' with none, or choices:
    those are the help's own words)."""
    words = "" if s.choices is not None else range_text(s)
    return f" {words[0].upper()}{words[1:]}." if words else ""


@functools.cache
def _options(cls: type) -> tuple[tuple[str, Spec], ...]:
    """(name, Spec) of each option of `cls`, in declaration order: found once per class, not
    once per record (a large manifest checks and keys every row's)."""
    return tuple((f.name, spec(f)) for f in declared(cls))


def check(record: Any) -> None:
    """InputError naming the first option of `record` that is not finite or outside its
    declared range or choices (cross-field rules are the record's own)."""
    for name, s in _options(type(record)):
        _check(name, s, getattr(record, name))


def check_field(owner: type, name: str, value: Any) -> None:
    """`check` for one option's value alone (a default for many records, such as --set)."""
    _check(name, dict(_options(owner))[name], value)


def _check(name: str, s: Spec, value: Any) -> None:
    if value is None or isinstance(value, tuple | str | bool):
        if s.choices is not None and value not in s.choices:
            raise InputError(f"{name} must be {range_text(s)}, got {value!r}")
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}")
    inside = ((s.lo is None or value >= s.lo) and (s.hi is None or value <= s.hi)
              and (s.above is None or value > s.above)
              and (s.under is None or value < s.under))
    if not inside or (s.choices is not None and value not in s.choices):
        raise InputError(f"{name} must be {range_text(s)}, got {value}")


def decides_result(record: Any, s: Spec) -> bool:
    """Whether the option `s` of `record` decides the result (job keys hash it)."""
    return bool(s.key[0](record)) if isinstance(s.key, tuple) else s.key


def as_dict(record: Any) -> dict[str, Any]:
    """Every field of a record of flat options, tuples as lists (JSON's arrays). Not
    dataclasses.asdict: its deep copy made this a third of checking a large manifest."""
    return _plain(record, (name for name, _ in _options(type(record))))


def result_dict(record: Any) -> dict[str, Any]:
    """The fields that decide the result (what job keys and output names hash): each field's
    `key` says whether it does."""
    return _plain(record, (name for name, s in _options(type(record))
                           if decides_result(record, s)))


def _plain(record: Any, names: Iterator[str]) -> dict[str, Any]:
    return {name: list(v) if isinstance(v := getattr(record, name), tuple) else v
            for name in names}


__all__ = ["Spec", "as_dict", "base_type", "check", "cli_fields", "cli_name", "cli_value",
           "coerce", "decides_result", "declared", "default", "option", "range_sentence",
           "range_text", "result_dict", "spec", "typed", "typed_again"]
