"""A batch of video jobs in a worker: frame i of every clip runs as one batch (video/chain.py),
each frame a keyed PNG beside its job's output as soon as it is done (video/output.py), the
frame in progress checkpointed like an image batch, and each video encoded when all its
frames are there. A stopped or killed batch resumes at the frame it was on, from its
checkpoint; finished frames are read back, never rewritten.

Each job's trace is its frames' final losses, one point per frame (`frame` set, `iteration`
the frame's iterations); its ledger row carries the frames' mean losses and total iterations.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..accel.runtime import Runtime
from ..errors import InputError, StoreUnavailable
from ..gatys.engine import Checkpointing, Interrupted
from ..gatys.trace import Traces
from ..io.files import describe_os_error
from ..io.images import check_image_file
from ..targets.cache import TargetCache
from ..video.chain import flow_folder, stylize_clips
from ..video.clip import clip_source
from ..video.frames import Frame
from ..video.output import ClipOutput, PassesNotKept
from ..video.part import clip_part, frame_key, kept_part
from ..video.passes import stylize_piece
from . import ledger
from .checkpoint import CheckpointSaver, load_checkpoint
from .checkpoint_files import checkpoint_path, discard
from .events import BatchStarted, Event, Iteration, Log
from .jobs import Batch, Job, check_unchanged


class VideoWriteFailed(OSError):
    """A frame or a video could not be written (the worker stops the run, as for images)."""


def run_video_batch(wid: int, batch: Batch, runtime: Runtime, out_dir: Path, every: int,
                    emit: Callable[[Event], None], stopping: Callable[[], bool],
                    write_traces: Callable[[Traces], None], started: float,
                    saver: CheckpointSaver) -> list[dict[str, Any]]:
    """Run `batch` (video jobs of one group); the jobs' ledger rows. Their traces go to
    `write_traces` before the videos are encoded (a job with an output has its trace). A job
    whose file cannot be read fails alone (StoreUnavailable, its store not answering, stops
    the run); Interrupted when stopped, VideoWriteFailed when a frame or a video cannot be
    written."""
    video, params = batch.jobs[0].spec.video, batch.jobs[0].spec.params
    assert video is not None
    with contextlib.ExitStack() as kept:  # copies of objects: till the videos are made
        clips, rows = _open(batch, started, runtime.cache, kept)
        if not clips:
            return rows
        emit(BatchStarted(wid, len(clips), max(c.part.count for _, c in clips), 0, unit="frames"))
        keep = max(video.temporal_frames)
        sources = [clip_source(clip.part, [str(s) for s in job.spec.styles], keep,
                               regions=job.spec.regions) for job, clip in clips]
        saves = FrameCheckpoints(out_dir, [job.key for job, _ in clips], every, stopping,
                                 lambda text: emit(Log(wid, text)), saver)

        def finished(frame: Frame) -> None:
            job, clip = clips[frame.clip]
            try:
                clip.finished(frame)
            except OSError as e:
                raise VideoWriteFailed(f"cannot write frame {frame.index} of {job.spec.output_name}"
                                       f": {describe_os_error(e, out_dir)}") from e
            saves.finished(frame)
            emit(Iteration(wid, frame.index + 1))

        stylize_clips(sources, params, video, runtime, lambda c, i: clips[c][1].done(i), finished,
                      checkpointing=saves, stop=stopping, stores=lambda c: clips[c][1].pass_store())
        write_traces({job.key: [{"frame": i, "iteration": r.iterations, "stage": 0, **r.losses}
                                for i, r in sorted(clip.records.items())] for job, clip in clips})
        for job, clip in clips:
            try:  # its frames were read as it went: a file rewritten meanwhile fails the job
                check_unchanged(job, runtime.cache, clip.part.info.path)
            except StoreUnavailable:
                raise
            except InputError as e:
                rows.append(ledger.job_row(job, ledger.FAILED, started, error=str(e)))
                continue
            try:
                clip.finish(video.crf)
            except OSError as e:
                raise VideoWriteFailed(f"cannot write {job.spec.output_name}: "
                                       f"{describe_os_error(e, job.spec.output.parent)}") from e
            rows.append(_done_row(job, clip, started, runtime))
        return rows


def run_video_piece(wid: int, batch: Batch, runtime: Runtime, emit: Callable[[Event], None],
                    stopping: Callable[[], bool]) -> str:
    """Run `batch`, a piece of its video's passes (bulk/pass_plan.py), its frames kept in the
    clip's pass store; why it failed, or "". Interrupted when stopped, VideoWriteFailed when
    its frames cannot be kept (the other workers need them), StoreUnavailable when its inputs'
    store does not answer."""
    job, piece = batch.jobs[0], batch.piece
    video, params = job.spec.video, job.spec.params
    assert piece is not None and video is not None
    what = f"pass {piece.index + 1}/{video.passes}, frames {piece.first}-{piece.stop - 1}"
    count = piece.stop - piece.first
    try:
        for style in job.spec.styles:
            check_image_file(style)
        with kept_part(job.spec.content, clip_part(job.spec.content, video)) as part:
            check_unchanged(job, runtime.cache)
            # from the piece's first neighbour on: a piece late in a long clip seeks
            clip = clip_source(part, [str(s) for s in job.spec.styles], 1,
                               max(0, piece.first - 1), job.spec.regions)
            stylize_piece(clip, params, video, runtime, TargetCache(flow_folder(runtime), 0),
                          piece.index, range(piece.first, piece.stop), piece.batch,
                          ClipOutput(part, job.spec.output, job.key).pass_store(shared=True),
                          stopping,
                          lambda kept: emit(BatchStarted(wid, 1, count, kept, "frames", what)),
                          lambda n: emit(Iteration(wid, n)))
    except PassesNotKept as e:
        raise VideoWriteFailed(f"cannot keep {what} of {job.spec.output_name}: {e}") from e
    except (Interrupted, StoreUnavailable):  # the run's to handle, not the job's
        raise
    except Exception as e:  # the job then runs whole on one worker, which says it again
        return f"row {job.spec.row}, {what}: {type(e).__name__}: {e}".splitlines()[0]
    return ""


def _open(batch: Batch, started: float, cache: str | None, kept: contextlib.ExitStack
          ) -> tuple[list[tuple[Job, ClipOutput]], list[dict[str, Any]]]:
    """The jobs whose video and styles can be read, each with its output; the failed rows of
    the others. `kept` holds their videos' copies (video/part.kept_part)."""
    clips, rows = [], []
    for job in batch.jobs:
        try:
            for style in job.spec.styles:
                check_image_file(style)
            assert job.spec.video is not None
            part = kept.enter_context(kept_part(job.spec.content,
                                                clip_part(job.spec.content, job.spec.video)))
            check_unchanged(job, cache)
            clips.append((job, ClipOutput(part, job.spec.output, job.key)))
        except StoreUnavailable:  # not the job's fault: the worker stops the run
            raise
        except InputError as e:
            rows.append(ledger.job_row(job, ledger.FAILED, started, error=str(e)))
    return clips, rows


