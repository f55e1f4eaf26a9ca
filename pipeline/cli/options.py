"""Typer options made from declared fields (options.py): a command lists the records it takes
and gets one option per field, with the field's default, help and range, and the records built
from what the user typed."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import Field, fields
from typing import Any

import typer

from ..accel.options import RuntimeOptions
from ..errors import InputError
from ..options import (
    base_type,
    cli_fields,
    cli_name,
    cli_value,
    coerce,
    default,
    range_sentence,
    spec,
)


def help_text(owner: type, f: Field) -> str:
    """The field's help, with what the CLI adds: how lists are typed, the range or words."""
    s, (_, is_list, _) = spec(f), base_type(owner, f.name)
    extra = [" Comma-separated."] if is_list else []
    named = s.words or s.choices
    if named and not all(str(w) in s.help for w in named):
        extra.append(f" One of {', '.join(map(str, named))}.")
    elif not named:
        extra.append(range_sentence(s))
    return s.help + "".join(extra)


def cli_default(owner: type, f: Field) -> Any:
    return cli_value(owner, f, default(f))


def typer_option(owner: type, f: Field) -> Any:
    s = spec(f)
    names = [cli_name(f), *s.flags[1:]] if s.flags else []
    return typer.Option(cli_default(owner, f), *names, envvar=s.envvar,
                        help=help_text(owner, f))


def annotation(owner: type, f: Field) -> Any:
    """The type Typer parses: words and lists arrive as text."""
    kind, is_list, nullable = base_type(owner, f.name)
    if spec(f).words or is_list:
        return str | None if nullable or default(f) is None else str
    return kind | None if nullable else kind


def from_cli(owner: type, f: Field, value: Any) -> Any:
    """What the user typed for one field, as the field's value."""
    s = spec(f)
    if s.words:
        if value not in s.words:
            raise InputError(f"{cli_name(f)} must be {', '.join(s.words)}, got {value!r}")
        return s.words[value]
    if value is None or not base_type(owner, f.name)[1]:
        return value
    try:
        return coerce(owner, f.name, value)
    except ValueError as e:
        raise InputError(f"{cli_name(f)} {value!r}: {e}") from None


def with_options(**records: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per declared field of each record type, and hand it the
    records built from them as keyword arguments: `@with_options(params=StyleParams)` -> the
    command gets `params: StyleParams`. Fields a command fills itself (not `cli`) keep their
    defaults."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                   default=typer_option(owner, f),
                                   annotation=annotation(owner, f))
                 for owner in records.values() for f in cli_fields(owner)]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            built = {name: owner(**{f.name: from_cli(owner, f, kwargs.pop(f.name))
                                    for f in cli_fields(owner)})
                     for name, owner in records.items()}
            return fn(*args, **built, **kwargs)

        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.name not in records]
        wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            own + added)
        return wrapper

    return decorate


# For URLs in object storage: the commands that read or write them take it.
STORAGE_OPTION = typer.Option(None, "--storage-option", help="For s3:// (any fsspec) URLs: a "
                              "storage option name=value (repeatable), e.g. "
                              "endpoint_url=http://127.0.0.1:9000; also from the environment "
                              "(FSSPEC_S3_ENDPOINT_URL, FSSPEC_S3_KEY, ...) and "
                              "~/.config/fsspec.")


# For the commands that stylize one input on one device.
DEVICE_OPTION = typer.Option("auto", help="auto (first GPU, else CPU), cpu, cuda or cuda:N.")
# For scripts, schedulers and cron: silent on success, the exit code telling the outcome.
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress bars, summary or lines "
                            "that only inform (INFO log lines); warnings and errors are still "
                            "said on stderr, and the exit code tells the outcome.")


def field_option(owner: type, name: str) -> Any:
    """The Typer option of one declared field, for a command that takes only it."""
    return typer_option(owner, next(f for f in fields(owner) if f.name == name))


# For the commands that take no other runtime option but read the cache: where a run keeps
# its copy of a run folder in a bucket, the copies of input objects and their digests.
CACHE_OPTION = field_option(RuntimeOptions, "cache")


__all__ = ["CACHE_OPTION", "DEVICE_OPTION", "QUIET_OPTION", "STORAGE_OPTION", "cli_default",
           "field_option", "help_text", "with_options"]
