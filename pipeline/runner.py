"""`pipeline run`: the distributor. Validates the manifest, skips finished jobs, groups the
rest into batches, and hands them one at a time to one worker process per device.

Concurrency rule: one `pipeline run` per output folder. A second one on the same folder is
refused (an OS lock on the folder itself, which no file deletion can lift), because two runs
sharing a folder could pick the same batch.
"""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing as mp
import os
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import ledger
from .checkpoint import checkpoint_dir, sweep_finished
from .errors import InputError, RowError
from .events import BatchDone, CannotWrite, CouldNotStart, Exited, Ready
from .files import atomic_write_bytes, check_writable_dir, describe_os_error, remove_stale_temps
from .images import carries_key
from .interrupts import stop_signals
from .jobs import Batch, Inspector, Job, auto_cpu_workers, default_batch_size, make_batches
from .manifest import read_jobs

# A batch whose worker died this many times is left pending (the run then exits non-zero):
# a batch that kills its worker every time (the kernel's OOM killer) must not loop forever.
MAX_WORKER_DEATHS = 2


class RunLocked(RuntimeError):
    """Another `pipeline run` holds the output folder."""


class ManifestInvalid(InputError):
    def __init__(self, errors: list[RowError]):
        self.errors = errors
        super().__init__(f"{len(errors)} invalid row(s)")


@dataclass
class RunOptions:
    out_dir: Path
    devices: str = "auto"
    workers: int = 0                    # CPU worker processes; 0: jobs.auto_cpu_workers
    batch_size: int = 0                 # 0: jobs.default_batch_size per device and size
    checkpoint_every: int = 50
    overrides: dict[str, Any] = field(default_factory=dict)
    skip_bad_rows: bool = False
    retry_failed: bool = False
    runtime: dict[str, Any] = field(default_factory=dict)  # Runtime.create options but device


@dataclass
class Scan:
    jobs: list[Job]
    errors: list[RowError]


def resolve_devices(spec: str, workers: int) -> list[str]:
    """`auto`: every GPU, else the CPU; or a comma list. CPU gets `workers` processes."""
    if spec == "auto":
        names = ([f"cuda:{i}" for i in range(torch.cuda.device_count())]
                 if torch.cuda.is_available() else ["cpu"])
    else:
        names = [d.strip() for d in spec.split(",") if d.strip()]
    out: list[str] = []
    for name in names:
        if name == "cpu":
            out += ["cpu"] * max(1, workers)
        elif name.startswith("cuda"):
            if not torch.cuda.is_available():
                raise InputError(f"device {name} requested but CUDA is not available here")
            out.append(name if ":" in name else "cuda:0")
        else:
            raise InputError(f"unknown device {name!r}; use auto, cpu or cuda:N")
    return out


def scan(manifest: Path, out_dir: Path, overrides: dict[str, Any],
         progress: Callable[[int], None] | None = None, decode: bool = True) -> Scan:
    """Every row checked: columns, types, ranges, files exist and decode (or, with
    decode=False, have a readable header), outputs inside --out and not duplicated."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    inspect = Inspector(decode)
    jobs: list[Job] = []
    errors: list[RowError] = []
    outputs: dict[Path, int] = {}
    for item in read_jobs(manifest, out_dir, overrides):
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
    return Scan(jobs, errors)


def _recorded(job: Job, row: dict[str, Any] | None) -> bool:
    """The ledger's done row records writing the very file now at the job's output."""
    return bool(row and row["status"] == ledger.DONE
                and ledger.matches_file(row, job.spec.output))


def _finished(job: Job, row: dict[str, Any] | None) -> bool:
    """Its requested output exists and is its own: the ledger's record of writing that very
    file, else (a file the ledger never saw, copied or touched since) the file decodes and
    carries the job's key."""
    output = job.spec.output
    return _recorded(job, row) or (output.is_file() and carries_key(output, job.key))


@dataclass
class Plan:
    todo: list[Job]
    done: int
    failed_before: int      # failed in an earlier run and not retried
    recovered: list[Job]    # outputs found on disk that the ledger does not record as written


def plan(jobs: Iterable[Job], out_dir: Path, retry_failed: bool) -> Plan:
    state = ledger.read(out_dir, quarantine=True)
    p = Plan([], 0, 0, [])
    for job in jobs:
        row = state.get(job.id)
        recorded = _recorded(job, row)
        if recorded or _finished(job, None):
            p.done += 1
            if not recorded:
                p.recovered.append(job)
        elif row and row["status"] == ledger.FAILED and not retry_failed:
            p.failed_before += 1
        else:
            p.todo.append(job)
    return p