def _done_row(job: Job, clip: ClipOutput, started: float, runtime: Runtime) -> dict[str, Any]:
    records = list(clip.records.values())
    mean = {name: sum(r.losses.get(name, 0.0) for r in records) / len(records)
            for name in records[0].losses}
    return ledger.job_row(job, ledger.DONE, started, str(runtime.device), losses=mean,
                          iterations=sum(r.iterations for r in records),
                          seconds=sum(r.seconds for r in records), written=job.spec.output,
                          precision=runtime.precision)


class FrameCheckpoints:
    """The checkpoint of the frame batch being optimized, as an image batch's: named by its
    frames' keys, with its jobs' keys inside (so a run's sweep removes it once the videos are
    done), deleted once every frame of the batch is written: a run killed between two of those
    writes resumes the batch from it."""

    def __init__(self, out_dir: Path, keys: list[str], every: int, stop: Callable[[], bool],
                 say: Callable[[str], None], saver: CheckpointSaver):
        self.out_dir, self.keys, self.every, self.stop, self.say = out_dir, keys, every, stop, say
        self.saver = saver
        self.open: dict[int, tuple[Path, set[int]]] = {}  # by frame: its file, clips unwritten

    def __call__(self, i: int, todo: list[int]) -> Checkpointing:
        keys = [self.keys[c] for c in todo]
        name = hashlib.sha256("".join(frame_key(k, i) for k in keys).encode()).hexdigest()[:16]
        path = checkpoint_path(self.out_dir, name)
        self.open[i] = path, set(todo)
        resume = load_checkpoint(path, keys)
        if resume is not None:
            self.say(f"resuming frame {i} of {len(todo)} video(s) from its checkpoint at "
                     f"iteration {resume[0]}")
        return Checkpointing(save=self.saver.saving(path, keys), every=self.every,
                             resume=resume, stop=self.stop,
                             wants_periodic=self.saver.wants_periodic)

    def finished(self, frame: Frame) -> None:
        path, unwritten = self.open.get(frame.index, (None, set()))
        unwritten.discard(frame.clip)
        if path is not None and not unwritten:
            del self.open[frame.index]
            discard(path)
