"""Frames as a chain of jobs (Ruder et al. 2016): frame 0 is stylized like an image; each later
frame starts from the stylized frame before it warped into it by the optical flow, and is
optimized against the content and style targets plus the temporal term (gatys/temporal.py), so
it lands in the same minimum as its neighbours instead of flickering, in far fewer iterations.

Several clips of one working size run as one batch, frame i of each together, each with its
own styles: every loss is per sample, so each clip's frames are those it would get alone. A
frame already finished (on disk, found by `done`) is read back instead of being run again: a
stopped clip resumes at the first frame it lacks (a clip whose last finished frame is that
one runs it again beside it, its result dropped, so the batch is the one it had: `_went_on`).

With --passes, `stylize_clips` runs each clip by the multi-pass scheme instead (passes.py).

Departures: later frames run one stage at full size (they start from a stylized image; the
coarse stages of --scales only serve the first), and with --tol their early stopping window is
--frame-tol-window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..api import Runtime, StyleJob, StyleParams, prepare, stylize_prepared
from ..gatys.engine import Checkpointing, Progress
from ..gatys.temporal import Temporal
from ..io.files import cache_dir
from ..io.pixels import SizedImage
from ..targets.cache import TargetCache
from .flow import Ahead, temporal_target
from .frames import ClipSource, Frame, for_transfer, later_params, to_pixels, to_tensor
from .params import VideoParams
from .passes import PassStore, stylize_passes


def stylize_clips(clips: Sequence[ClipSource], params: StyleParams, video: VideoParams,
                  runtime: Runtime, done: Callable[[int, int], np.ndarray | None],
                  finished: Callable[[Frame], None],
                  progress: Callable[[int, int], Progress | None] = lambda c, i: None,
                  checkpointing: Callable[[int, list[int]], Checkpointing | None]
                  = lambda i, clips: None, stop: Callable[[], bool] = lambda: False,
                  stores: Callable[[int], PassStore] = lambda clip: PassStore()) -> None:
    """Stylize every frame of `clips` (one working size, each with as many styles).
    `done(clip, i)`: the frame if an earlier run finished it; `finished(frame)`: called for
    each frame as it is ready, in order per clip; `progress(clip, i)`: the engine's progress
    for that frame; `checkpointing(i, clips)`: how the batch of frame i of those clips saves
    and resumes its optimization, and is stopped (Interrupted); `stop()`: the multi-pass
    scheme's stop, `stores(clip)` where it keeps that clip's passes."""
    for clip in clips:
        params.validate(n_styles=len(clip.styles))
    video.validate()
    flows = flow_folder(runtime)
    if video.passes:
        _by_passes(clips, params, video, runtime, done, finished, TargetCache(flows, 0), stop,
                   stores)
    else:
        _chain(clips, params, video, runtime, done, finished, progress, checkpointing, flows)


def flow_folder(runtime: Runtime) -> Path | None:
    """Where the flows are cached (None: not at all), as the targets are."""
    return cache_dir(runtime.cache) / "flows" if runtime.cache_targets else None


def _chain(clips: Sequence[ClipSource], params: StyleParams, video: VideoParams,
           runtime: Runtime, done: Callable[[int, int], np.ndarray | None],
           finished: Callable[[Frame], None], progress: Callable[[int, int], Progress | None],
           checkpointing: Callable[[int, list[int]], Checkpointing | None],
           flows: Path | None) -> None:
    """Frame i of every clip as one batch, i = 0, 1, ... (the module docstring)."""
    later = later_params(params, video)
    tied = video.temporal_weight > 0
    history: dict[int, dict[int, Tensor]] = {c: {} for c in range(len(clips))}
    seen: dict[tuple[int, int], np.ndarray] = {}  # working-size frames the flows still need
    keep = max(video.temporal_frames)

    def content(c: int, i: int) -> tuple[SizedImage, list[SizedImage]]:
        frame = Image.fromarray(clips[c].frame(i))
        image, style_images = prepare(StyleJob(frame, list(clips[c].styles), clips[c].regions),
                                      params if i == 0 else later)
        return dataclasses.replace(image, name=f"frame {i}", keep=False), style_images

    def working_frame(c: int, i: int) -> np.ndarray:
        """Frame i at the working size, made once: each frame's flows look back at several."""
        if (c, i) not in seen:
            seen[c, i] = to_pixels(content(c, i)[0].pixels)
        return seen[c, i]

    offsets = sorted(video.temporal_frames)
    aheads = [Ahead(lambda i, c=c: working_frame(c, i), offsets, TargetCache(flows, 0))
              if tied else None for c in range(len(clips))]  # a cache per thread
    try:
        for i in range(max(clip.count for clip in clips)):
            active = [c for c, clip in enumerate(clips) if i < clip.count]
            found = {c: done(c, i) for c in active}
            for c in active:  # the next frame's flows while this one is optimized
                ahead = aheads[c]
                if ahead is not None and i + 1 < clips[c].count:
                    ahead.request(i + 1)
            made: dict[int, Frame] = {}
            if any(frame is None for frame in found.values()):
                batch = [c for c in active if found[c] is None or not _went_on(c, i, clips, done)]
                made = _run_frames(batch, i, content, aheads, history,
                                   params if i == 0 else later, video, offsets, runtime,
                                   progress, checkpointing(i, batch))
            for c in active:
                frame = made[c] if found[c] is None else Frame(c, i, found[c], {}, 0, 0.0,
                                                               resumed=True)
                history[c][i] = to_tensor(frame.pixels)[None]
                finished(frame)
            for c in active:
                history[c].pop(i - keep, None)
                seen.pop((c, i - keep), None)
    finally:
        for ahead in aheads:
            if ahead is not None:
                ahead.close()


