"""The `pipeline` Typer app: logging, and our exceptions as one line and a documented exit
code. Exit codes: 0 success, 1 unexpected failure, 2 bad input or usage, 3 a weight source or
model is missing, 130 Ctrl-C, 143 SIGTERM."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import platform
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.logging import RichHandler
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..collector import paused
from ..errors import InputError, NonFiniteError, RowError, SourceMissingError
from ..io.files import describe_os_error
from ..version import __version__
from .progress import LISTED, console, say

# Exit code per kind of error we expect (a NonFiniteError: the job diverged).
EXIT_CODES = ((SourceMissingError, 3), (InputError, 2), (NonFiniteError, 1))
app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Batch neural style transfer (Gatys et al., CVPR 2016).")


def main(args: list[str] | None = None, prog_name: str = "pipeline") -> None:
    """The `pipeline` command. What was imported is never garbage: frozen out of the
    collector, the interpreter's collections at exit skip it (as `computing` does for torch)."""
    gc.freeze()
    app(args, prog_name=prog_name)


@contextlib.contextmanager
def computing() -> Iterator[None]:
    """Around a command's imports of the modules that compute (torch and what is built on it),
    which no other command loads: made with the collector paused, then frozen out of it, so
    that the collections at exit skip their many objects, which were most of the time the exit
    took (BENCHMARKS.md, "Start-up")."""
    with paused():
        yield
    gc.freeze()


def only_warnings(quiet: bool) -> None:
    """--quiet: the package's log lines that only inform are not said."""
    if quiet:
        logging.getLogger("pipeline").setLevel(logging.WARNING)


def say_error(message: object) -> None:
    say("error:", "red", message)


def _out_of_memory(e: MemoryError | RuntimeError) -> str | None:
    """The one line for an out-of-memory error; None for any other RuntimeError."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if not isinstance(e, MemoryError) and "memory" not in text.lower():
        return None
    return (f"out of memory ({text}); try a smaller --size, fewer styles, --lbfgs-history 20 "
            "or --optimizer adam")


class Terminated(Exception):
    """SIGTERM (`kill`, a scheduler, a container runtime) raised where the command runs, so that
    it can say what it keeps, as for Ctrl-C, instead of vanishing."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our exceptions into one line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_raises():
                return fn(*args, **kwargs)
        except tuple(kind for kind, _ in EXIT_CODES) as e:
            say_error(e)
            raise typer.Exit(next(code for kind, code in EXIT_CODES if isinstance(e, kind))
                             ) from None
        except KeyboardInterrupt:
            say("interrupted", "yellow")
            raise typer.Exit(130) from None
        except Terminated:
            say("terminated", "yellow")
            raise typer.Exit(128 + signal.SIGTERM) from None
        except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
            if (line := _out_of_memory(e)) is None:
                raise
            say_error(line)
            raise typer.Exit(1) from None
        except OSError as e:  # a write the checks before the work could not foresee
            where = Path(e.filename).parent if e.filename else Path.cwd()
            say_error(describe_os_error(e, where))
            raise typer.Exit(1) from None

    return wrapper


class LineHandler(logging.Handler):
    """A log record as one line, whole for grep, never wrapped, as RichHandler would (into a
    log file or a pipe it wraps at 80 columns); through the console, so that it goes to
    whatever stderr is when it is said."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        console.print(self.format(record), soft_wrap=True, highlight=False)


def _version(asked: bool) -> None:
    """`pipeline --version`: ours and what computes for it, the lines a bug report needs (read
    from the installed packages' metadata: nothing imported)."""
    if not asked:
        return
    from importlib import metadata

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    ort = next(((n, v) for n in ("onnxruntime-gpu", "onnxruntime") if (v := installed(n))),
               ("onnxruntime", "not installed"))
    found = [("torch", installed("torch") or "not installed"), ort,
             ("Python", platform.python_version())]
    typer.echo(f"style-pipeline {__version__} ({', '.join(f'{n} {v}' for n, v in found)})")
    raise typer.Exit()


@app.callback()
def logs(verbose: bool = typer.Option(True, "--verbose/--quiet-log",
                                      help="Log target and model events (provider chosen, "
                                           "cache hits, exports) to stderr."),
         version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                      help="Print the version (and torch's, ONNX Runtime's "
                                           "and Python's) and exit.")) -> None:
    """Batch neural style transfer (Gatys et al., CVPR 2016)."""
    handler = (RichHandler(console=console, show_path=False, show_time=False)
               if console.is_interactive else LineHandler())  # else a log file, a pipe, CI
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler],
                        force=True)
    logging.getLogger("pipeline").setLevel(logging.INFO if verbose else logging.WARNING)


def print_errors(errors: list[RowError], limit: int | None = LISTED, then: str = "") -> None:
    """One line per invalid row (grep-able, never wrapped): the first `limit` (None: all),
    then how many more, and `then` (where they are all listed)."""
    shown = errors[:limit]
    for e in shown:
        say("invalid", "red", e)
    if len(errors) > len(shown):
        console.print(f"... and {len(errors) - len(shown)} more{then}", soft_wrap=True)


@contextlib.contextmanager
def counting(what: str = "checking rows", shown: bool = True
             ) -> Iterator[Callable[[int], None]]:
    """A transient counter while manifest rows are checked (or a report's thumbnails made);
    yields `advance(n)`. None into a log or a pipe, where all it would leave is a blank
    line, nor where the command is quiet (`shown` False)."""
    if not (shown and console.is_interactive):
        yield lambda n: None
        return
    with Progress(SpinnerColumn(), TextColumn(what, style="bold", markup=False), TextColumn(
            "{task.completed}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda n: bar.advance(task, n)


__all__ = ["app", "computing", "counting", "only_warnings", "print_errors", "reports_errors",
           "say_error"]
