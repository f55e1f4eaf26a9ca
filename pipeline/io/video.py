"""Video files in and out with PyAV (FFmpeg inside): any format FFmpeg reads is decoded to
upright RGB frames at a constant frame rate; frames are encoded H.264 (yuv420p, so even sizes),
with the input's audio stream copied over unchanged, atomically.

Variable frame rate input is resampled to a constant rate (the stream's average, or the one
asked for): output frame k shows the input frame on screen at time start + k / fps, as a
player would. A rotation in the input's display matrix is applied to the pixels, so frames are
stylized the way they are seen; the output is stored upright.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, SourceMissingError
from .files import atomic_path

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",
                            ".ts", ".mts", ".m2ts", ".wmv", ".flv", ".3gp", ".ogv"})
# Above this many pixels a frame is refused before decoding: 16K video is 132 Mpx.
MAX_PIXELS = 16384 * 16384
DEFAULT_CRF = 18


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise SourceMissingError("video needs PyAV: pip install 'style-pipeline[video]'") from None
    return av


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as it is shown (rotation applied)."""

    path: Path
    size: tuple[int, int]      # (w, h) upright
    fps: Fraction              # the video stream's average frame rate
    duration: float            # seconds
    rotation: int              # degrees the display matrix turns the stored frames
    has_audio: bool

    @property
    def frames(self) -> int:
        """Frames at `fps` over the whole duration."""
        return max(1, round(self.duration * self.fps))


def _open(path: Path) -> Any:
    av = _av()
    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a video FFmpeg can read ({e.__class__.__name__})") from None


def _rotation(stream: Any, frame: Any = None) -> int:
    """Clockwise degrees to turn stored frames upright (0, 90, 180 or 270)."""
    angle = getattr(frame, "rotation", 0) if frame is not None else 0
    return int(-angle) % 360 // 90 * 90


def probe(path: str | Path) -> VideoInfo:
    """A video's shape and timing, decoding its first frame: a file without one (corrupt,
    empty, audio only) is an InputError naming it."""
    path = Path(path)
    with _open(path) as container:
        stream, first = _first_frame(container, path)
        rotation = _rotation(stream, first)
        w, h = first.width, first.height
        if w * h > MAX_PIXELS:
            raise InputError(f"{path}: {w}x{h} frames are too large (at most {MAX_PIXELS:,} px)")
        if rotation in (90, 270):
            w, h = h, w
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        duration = _duration(container, stream, rate)
        return VideoInfo(path, (w, h), Fraction(rate), duration, rotation,
                         bool(container.streams.audio))


def poster(path: str | Path) -> Any:
    """The first frame, upright, as a PIL image (a video's thumbnail); InputError as probe's."""
    from PIL import Image

    path = Path(path)
    with _open(path) as container:
        stream, first = _first_frame(container, path)
        return Image.fromarray(_upright(first, _rotation(stream, first)))


def _first_frame(container: Any, path: Path) -> tuple[Any, Any]:
    """The video stream and its first decoded frame; InputError naming the file without."""
    av = _av()
    if not container.streams.video:
        raise InputError(f"{path}: no video stream (audio only?)")
    stream = container.streams.video[0]
    try:
        for frame in container.decode(stream):
            return stream, frame
    except av.error.FFmpegError as e:
        raise InputError(f"{path}: cannot decode its video ({e.__class__.__name__})") from None
    raise InputError(f"{path}: no decodable video frame")


def _duration(container: Any, stream: Any, rate: Fraction) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    if stream.frames:
        return float(stream.frames / rate)
    return float(1 / rate)


