"""`pipeline run`: validates the manifest, skips finished jobs, queues the rest as batches,
and runs them through a distributor (distributors/: this machine's devices, or a Ray cluster).

Concurrency rule: one `pipeline run` per output folder. A second one on the same folder is
refused (an OS lock on the folder itself, which no file deletion can lift), because two runs
sharing a folder could pick the same batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..accel.runtime import RuntimeOptions
from ..errors import InputError, RowError
from ..gatys.trace import TRACE_EVERY, TRACE_EVERY_HELP
from ..io.fetch import prefetch
from ..io.files import cache_dir, check_writable_dir, describe_os_error, remove_stale_temps
from ..io.mirror import STATE, attach, refresh
from ..io.storage import Location, check_store, is_url, location, storage_options
from ..options import check, option
from . import ledger, traces
from .checkpoint import batch_checkpoints, checkpoint_dir, sweep_finished
from .distribute import Distributor, Outcome, QuietDisplay, distribute
from .distributors import NAMES as DISTRIBUTORS
from .distributors import check_distributor, open_distributor
from .jobs import Inspector, Job, forget_input_digests
from .locks import RunLocked, bucket_lease, folder_lock
from .manifest import JobSpec, read_jobs
from .queue import BatchQueue
from .run_state import new_run_id, output_is_done, recorded, write_run_info
from .worker import WorkerConfig


class ManifestInvalid(InputError):
    def __init__(self, errors: list[RowError]):
        self.errors = errors
        super().__init__(f"{len(errors)} invalid row(s)")


@dataclass(frozen=True)
class RunOptions:
    """How a manifest is run. Each field is one option of `pipeline run` (options.py); the
    manifest's own parameters come from its rows and `overrides` (--set)."""

    # A str for the command line (a Path would fold a URL's //); a local one becomes a Path.
    out_dir: str = option(..., "Output folder: images, ledger/, checkpoints, run.json. "
                               "Rerunning on it resumes. A URL in object storage "
                               "(s3://bucket/out) works in a local copy of it, each file "
                               "uploaded as it is written.", flags=("--out",))
    distributor: str = option("local", "Where workers run: local (one process per device of "
                                       "this machine) or ray (one actor per GPU of every node "
                                       "of a Ray cluster, or per CPU worker on nodes without "
                                       "GPUs; needs the ray extra and a run folder every node "
                                       "mounts at the same path).", choices=DISTRIBUTORS)
    ray_address: str | None = option(None, "--distributor ray: the cluster to join, e.g. "
                                           "10.0.0.1:6379.  [default: $RAY_ADDRESS, else a Ray "
                                           "started on this machine]")
    devices: str = option("auto", "--distributor local: auto (every GPU, else the CPU), or a "
                                  "list such as cuda:0,cuda:1 or cpu. One worker process per "
                                  "device.")
    workers: int = option(0, "CPU workers per machine (on machines without GPUs), each with an "
                             "equal share of the cores. 0 = 2 where the machine has 2+ cores "
                             "and two of the largest jobs fit 4 x 512x384 px together, else 1.",
                          lo=0)
    batch_size: int = option(0, "Jobs optimized together (same size and parameters). 0 = per "
                                "device: on CUDA 8 up to 512x384 px, else 1; on the CPU up to "
                                "4 images per worker, 4 x 512x384 px in all over the CPU "
                                "workers (1 at 1024 px).", lo=0)
    continuous: bool = option(True, "Continuous batching: a job that ends (early stopping, a "
                                    "failure) hands its place in the batch to the next job at "
                                    "once, and each job is checkpointed on its own, resuming "
                                    "in any batch. Images made in one stage with lbfgs; "
                                    "--no-continuous: fixed batches, checkpointed and resumed "
                                    "whole.")
    checkpoint_every: int = option(50, "Checkpoint each job (or fixed batch) every N iterations, "
                                       "within --checkpoint-budget (0: only when stopped).",
                                   lo=0)
    checkpoint_budget: float = option(0.05, "The largest share of a batch's time that its "
                                            "periodic checkpoints may take: one that falls "
                                            "due beyond it is left out (a checkpoint holds the "
                                            "job's whole L-BFGS history, 118 MB at 256x192; "
                                            "a fast GPU would spend most of its time writing "
                                            "them). 1 = every one, 0 = none. Checkpoints when "
                                            "the run stops are always written.", lo=0, hi=1)
    trace_every: int = option(TRACE_EVERY, TRACE_EVERY_HELP + " Kept in --out/traces/ as "
                                                            "Parquet, by job key.", lo=0)
    skip_bad_rows: bool = option(False, "Record invalid rows as failed and run the rest, "
                                        "instead of refusing to start.")
    retry_failed: bool = option(False, "Run jobs that failed in an earlier run again (they are "
                                       "skipped otherwise).")
    overrides: dict[str, Any] = field(default_factory=dict)  # --set: column defaults
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", location(self.out_dir))

    def validate(self) -> None:
        """InputError naming the first bad option, before anything is read or written."""
        check(self)
        self.runtime.validate()
        if self.distributor != "local" and self.devices != "auto":
            raise InputError(f"--devices is for --distributor local; --distributor "
                             f"{self.distributor} uses every GPU of every node (else --workers "
                             "CPU workers per node)")
        check_distributor(self.distributor, self.devices)


