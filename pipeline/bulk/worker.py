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
picks the jobs up. So is an input whose store stops answering mid-run. Only a checkpoint that
cannot be written is let go (with a warning): the job goes on without it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..accel import cpu_heap
from ..accel.memory import Fit
from ..accel.runtime import Runtime, RuntimeOptions
from ..api import (
    SlotCalls,
    SlotJob,
    StyleJob,
    StyleResult,
    prepare,
    region_count,
    slot_plan,
    stylize_in_slots,
    stylize_prepared,
)
from ..errors import InputError, StoreUnavailable
from ..gatys.engine import Checkpointing, Interrupted, NonFinite
from ..gatys.slots import SlotState
from ..gatys.trace import TRACE_EVERY, Traces
from ..io.copy_budget import INPUTS_MAX_ENV
from ..io.files import cache_dir, describe_os_error
from ..io.images import intermediate_path
from ..io.mirror import (
    UploadFailed,
    after_uploads,
    attach,
    check_uploads,
    drop_local,
    flush_uploads,
    is_mirrored,
    upload_in_background,
)
from ..io.pixels import save_image
from ..io.storage import ENV_OPTIONS
from . import ledger, traces
from .checkpoint import CheckpointSaver, load_checkpoint
from .checkpoint_files import checkpoint_path, discard, job_checkpoint_path
from .events import (
    BatchDone,
    BatchStarted,
    CannotWrite,
    CouldNotStart,
    Event,
    Exited,
    Iteration,
    JobsDone,
    Log,
    Ready,
)
from .jobs import Batch, Job, check_unchanged, under
from .parts import part_name
from .reader import ReadAhead, read_depth
from .run_state import RUN_INFO, output_is_done, read_run_info
from .video_batch import VideoWriteFailed, run_video_batch, run_video_piece


class WriteFailed(Exception):
    """An output or ledger write failed: the run must stop (see the module docstring)."""


# What ends a worker's run, not its jobs: being stopped, a failed write, a store that does
# not answer (a checkpoint or an input read from it). The handlers that fail a batch's jobs on
# any other error let these through.
ENDS_THE_RUN = (Interrupted, WriteFailed, StoreUnavailable)

