"""`pipeline run`, `pipeline status` and `pipeline report`: a manifest into a run folder, and
what that folder holds."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from ..accel.options import RuntimeOptions
from ..bulk import ledger
from ..bulk.again import again
from ..bulk.fork_server import start_early
from ..bulk.locks import Holder, RunLocked
from ..bulk.manifest import parse_overrides
from ..bulk.run_options import RunOptions
from ..bulk.run_state import Resumable, stored_at
from ..errors import InputError
from ..io.files import shown, use_cache
from ..io.storage import Location, location, set_storage_options
from ..report import write_report
from ..report.status import run_status
from .app import (
    app,
    computing,
    counting,
    only_warnings,
    print_errors,
    reports_errors,
    say_error,
)
from .options import CACHE_OPTION, QUIET_OPTION, STORAGE_OPTION, with_options
from .progress import RunDisplay, console, duration, say, summary_table

if TYPE_CHECKING:
    from ..bulk.runner import RunResult

SET_OPTION = typer.Option(None, "--set", help="Column default name=value for rows that leave "
                          "it empty or lack the column (repeatable), e.g. --set size=256; video "
                          "rows take the video columns too, e.g. --set temporal_weight=500.")


@app.command()
@reports_errors
@with_options(opts=RunOptions, options=RuntimeOptions)
def run(
    manifest: str = typer.Argument(..., help="Manifest (.parquet): one row per output image; a "
                                   "path or a URL in object storage (s3://bucket/m.parquet), "
                                   "whose rows' relative paths are then objects beside it."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write or refresh "
                                "--out/report.html (contact sheet, loss curves, failures) at "
                                "the end."),
    set_: list[str] = SET_OPTION,
    storage_option: list[str] = STORAGE_OPTION,
    quiet: bool = QUIET_OPTION,
    *,
    opts: RunOptions,
    options: RuntimeOptions,
) -> None:
    """Stylize every row of MANIFEST into --out, resumably. Outputs never land outside --out,
    and nothing this program did not write is deleted. Exit codes: 0 every job is done, 1 some
    jobs failed or are still pending (a worker died, a write failed), 2 invalid manifest or
    options, 4 the folder is in use, 130 Ctrl-C, 143 SIGTERM (both: checkpointed, rerun to
    resume)."""
    only_warnings(quiet)
    set_storage_options(storage_option)  # before the workers start: they inherit it
    opts = dataclasses.replace(opts, overrides=parse_overrides(set_ or []), runtime=options)
    resume = again([*opts.typed(), *([] if report else ["--no-report"]),
                    *(["-q"] if quiet else [])], storage_option or [])
    opts = dataclasses.replace(opts, again=resume)
    if opts.distributor == "local":
        start_early()  # its imports beside this process's, not after them
    with computing():
        from ..bulk.runner import ManifestInvalid, exit_code, run_manifest
    try:
        result = run_manifest(location(manifest), opts,
                              functools.partial(RunDisplay, quiet=quiet),
                              functools.partial(counting, shown=not quiet))
    except ManifestInvalid as e:
        validate = again([], storage_option or []).command(
            ["pipeline", "manifest", "validate", manifest, "--out", str(opts.out_dir)], set_ or [])
        print_errors(e.errors, then=f" ({validate} lists them all)")
        say_error(f"{manifest}: {len(e.errors)} invalid row(s); fix them, or pass "
                  "--skip-bad-rows to run the rest")
        raise typer.Exit(2) from None
    except RunLocked as e:
        say_error(e)
        raise typer.Exit(4) from None
    if result.total == 0:
        say("warning:", "yellow", f"{manifest} has no rows: nothing to do")
    table = _summary(opts.out_dir, result)
    if report:
        table.add_row("report", _write_report(result.folder or opts.out_dir, quiet))
    if quiet:
        _say_why(result)
    else:
        console.print(table)
    if result.interrupted or result.errors or result.pending:
        said = resume.command(["pipeline", "run", manifest, "--out", str(opts.out_dir)],
                              set_ or [])
        console.print(f"{'interrupted' if result.interrupted else 'not finished'}; resume "
                      f"with: {said}", soft_wrap=True)  # one line to copy, also from a log
    raise typer.Exit(exit_code(result))


def _summary(out: Path, result: RunResult) -> Table:
    table = summary_table(f"run {out}")
    table.add_row("jobs", str(result.total))
    table.add_row("done now", str(result.done))
    table.add_row("done before (skipped)", str(result.done_before))
    table.add_row("failed", str(len(result.failed) + result.failed_before)
                  + (f" ({result.failed_before} from earlier runs; --retry-failed reruns them)"
                     if result.failed_before else ""))
    table.add_row("pending", str(result.pending))
    table.add_row("devices", ", ".join(sorted(set(result.devices))) or "none")
    if result.pieces:
        table.add_row("pass pieces", f"{sum(result.pieces.values())} ("
                      + ", ".join(f"w{w} {n}" for w, n in sorted(result.pieces.items())) + ")")
    for line in sorted(set(result.precision.values())):
        table.add_row("precision", line)
    table.add_row("time", duration(result.seconds)
                  + (f" ({ledger.rate(result.done, result.seconds, result.videos > 0)})"
                     if result.done else ""))
    if result.swept[0]:
        table.add_row("checkpoints removed", f"{result.swept[0]} of finished batches "
                      f"({result.swept[1] / 1e6:,.0f} MB)")
    for error in result.errors:
        table.add_row("stopped", error)
    return table


def _say_why(result: RunResult) -> None:
    """--quiet: what of the summary a non-zero exit code stands for and nothing else said
    (failed jobs and skipped rows were said as they came)."""
    for error in result.errors:
        say("stopped:", "red", error)
    if n := result.failed_before:
        jobs, them = ("jobs", "them") if n > 1 else ("job", "it")
        say("failed", "red", f"{n} {jobs} in an earlier run (pipeline status lists why; "
            f"--retry-failed reruns {them})")


def _write_report(out: Path, quiet: bool) -> str:
    """The report's path (its URL in object storage), or why there is none: a report that
    cannot be made does not fail the run whose results it shows."""
    try:
        written = _report(out, quiet)
        return stored_at(written) or str(written)
    except (InputError, OSError) as e:
        say("warning:", "yellow", f"no report: {e}")
        return f"not written ({e})"


RUN_FOLDER = "Output folder of a run: a path, or a URL in object storage (s3://...)."


@app.command("report")
@reports_errors
def report_cmd(out: str = typer.Argument(..., help=RUN_FOLDER),
               storage_option: list[str] = STORAGE_OPTION,
               cache_dir: str | None = CACHE_OPTION) -> None:
    """Write or refresh OUT/report.html: the run's numbers, the failed rows, a contact sheet
    (content images x styles and varied parameters, each output linked, failed rows with
    their error), each job's loss curve and its intermediate images. A sheet of more than 500
    cells goes on in pages (OUT/report_files/pages/). It opens from disk, with no server."""
    set_storage_options(storage_option)
    use_cache(cache_dir)
    written = _report(location(out))  # a URL: its copy here (report.write_report)
    console.print(f"wrote {stored_at(written) or written}", soft_wrap=True)


def _report(folder: Location, quiet: bool = False) -> Path:
    """write_report, counting its thumbnails as they are made: a first report of a large run
    makes thousands."""
    with counting("report: thumbnails", shown=not quiet) as advance:
        return write_report(folder, advance=advance)


@app.command()
@reports_errors
def status(out: str = typer.Argument(..., help=RUN_FOLDER),
           as_json: bool = typer.Option(False, "--json/--no-json", help="Print one JSON "
                                        "object on stdout instead of the tables, for "
                                        "scripts: the counts, every failure, throughput, "
                                        "devices, report, the run going on and its eta."),
           storage_option: list[str] = STORAGE_OPTION,
           cache_dir: str | None = CACHE_OPTION) -> None:
    """Ledger summary of a run: done / failed / pending, throughput, failures with reasons;
    while a run goes on, its process and when it will end at its pace.
    A job counts as done only while its output is there and is its own, as `run` decides (in
    object storage: while the bucket has it)."""
    set_storage_options(storage_option)
    use_cache(cache_dir)
    now = run_status(out)
    if as_json:
        typer.echo(json.dumps(now.as_dict()))
        return
    info, state = now.info, now.state
    table = summary_table(f"status {out}")
    table.add_row("manifest", shown(info.manifest))
    if now.known:
        table.add_row("run", _running(now.running, None if now.checking else info.started_at))
    table.add_row("jobs", str(info.total))
    table.add_row("done", str(state.done))
    table.add_row("failed", str(len(state.failed)))
    table.add_row("pending", _pending(len(state.pending), now.found))
    if now.eta is not None:
        seconds, here = now.eta
        pace = ledger.rate(len(here), time.time() - info.started_at, ledger.any_video(here))
        table.add_row("eta", f"{datetime.timedelta(seconds=round(seconds))}, at this run's "
                      f"{pace}")
    if now.ran is not None:
        (timed, span), measured = now.ran, now.throughput()
        table.add_row("throughput", f"{ledger.rate(len(timed), span, ledger.any_video(timed))}"
                      f" over {duration(span, 0 if span >= 1 else 1)}; "
                      f"{duration(measured['seconds_per_batch_run'])} per batch run")
        table.add_row("devices", ", ".join(measured["devices"]))
    table.add_row("report", now.report or f"none yet (pipeline report {out})")
    console.print(table)
    if now.resume:  # one line to copy, not a table's cell folded over several
        console.print(f"resume with: {now.resume}", soft_wrap=True)
    if state.failed:
        failures = Table(title="failures")
        failures.add_column("row", justify="right")
        failures.add_column("error", overflow="fold")
        for row, error in state.failed:
            failures.add_row(str(row), error)
        console.print(failures)


def _running(running: Holder | None, started_at: float | None) -> str:
    """Who runs in the folder; `started_at` None: a run checking its manifest."""
    if running is None:
        return "not running"
    where = "" if running.host == socket.gethostname() else f" on {running.host}"
    if started_at is None:
        return f"running{where}: process {running.pid}, checking its manifest"
    since = datetime.timedelta(seconds=round(time.time() - started_at))
    return f"running{where}: process {running.pid}, for {since}"


def _pending(count: int, found: Resumable | None) -> str:
    """The pending count, and what of them a rerun takes up."""
    parts = []
    if found and (its := found.iterations):
        at = "iterations" if min(its) < max(its) else "iteration"
        parts.append(f"{len(its)} resume from a checkpoint, at {at} {_span(its)}")
    if found and (frames := found.frames):
        videos = "videos" if len(frames) > 1 else "video"
        parts.append(f"{len(frames)} {videos} with {_span(frames)} frames done")
    return f"{count} ({'; '.join(parts)})" if parts else str(count)


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


__all__ = ["SET_OPTION", "report_cmd", "run", "status"]
