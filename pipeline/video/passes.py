"""The multi-pass scheme (Ruder, Dosovitskiy & Brox 2016, Sec. 3.5; IJCV 2018): every frame of a
clip is optimized at once, in passes of a few iterations that alternate between forward and
backward. The first pass stylizes each frame alone; in each later pass a frame starts from a
blend of itself and its neighbour in the pass's direction (the frame before it going forward,
after it going backward) warped into it,

    start_i = delta c ∘ warp(x_n) + (1 - delta c) ∘ x_i,

where c are the consistency weights, and is held to that warped neighbour by the temporal term.
Frames at the start of a pass's direction have no neighbour and keep their own image.

Departure: a pass blends with the neighbour's image of the previous pass (the paper's runs
frame after frame within a pass, with the neighbour of the same pass). Every frame of a pass is
then independent of the others, so a pass is batches of any frames, in any order, and a frame's
result does not depend on how its pass was cut: a long clip fills a GPU's batch the chain cannot
(the chain has one frame per clip in flight), at the price of information moving one frame per
pass. Only the short-term neighbour is used.

Each batch of frames is kept as it finishes (`PassStore`): a stopped or killed clip resumes
inside the pass it was on, with the frames that pass has left, in batches of any size. The same
store lets several workers share a clip: `stylize_piece` runs a part of one pass
(bulk/pass_plan.py cuts the passes).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..api import Runtime, StyleJob, StyleParams, prepare, stylize_prepared
from ..gatys.engine import Checkpointing
from ..gatys.temporal import Temporal, consistency, warp
from ..io.pixels import SizedImage
from ..targets.cache import TargetCache
from .flow import cached_flow_pair
from .frames import ClipSource, Frame, for_transfer, to_pixels, to_tensor
from .params import VideoParams


@dataclass
class Made:
    """A frame as the passes have left it so far."""

    pixels: np.ndarray
    losses: dict[str, float]
    iterations: int = 0
    seconds: float = 0.0


@dataclass
class PassState:
    """A clip's passes so far: every frame after its first `passes` passes (`made`; empty
    before the first is whole) and the frames the next pass has finished (`current`)."""

    passes: int
    made: dict[int, Made]
    current: dict[int, Made]


@dataclass
class PassStore:
    """Where a clip's passes are kept between runs and workers (by default nowhere):
    `save(p, frames)` keeps frames just finished in pass p (0-based), `load()` gives back the
    PassState, `read(p, frames)` those of `frames` that pass p has finished, `beyond(p)`
    whether a later pass has begun (so pass p was whole)."""

    load: Callable[[], PassState | None] = lambda: None
    save: Callable[[int, dict[int, Made]], None] = lambda p, frames: None
    read: Callable[[int, range], dict[int, Made]] = lambda p, frames: {}
    beyond: Callable[[int], bool] = lambda p: False


class PassMissing(RuntimeError):
    """A piece's neighbours of the previous pass are not in the store."""


def pass_params(params: StyleParams, video: VideoParams) -> StyleParams:
    """The parameters of a pass after the first: one full-size stage of --pass-iterations."""
    return dataclasses.replace(params, iterations=video.pass_iterations, scales=1,
                               tol_window=min(params.tol_window, video.pass_iterations))


class WorkingFrames:
    """A clip's frames prepared for the optimizer, each at the working size made once (a frame
    already at its size is not resized again: the same pixels): the flows and later passes
    use them. The clip decodes each frame once, in order, from frame `first` on."""

    def __init__(self, clip: ClipSource, params: StyleParams, video: VideoParams,
                 first: int = 0):
        self.clip, self.first, self.later = clip, params, pass_params(params, video)
        self.content: dict[int, np.ndarray] = {}
        self.next = first  # the first frame never asked for

    def prepared(self, i: int, p: int) -> tuple[SizedImage, list[SizedImage]]:
        """Frame i and the styles, prepared for pass p. The frames before it never asked for
        are made first: a pass resumed past some frames skips them, and the next pass needs
        them after the clip has decoded past them."""
        for skipped in range(self.next, i):
            self._made(skipped, self.later)
        self.next = max(self.next, i + 1)
        return self._made(i, self.first if p == 0 else self.later)

    def _made(self, i: int, params: StyleParams) -> tuple[SizedImage, list[SizedImage]]:
        source = self.content[i] if i in self.content else self.clip.frame(i)
        image, styles = prepare(StyleJob(Image.fromarray(source), list(self.clip.styles),
                                         self.clip.regions), params)
        self.content.setdefault(i, to_pixels(image.pixels))
        return dataclasses.replace(image, name=f"frame {i}", keep=False), styles

    def __call__(self, i: int) -> np.ndarray:
        """Frame i at the working size."""
        if i not in self.content:
            self.prepared(i, 1)
        return self.content[i]


def stylize_passes(clip: ClipSource, index: int, params: StyleParams, video: VideoParams,
                   runtime: Runtime, flows: TargetCache, finished: Callable[[Frame], None],
                   stop: Callable[[], bool] = lambda: False, batch: int = 8,
                   store: PassStore | None = None) -> None:
    """Stylize every frame of `clip` (clip number `index` of the caller) in video.passes
    passes, `batch` frames at a time; `finished` gets each frame, in order, after the last.
    `store` keeps each batch's frames and gives back what it kept; `stop()` true: Interrupted
    (what `store` has is kept)."""
    store = store or PassStore()
    working = WorkingFrames(clip, params, video)
    state = _usable(store.load(), video.passes)
    for p in range(state.passes, video.passes):
        made = _run_pass(p, range(clip.count), state.made, dict(state.current), working,
                         runtime, flows, video, batch, store, stop)
        state = PassState(p + 1, made, {})
    for i in range(clip.count):
        m = state.made[i]
        finished(Frame(index, i, m.pixels, m.losses, m.iterations, m.seconds))


