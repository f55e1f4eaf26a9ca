"""`pipeline video`: one video file (or part of it) stylized into a video file or a folder of
frames, resumably (output.py: keyed frames as they finish, the video encoded at the end)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from ..api import NO_REGIONS, Regions, Runtime, StyleParams, image_digest
from ..gatys.engine import Progress
from ..io.files import remembered_digest
from ..io.images import check_image_file, check_shape, header_size
from ..io.mirror import drop_local
from ..io.run_copies import release
from ..io.storage import Location, is_url, location
from ..io.video import even_size, is_video
from .chain import stylize_clips
from .clip import clip_source
from .frames import Frame
from .output import ClipOutput, check_output, output_here
from .params import VideoParams
from .part import clip_key, clip_part, kept_part


@dataclass
class VideoResult:
    """What `stylize_video_file` did."""

    output: Location
    frames: int
    fps: Fraction
    size: tuple[int, int]                    # of the frames (the video: even_size of it)
    resumed: int = 0                         # frames read back from an earlier run
    iterations: list[int] = field(default_factory=list)  # per frame optimized now
    seconds: float = 0.0                     # optimizing
    audio: bool = False

    @property
    def written_size(self) -> tuple[int, int]:
        """As written: H.264 in yuv420p has even sides; a folder of frames keeps them."""
        return even_size(self.size) if is_video(self.output) else self.size


def stylize_video_file(source: Location, styles: Sequence[Location], output: Location,
                       params: StyleParams = StyleParams(), video: VideoParams = VideoParams(),
                       runtime: Runtime | Callable[[], Runtime] | None = None,
                       on_start: Callable[[int], None] = lambda count: None,
                       on_frame: Callable[[Frame], None] = lambda f: None,
                       progress: Callable[[int], Progress | None] = lambda i: None,
                       regions: Regions = NO_REGIONS) -> VideoResult:
    """Stylize `source` (its --start..--end part, at --fps) with `styles` into `output`: a
    video (.mp4, .mov, .mkv: H.264 at --crf, the source's audio copied) or a folder of PNG
    frames. `on_start(frames)` is called once the inputs are checked, `on_frame` with each
    frame as it is done; `progress(i)` is frame i's progress. `regions`: masks of the
    frames' shape, the same for every frame. Any of the files may be URLs (io/storage.py):
    a video output in object storage is uploaded whole at the end, its frames as they
    finish (so that the same command resumes on any machine). `runtime` may be a function
    that starts one, called once the inputs are checked. An output video this job finished
    (its key inside) is done: nothing is made again. Each location is a path (str or Path)
    or a URL."""
    source, output, styles = location(source), location(output), [location(s) for s in styles]
    params.validate(n_styles=len(styles))
    regions.validate(len(styles), params)
    with kept_part(source, clip_part(source, video)) as part:  # an object's copy: kept
        for mask in regions.content_files():
            check_shape(mask, header_size(mask), part.info.size, "mask")
        for style in styles:
            check_image_file(style)
        check_output(source, styles, output)
        init = image_digest(params.init) if params.init_is_file else None
        runtime = runtime() if callable(runtime) else runtime or Runtime.start()
        key = clip_key(remembered_digest(part.info.path, runtime.cache, is_url(source)), part,
                       [image_digest(s) for s in styles], params, video, init,
                       regions.key(image_digest))
        clip = ClipOutput(part, output_here(output, runtime.cache), key)

        def finished(frame: Frame) -> None:
            clip.finished(frame)
            on_frame(frame)

        on_start(part.count)
        try:
            if (size := clip.whole_video()) is not None:  # done: the same command run again
                return VideoResult(output, part.count, part.fps, size, resumed=part.count,
                                   audio=part.info.has_audio)
            clip.folder.mkdir(parents=True, exist_ok=True)
            stylize_clips([clip_source(part, [str(s) for s in styles], max(video.temporal_frames),
                                       regions=regions)], params,
                          video, runtime, lambda _c, i: clip.done(i), finished,
                          lambda _c, i: progress(i), stores=lambda _c: clip.pass_store())
            clip.finish(video.crf)
            drop_local([clip.output])  # a video in object storage: there, not kept here too
        finally:
            if isinstance(output, str):  # this machine's copy of its folder: no longer in use
                release(clip.output.parent)
        made = [r for _, r in sorted(clip.records.items()) if not r.resumed]
        return VideoResult(output, part.count, part.fps, clip.size,
                           resumed=part.count - len(made), iterations=[r.iterations for r in made],
                           seconds=sum(r.seconds for r in made),
                           audio=part.info.has_audio and is_video(output))