def _upright(frame: Any, rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(rgb, k=-rotation // 90)) if rotation else rgb


def frame_count(info: VideoInfo, fps: Fraction, start: float = 0.0,
                end: float | None = None) -> int:
    """How many frames at `fps` the part from `start` to `end` seconds has."""
    stop = info.duration if end is None else min(end, info.duration)
    return max(0, round((stop - start) * fps))


def read_frames(info: VideoInfo, fps: Fraction, start: float = 0.0,
                end: float | None = None) -> Iterator[np.ndarray]:
    """Upright RGB frames [H, W, 3] uint8 at a constant `fps`, from `start` to `end` seconds
    (frame_count of them): frame k is the input frame on screen at start + k / fps."""
    av = _av()
    count = frame_count(info, fps, start, end)
    if count == 0:
        return
    with _open(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        k, shown = 0, None
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else 0.0
                # every output time before this frame's shows the frame before it
                while k < count and start + k / fps < t - 1e-6 and shown is not None:
                    yield shown
                    k += 1
                if k >= count:
                    return
                shown = _upright(frame, info.rotation)
        except av.error.FFmpegError as e:
            if shown is None:
                raise InputError(f"{info.path}: cannot decode its video "
                                 f"({e.__class__.__name__})") from None
        while k < count and shown is not None:  # the last frame stays on screen to the end
            yield shown
            k += 1


def parse_time(text: str, fps: Fraction) -> float:
    """'12.5' or '12.5s' (seconds) or '300f' (frames at the input's rate) -> seconds."""
    value = text.strip().lower()
    try:
        if value.endswith("f"):
            return int(value[:-1]) / float(fps)
        seconds = float(value.removesuffix("s"))
    except ValueError:
        raise InputError(f"time {text!r}: seconds (12.5 or 12.5s) or frames (300f)") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"time {text!r}: must be a finite number of seconds >= 0")
    return seconds


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """H.264 in yuv420p needs even sides: one pixel less where a side is odd."""
    return max(2, size[0] // 2 * 2), max(2, size[1] // 2 * 2)


def write_video(frames: Iterable[np.ndarray], dest: Path, fps: Fraction, crf: int = DEFAULT_CRF,
                audio: VideoInfo | None = None, start: float = 0.0,
                end: float | None = None, metadata: dict[str, Any] | None = None) -> int:
    """Encode RGB frames [H, W, 3] (even sides) as H.264 at `fps` into `dest` (atomic), with
    `audio`'s audio stream from `start` to `end` seconds copied over packet by packet and
    `metadata` as JSON in the container's comment. Returns the number of frames written."""
    av = _av()
    count = 0
    with atomic_path(dest) as tmp, av.open(str(tmp), mode="w", format=_muxer(dest)) as out:
        if metadata:
            out.metadata["comment"] = json.dumps(metadata)
        video = out.add_stream("libx264", rate=fps)
        video.pix_fmt = "yuv420p"
        # x264's macroblock tree gives another stream at each encode of the same frames (on
        # smooth, moving frames; measured with this build): off, a run or its resume writes
        # the same video bytes, at a small cost in quality per byte (docs/video.md).
        video.options = {"crf": str(crf), "x264-params": "no-mbtree=1"}
        source = av.open(str(audio.path)) if audio is not None and audio.has_audio else None
        try:
            packets = _audio_packets(source, out, start, end) if source else iter(())
            pending = next(packets, None)
            for rgb in frames:
                if count == 0:
                    video.width, video.height = rgb.shape[1], rgb.shape[0]
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = count
                frame.time_base = Fraction(1) / fps
                out.mux(video.encode(frame))
                count += 1
                while pending is not None and pending[0] <= count / fps:  # interleaved
                    out.mux(pending[1])
                    pending = next(packets, None)
            out.mux(video.encode(None))
            while pending is not None:
                out.mux(pending[1])
                pending = next(packets, None)
        finally:
            if source is not None:
                source.close()
    return count


def video_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata `write_video` embedded (empty for a file that is not a whole video of
    ours: a container FFmpeg cannot open has no trailer, and our files are written atomically)."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            tags = {k.lower(): v for k, v in container.metadata.items()}
            if not container.streams.video:
                return {}
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        return {}
    try:
        found = json.loads(tags.get("comment", "") or "{}")
    except json.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


def _muxer(dest: Path) -> str | None:
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(
        dest.suffix.lower())


def _audio_packets(source: Any, out: Any, start: float, end: float | None
                   ) -> Iterator[tuple[float, Any]]:
    """(time in the output, packet) of the first audio stream between start and end, with
    timestamps moved so that `start` is 0."""
    stream = source.streams.audio[0]
    target = out.add_stream_from_template(stream)
    shift = int(start / stream.time_base)
    if start > 0:
        source.seek(shift, stream=stream, backward=True)
    for packet in source.demux(stream):
        if packet.pts is None or packet.size == 0:
            continue
        t = float(packet.pts * stream.time_base)
        if t < start - 1e-6:
            continue
        if end is not None and t >= end:
            return
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        packet.stream = target
        yield t - start, packet
