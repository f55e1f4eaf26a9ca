"""One worker process per device: takes batches from the shared queue, runs them, writes the
outputs and its own ledger rows, and reports progress to the parent through an event queue.

Order of writes for a batch: outputs (each atomic, with its job key embedded), then the ledger
part, then the checkpoint is deleted. A crash between any two steps is repaired on rerun: an
output carrying the right job key counts as done.

A write that fails (disk full, read-only, quota) is the machine's problem, not the job's: the
worker reports it and leaves, the run stops, and nothing is recorded as failed, so a plain rerun
picks the jobs up. Only a checkpoint that cannot be written is let go (with a warning): the
job goes on without it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from . import cpu_heap, ledger
from .api import StyleJob, prepare, stylize_prepared
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .engine import Checkpointing, Interrupted, NonFinite
from .errors import InputError
from .events import (
    BatchDone,
    BatchStarted,
    CannotWrite,
    CouldNotStart,
    Exited,
    Iteration,
    Log,
    Ready,
)
from .files import describe_os_error
from .images import save_image
from .jobs import Batch, Job
from .runtime import Runtime

log = logging.getLogger("pipeline.run")


class WriteFailed(Exception):
    """An output or ledger write failed: the run must stop (see the module docstring)."""


class Worker:
    def __init__(self, wid: int, runtime: Runtime, out_dir: Path, every: int, events: Any,
                 stop: Any, parent_pid: int):
        self.wid, self.runtime, self.out_dir, self.every = wid, runtime, out_dir, every
        self.events, self.stop, self.parent_pid = events, stop, parent_pid

    def stopping(self) -> bool:
        """Asked to stop, or orphaned (the parent was killed): checkpoint and leave."""
        return self.stop.is_set() or os.getppid() != self.parent_pid

    def run(self, batch: Batch) -> None:
        started = time.time()
        params = batch.jobs[0].spec.params
        rows: list[dict[str, Any]] = []
        ready: list[tuple[Job, Any]] = []
        for job in batch.jobs:  # decode each job alone: a bad image fails only its own job
            try:
                ready.append((job, prepare(StyleJob(job.spec.content, list(job.spec.styles)),
                                           params)))
            except InputError as e:
                rows.append(ledger.job_row(job, ledger.FAILED, started, error=str(e)))
        if ready:
            rows += self._optimize(ready, started, split_on_oom=True)
        try:
            ledger.append(self.out_dir, rows)
        except OSError as e:  # the outputs are written: a rerun finds them by their keys
            raise WriteFailed(f"cannot write the ledger: "
                              f"{describe_os_error(e, ledger.ledger_dir(self.out_dir))}") from e
        failures = [(r["row"], r["error"]) for r in rows if r["status"] != ledger.DONE]
        self.events.put(BatchDone(self.wid, len(rows) - len(failures), failures))

    def _optimize(self, ready: list[tuple[Job, Any]], started: float, split_on_oom: bool
                  ) -> list[dict[str, Any]]:
        jobs = [job for job, _ in ready]
        params = jobs[0].spec.params
        keys = [job.key for job in jobs]
        ckpt = checkpoint_path(self.out_dir, Batch(tuple(jobs)).id)
        resume = load_checkpoint(ckpt, keys)
        self.events.put(BatchStarted(self.wid, len(jobs), params.iterations,
                                            resume[0] if resume else 0))
        warned = []

        def save(it: int, x: Any, state: Any) -> None:
            try:
                save_checkpoint(ckpt, keys, it, x, state)
            except OSError as e:
                if not warned:  # once per batch: the job goes on, only resumability is lost
                    warned.append(e)
                    log.warning("cannot write a checkpoint (%s); going on without one",
                                describe_os_error(e, ckpt.parent))

        checkpointing = Checkpointing(save=save, every=self.every, resume=resume,
                                      stop=self.stopping)
        device = str(self.runtime.device)
        try:
            results = stylize_prepared(
                [p for _, p in ready], params, self.runtime,
                lambda it, _terms: self.events.put(Iteration(self.wid, it)),
                checkpointing)
        except torch.OutOfMemoryError:
            if self.runtime.device.type == "cuda":
                torch.cuda.empty_cache()
            if split_on_oom and len(ready) > 1:  # once, at half the batch
                half = len(ready) // 2
                return (self._optimize(ready[:half], started, False)
                        + self._optimize(ready[half:], started, False))
            return [ledger.job_row(j, ledger.FAILED, started, device,
                         error=f"out of memory at batch {len(jobs)}, size {j.size[0]}x"
                               f"{j.size[1]}") for j in jobs]
        except Interrupted:
            raise
        except NonFinite as e:  # those jobs fail; the rest of the batch runs again without them
            ckpt.unlink(missing_ok=True)
            diverged = set(e.samples)
            rows = [ledger.job_row(j, ledger.FAILED, started, device, error=str(e))
                    for i, j in enumerate(jobs) if i in diverged]
            rest = [item for i, item in enumerate(ready) if i not in diverged]
            return rows + (self._optimize(rest, started, split_on_oom) if rest else [])
        except Exception as e:  # one batch's failure must not end the run
            ckpt.unlink(missing_ok=True)  # its space is better left to the other batches
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            return [ledger.job_row(j, ledger.FAILED, started, device, error=message) for j in jobs]
        rows = []
        for job, result in zip(jobs, results, strict=True):
            try:
                save_image(result.image, job.spec.output, {**result.metadata, "job_key": job.key})
            except OSError as e:
                raise WriteFailed(f"cannot write {job.spec.output_name}: "
                                  f"{describe_os_error(e, job.spec.output.parent)}") from e
            rows.append(ledger.job_row(job, ledger.DONE, started, device, losses=result.losses,
                                       iterations=result.iterations, seconds=result.seconds,
                                       written=job.spec.output))
        ckpt.unlink(missing_ok=True)
        return rows


class ForwardLog(logging.Handler):
    """Send the lines a user needs from a worker (the target provider, warnings) to the parent;
    per-image cache lines stay here, they would flood a 100k-job run."""

    def __init__(self, wid: int, events: Any):
        super().__init__(logging.INFO)
        self.wid, self.events = wid, events

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING or "provider" in message:
            self.events.put(Log(self.wid, message))


def worker_main(wid: int, device: str, runtime_options: dict[str, Any], threads: int,
                out_dir: str, every: int, tasks: Any, events: Any, stop: Any,
                parent_pid: int) -> None:
    """Process entry point (spawned). Ctrl-C is the parent's to handle: it sets `stop`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    logger = logging.getLogger("pipeline")
    logger.setLevel(logging.INFO)
    logger.addHandler(ForwardLog(wid, events))
    logger.propagate = False
    try:
        runtime = Runtime.create(device=device, **runtime_options)
    except Exception as e:  # reported to the parent, which decides
        events.put(CouldNotStart(wid, f"{type(e).__name__}: {e}"))
        return
    events.put(Ready(wid, str(runtime.device), runtime.precision, runtime.precision_reason))
    worker = Worker(wid, runtime, Path(out_dir), every, events, stop, parent_pid)
    try:
        while (batch := tasks.get()) is not None and not worker.stopping():
            worker.run(batch)
            if runtime.keep_cpu_memory:
                cpu_heap.release()  # the next batch may be smaller; others share the machine
    except Interrupted:
        pass
    except WriteFailed as e:
        events.put(CannotWrite(wid, str(e)))
        return
    events.put(Exited(wid))
