"""`pipeline video`: one video file (or part of it) stylized into a video file or a folder of
frames, resumably.

Each finished frame is written at once as a PNG carrying its key (the video's bytes, the
clip's part and rate, the styles and every parameter that decides the image, the frame's
index); a rerun reads back the frames that carry their key and goes on from the first one
missing. The video is encoded from those frames only when all are there, then their folder
(`OUT.frames/` beside a video output) is removed: an output video is always a whole one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from ..api import Runtime, StyleParams, image_digest
from ..errors import InputError
from ..gatys.engine import Progress
from ..io.files import check_writable_dir, describe_os_error, file_digest
from ..io.images import carries_key, check_image_file, save_image
from ..io.video import (
    VideoInfo,
    even_size,
    frame_count,
    is_video,
    parse_time,
    probe,
    read_frames,
    write_video,
)
from ..options import decides_result, declared
from .chain import ClipSource, Frame, stylize_clips
from .params import VideoParams


@dataclass
class VideoResult:
    """What `stylize_video_file` did."""

    output: Path
    frames: int
    fps: Fraction
    size: tuple[int, int]                    # of the frames (the video: even_size of it)
    resumed: int = 0                         # frames read back from an earlier run
    iterations: list[int] = field(default_factory=list)  # per frame optimized now
    seconds: float = 0.0                     # optimizing
    audio: bool = False


class FrameWindow:
    """A clip's frames by index, decoded once in order: a frame is kept while a later one may
    still look back at it (`keep` frames), so a long clip never sits in memory."""

    def __init__(self, frames: Iterator[np.ndarray], keep: int):
        self.frames, self.keep = frames, keep
        self.held: dict[int, np.ndarray] = {}
        self.next, self.lock = 0, threading.Lock()

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


def frame_key(video_digest: str, part: tuple[float, float | None, Fraction],
              styles: Sequence[str], params: StyleParams, video: VideoParams, index: int) -> str:
    """The key of one output frame: what decides its pixels."""
    payload = {"video": video_digest, "part": [part[0], part[1], str(part[2])],
               "styles": list(styles), "params": params.result_dict(),
               "video_params": {f.name: getattr(video, f.name) for f in declared(VideoParams)
                                if decides_result(video, f)}, "frame": index}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def frames_folder(output: Path) -> Path:
    """Where the frames go: the output itself when it is a folder, else beside it."""
    return output.with_name(output.name + ".frames") if is_video(output) else output


def frame_path(folder: Path, index: int) -> Path:
    return folder / f"frame_{index:06d}.png"


ENCODED = (".mp4", ".m4v", ".mov", ".mkv")


def check_output(source: Path, styles: Sequence[Path], output: Path) -> None:
    """InputError before any work: an output that is neither a video we encode nor a folder,
    one over an input, or one where nothing can be written."""
    if output.exists() and any(output.samefile(p) for p in [source, *styles] if p.exists()):
        raise InputError(f"{output}: the output would overwrite one of the inputs")
    if is_video(output) and output.suffix.lower() not in ENCODED:
        raise InputError(f"{output}: write {', '.join(ENCODED)} (H.264), or give a folder "
                         "for PNG frames")
    if output.suffix and not is_video(output):
        raise InputError(f"{output}: neither a video ({', '.join(ENCODED)}) nor a folder")
    if is_video(output) and output.is_dir():
        raise InputError(f"{output}: is a folder; give a video file name")
    folder = output.parent if is_video(output) else output
    try:
        check_writable_dir(folder)
    except OSError as e:
        raise InputError(f"--output: {describe_os_error(e, folder)}") from None


def stylize_video_file(source: Path, styles: Sequence[Path], output: Path,
                       params: StyleParams = StyleParams(), video: VideoParams = VideoParams(),
                       runtime: Runtime | None = None,
                       on_start: Callable[[int], None] = lambda count: None,
                       on_frame: Callable[[Frame], None] = lambda f: None,
                       progress: Callable[[int], Progress | None] = lambda i: None
                       ) -> VideoResult:
    """Stylize `source` (its --start..--end part, at --fps) with `styles` into `output`: a
    video (.mp4, .mov, .mkv: H.264 at --crf, the source's audio copied) or a folder of PNG
    frames. `on_start(frames)` is called once the inputs are checked, `on_frame` with each
    frame as it is done; `progress(i)` is frame i's progress."""
    params.validate(n_styles=len(styles))
    video.validate()
    info = probe(source)
    for style in styles:
        check_image_file(style)
    fps = Fraction(video.fps).limit_denominator(1001) if video.fps else info.fps
    start = parse_time(video.start, info.fps)
    end = parse_time(video.end, info.fps) if video.end is not None else None
    if start >= (end if end is not None else info.duration):
        raise InputError(f"{source}: --start {video.start} is not before the clip's end "
                         f"({end if end is not None else info.duration:.3f} s)")
    count = frame_count(info, fps, start, end)
    if count == 0:
        raise InputError(f"{source}: no frame between --start and --end at {float(fps):g} fps")
    check_output(source, styles, output)
    folder = frames_folder(output)
    folder.mkdir(parents=True, exist_ok=True)
    digest = file_digest(source)
    style_digests = [image_digest(s) for s in styles]
    keys = [frame_key(digest, (start, end, fps), style_digests, params, video, i)
            for i in range(count)]
    runtime = runtime or Runtime.start()
    result = VideoResult(output, count, fps, (0, 0), audio=info.has_audio and is_video(output))

    def done(_clip: int, i: int) -> np.ndarray | None:
        path = frame_path(folder, i)
        if path.is_file() and carries_key(path, keys[i]):
            with Image.open(path) as img:
                return np.array(img.convert("RGB"))
        return None

    def finished(frame: Frame) -> None:
        result.size = (frame.pixels.shape[1], frame.pixels.shape[0])
        if frame.resumed:
            result.resumed += 1
        else:
            save_image(Image.fromarray(frame.pixels), frame_path(folder, frame.index),
                       {"job_key": keys[frame.index], "frame": frame.index,
                        "losses": frame.losses, "iterations": frame.iterations})
            result.iterations.append(frame.iterations)
            result.seconds += frame.seconds
        on_frame(frame)

    on_start(count)
    window = FrameWindow(read_frames(info, fps, start, end), max(video.temporal_frames))
    stylize_clips([ClipSource(window, count)], [str(s) for s in styles], params, video,
                  runtime, done, finished, lambda _c, i: progress(i))
    if is_video(output):
        _encode(folder, count, output, fps, video.crf, info, start, end)
        shutil.rmtree(folder)
    return result


def _encode(folder: Path, count: int, output: Path, fps: Fraction, crf: int, info: VideoInfo,
            start: float, end: float | None) -> None:
    def frames() -> Iterator[np.ndarray]:
        for i in range(count):
            with Image.open(frame_path(folder, i)) as img:
                rgb = np.asarray(img.convert("RGB"))
            w, h = even_size((rgb.shape[1], rgb.shape[0]))
            yield np.ascontiguousarray(rgb[:h, :w])

    write_video(frames(), output, fps, crf, info, start, end)
