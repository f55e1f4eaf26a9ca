"""The input side of a video job: which frames of which file (the --start..--end part at --fps),
decoded once in order, and the keys that say what decides each output frame."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..api import NO_REGIONS, ImageSource, Regions, StyleParams
from ..errors import InputError
from ..io.fetch import local_copy
from ..io.storage import Location
from ..io.video import VideoInfo, frame_count, parse_time, probe, read_frames
from .frames import ClipSource
from .params import VideoParams


@dataclass(frozen=True)
class ClipPart:
    """The frames a job stylizes: `count` frames at `fps` from `start` to `end` seconds."""

    info: VideoInfo
    fps: Fraction
    start: float
    end: float | None
    count: int

    def source(self, styles: Sequence[ImageSource], keep: int, first: int = 0,
               regions: Regions = NO_REGIONS) -> ClipSource:
        """The frames by index, decoded once (the last `keep` held for the flows), to be
        stylized with `styles` (in `regions`, the same masks for every frame); from frame
        `first` on (the decoder seeks there: frame k is on screen at start + k / fps either
        way)."""
        frames = read_frames(self.info, self.fps, self.start + first / self.fps, self.end)
        return ClipSource(FrameWindow(frames, keep, first), self.count, styles, regions)


def clip_part(source: Location, video: VideoParams) -> ClipPart:
    """The part of `source` (a path, or a URL: its local copy) that `video` asks for;
    InputError naming the file when the file is no video or the part holds no frame."""
    video.validate()
    info = probe(local_copy(source) if isinstance(source, str) else source)
    fps = Fraction(video.fps).limit_denominator(1001) if video.fps else info.fps
    start = parse_time(video.start, info.fps)
    end = parse_time(video.end, info.fps) if video.end is not None else None
    stop = end if end is not None else info.duration
    if start >= stop:
        raise InputError(f"{source}: --start {video.start} is not before the clip's end "
                         f"({stop:.3f} s)")
    count = frame_count(info, fps, start, end)
    if count == 0:
        raise InputError(f"{source}: no frame between --start and --end at {float(fps):g} fps")
    return ClipPart(info, fps, start, end, count)


def clip_key(video_digest: str, part: ClipPart, styles: Sequence[str], params: StyleParams,
             video: VideoParams, init: str | None = None,
             regions: dict[str, Any] | None = None) -> str:
    """What decides a video job's frames: the video's bytes, the part and its rate, the styles,
    every parameter that decides an image, the bytes of an init image where the first frame
    starts from one, and the regions (Regions.key) where it has masks."""
    payload = {"video": video_digest, "part": [part.start, part.end, str(part.fps)],
               "styles": list(styles), "params": params.result_dict(),
               "video_params": video.result_dict()}
    if init is not None:
        payload["init"] = init
    if regions is not None:
        payload["regions"] = regions
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def frame_key(key: str, index: int) -> str:
    """The key of frame `index` of the job keyed `key`."""
    return hashlib.sha256(f"{key}:{index}".encode()).hexdigest()


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
