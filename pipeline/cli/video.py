"""`pipeline video`: a clip stylized frame by frame, each tied to the ones before it."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..accel.options import RuntimeOptions
from ..gatys.params import StyleParams
from ..gatys.region_params import Regions
from ..io.files import shown, use_cache
from ..io.storage import location, set_storage_options
from ..video.layout import frames_location
from ..video.params import VideoParams
from .app import Terminated, app, computing, only_warnings, reports_errors, say
from .options import DEVICE_OPTION, QUIET_OPTION, STORAGE_OPTION, with_options
from .progress import Pace, console, duration, format_losses, summary_table

if TYPE_CHECKING:
    from ..video.frames import Frame


@app.command()
@reports_errors
@with_options(params=StyleParams, regions=Regions, video=VideoParams, options=RuntimeOptions)
def video(
    source: str = typer.Argument(..., help="Input video: any file FFmpeg reads (a path, or "
                                 "an s3:// or other fsspec URL)."),
    styles: list[str] = typer.Argument(..., help="One or more style images (paths or URLs)."),
    output: str = typer.Option(..., "--output", "-o", help="Output video (.mp4, .mov or .mkv: "
                               "H.264 at --crf, the input's audio copied, written whole at "
                               "the end), or a folder for PNG frames; a path or a URL."),
    storage_option: list[str] = STORAGE_OPTION,
    device: str = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
    *,
    params: StyleParams,
    regions: Regions,
    video: VideoParams,
    options: RuntimeOptions,
) -> None:
    """Stylize SOURCE with STYLES into OUTPUT, frame by frame: each frame starts from the one
    before it warped by the optical flow and is held to it where the flow is consistent, so
    the result does not flicker. Stopped (Ctrl-C, a crash), the same command resumes at the
    first frame not yet done; run again once the video is made, it does nothing."""
    only_warnings(quiet)
    set_storage_options(storage_option)
    use_cache(options.cache)  # objects fetched before the runtime starts: there too
    with computing():
        from ..api import Runtime
        from ..video.file import stylize_video_file
    # Started once the inputs are checked (stylize_video_file): a wrong path fails first.
    runtime = functools.cache(lambda: Runtime.start(device, **dataclasses.asdict(options)))
    started = time.perf_counter()
    bar = Progress(TextColumn("{task.description}", style="bold"), BarColumn(),
                   MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[note]}"), console=console, disable=quiet)
    task = bar.add_task("frames", total=None, note="")
    pace = Pace(not quiet)

    def on_start(count: int) -> None:  # shown once the inputs are checked
        bar.update(task, total=count)
        if pace.live:
            bar.start()

    def on_frame(frame: Frame) -> None:
        note = ("from an earlier run" if frame.resumed
                else f"{frame.iterations} it, {format_losses(frame.losses)}")
        bar.update(task, advance=1, note=f"frame {frame.index}: {note}")
        done, count = bar.tasks[task].completed, bar.tasks[task].total
        if pace.due(done == count):
            say("frames", "bold", f"{done:.0f}/{count:.0f}, frame {frame.index}: {note}")

    try:
        result = stylize_video_file(location(source), [location(s) for s in styles],
                                    location(output), params, video, runtime, on_start,
                                    on_frame, regions=regions)
    except (KeyboardInterrupt, Terminated):
        bar.stop()
        say(f"stopped: the finished frames are in {shown(frames_location(location(output)))}; "
            "the same command resumes where it stopped", "yellow")
        raise
    finally:
        if bar.live.is_started:
            bar.stop()
    if quiet:
        return
    later = result.iterations[1:] if result.resumed == 0 else result.iterations
    table = summary_table("video")
    w, h = result.written_size
    table.add_row("output", f"{shown(result.output)} ({w}x{h}, "
                  f"{float(result.fps):g} fps{', audio copied' if result.audio else ''})")
    table.add_row("frames", f"{result.frames} ({result.resumed} from an earlier run)")
    rt = runtime()
    table.add_row("device", f"{rt.device} {rt.precision} ({rt.numerics})")
    if result.iterations and video.passes:
        mean = sum(result.iterations) / len(result.iterations)
        table.add_row("iterations", f"{mean:.0f} per frame over {video.passes} passes")
    elif result.iterations:
        said = [f"first {result.iterations[0]}"] if result.resumed == 0 else []
        if later:
            said.append(f"later frames {sum(later) / len(later):.0f} on average")
        table.add_row("iterations", ", ".join(said))
        table.add_row("optimize", f"{duration(result.seconds)} "
                      f"({3600 * len(result.iterations) / max(result.seconds, 1e-9):,.0f} "
                      "frames/hour)")
    table.add_row("total", duration(time.perf_counter() - started))
    console.print(table)


__all__ = ["video"]