Emit = Callable[[Event], None]


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of a run is given."""

    out_dir: Path
    checkpoint_every: int
    runtime: RuntimeOptions
    run_id: str  # run.json's: proves the worker sees this run's folder
    trace_every: int = TRACE_EVERY
    checkpoint_budget: float = 1.0  # RunOptions.checkpoint_budget
    # A run folder in object storage: its URL, and the --storage-option values, which a worker
    # on another machine has no other way to learn. Each worker then works in its machine's
    # own copy of the folder (io/mirror.attach), out_dir being the driver's.
    remote: str | None = None
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The driver's limit on each machine's copies of input objects (io/copy_budget.py), where
    # it set one: a worker on another machine would not see it otherwise.
    inputs_max: str | None = None


class Worker:
    def __init__(self, wid: int, runtime: Runtime, out_dir: Path, every: int, emit: Emit,
                 stopping: Callable[[], bool] = lambda: False,
                 trace_every: int = TRACE_EVERY, own_copy: bool = False,
                 checkpoint_budget: float = 1.0):
        """`stopping()` true: checkpoint the batch and leave (asked to stop, or orphaned).
        `own_copy`: out_dir is this machine's copy of the run folder, not the driver's.
        `every`, `checkpoint_budget`: RunOptions.checkpoint_every and checkpoint_budget."""
        self.wid, self.runtime, self.out_dir, self.every = wid, runtime, out_dir, every
        self.emit, self.stopping, self.trace_every = emit, stopping, trace_every
        self.own_copy, self.checkpoint_budget = own_copy, checkpoint_budget

    def saver(self) -> CheckpointSaver:
        """A batch's checkpoint writer."""
        return CheckpointSaver(self.checkpoint_budget)

    def serve(self, batch: Batch) -> bool:
        """Run one batch; False when this worker must leave: it was stopped (Exited sent) or a
        write failed (CannotWrite sent)."""
        if self.stopping():
            self.emit(Exited(self.wid))
            return False
        try:
            self.run(under(batch, self.out_dir) if self.own_copy else batch)
        except Interrupted:
            try:
                self.flush_uploads()  # its checkpoints, for whichever worker resumes it
            except WriteFailed as e:
                self.emit(CannotWrite(self.wid, str(e)))
                return False
            self.emit(Exited(self.wid))
            return False
        except (WriteFailed, StoreUnavailable) as e:
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
        self.write_ledger(rows)
        self.drop_outputs(rows)
        self.flush_uploads()
        failures = [(r["row"], r["error"]) for r in rows if r["status"] != ledger.DONE]
        self.emit(BatchDone(self.wid, len(rows) - len(failures), failures))

    def flush_uploads(self, wait: bool = True) -> None:
        """A run folder in object storage: what this worker wrote is in the bucket before the
        driver hears of it (which may then end the run, or this worker); `wait=False`: only
        raise an upload's failure so far."""
        try:
            flush_uploads() if wait else check_uploads()
        except UploadFailed as e:
            raise WriteFailed(str(e.strerror)) from e

    def _piece(self, batch: Batch) -> None:
        """A piece of a video's passes: no output, no ledger row; its frames are kept."""
        try:
            error = run_video_piece(self.wid, batch, self.runtime, self.emit, self.stopping)
        except VideoWriteFailed as e:
            raise WriteFailed(str(e)) from e
        if error:
            self.emit(Log(self.wid, f"{error}; the clip goes on whole on one worker", True))
        self.flush_uploads()
        self.emit(BatchDone(self.wid, 0, [], piece_failed=bool(error)))

    def _videos(self, batch: Batch, started: float) -> list[dict[str, Any]]:
        """A batch of video jobs (video_batch.py); a failure other than stopping or a write
        fails its jobs, whose finished frames stay for a rerun."""
        try:
            return run_video_batch(self.wid, batch, self.runtime, self.out_dir, self.every,
                                   self.emit, self.stopping, self.write_traces, started,
                                   self.saver())
        except VideoWriteFailed as e:
            raise WriteFailed(str(e)) from e
        except ENDS_THE_RUN:
            raise
        except Exception as e:  # one batch's failure must not end the run
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            return [ledger.job_row(j, ledger.FAILED, started, str(self.runtime.device),
                                   error=message) for j in batch.jobs]

    def _images(self, batch: Batch, started: float) -> list[dict[str, Any]]:
        if batch.slots:
            try:
                spec = batch.jobs[0].spec  # a group's jobs have as many styles and masks
                masks = len(spec.styles) if spec.regions.active else 0
                fit = slot_plan(spec.params, batch.jobs[0].size, batch.slots, self.runtime,
                                region_count(masks, spec.params))
            except Exception:  # the fixed batches below fail with it, job by job
                fit = None
            if fit is not None:
                return SlotBatch(self, batch, fit, started).run()
        rows: list[dict[str, Any]] = []
        step = batch.slots or len(batch.jobs)  # slots that cannot be: batches of their size
        for lo in range(0, len(batch.jobs), step):
            ready: list[tuple[Job, Any]] = []
            for job in batch.jobs[lo:lo + step]:  # each alone: a bad image fails its own job
                try:
                    ready.append((job, prepare_job(job, self.runtime.cache)))
                except StoreUnavailable:  # the store's fault, not the job's: ENDS_THE_RUN
                    raise
                except InputError as e:  # a written one (Batch.kept) stays written
                    if job.id not in batch.kept:
                        rows.append(ledger.job_row(job, ledger.FAILED, started, error=str(e)))
            if ready:
                rows += self._optimize(ready, started, True, batch.kept)
        return rows

    def _optimize(self, ready: list[tuple[Job, Any]], started: float, split_on_oom: bool,
                  kept: frozenset[tuple[str, str]] = frozenset()) -> list[dict[str, Any]]:
        """A fixed batch, from its checkpoint if it has one; `kept`: jobs written before
        (Batch.kept), run only to resume the others with them."""
        jobs = [job for job, _ in ready]
        params = jobs[0].spec.params
        keys = [job.key for job in jobs]
        ckpt = checkpoint_path(self.out_dir, Batch(tuple(jobs)).id)
        resume = load_checkpoint(ckpt, keys)
        rerun = [job for job in jobs if job.id in kept]
        todo = [job for job in jobs if job.id not in kept]
        if rerun and resume is None:  # not the batch it held (a job failed to decode, or the
            # checkpoint did): the written jobs have nothing to resume
            rest = [item for item in ready if item[0].id not in kept]
            return self._optimize(rest, started, split_on_oom) if rest else []
        if rerun:
            self.emit(Log(self.wid, _rerun_message([job.spec.row for job in rerun])))
        start = resume[0] if resume else 0
        self.emit(BatchStarted(self.wid, len(jobs), params.iterations, start))
        def save_intermediate(it: int, i: int, image: Any) -> None:
            if jobs[i].id not in kept:
                self.save_intermediate(jobs[i], it, image)

        saver = self.saver()
        checkpointing = Checkpointing(save=saver.saving(ckpt, keys), every=self.every,
                                      resume=resume, stop=self.stopping,
                                      wants_periodic=saver.wants_periodic)
        device = str(self.runtime.device)
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
                return (self._optimize(ready[:half], started, False, kept)
                        + self._optimize(ready[half:], started, False, kept))
            return [ledger.job_row(j, ledger.FAILED, started, device,
                         error=f"out of memory at batch {len(jobs)}, size {j.size[0]}x"
                               f"{j.size[1]}") for j in todo]
        except ENDS_THE_RUN:
            raise
        except NonFinite as e:  # those jobs fail; the rest of the batch runs again without them
            discard(ckpt)
            diverged = set(e.samples)
            rows = [ledger.job_row(j, ledger.FAILED, started, device, error=str(e))
                    for i, j in enumerate(jobs) if i in diverged and j.id not in kept]
            rest = [item for i, item in enumerate(ready) if i not in diverged]
            return rows + (self._optimize(rest, started, split_on_oom, kept) if rest else [])
        except Exception as e:  # one batch's failure must not end the run
            discard(ckpt)  # its space is better left to the other batches
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            return [ledger.job_row(j, ledger.FAILED, started, device, error=message) for j in todo]
        ended = [(job, result) for job, result in zip(jobs, results, strict=True)
                 if job.id not in kept]
        rows = self._write(ended, started, start)
        discard(ckpt)
        return rows

    def _write(self, ended: list[tuple[Job, StyleResult]], started: float, resumed_from: int
               ) -> list[dict[str, Any]]:
        """A finished batch's trace, then its outputs; their ledger rows. WriteFailed stops the
        run: nothing is recorded as failed, and a rerun picks the jobs up."""
        # before the outputs: a job whose output exists has its trace
        self.write_traces({job.key: result.trace for job, result in ended})
        return [self.write_output(job, result, started, resumed_from) for job, result in ended]

    def write_output(self, job: Job, result: StyleResult, started: float, resumed_from: int = 0
                     ) -> dict[str, Any]:
        """A job's output (its trace written before); its ledger row."""
        try:
            params = job.spec.params
            save_image(result.pixels, job.spec.output, {**result.metadata, "job_key": job.key},
                       params.bit_depth, params.jpeg_quality)
        except OSError as e:
            raise WriteFailed(f"cannot write {job.spec.output_name}: "
                              f"{describe_os_error(e, job.spec.output.parent)}") from e
        return ledger.job_row(job, ledger.DONE, started, str(self.runtime.device),
                              losses=result.losses, iterations=result.iterations,
                              seconds=result.seconds, written=job.spec.output,
                              precision=self.runtime.precision, resumed_from=resumed_from)

    def write_traces(self, batch_traces: Traces, part: str = "") -> None:
        try:
            traces.append(self.out_dir, batch_traces, part)
        except OSError as e:
            raise WriteFailed(f"cannot write the loss trace: "
                              f"{describe_os_error(e, traces.trace_dir(self.out_dir))}") from e

    def write_ledger(self, rows: list[dict[str, Any]], part: str = "") -> None:
        try:
            ledger.append(self.out_dir, rows, part)
        except OSError as e:  # the outputs are written: a rerun finds them by their keys
            raise WriteFailed(f"cannot write the ledger: "
                              f"{describe_os_error(e, ledger.ledger_dir(self.out_dir))}") from e

    def drop_outputs(self, recorded: list[dict[str, Any]]) -> None:
        """A run folder in object storage: the outputs these ledger rows (just written) record
        are not kept here once the bucket has them and the rows."""
        drop_local(self.out_dir / r["output"] for r in recorded if r["status"] == ledger.DONE)

    def save_intermediate(self, job: Job, iteration: int, image: Any) -> None:
        path = intermediate_path(job.spec.output, iteration)
        try:
            save_image(image, path, {"iteration": iteration, "job_key": job.key},
                       jpeg_quality=job.spec.params.jpeg_quality)
        except OSError as e:
            raise WriteFailed(f"cannot write an intermediate of {job.spec.output_name}: "
                              f"{describe_os_error(e, job.spec.output.parent)}") from e
        drop_local([path])  # in a bucket's run folder, once uploaded: not kept here


