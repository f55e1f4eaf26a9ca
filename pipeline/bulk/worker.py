"""A worker: the unit every distributor runs, one per device. It gets batches one at a time,
runs them, writes the outputs and its own ledger rows, and reports typed events through a
callback. It needs nothing from the driver's process but a WorkerConfig (picklable) and a
run folder it can see, so it runs as a process of its own (distributors/local.py) or a Ray actor
on another machine (distributors/ray_cluster.py) alike.

Order of writes for a batch: its loss-trace part, the outputs (each atomic, with its job key
embedded), then the ledger part, then the checkpoint is deleted. A crash between any two steps
is repaired on rerun: an output carrying the right job key counts as done, and a batch run
again writes its whole traces again.

A write that fails (disk full, read-only, quota) is the machine's problem, not the job's: the
worker reports it and leaves, the run stops, and nothing is recorded as failed, so a plain rerun
picks the jobs up. Only a checkpoint that cannot be written is let go (with a warning): the
job goes on without it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..accel import cpu_heap
from ..accel.runtime import Runtime, RuntimeOptions
from ..api import StyleJob, prepare, stylize_prepared
from ..errors import InputError
from ..gatys.engine import Checkpointing, Interrupted, NonFinite
from ..gatys.trace import TRACE_EVERY, Traces
from ..io.files import describe_os_error
from ..io.images import intermediate_path, save_image
from . import ledger, traces
from .checkpoint import checkpoint_path, checkpoint_saver, load_checkpoint
from .events import (
    BatchDone,
    BatchStarted,
    CannotWrite,
    CouldNotStart,
    Event,
    Exited,
    Iteration,
    Log,
    Ready,
)
from .jobs import Batch, Job
from .run_state import read_run_info
from .video_batch import VideoWriteFailed, run_video_batch, run_video_piece


class WriteFailed(Exception):
    """An output or ledger write failed: the run must stop (see the module docstring)."""


Emit = Callable[[Event], None]


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of a run is given."""

    out_dir: Path
    checkpoint_every: int
    runtime: RuntimeOptions
    run_id: str  # run.json's: proves the worker sees this run's folder
    trace_every: int = TRACE_EVERY