def stylize_piece(clip: ClipSource, params: StyleParams, video: VideoParams, runtime: Runtime,
                  flows: TargetCache, p: int, frames: range, batch: int, store: PassStore,
                  stop: Callable[[], bool] = lambda: False,
                  begun: Callable[[int], None] = lambda kept: None,
                  progress: Callable[[int], None] = lambda done: None) -> None:
    """Frames `frames` of pass p alone (bulk/pass_plan.py: pass p - 1 is whole in `store`),
    from `clip` decoded from their first neighbour on, those the store lacks, `batch` at a
    time, each batch kept there. `begun(n)`: n of them were kept by an earlier run (all of
    them once a later pass is kept); `progress(n)` after each batch, with the frames done so
    far. PassMissing when the store lacks a neighbour."""
    made = ({i: Made(np.empty(0), {}) for i in frames} if store.beyond(p)
            else store.read(p, frames))
    begun(len(made))
    if len(made) == len(frames):
        return
    around = range(max(0, frames.start - 1), min(clip.count, frames.stop + 1))
    previous = store.read(p - 1, around) if p > 0 else {}
    if p > 0 and len(previous) < len(around):
        lacking = sorted(set(around) - set(previous))
        raise PassMissing(f"frames {lacking[0]}-{lacking[-1]} of the pass before are not kept")
    _run_pass(p, frames, previous, made, WorkingFrames(clip, params, video, around.start),
              runtime, flows, video, batch, store, stop,
              lambda: progress(sum(i in made for i in frames)))


def _run_pass(p: int, frames: range, previous: dict[int, Made], made: dict[int, Made],
              working: WorkingFrames, runtime: Runtime, flows: TargetCache,
              video: VideoParams, batch: int, store: PassStore, stop: Callable[[], bool],
              progress: Callable[[], None] = lambda: None) -> dict[int, Made]:
    """Pass p over `frames`, but those `made` has already, from the `previous` pass's images;
    `made` with them all."""
    halt = Checkpointing(save=lambda *_: None, stop=stop)
    params = working.first if p == 0 else working.later
    todo = [i for i in frames if i not in made]
    for first in range(0, len(todo), batch):
        chunk = todo[first:first + batch]
        if p > 0:  # in order, with their neighbours, before the optimizer asks for them
            for n in sorted({*chunk, *(j + d for j in chunk for d in (-1, 1)
                                       if j + d in previous)}):
                working(n)
        jobs = [working.prepared(i, p) for i in chunk]
        start, temporal = (None, None) if p == 0 else _from_neighbours(
            chunk, p % 2 == 1, previous, working, flows, params, video)
        began = time.perf_counter()
        results = stylize_prepared(jobs, params, runtime, checkpointing=halt, start=start,
                                   temporal=temporal)
        share = (time.perf_counter() - began) / len(chunk)
        done = {}
        for i, result in zip(chunk, results, strict=True):
            before = previous.get(i, Made(np.empty(0), {}))
            done[i] = Made(to_pixels(result.pixels), result.losses,
                           before.iterations + result.iterations, before.seconds + share)
        store.save(p, done)
        made.update(done)
        progress()
    return made


def _usable(saved: PassState | None, passes: int) -> PassState:
    """What a clip starts from: what was kept, unless it went past this job's passes."""
    return saved if saved is not None and saved.passes <= passes else PassState(0, {}, {})


def _from_neighbours(frames: list[int], forward: bool, made: dict[int, Made],
                     working: Callable[[int], np.ndarray], flows: TargetCache,
                     params: StyleParams, video: VideoParams) -> tuple[Tensor, Temporal]:
    """Each frame's start (its blend with its warped neighbour) and temporal term, from the
    previous pass's images."""
    starts, targets = [], []
    for i in frames:
        own = for_transfer(to_tensor(made[i].pixels)[None], params)
        n = i - 1 if forward else i + 1
        if n not in made:  # the first frame in this direction: itself, no temporal pull
            starts.append(own)
            targets.append(Temporal(own, torch.zeros_like(own[:, :1]), torch.zeros(1)))
            continue
        # a pair's flows are from the later frame to the earlier and back
        later_to_earlier, earlier_to_later = cached_flow_pair(working(max(i, n)),
                                                              working(min(i, n)), flows)
        back, fwd = ((later_to_earlier, earlier_to_later) if forward
                     else (earlier_to_later, later_to_earlier))
        c = consistency(back, fwd)
        warped = warp(for_transfer(to_tensor(made[n].pixels)[None], params), back)
        starts.append(video.pass_blend * c * warped + (1 - video.pass_blend * c) * own)
        targets.append(Temporal.of([warped], [c], video.temporal_weight))
    return torch.cat(starts), Temporal(*(torch.cat([getattr(t, f.name) for t in targets])
                                         for f in dataclasses.fields(Temporal)))