def _rerun_message(rows: list[int]) -> str:
    listed = ", ".join(map(str, rows))
    if len(rows) == 1:
        return (f"row {listed}: written before; runs again, not written, so that its batch "
                "resumes from its checkpoint")
    return (f"rows {listed}: written before; run again, not written, so that their batch "
            "resumes from its checkpoint")


def prepare_job(job: Job, cache: str | None) -> Any:
    """A job's images decoded and sized (InputError for a bad one, or one rewritten since the
    scan; `cache`: where the scan remembered their digests); its content's targets kept out
    of the disk cache where no other job of the run reads it (Job.cache_content)."""
    content, styles = prepare(StyleJob(job.spec.content, list(job.spec.styles),
                                       job.spec.regions), job.spec.params)
    check_unchanged(job, cache)
    return (content if job.cache_content else dataclasses.replace(content, keep=False)), styles


class SlotBatch:
    """A worker's batch in slots (gatys/slots.py): each job decoded before it enters, the next
    ones read ahead (reader.py; a bad image fails only its own job), resumed from its own
    checkpoint, and written as it ends: its trace,
    output and ledger row (the batch's trace and ledger parts rewritten with the rows so far),
    then its checkpoint deleted. A job whose output is already there (its batch came back
    from a dead worker) is skipped. An error that ends the slots' run fails the jobs in them
    (out of memory: they go again first at half the slots, from their checkpoints) and the
    others go on."""

    def __init__(self, worker: Worker, batch: Batch, fit: Fit, started: float):
        self.worker, self.batch, self.fit, self.started = worker, batch, fit, started
        self.params = batch.jobs[0].spec.params
        self.waiting = deque(range(len(batch.jobs)))
        self.reader = ReadAhead(self._read, read_depth(worker.runtime.device.type,
                                                        torch.get_num_threads(), batch.slots))
        self.inside: list[int] = []  # jobs in the slots now
        self.resumed: dict[int, int] = {}
        self.rows: list[dict[str, Any]] = []
        # In object storage a written output is not kept here: the ledger says it was (a
        # batch put back after its worker died has some)
        self.records = ledger.read(worker.out_dir) if is_mirrored(worker.out_dir) else {}
        self.traces: Traces = {}
        self.part = part_name()
        self.saver = worker.saver()
        self.steps = 0

    def run(self) -> list[dict[str, Any]]:
        """Its rows are written and reported (JobsDone) as its jobs end: none are left."""
        w, n = self.worker, len(self.batch.jobs)
        w.emit(BatchStarted(w.wid, n, n * self.params.iterations, 0,
                            label=f"{n} job{'s' * (n > 1)} in {self.batch.slots} slots"))
        calls = SlotCalls(self.source, self.done, self.save, w.every, w.stopping,
                          self.progress, self.intermediate if self.params.save_every else None,
                          self.saver.wants_periodic)
        try:
            self._slots(calls)
        finally:
            self.reader.close()
        return []

    def _slots(self, calls: SlotCalls) -> None:
        w, slots = self.worker, self.batch.slots
        while self.waiting:
            try:
                stylize_in_slots(calls, self.params, w.runtime, slots, self.fit, w.trace_every)
            except ENDS_THE_RUN:
                raise
            except torch.OutOfMemoryError:
                if w.runtime.device.type == "cuda":
                    torch.cuda.empty_cache()
                if slots == 1:
                    self._fail_inside(f"out of memory at size {self.batch.jobs[0].size[0]}x"
                                      f"{self.batch.jobs[0].size[1]}")
                slots = max(1, slots // 2)
                self.waiting.extendleft(reversed(self.inside))
                self.inside.clear()
            except Exception as e:  # one batch's failure must not end the run
                self._fail_inside(f"{type(e).__name__}: {e}".splitlines()[0])

    def _fail_inside(self, error: str) -> None:
        device = str(self.worker.runtime.device)
        self._record([], [ledger.job_row(self.batch.jobs[i], ledger.FAILED, self.started, device,
                                         error=error) for i in self.inside])
        self.inside.clear()

    def _read(self, index: int) -> Any | None:
        """Job `index`'s inputs, decoded (prepare_job); None when its output is there."""
        job = self.batch.jobs[index]
        return (None if output_is_done(job.spec.output, job.key, self.records.get(job.id))
                else prepare_job(job, self.worker.runtime.cache))

    def source(self) -> SlotJob | None:
        while self.waiting:
            index = self.waiting.popleft()
            try:
                prepared = self.reader.take(index, self.waiting)
            except StoreUnavailable:
                raise
            except InputError as e:
                prepared = None
                self._record([], [ledger.job_row(self.batch.jobs[index], ledger.FAILED,
                                                 self.started, error=str(e))])
            if prepared is None:
                self.progress(self.params.iterations)
                continue
            self.inside.append(index)
            return index, prepared, self._resume(index)
        return None

    def _resume(self, index: int) -> SlotState | None:
        job = self.batch.jobs[index]
        saved = load_checkpoint(job_checkpoint_path(self.worker.out_dir, job.key), [job.key])
        if saved is None:
            return None
        iteration, images, state = saved
        self.resumed[index] = iteration
        self.progress(iteration)
        self.worker.emit(Log(self.worker.wid, f"row {job.spec.row}: resuming from its checkpoint "
                                              f"at iteration {iteration}/{self.params.iterations}"))
        return SlotState(iteration, images[0], state)

    def done(self, results: list[tuple[int, StyleResult | str]]) -> None:
        jobs, device = self.batch.jobs, str(self.worker.runtime.device)
        ok = [(i, result) for i, result in results if isinstance(result, StyleResult)]
        failed = [ledger.job_row(jobs[i], ledger.FAILED, self.started, device, error=result)
                  for i, result in results if isinstance(result, str)]
        self.traces.update({jobs[i].key: result.trace for i, result in ok})
        self.worker.write_traces(self.traces, self.part)  # before the outputs
        written = [self.worker.write_output(jobs[i], result, self.started,
                                            self.resumed.get(i, 0)) for i, result in ok]
        self._record(written, failed)
        for i, _ in results:
            discard(job_checkpoint_path(self.worker.out_dir, jobs[i].key))
            if i in self.inside:
                self.inside.remove(i)

    def _record(self, written: list[dict[str, Any]], failed: list[dict[str, Any]]) -> None:
        self.worker.flush_uploads(wait=False)
        self.rows += written + failed
        self.worker.write_ledger(self.rows, self.part)
        self.worker.drop_outputs(written)
        done = JobsDone(self.worker.wid, len(written), [(r["row"], r["error"]) for r in failed])
        after_uploads(lambda: self.worker.emit(done))  # its outputs in the bucket first

    def save(self, index: int, state: SlotState) -> None:
        job = self.batch.jobs[index]
        self.saver.save(job_checkpoint_path(self.worker.out_dir, job.key), [job.key],
                        state.iteration, state.image[None], state.state)

    def progress(self, steps: int) -> None:
        self.steps += steps
        self.worker.emit(Iteration(self.worker.wid, self.steps))

    def intermediate(self, iteration: int, index: int, image: Any) -> None:
        self.worker.save_intermediate(self.batch.jobs[index], iteration, image)


class ForwardLog(logging.Handler):
    """Send the lines a user needs from a worker (the target provider, warnings) to the driver;
    per-image cache lines stay here, they would flood a 100k-job run."""

    def __init__(self, wid: int, emit: Emit):
        super().__init__(logging.INFO)
        self.wid, self.send = wid, emit

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        warning = record.levelno >= logging.WARNING
        if warning or "provider" in message:
            self.send(Log(self.wid, message, warning))


def forward_logs(wid: int, emit: Emit) -> None:
    """In a worker's own process: the package's log lines go to the driver (ForwardLog)."""
    logger = logging.getLogger("pipeline")
    logger.setLevel(logging.INFO)
    logger.addHandler(ForwardLog(wid, emit))
    logger.propagate = False


def run_folder_here(config: WorkerConfig) -> Path:
    """The run folder as this machine sees it: the driver's, or this machine's copy of a run
    folder in object storage, run.json fetched (io/mirror.attach)."""
    if config.remote is None:
        return config.out_dir
    if config.storage_options:
        os.environ[ENV_OPTIONS] = json.dumps(config.storage_options)
    upload_in_background()  # while the next jobs optimize; flushed before each BatchDone
    return attach(config.remote, cache_dir(config.runtime.cache), (RUN_INFO,))


def sees_run_folder(out_dir: Path, run_id: str) -> bool:
    """This machine sees the run's folder: its run.json carries the run's id."""
    try:
        return read_run_info(out_dir).run_id == run_id
    except InputError:
        return False


def start_worker(wid: int, device: str, threads: int, config: WorkerConfig, emit: Emit,
                 stopping: Callable[[], bool]) -> Worker | None:
    """Set up a worker in this process (threads, runtime) and say Ready; or say CouldNotStart
    and return None."""
    torch.set_num_threads(threads)
    if config.inputs_max:
        os.environ[INPUTS_MAX_ENV] = config.inputs_max
    try:
        out_dir = run_folder_here(config)
    except InputError as e:
        emit(CouldNotStart(wid, str(e)))
        return None
    if not sees_run_folder(out_dir, config.run_id):
        emit(CouldNotStart(wid, f"cannot see the run folder {out_dir} (its run.json "
                                "is missing or from another run): every machine must mount "
                                "it at the same path"))
        return None
    try:
        runtime = Runtime.start(device, **dataclasses.asdict(config.runtime))
    except Exception as e:  # reported to the driver, which decides
        emit(CouldNotStart(wid, f"{type(e).__name__}: {e}"))
        return None
    emit(Ready(wid, str(runtime.device), runtime.precision, runtime.numerics))
    return Worker(wid, runtime, out_dir, config.checkpoint_every, emit, stopping,
                  config.trace_every, own_copy=out_dir.resolve() != config.out_dir,
                  checkpoint_budget=config.checkpoint_budget)