def _by_passes(clips: Sequence[ClipSource], params: StyleParams, video: VideoParams,
               runtime: Runtime, done: Callable[[int, int], np.ndarray | None],
               finished: Callable[[Frame], None], flows: TargetCache,
               stop: Callable[[], bool], stores: Callable[[int], PassStore]) -> None:
    """Every frame of a clip at once (passes.py), a clip after another; a clip whose frames
    an earlier run finished is read back whole, one missing any goes on after the last pass
    its store kept."""
    for c, clip in enumerate(clips):
        found = [done(c, i) for i in range(clip.count)]
        if any(frame is None for frame in found):
            stylize_passes(clip, c, params, video, runtime, flows, finished, stop,
                           store=stores(c))
            continue
        for i, frame in enumerate(found):
            assert frame is not None
            finished(Frame(c, i, frame, {}, 0, 0.0, resumed=True))


def _went_on(c: int, i: int, clips: Sequence[ClipSource],
             done: Callable[[int, int], np.ndarray | None]) -> bool:
    """Whether clip c went on past its finished frame i. One that did not runs frame i again
    (its result dropped) beside the clips that lack it: a run killed while it wrote frame i of
    its clips leaves some written, and the others must get the batch they had, as on the CPU
    another batch rounds differently (docs/guarantees.md). A clip further on, from a run
    with another batch, is not held back to redo a frame."""
    return i + 1 < clips[c].count and done(c, i + 1) is not None


def _run_frames(todo: list[int], i: int, content: Callable[[int, int], Any],
                aheads: Sequence[Ahead | None], history: dict[int, dict[int, Tensor]],
                params: StyleParams, video: VideoParams, offsets: Sequence[int],
                runtime: Runtime, progress: Callable[[int, int], Progress | None],
                checkpointing: Checkpointing | None) -> dict[int, Frame]:
    """Frame i of the clips in `todo`, as one batch, by clip."""
    prepared = [content(c, i) for c in todo]
    x0, temporal = None, None
    if i > 0 and video.temporal_weight > 0:
        starts, targets = [], []
        for c in todo:
            ahead = aheads[c]
            assert ahead is not None
            flows = ahead.get(i)
            earlier = [for_transfer(history[c][i - j], params)
                       for j in offsets if j <= i]
            target, start = temporal_target(flows, earlier, video.temporal_weight)
            targets.append(target)
            starts.append(start)
        x0 = torch.cat(starts)
        temporal = Temporal(*(torch.cat([getattr(t, f.name) for t in targets])
                              for f in dataclasses.fields(Temporal)))
    one = progress(todo[0], i) if len(todo) == 1 else None
    results = stylize_prepared(prepared, params, runtime, one, checkpointing, start=x0,
                               temporal=temporal)
    return {c: Frame(c, i, to_pixels(result.pixels), result.losses, result.iterations,
                     result.seconds) for c, result in zip(todo, results, strict=True)}
