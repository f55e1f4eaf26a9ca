"""Where a video job's files are: the video we encode, or a folder of frames, and the
finished frames kept until the video is whole. Without torch: `pipeline status` and the
report read them."""

from __future__ import annotations

from pathlib import Path

from ..io.storage import Location, name, parent
from ..io.video import is_video

ENCODED = (".mp4", ".m4v", ".mov", ".mkv")


def frames_folder(output: Path) -> Path:
    """Where the frames go: the output itself when it is a folder, else beside it."""
    return output.with_name(output.name + ".frames") if is_video(output) else output


def frames_location(output: Location) -> Location:
    """Where the frames of `output` are kept until it is whole (a URL's: in the bucket)."""
    if isinstance(output, Path):
        return frames_folder(output)
    return f"{parent(output)}/{frames_folder(Path(name(output))).name}"


def frame_path(folder: Path, index: int) -> Path:
    return folder / f"frame_{index:06d}.png"


def frames_kept(folder: Path) -> int:
    """How many frames `folder` holds (their keys are checked when they are read back)."""
    return sum(1 for _ in folder.glob("frame_*.png"))
