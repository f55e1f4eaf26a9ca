"""`pipeline run`: validates the manifest, skips finished jobs, queues the rest as batches,
and runs them through a distributor (distributors/: this machine's devices, or a Ray cluster).

Concurrency rule: one `pipeline run` per output folder. A second one on the same folder is
refused (an OS lock on the folder itself, which no file deletion can lift), because two runs
sharing a folder could pick the same batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, RowError
from ..io.copy_budget import INPUTS_MAX_ENV
from ..io.files import check_writable_dir, describe_os_error, remove_stale_temps, use_cache
from ..io.mirror import STATE, drop_local, refresh
from ..io.run_copies import release
from ..io.storage import Location, location, storage_options
from . import ledger, traces
from .again import Again
from .checkpoint_files import (
    batch_checkpoints,
    checkpoint_dir,
    job_checkpoints,
    sweep_finished,
)
from .distribute import Distributor, Outcome, QuietDisplay, distribute
from .distributors import check_distributor, open_distributor
from .jobs import Batch, Job, forget_input_digests
from .locks import RunLocked, bucket_lease, folder_lock
from .queue import BatchQueue
from .run_options import RunOptions
from .run_state import mirrored_folder, new_run_id, output_is_done, recorded, write_run_info
from .scan import Scan, fetch_inputs, scan
from .worker import WorkerConfig

log = logging.getLogger("pipeline.run")
# Rows that --skip-bad-rows leaves out are named one by one up to this many, then counted.
SKIPPED_LISTED = 100


class ManifestInvalid(InputError):
    def __init__(self, errors: list[RowError]):
        self.errors = errors
        super().__init__(f"{len(errors)} invalid row(s)")


@dataclass
class Plan:
    todo: list[Job]
    done: list[Job]
    failed_before: int      # failed in an earlier run and not retried
    recovered: list[Job]    # outputs found on disk that the ledger does not record as written


def plan(jobs: Iterable[Job], out_dir: Path, retry_failed: bool, quarantine: bool = True
         ) -> Plan:
    """What is left to do. `quarantine` (the caller holds the run lock): unreadable ledger
    parts are moved aside; without it the folder is only read."""
    state = ledger.read(out_dir, quarantine=quarantine)
    p = Plan([], [], 0, [])
    for job in jobs:
        row = state.get(job.id)
        written = recorded(job.spec.output, row)
        if written or output_is_done(job.spec.output, job.key, None):
            p.done.append(job)
            if not written:
                p.recovered.append(job)
        elif row and row["status"] == ledger.FAILED and not retry_failed:
            p.failed_before += 1
        else:
            p.todo.append(job)
    return p


@dataclass
class RunResult(Outcome):
    """The run loop's Outcome (done, failed, interrupted, errors, precision) and the rest."""

    total: int = 0
    done_before: int = 0
    failed_before: int = 0
    pending: int = 0
    seconds: float = 0.0
    devices: list[str] = field(default_factory=list)
    swept: tuple[int, int] = (0, 0)  # finished batches' checkpoints removed: files, bytes
    videos: int = 0  # video jobs among the manifest's: a rate then counts outputs, not images
    folder: Path | None = None  # the run folder on this machine (--out's local copy for a URL)


def _own_folders(out_dir: Path, jobs: Iterable[Job]) -> list[Path]:
    """Where this program writes: the run's folders and each output's folder."""
    return [out_dir, ledger.ledger_dir(out_dir), checkpoint_dir(out_dir),
            traces.trace_dir(out_dir), *(job.spec.output.parent for job in jobs)]


def run_manifest(manifest: Location, opts: RunOptions,
                 display_factory: Callable[..., Any] = QuietDisplay,
                 scan_view: Callable[[], AbstractContextManager[Callable[[int], None]]]
                 = nullcontext) -> RunResult:
    """`pipeline run`: every row of `manifest` into opts.out_dir, resumably; the result says
    what was done, failed and is pending (`exit_code` turns it into the command's).
    `display_factory(total=, devices=)` is a context manager fed the workers' events;
    `scan_view()` one that yields a row counter while the manifest is checked. Nothing is
    written (not even the folder) until the run is sure to start: the manifest is checked,
    and the workers' devices found (a Ray cluster joined) first. `manifest`: a path (str or
    Path) or a URL."""
    start = time.perf_counter()
    manifest = location(manifest)
    opts.validate()
    use_cache(opts.runtime.cache)  # the scan's copies of objects go there, as the workers'
    check_distributor(opts.distributor, opts.devices)
    if not isinstance(opts.out_dir, str):
        return _run(manifest, opts, None, display_factory, scan_view, start)
    remote = opts.out_dir  # object storage: the run works in a local copy of the folder
    copy = mirrored_folder(remote, opts.runtime.cache)
    try:
        return _run(manifest, dataclasses.replace(opts, out_dir=copy), remote, display_factory,
                    scan_view, start)
    finally:
        release(copy)  # a process that goes on (the Python API) holds no lock on it


