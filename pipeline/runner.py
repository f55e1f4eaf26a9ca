"""`pipeline run`: the distributor. Validates the manifest, skips finished jobs, groups the
rest into batches, and feeds them to one worker process per device through a shared queue.

Concurrency rule: one `pipeline run` per output folder. A second one on the same folder is
refused (a lock file), because two runs sharing a folder could pick the same batch.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from . import ledger
from .checkpoint import sweep_finished
from .errors import InputError, RowError
from .files import atomic_write_bytes, remove_stale_temps
from .images import read_metadata
from .interrupts import ctrl_c_presses
from .jobs import Inspector, Job, auto_cpu_workers, default_batch_size, make_batches
from .manifest import read_jobs


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
    decode=False, have a readable header), duplicate outputs."""
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
            errors.append(RowError(item.row, f"output {item.output} duplicates row {first}"))
            continue
        jobs.append(job)
    return Scan(jobs, errors)


def _finished(job: Job, state: dict[str, dict[str, Any]]) -> bool:
    row = state.get(job.key)
    if row and row["status"] == ledger.DONE and Path(row["output"]).is_file():
        return True
    # Written but not yet in the ledger when the last run died.
    if job.spec.output.is_file():
        try:
            return read_metadata(job.spec.output).get("job_key") == job.key
        except Exception:
            return False
    return False


@dataclass
class Plan:
    todo: list[Job]
    done: int
    failed_before: int      # failed in an earlier run and not retried
    recovered: list[Job]    # outputs found on disk whose ledger row was lost


def plan(jobs: Iterable[Job], out_dir: Path, retry_failed: bool) -> Plan:
    state = ledger.read(out_dir)
    p = Plan([], 0, 0, [])
    for job in jobs:
        row = state.get(job.key)
        if _finished(job, state):
            p.done += 1
            if not (row and row["status"] == ledger.DONE):
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
    interrupted: bool = False
    seconds: float = 0.0
    devices: list[str] = field(default_factory=list)
    swept: tuple[int, int] = (0, 0)  # finished batches' checkpoints removed: files, bytes


def write_run_info(out_dir: Path, manifest: Path, jobs: list[Job], invalid: int) -> None:
    info = {"manifest": str(manifest.resolve()), "started_at": time.time(),
            "total": len(jobs) + invalid, "invalid": invalid, "keys": [j.key for j in jobs]}
    atomic_write_bytes(out_dir / "run.json", json.dumps(info).encode())


def execute(batches: list, devices: list[str], opts: RunOptions, display: Any,
            result: RunResult) -> None:
    """Run batches on one worker per device entry; `display` gets the events. The first Ctrl-C
    asks every worker to checkpoint its batch and leave; a second one ends them at once (their
    batches resume from the last periodic checkpoint)."""
    ctx = mp.get_context("spawn")
    tasks, events, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    # Batches the workers never take (a stop, a dead worker) must not hold this process at exit:
    # by default it waits until its feeder thread has pushed all of them into the pipe.
    tasks.cancel_join_thread()
    for batch in batches:
        tasks.put(batch)
    threads = max(1, (os.cpu_count() or 1) // max(1, devices.count("cpu")))
    procs = []
    for wid, device in enumerate(devices):
        tasks.put(None)
        proc = ctx.Process(target=_worker_entry, name=f"pipeline-worker-{wid}", daemon=True,
                           args=(wid, device, opts.runtime, threads if device == "cpu" else 1,
                                 str(opts.out_dir), opts.checkpoint_every, tasks, events, stop,
                                 os.getpid()))
        proc.start()
        procs.append(proc)
    exited: set[int] = set()
    with ctrl_c_presses() as presses:
        while len(exited) < len(procs):
            pressed = presses()
            if pressed and not stop.is_set():
                stop.set()
                result.interrupted = True
                display.interrupted()
                pressed -= 1
            if pressed:
                for proc in procs:
                    proc.terminate()
                display.aborted()
                break
            try:
                event = events.get(timeout=0.25)
            except queue.Empty:
                for wid, proc in enumerate(procs):  # a worker that died without saying so
                    if not proc.is_alive() and wid not in exited:
                        exited.add(wid)
                        display.worker_died(wid, proc.exitcode)
                continue
            kind, wid = event[0], event[1]
            if kind == "done":
                result.done += event[2]
                result.failed += event[3]
            elif kind in ("exit", "fatal"):
                exited.add(wid)
            display.handle(event)
    for proc in procs:
        proc.join(timeout=30)


def _worker_entry(*args: Any) -> None:
    from .worker import worker_main

    worker_main(*args)


def run(manifest: Path, opts: RunOptions, display_factory: Callable[..., Any],
        scan_view: Callable[[], AbstractContextManager[Callable[[int], None]]] = nullcontext
        ) -> RunResult:
    """`display_factory(total=, devices=)` is a context manager fed the workers' events;
    `scan_view()` one that yields a row counter while the manifest is checked."""
    out_dir = opts.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out_dir / ".run.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLocked(f"another `pipeline run` is using {out_dir}; wait for it to finish, or "
                        "use another --out folder") from None
    try:
        start = time.perf_counter()
        remove_stale_temps(out_dir)  # half-written files of a run that was killed
        with scan_view() as advance:
            found = scan(manifest, out_dir, opts.overrides, advance, decode=False)
        if found.errors and not opts.skip_bad_rows:
            raise ManifestInvalid(found.errors)
        write_run_info(out_dir, manifest, found.jobs, len(found.errors))
        p = plan(found.jobs, out_dir, opts.retry_failed)
        now = time.time()
        ledger.append(out_dir, [
            ledger.make_row(f"invalid-row-{e.row}", e.row, ledger.INVALID, "", [], "", None, now,
                            error=str(e)) for e in found.errors])
        ledger.append(out_dir, [ledger.job_row(j, ledger.DONE, now,
                                               error="recovered from output file")
                                for j in p.recovered])
        workers = opts.workers or auto_cpu_workers((job.size for job in p.todo),
                                                   os.cpu_count() or 1)
        devices = resolve_devices(opts.devices, workers)
        batches = list(make_batches(p.todo, lambda job: opts.batch_size or default_batch_size(
            devices[0], job.size, devices.count("cpu") or 1)))
        devices = devices[:max(1, len(batches))]  # a worker with no batch would only start up
        result = RunResult(total=len(found.jobs) + len(found.errors), done_before=p.done,
                           failed_before=p.failed_before, devices=devices)
        result.failed += [(e.row, str(e)) for e in found.errors]
        if batches:
            with display_factory(total=len(p.todo), devices=devices) as display:
                execute(batches, devices, opts, display, result)
        result.pending = len(p.todo) - result.done - (len(result.failed) - len(found.errors))
        result.swept = sweep_finished(out_dir, lambda: {
            key for key, row in ledger.read(out_dir).items() if row["status"] == ledger.DONE})
        result.seconds = time.perf_counter() - start
        return result
    finally:
        lock.release()