@dataclass
class RunResult:
    total: int
    done_before: int
    done: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    failed_before: int = 0
    pending: int = 0
    interrupted: int = 0    # the signal that stopped the run (SIGINT, SIGTERM), 0 if none
    errors: list[str] = field(default_factory=list)  # what stopped the run early
    seconds: float = 0.0
    devices: list[str] = field(default_factory=list)
    precision: dict[str, str] = field(default_factory=dict)  # device -> "bf16 (why)"
    swept: tuple[int, int] = (0, 0)  # finished batches' checkpoints removed: files, bytes


def write_run_info(out_dir: Path, manifest: Path, jobs: list[Job], invalid: int) -> None:
    info = {"manifest": str(manifest.resolve()), "started_at": time.time(),
            "total": len(jobs) + invalid, "invalid": invalid,
            "jobs": [list(j.id) for j in jobs]}
    atomic_write_bytes(out_dir / "run.json", json.dumps(info).encode())


@dataclass
class _Slot:
    """One worker process and the batch it is running (None: idle or not started)."""

    device: str
    process: Any
    tasks: Any
    batch: Batch | None = None
    exited: bool = False


def execute(batches: list[Batch], devices: list[str], opts: RunOptions, display: Any,
            result: RunResult, cpu_threads: int = 1) -> None:
    """Run batches on one worker per device entry; `display` gets the events. Each worker is
    handed its next batch when it reports ready or done, so the batch of a worker that dies
    is known and handed to a fresh worker in its place. The first Ctrl-C or SIGTERM asks
    every worker to checkpoint its batch and leave; a second one ends them at once (their
    batches resume from the last periodic checkpoint). A worker that reports a failed write
    (disk full) stops the run the same way. `cpu_threads`: intra-op threads of each CPU
    worker."""
    ctx = mp.get_context("spawn")
    events, stop = ctx.Queue(), ctx.Event()
    todo = deque(batches)
    deaths: dict[str, int] = {}
    slots: list[_Slot] = []

    def start(wid: int, device: str) -> _Slot:
        tasks = ctx.Queue()
        tasks.cancel_join_thread()  # a stopped run must not wait to hand over its batches
        proc = ctx.Process(target=_worker_entry, name=f"pipeline-worker-{wid}", daemon=True,
                           args=(wid, device, opts.runtime, cpu_threads if device == "cpu" else 1,
                                 str(opts.out_dir), opts.checkpoint_every, tasks, events, stop,
                                 os.getpid()))
        proc.start()
        return _Slot(device, proc, tasks)

    def feed(slot: _Slot) -> None:
        slot.batch = todo.popleft() if todo and not stop.is_set() else None
        slot.tasks.put(slot.batch)

    def halt(signum: int = 0) -> None:
        if not stop.is_set():
            stop.set()
            display.interrupted()
        result.interrupted = result.interrupted or signum

    for wid, device in enumerate(devices):
        slots.append(start(wid, device))
    with stop_signals() as signals:
        while not all(slot.exited for slot in slots):
            received = signals()
            if received and not stop.is_set():
                halt(received.pop(0))
            if received:
                for slot in slots:
                    slot.process.terminate()
                display.aborted()
                break
            try:
                event = events.get(timeout=0.25)
            except queue.Empty:
                for wid, slot in enumerate(slots):
                    if not slot.exited and not slot.process.is_alive():
                        _bury(wid, slot, slots, start, todo, deaths, stop, display, result)
                continue
            slot = slots[event.worker]
            if isinstance(event, Ready):
                result.precision[event.device] = f"{event.precision} ({event.reason})"
            elif isinstance(event, BatchDone):
                result.done += event.done
                result.failed += event.failures
            elif isinstance(event, CannotWrite):
                result.errors.append(event.message)
                halt()
            if isinstance(event, Ready | BatchDone):
                feed(slot)
            elif isinstance(event, Exited | CouldNotStart | CannotWrite):
                slot.exited, slot.batch = True, None
            display.handle(event)
    for slot in slots:
        slot.process.join(timeout=30)