# Rows whose objects are fetched at once (io/fetch.py): enough to keep its threads busy.
PREFETCH = 256


def _fetched_ahead(items: Iterator[JobSpec | RowError]) -> Iterator[JobSpec | RowError]:
    """`items` as they come, each run of PREFETCH with its inputs in object storage fetched
    first, concurrently."""
    while chunk := list(itertools.islice(items, PREFETCH)):
        prefetch(f for spec in chunk if isinstance(spec, JobSpec) for f in spec.inputs)
        yield from chunk


@dataclass
class Scan:
    jobs: list[Job]
    errors: list[RowError]


def scan(manifest: Location, out_dir: Path, overrides: dict[str, Any],
         progress: Callable[[int], None] | None = None, decode: bool = True,
         cache: str | None = None) -> Scan:
    """Every row checked: columns, types, ranges, files exist and decode (or, with
    decode=False, have a readable header), outputs inside --out, not duplicated and not any
    row's input. `cache`: where videos' digests are remembered. Inputs in object storage
    are fetched PREFETCH rows at a time, concurrently, before those rows are checked."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    inspect = Inspector(decode, cache)
    jobs: list[Job] = []
    errors: list[RowError] = []
    outputs: dict[Path, int] = {}
    inputs: dict[Path, int] = {}
    for item in _fetched_ahead(read_jobs(manifest, out_dir, overrides, inputs)):
        if progress is not None:
            progress(1)
        if isinstance(item, RowError):
            errors.append(item)
            continue
        try:
            job = inspect(item)
        except RowError as e:
            errors.append(e)
            continue
        if (first := outputs.setdefault(item.output, item.row)) != item.row:
            errors.append(RowError(item.row, f"output {item.output_name} duplicates row {first}"))
            continue
        jobs.append(job)
    # Only now: a later row may read what an earlier row would write.
    overwriting = [job for job in jobs if job.spec.output in inputs]
    errors += [RowError(job.spec.row, f"output {job.spec.output_name} is an input image of "
                                      f"row {inputs[job.spec.output]}; it would be overwritten")
               for job in overwriting]
    jobs = [job for job in jobs if job.spec.output not in inputs]
    errors.sort(key=lambda e: e.row)
    return Scan(jobs, errors)


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
    and the workers' devices found (a Ray cluster joined) first."""
    start = time.perf_counter()
    opts.validate()
    remote = opts.out_dir if isinstance(opts.out_dir, str) else None
    if remote is not None:  # object storage: a local copy of the run folder
        opts = dataclasses.replace(opts, out_dir=mirrored_folder(remote, opts.runtime.cache))
    out_dir = opts.out_dir
    with scan_view() as advance:
        found = scan(manifest, out_dir, opts.overrides, advance, decode=False,
                     cache=opts.runtime.cache)
    if found.errors and not opts.skip_bad_rows:
        raise ManifestInvalid(found.errors)
    # Absolute: a worker elsewhere has another working folder.
    config = WorkerConfig(out_dir=Path(os.path.realpath(out_dir)),
                          checkpoint_every=opts.checkpoint_every, runtime=opts.runtime,
                          run_id=new_run_id(), trace_every=opts.trace_every,
                          checkpoint_budget=opts.checkpoint_budget, remote=remote,
                          storage_options=storage_options())

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


