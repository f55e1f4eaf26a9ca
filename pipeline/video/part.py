"""Which frames of which file a video job stylizes (the --start..--end part at --fps), and the
keys that say what decides each output frame: all a manifest's check needs of a video, with no
torch (clip.py decodes the frames)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import PurePath
from typing import Any

from ..errors import InputError
from ..gatys.keys import hashed
from ..gatys.params import StyleParams
from ..io.copy_budget import pinned
from ..io.fetch import local_copy
from ..io.images import IMAGE_SUFFIXES
from ..io.storage import Location, name
from ..io.video import VideoInfo, frame_count, parse_time, probe
from .params import VideoParams


@dataclass(frozen=True)
class ClipPart:
    """The frames a job stylizes: `count` frames at `fps` from `start` to `end` seconds."""

    info: VideoInfo
    fps: Fraction
    start: float
    end: float | None
    count: int


def clip_part(source: Location, video: VideoParams) -> ClipPart:
    """The part of `source` (a path, or a URL: its local copy) that `video` asks for;
    InputError naming the file when the file is no video or the part holds no frame."""
    video.validate()
    if PurePath(name(str(source))).suffix.lower() in IMAGE_SUFFIXES:  # FFmpeg reads one frame
        raise InputError(f"{source}: is an image, not a video (an image is stylized by "
                         "`pipeline stylize`)")
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


@contextlib.contextmanager
def kept_part(source: Location, part: ClipPart) -> Iterator[ClipPart]:
    """`part` for a job that reads `source` for long (opened again at each pass, its audio
    at the end): of an object, its local copy kept from trims (io/copy_budget.py) as a file
    of the job's own."""
    if not isinstance(source, str):
        yield part
        return
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(pinned(part.info.path))
        except FileNotFoundError:  # trimmed since the probe: fetched again
            path = stack.enter_context(pinned(local_copy(source)))
        yield replace(part, info=replace(part.info, path=path))


def clip_key(video_digest: str, part: ClipPart, styles: Sequence[str], params: StyleParams,
             video: VideoParams, init: str | None = None,
             regions: dict[str, Any] | None = None) -> str:
    """What decides a video job's frames: the video's bytes, the part and its rate, the styles,
    every parameter that decides an image, the bytes of an init image where the first frame
    starts from one, and the regions (Regions.key) where it has masks."""
    return hashed({"video": video_digest, "part": [part.start, part.end, str(part.fps)],
                   "styles": list(styles), "params": params.result_dict(),
                   "video_params": video.result_dict()}, init, regions)


def frame_key(key: str, index: int) -> str:
    """The key of frame `index` of the job keyed `key`."""
    return hashlib.sha256(f"{key}:{index}".encode()).hexdigest()
