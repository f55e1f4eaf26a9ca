"""The input side of a video job: the frames of its part of the file (part.py), decoded once in
order."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np

from ..api import NO_REGIONS, ImageSource, Regions
from ..errors import InputError
from ..io.video import read_frames
from .frames import ClipSource
from .part import ClipPart


def clip_source(part: ClipPart, styles: Sequence[ImageSource], keep: int, first: int = 0,
                regions: Regions = NO_REGIONS) -> ClipSource:
    """The frames of `part` by index, decoded once (the last `keep` held for the flows), to be
    stylized with `styles` (in `regions`, the same masks for every frame); from frame `first`
    on (the decoder seeks there: frame k is on screen at start + k / fps either way)."""
    frames = read_frames(part.info, part.fps, part.start + first / part.fps, part.end)
    return ClipSource(FrameWindow(frames, keep, first), part.count, styles, regions)


class FrameWindow:
    """A clip's frames by index, decoded once in order: a frame is kept while a later one may
    still look back at it (`keep` frames), so a long clip never sits in memory."""

    def __init__(self, frames: Iterator[np.ndarray], keep: int, first: int = 0):
        """`frames` from frame `first` on."""
        self.frames, self.keep = frames, keep
        self.held: dict[int, np.ndarray] = {}
        self.next, self.lock = first, threading.Lock()

    def __call__(self, i: int) -> np.ndarray:
        with self.lock:
            while self.next <= i:
                frame = next(self.frames, None)
                if frame is None:
                    raise InputError(f"frame {i} could not be decoded (the video ended early)")
                self.held[self.next] = frame
                self.next += 1
                for old in [k for k in self.held if k < self.next - self.keep - 2]:
                    del self.held[old]
            return self.held[i]