def run_folder(out: str) -> Path:
    """A run folder to look at (`pipeline status`, `report`): the path, or this machine's copy
    of one in object storage with the run's records pulled (what is written there is
    uploaded)."""
    return mirrored_folder(out, None, ("run.json", "ledger", "traces")) if is_url(out) else (
        Path(out))


def mirrored_folder(url: str, cache: str | None, parts: tuple[str, ...] = STATE) -> Path:
    """The local folder a run into `url` works in, with the run's state (`parts` of it) pulled
    from the bucket and every file written there uploaded (io/mirror.py)."""
    check_store(url)
    return attach(url, cache_dir(cache), parts)


def _run_locked(manifest: Location, opts: RunOptions, found: Scan, run_id: str,
                workers_for: Callable[[list[Job]], Distributor],
                display_factory: Callable[..., Any]) -> RunResult:
    """The run itself, in its locked folder."""
    out_dir = opts.out_dir
    refresh(out_dir, STATE)  # in a bucket: as it is now that this run holds the lease
    remove_stale_temps(_own_folders(out_dir, found.jobs))  # of a run that was killed
    write_run_info(out_dir, run_id, manifest, [j.id for j in found.jobs],
                   {e.row: e.reason for e in found.errors}, opts.overrides)
    p = plan(found.jobs, out_dir, opts.retry_failed)
    now = time.time()
    ledger.append(out_dir, [
        ledger.make_row(f"invalid-row-{e.row}", e.row, ledger.INVALID, now, error=str(e))
        for e in found.errors])
    ledger.append(out_dir, [ledger.job_row(j, ledger.DONE, now, written=j.spec.output,
                                           error="recovered from output file")
                            for j in p.recovered])
    result = RunResult(total=len(found.jobs) + len(found.errors), done_before=len(p.done),
                       failed_before=p.failed_before,
                       videos=sum(job.spec.video is not None for job in found.jobs))
    result.failed += [(e.row, str(e)) for e in found.errors]
    if p.todo:
        workers = workers_for(p.todo)
        sizes = [slot.batch_size(opts.batch_size) for slot in workers.slots]
        queue = BatchQueue(p.todo, len(workers.slots), opts.continuous,
                           batch_checkpoints(out_dir), p.done,
                           lambda job: max(size(job) for size in sizes))
        # A worker with no batch would only start up.
        workers.slots = workers.slots[:max(1, queue.count(
            workers.slots[0].batch_size(opts.batch_size)))]
        result.devices = [slot.label for slot in workers.slots]
        with display_factory(total=len(p.todo), devices=result.devices) as display:
            distribute(workers, queue, opts.batch_size, display,
                       lambda batch: all(output_is_done(j.spec.output, j.key, None)
                                         for j in batch.jobs), result)
        failed = {row for row, _ in result.failed}
        forget_input_digests((job for job in p.todo if job.spec.row in failed),
                             opts.runtime.cache)
        try:  # what workers on other machines recorded, for the summary and the report
            refresh(out_dir, ("ledger", "traces"))
        except InputError as e:  # the store went away: the run says so, and stops as it is
            if not result.errors:
                result.errors.append(str(e))
    result.pending = len(p.todo) - result.done - (len(result.failed) - len(found.errors))
    result.swept = sweep_finished(out_dir, lambda: {
        key for (key, _), row in ledger.read(out_dir).items() if row["status"] == ledger.DONE})
    return result


def exit_code(result: RunResult) -> int:
    """0 only when every job of the manifest is done; see `pipeline run --help`."""
    if result.interrupted:
        return 128 + result.interrupted
    if result.failed or result.failed_before or result.pending or result.errors:
        return 1
    return 0


__all__ = ["ManifestInvalid", "RunLocked", "RunOptions", "RunResult", "exit_code", "run_folder",
           "run_manifest", "scan"]