def _bury(wid: int, slot: _Slot, slots: list[_Slot], start: Callable[[int, str], _Slot],
          todo: deque[Batch], deaths: dict[str, int], stop: Any, display: Any,
          result: RunResult) -> None:
    """A worker died without saying so (killed, crashed): its batch goes back to the front of
    the queue for a fresh worker in its place, unless it has now killed MAX_WORKER_DEATHS."""
    code = slot.process.exitcode
    slot.exited = True
    display.worker_died(wid, code)
    batch, slot.batch = slot.batch, None
    if batch is None:
        return
    if all(_finished(job, None) for job in batch.jobs):  # done; only its report was lost
        result.done += len(batch.jobs)
        return
    deaths[batch.id] = deaths.get(batch.id, 0) + 1
    if deaths[batch.id] >= MAX_WORKER_DEATHS:
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        result.errors.append(f"a batch of {len(batch.jobs)} (rows "
                             f"{', '.join(str(j.spec.row) for j in batch.jobs)}) ended "
                             f"{deaths[batch.id]} workers ({how}; out of memory?); left pending")
        return
    todo.appendleft(batch)
    if not stop.is_set():
        slots[wid] = start(wid, slot.device)
        display.worker_restarted(wid)


def _worker_entry(*args: Any) -> None:
    from .worker import worker_main

    worker_main(*args)


@contextmanager
def folder_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself: released by the kernel when this process ends,
    however it ends, and not defeated by deleting a file."""
    fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(f"another `pipeline run` is using {out_dir}; wait for it to "
                            "finish, or use another --out folder") from None
        yield
    finally:
        os.close(fd)


def _own_folders(out_dir: Path, jobs: Iterable[Job]) -> list[Path]:
    """Where this program writes: the run's folders and each output's folder."""
    return [out_dir, ledger.ledger_dir(out_dir), checkpoint_dir(out_dir),
            *(job.spec.output.parent for job in jobs)]


def run(manifest: Path, opts: RunOptions, display_factory: Callable[..., Any],
        scan_view: Callable[[], AbstractContextManager[Callable[[int], None]]] = nullcontext
        ) -> RunResult:
    """`display_factory(total=, devices=)` is a context manager fed the workers' events;
    `scan_view()` one that yields a row counter while the manifest is checked. Nothing is
    written (not even the folder) until the manifest has been checked."""
    out_dir = opts.out_dir
    start = time.perf_counter()
    with scan_view() as advance:
        found = scan(manifest, out_dir, opts.overrides, advance, decode=False)
    if found.errors and not opts.skip_bad_rows:
        raise ManifestInvalid(found.errors)
    try:
        check_writable_dir(out_dir)
    except OSError as e:
        raise InputError(f"--out: {describe_os_error(e, out_dir)}") from None
    with folder_lock(out_dir):
        remove_stale_temps(_own_folders(out_dir, found.jobs))  # of a run that was killed
        write_run_info(out_dir, manifest, found.jobs, len(found.errors))
        p = plan(found.jobs, out_dir, opts.retry_failed)
        now = time.time()
        ledger.append(out_dir, [
            ledger.make_row(f"invalid-row-{e.row}", e.row, ledger.INVALID, "", [], "", None, now,
                            error=str(e)) for e in found.errors])
        ledger.append(out_dir, [ledger.job_row(j, ledger.DONE, now, written=j.spec.output,
                                               error="recovered from output file")
                                for j in p.recovered])
        workers = opts.workers or auto_cpu_workers((job.size for job in p.todo),
                                                   os.cpu_count() or 1)
        devices = resolve_devices(opts.devices, workers)
        batches = list(make_batches(p.todo, lambda job: opts.batch_size or default_batch_size(
            devices[0], job.size, devices.count("cpu") or 1)))
        # Threads follow the configured workers, not how many are started: a resumed run's
        # last batch gets the threads it had in the uninterrupted run, so the same bytes.
        cpu_threads = max(1, (os.cpu_count() or 1) // max(1, devices.count("cpu")))
        devices = devices[:max(1, len(batches))]  # a worker with no batch would only start up
        result = RunResult(total=len(found.jobs) + len(found.errors), done_before=p.done,
                           failed_before=p.failed_before, devices=devices)
        result.failed += [(e.row, str(e)) for e in found.errors]
        if batches:
            with display_factory(total=len(p.todo), devices=devices) as display:
                execute(batches, devices, opts, display, result, cpu_threads)
        result.pending = len(p.todo) - result.done - (len(result.failed) - len(found.errors))
        result.swept = sweep_finished(out_dir, lambda: {
            key for (key, _), row in ledger.read(out_dir).items() if row["status"] == ledger.DONE})
        result.seconds = time.perf_counter() - start
        return result


def exit_code(result: RunResult) -> int:
    """0 only when every job of the manifest is done; see `pipeline run --help`."""
    if result.interrupted:
        return 128 + result.interrupted
    if result.failed or result.failed_before or result.pending or result.errors:
        return 1
    return 0


__all__ = ["ManifestInvalid", "RunLocked", "RunOptions", "RunResult", "exit_code", "run",
           "scan"]