def _run(manifest: Location, opts: RunOptions, remote: str | None,
         display_factory: Callable[..., Any],
         scan_view: Callable[[], AbstractContextManager[Callable[[int], None]]], start: float
         ) -> RunResult:
    """run_manifest into opts.out_dir: the folder, or the copy of the one at `remote`."""
    out_dir = opts.out_dir
    with scan_view() as advance:
        found = scan(manifest, remote or out_dir, opts.overrides, advance, decode=False,
                     cache=opts.runtime.cache)
    if found.errors and not opts.skip_bad_rows:
        raise ManifestInvalid(found.errors)
    _say_skipped(found.errors)
    # Absolute: a worker elsewhere has another working folder.
    config = WorkerConfig(out_dir=Path(os.path.realpath(out_dir)),
                          checkpoint_every=opts.checkpoint_every, runtime=opts.runtime,
                          run_id=new_run_id(), trace_every=opts.trace_every,
                          checkpoint_budget=opts.checkpoint_budget, remote=remote,
                          storage_options=storage_options(),
                          inputs_max=os.environ.get(INPUTS_MAX_ENV))

    def open_for(todo: list[Job]) -> AbstractContextManager[Distributor]:
        return open_distributor(opts.distributor, config, opts.devices, opts.workers,
                                opts.ray_address, [job.size for job in todo])

    with ExitStack() as opened:
        ahead = plan(found.jobs, out_dir, opts.retry_failed, quarantine=False)
        workers: Distributor | None = None
        if ahead.todo:
            workers = opened.enter_context(open_for(ahead.todo))
        try:
            check_writable_dir(out_dir)
        except OSError as e:
            raise InputError(f"--out: {describe_os_error(e, out_dir)}") from None
        # `stack` holds the workers: they end before the folder is unlocked.
        with (folder_lock(out_dir), bucket_lease(remote, config.run_id),
              opened.pop_all() as stack):

            def workers_for(todo: list[Job]) -> Distributor:
                nonlocal workers
                if workers is None:  # outputs went missing since the look above
                    workers = stack.enter_context(open_for(todo))
                return workers

            result = _run_locked(manifest, opts, found, config.run_id, workers_for,
                                 display_factory)
    result.seconds, result.folder = time.perf_counter() - start, out_dir
    return result


def _say_skipped(errors: list[RowError]) -> None:
    """--skip-bad-rows: which rows the run leaves out and why, before it starts (each is
    recorded as failed, so `pipeline status` and the report list them too)."""
    for e in errors[:SKIPPED_LISTED]:
        log.warning("skipped %s", e)
    if len(errors) > SKIPPED_LISTED:
        log.warning("skipped %d more invalid rows (pipeline status lists them all)",
                    len(errors) - SKIPPED_LISTED)


def _run_locked(manifest: Location, opts: RunOptions, found: Scan, run_id: str,
                workers_for: Callable[[list[Job]], Distributor],
                display_factory: Callable[..., Any]) -> RunResult:
    """The run itself, in its locked folder."""
    out_dir = opts.out_dir
    refresh(out_dir, STATE)  # in a bucket: as it is now that this run holds the lease
    remove_stale_temps(_own_folders(out_dir, found.jobs))  # of a run that was killed
    write_run_info(out_dir, run_id, manifest, [j.id for j in found.jobs],
                   {e.row: e.reason for e in found.errors}, opts.overrides,
                   opts.again or Again(tuple(opts.typed())))
    p = plan(found.jobs, out_dir, opts.retry_failed)
    now = time.time()
    ledger.append(out_dir, [
        ledger.make_row(f"invalid-row-{e.row}", e.row, ledger.INVALID, now, error=str(e))
        for e in found.errors])
    ledger.append(out_dir, [ledger.job_row(j, ledger.DONE, now, written=j.spec.output,
                                           error="recovered from output file")
                            for j in p.recovered])
    drop_local(j.spec.output for j in p.recovered)  # in a bucket: recorded there now
    result = RunResult(total=len(found.jobs) + len(found.errors), done_before=len(p.done),
                       failed_before=p.failed_before,
                       videos=sum(job.spec.video is not None for job in found.jobs))
    result.failed += [(e.row, str(e)) for e in found.errors]
    if p.todo:
        if opts.distributor == "local":  # (a Ray worker fetches its own, on its machine)
            fetch_inputs(found, p.todo)
        workers = workers_for(p.todo)
        sizes = [slot.batch_size(opts.batch_size) for slot in workers.slots]
        queue = BatchQueue(p.todo, len(workers.slots), opts.continuous,
                           batch_checkpoints(out_dir), p.done,
                           lambda job: max(size(job) for size in sizes),
                           job_checkpoints(out_dir))
        # A worker with no batch would only start up.
        workers.slots = workers.slots[:max(1, queue.count(
            workers.slots[0].batch_size(opts.batch_size)))]
        result.devices = [slot.label for slot in workers.slots]
        with display_factory(total=len(p.todo), devices=result.devices) as display:
            distribute(workers, queue, opts.batch_size, display,
                       lambda batch: _all_written(batch, out_dir), result)
        failed = {row for row, _ in result.failed}
        forget_input_digests((job for job in p.todo if job.spec.row in failed),
                             found.objects, opts.runtime.cache)
        try:  # what workers on other machines recorded, for the summary and the report
            refresh(out_dir, ("ledger", "traces"))
        except InputError as e:  # the store went away: the run says so, and stops as it is
            if not result.errors:
                result.errors.append(str(e))
    result.pending = len(p.todo) - result.done - (len(result.failed) - len(found.errors))
    result.swept = sweep_finished(out_dir, lambda: {
        key for (key, _), row in ledger.read(out_dir).items() if row["status"] == ledger.DONE})
    return result


def _all_written(batch: Batch, out_dir: Path) -> bool:
    """Asked when a batch's worker died: whether it wrote all its outputs (the ledger's rows of
    them, where a run in object storage no longer keeps the outputs here, and the store asked
    afresh: another process uploaded them)."""
    records = ledger.read(out_dir)
    return all(output_is_done(j.spec.output, j.key, records.get(j.id), fresh=True)
               for j in batch.jobs)


def exit_code(result: RunResult) -> int:
    """0 only when every job of the manifest is done; see `pipeline run --help`."""
    if result.interrupted:
        return 128 + result.interrupted
    if result.failed or result.failed_before or result.pending or result.errors:
        return 1
    return 0


__all__ = ["ManifestInvalid", "RunLocked", "RunOptions", "RunResult", "exit_code",
           "run_manifest", "scan"]