class Worker:
    def __init__(self, wid: int, runtime: Runtime, out_dir: Path, every: int, emit: Emit,
                 stopping: Callable[[], bool] = lambda: False,
                 trace_every: int = TRACE_EVERY):
        """`stopping()` true: checkpoint the batch and leave (asked to stop, or orphaned)."""
        self.wid, self.runtime, self.out_dir, self.every = wid, runtime, out_dir, every
        self.emit, self.stopping, self.trace_every = emit, stopping, trace_every

    def serve(self, batch: Batch) -> bool:
        """Run one batch; False when this worker must leave: it was stopped (Exited sent) or a
        write failed (CannotWrite sent)."""
        if self.stopping():
            self.emit(Exited(self.wid))
            return False
        try:
            self.run(batch)
        except Interrupted:
            self.emit(Exited(self.wid))
            return False
        except WriteFailed as e:
            self.emit(CannotWrite(self.wid, str(e)))
            return False
        if self.runtime.keep_cpu_memory:
            cpu_heap.release()  # the next batch may be smaller; others share the machine
        return True

    def run(self, batch: Batch) -> None:
        if batch.piece is not None:
            self._piece(batch)
            return
        started = time.time()
        rows = (self._videos(batch, started) if batch.jobs[0].spec.video is not None
                else self._images(batch, started))
        try:
            ledger.append(self.out_dir, rows)
        except OSError as e:  # the outputs are written: a rerun finds them by their keys
            raise WriteFailed(f"cannot write the ledger: "
                              f"{describe_os_error(e, ledger.ledger_dir(self.out_dir))}") from e
        failures = [(r["row"], r["error"]) for r in rows if r["status"] != ledger.DONE]
        self.emit(BatchDone(self.wid, len(rows) - len(failures), failures))

    def _piece(self, batch: Batch) -> None:
        """A piece of a video's passes: no output, no ledger row; its frames are kept."""
        try:
            error = run_video_piece(self.wid, batch, self.runtime, self.emit, self.stopping)
        except VideoWriteFailed as e:
            raise WriteFailed(str(e)) from e
        if error:
            self.emit(Log(self.wid, f"{error}; the clip goes on whole on one worker"))
        self.emit(BatchDone(self.wid, 0, [], piece_failed=bool(error)))

    def _videos(self, batch: Batch, started: float) -> list[dict[str, Any]]:
        """A batch of video jobs (video_batch.py); a failure other than stopping or a write
        fails its jobs, whose finished frames stay for a rerun."""
        try:
            return run_video_batch(self.wid, batch, self.runtime, self.out_dir, self.every,
                                   self.emit, self.stopping, self._write_traces, started)
        except VideoWriteFailed as e:
            raise WriteFailed(str(e)) from e
        except (Interrupted, WriteFailed):
            raise
        except Exception as e:  # one batch's failure must not end the run
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            return [ledger.job_row(j, ledger.FAILED, started, str(self.runtime.device),
                                   error=message) for j in batch.jobs]

    def _images(self, batch: Batch, started: float) -> list[dict[str, Any]]:
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
        return rows

    def _optimize(self, ready: list[tuple[Job, Any]], started: float, split_on_oom: bool
                  ) -> list[dict[str, Any]]:
        jobs = [job for job, _ in ready]
        params = jobs[0].spec.params
        keys = [job.key for job in jobs]
        ckpt = checkpoint_path(self.out_dir, Batch(tuple(jobs)).id)
        resume = load_checkpoint(ckpt, keys)
        self.emit(BatchStarted(self.wid, len(jobs), params.iterations,
                                            resume[0] if resume else 0))
        def save_intermediate(it: int, i: int, image: Any) -> None:
            output = jobs[i].spec.output
            try:
                save_image(image, intermediate_path(output, it),
                           {"iteration": it, "job_key": jobs[i].key})
            except OSError as e:
                raise WriteFailed(f"cannot write an intermediate of {jobs[i].spec.output_name}:"
                                  f" {describe_os_error(e, output.parent)}") from e

        checkpointing = Checkpointing(save=checkpoint_saver(ckpt, keys), every=self.every,
                                      resume=resume, stop=self.stopping)
        device, precision = str(self.runtime.device), self.runtime.precision
        try:
            results = stylize_prepared(
                [p for _, p in ready], params, self.runtime,
                lambda it, _terms: self.emit(Iteration(self.wid, it)),
                checkpointing, self.trace_every, save_intermediate)
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
        except (Interrupted, WriteFailed):
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
        rows = self._write(jobs, results, started, device, precision)
        ckpt.unlink(missing_ok=True)
        return rows

    def _write(self, jobs: list[Job], results: list[Any], started: float, device: str,
               precision: str) -> list[dict[str, Any]]:
        """A finished batch's trace, then its outputs; their ledger rows. WriteFailed stops the
        run: nothing is recorded as failed, and a rerun picks the jobs up."""
        # before the outputs: a job whose output exists has its trace
        self._write_traces({job.key: result.trace
                            for job, result in zip(jobs, results, strict=True)})
        rows = []
        for job, result in zip(jobs, results, strict=True):
            try:
                save_image(result.pixels, job.spec.output, {**result.metadata, "job_key": job.key},
                           job.spec.params.bit_depth)
            except OSError as e:
                raise WriteFailed(f"cannot write {job.spec.output_name}: "
                                  f"{describe_os_error(e, job.spec.output.parent)}") from e
            rows.append(ledger.job_row(job, ledger.DONE, started, device, losses=result.losses,
                                       iterations=result.iterations, seconds=result.seconds,
                                       written=job.spec.output, precision=precision))
        return rows


    def _write_traces(self, batch_traces: Traces) -> None:
        try:
            traces.append(self.out_dir, batch_traces)
        except OSError as e:
            raise WriteFailed(f"cannot write the loss trace: "
                              f"{describe_os_error(e, traces.trace_dir(self.out_dir))}") from e


class ForwardLog(logging.Handler):
    """Send the lines a user needs from a worker (the target provider, warnings) to the driver;
    per-image cache lines stay here, they would flood a 100k-job run."""

    def __init__(self, wid: int, emit: Emit):
        super().__init__(logging.INFO)
        self.wid, self.send = wid, emit

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING or "provider" in message:
            self.send(Log(self.wid, message))


def forward_logs(wid: int, emit: Emit) -> None:
    """In a worker's own process: the package's log lines go to the driver (ForwardLog)."""
    logger = logging.getLogger("pipeline")
    logger.setLevel(logging.INFO)
    logger.addHandler(ForwardLog(wid, emit))
    logger.propagate = False


def sees_run_folder(config: WorkerConfig) -> bool:
    """This machine sees the run's folder: its run.json carries the run's id."""
    try:
        return read_run_info(config.out_dir).run_id == config.run_id
    except InputError:
        return False


def start_worker(wid: int, device: str, threads: int, config: WorkerConfig, emit: Emit,
                 stopping: Callable[[], bool]) -> Worker | None:
    """Set up a worker in this process (threads, runtime) and say Ready; or say CouldNotStart
    and return None."""
    torch.set_num_threads(threads)
    if not sees_run_folder(config):
        emit(CouldNotStart(wid, f"cannot see the run folder {config.out_dir} (its run.json "
                                "is missing or from another run): every machine must mount "
                                "it at the same path"))
        return None
    try:
        runtime = Runtime.start(device, **dataclasses.asdict(config.runtime))
    except Exception as e:  # reported to the driver, which decides
        emit(CouldNotStart(wid, f"{type(e).__name__}: {e}"))
        return None
    emit(Ready(wid, str(runtime.device), runtime.precision, runtime.precision_reason))
    return Worker(wid, runtime, config.out_dir, config.checkpoint_every, emit, stopping,
                  config.trace_every)
