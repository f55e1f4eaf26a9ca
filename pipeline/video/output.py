"""The output side of a video job, resumable: each finished frame is written at once as a PNG
carrying its key (clip.frame_key); a rerun reads back the frames that carry theirs and goes on
from the first one missing. The video is encoded from those frames only when all are there,
with the job's key in its metadata, then their folder (`OUT.frames/` beside a video output) is
removed: an output video is always a whole one, and a video carrying its key is done. With
--passes, each batch of each pass is kept there too (`passes/`), until the clip is finished."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..io.files import atomic_path, cache_dir, check_writable_dir, describe_os_error, overwrites
from ..io.images import nameless, open_keyed
from ..io.mirror import attach, borrowed, fetch_new, remove_tree, removed
from ..io.pixels import save_image
from ..io.storage import Location, check_store, name, parent
from ..io.video import even_size, is_video, probe, video_metadata, write_video
from .frames import Frame
from .layout import ENCODED, frame_path, frames_folder
from .part import ClipPart, frame_key
from .passes import Made, PassState, PassStore

log = logging.getLogger(__name__)
PASSES = "passes"  # the multi-pass scheme's batches of frames, a folder among the frames


def check_output(source: Location, styles: Sequence[Location], output: Location) -> None:
    """InputError before any work: an output that is neither a video we encode nor a folder,
    one over an input, or one where nothing can be written (a URL: its bucket is there)."""
    if overwrites(output, (source, *styles)):
        raise InputError(f"{output}: the output would overwrite one of the inputs")
    named = Path(name(str(output)))
    if nameless(named):  # `.mp4` is no folder of frames to make
        raise InputError(f"{output}: output has no name before its extension")
    if is_video(named) and named.suffix.lower() not in ENCODED:
        raise InputError(f"{output}: write {', '.join(ENCODED)} (H.264), or give a folder "
                         "for PNG frames")
    if named.suffix and not is_video(named):
        raise InputError(f"{output}: neither a video ({', '.join(ENCODED)}) nor a folder")
    if isinstance(output, str):
        check_store(output)
        return
    if is_video(output) and output.is_dir():
        raise InputError(f"{output}: is a folder; give a video file name")
    folder = output.parent if is_video(output) else output
    try:
        check_writable_dir(folder)
    except OSError as e:
        raise InputError(f"--output: {describe_os_error(e, folder)}") from None


def output_here(output: Location, cache: str | None) -> Path:
    """Where the frames and the video are written: the output itself, or for a URL this
    machine's copy of its folder (io/mirror.py), each file uploaded as it is written, with
    the frames an earlier run uploaded fetched first (a rerun anywhere resumes from them)."""
    if isinstance(output, Path):
        return output
    here = attach(parent(output), cache_dir(cache), (frames_folder(Path(name(output))).name,))
    return here / name(output)


class PassesNotKept(Exception):
    """A shared pass store could not be written (why, in words)."""


@dataclass
class FrameRecord:
    """What one output frame took (read back from its PNG for a frame of an earlier run)."""

    losses: dict[str, float]
    iterations: int
    seconds: float
    resumed: bool


@dataclass
class ClipOutput:
    """One clip's frames as they finish, and the video made of them at the end."""

    part: ClipPart
    output: Path
    key: str
    records: dict[int, FrameRecord] = field(default_factory=dict)
    size: tuple[int, int] = (0, 0)  # of the frames
    pass_write_failed: bool = False  # said once
    looked: bool = False  # for the frames another machine kept in the bucket

    @property
    def folder(self) -> Path:
        return frames_folder(self.output)

    def whole_video(self) -> tuple[int, int] | None:
        """The size of this job's video if an earlier run finished it (its key inside; in a
        bucket, read from there), else None."""
        if not is_video(self.output):
            return None
        try:
            with borrowed(self.output) as path:
                ours = video_metadata(path).get("job_key") == self.key
                return probe(path).size if ours else None
        except FileNotFoundError:
            return None

    def done(self, i: int) -> np.ndarray | None:
        """Frame i if an earlier run finished it (its PNG carries its key), here or, in a
        bucket, on another machine."""
        if not self.looked:
            fetch_new(self.folder)
            self.looked = True
        path = frame_path(self.folder, i)
        found = open_keyed(path, frame_key(self.key, i)) if path.is_file() else None
        if found is None:
            return None
        img, meta = found
        self.records[i] = FrameRecord(meta.get("losses", {}), meta.get("iterations", 0), 0.0,
                                      resumed=True)
        return np.array(img.convert("RGB"))

    def finished(self, frame: Frame) -> None:
        """Keep a frame just optimized (a read-back one is on disk already)."""
        self.size = (frame.pixels.shape[1], frame.pixels.shape[0])
        if frame.resumed:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        save_image(Image.fromarray(frame.pixels), frame_path(self.folder, frame.index),
                   {"job_key": frame_key(self.key, frame.index), "frame": frame.index,
                    "losses": frame.losses, "iterations": frame.iterations})
        self.records[frame.index] = FrameRecord(frame.losses, frame.iterations, frame.seconds,
                                                resumed=False)

    def pass_store(self, shared: bool = False) -> PassStore:
        """The clip's passes of the multi-pass scheme, kept beside its frames: one file per
        batch of frames, named by pass, first and last frame. `shared`: other workers need
        them (the pieces of bulk/pass_plan.py), so a write that fails raises."""
        return PassStore(self._load_passes,
                         lambda p, frames: self._save_passes(p, frames, shared),
                         self._read_pass, self._beyond)

    def _save_passes(self, p: int, frames: dict[int, Made], shared: bool) -> None:
        """As a checkpoint: a write that fails (disk full) is said once and let go, unless
        `shared`. Passes before the previous one are no one's neighbours any more: removed."""
        folder, order = self.folder / PASSES, sorted(frames)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / f"{p:03d}-{order[0]:06d}-{order[-1]:06d}.pt") as tmp:
                torch.save({"key": self.key, "pass": p, "frames": order,
                            "pixels": torch.from_numpy(np.stack([frames[i].pixels
                                                                 for i in order])),
                            "losses": json.dumps([frames[i].losses for i in order]),
                            "iterations": [frames[i].iterations for i in order],
                            "seconds": [frames[i].seconds for i in order]}, tmp)
        except OSError as e:
            if shared:
                raise PassesNotKept(describe_os_error(e, self.folder)) from e
            if not self.pass_write_failed:
                self.pass_write_failed = True
                log.warning("cannot keep the passes of %s (%s); going on without",
                            self.output.name, describe_os_error(e, self.folder))
            return
        for old in folder.glob("[0-9]*.pt"):  # not a temp file (".name...")
            if int(old.name.split("-")[0]) < p - 1:
                old.unlink(missing_ok=True)
                removed(old)

    def _kept(self, wanted: Callable[[int, int, int], bool], first_only: bool = False
              ) -> dict[int, dict[int, Made]]:
        """Frames by pass from the kept files that are whole, this job's, and `wanted(pass,
        first, last)` by their names (another job's are not resumed); `first_only`: from the
        first such file alone."""
        by_pass: dict[int, dict[int, Made]] = {}
        fetch_new(self.folder / PASSES)  # in a bucket: those other machines' workers kept
        for path in sorted((self.folder / PASSES).glob("[0-9]*.pt")):
            if first_only and by_pass:
                break
            span = [int(n) for n in path.stem.split("-")]
            if not wanted(span[0], span[1], span[-1] if len(span) > 2 else self.part.count):
                continue
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, pickle.UnpicklingError, EOFError):
                continue
            if saved.get("key") != self.key:
                continue
            pixels, losses = saved["pixels"].numpy(), json.loads(saved["losses"])
            by_pass.setdefault(saved["pass"], {}).update({
                i: Made(pixels[n], losses[n], saved["iterations"][n], saved["seconds"][n])
                for n, i in enumerate(saved["frames"])})
        return by_pass

    def _load_passes(self) -> PassState | None:
        """The last whole pass and what the next one has finished; None when none is kept."""
        by_pass = self._kept(lambda p, first, last: True)
        if not by_pass:
            return None
        whole = [p for p, made in by_pass.items() if len(made) == self.part.count]
        passes = max(whole) + 1 if whole else 0
        return PassState(passes, by_pass.get(passes - 1, {}), by_pass.get(passes, {}))

    def _beyond(self, p: int) -> bool:
        return bool(self._kept(lambda q, first, last: q > p, first_only=True))

    def _read_pass(self, p: int, frames: range) -> dict[int, Made]:
        """What pass p has finished of `frames` (only the files that may hold them read)."""
        found = self._kept(lambda q, first, last: q == p and first < frames.stop
                           and last >= frames.start).get(p, {})
        return {i: made for i, made in found.items() if i in frames}

    def finish(self, crf: int) -> None:
        """Encode the video from the frames (all there), then remove their folder; a folder
        output is finished as it is."""
        remove_tree(self.folder / PASSES)
        if not is_video(self.output):
            return
        write_video(self._frames(), self.output, self.part.fps, crf, self.part.info,
                    self.part.start, self.part.end, metadata=self.metadata())
        remove_tree(self.folder)

    def metadata(self) -> dict[str, Any]:
        return {"job_key": self.key, "frames": self.part.count, "fps": str(self.part.fps)}

    def _frames(self) -> Iterator[np.ndarray]:
        for i in range(self.part.count):
            with Image.open(frame_path(self.folder, i)) as img:
                rgb = np.asarray(img.convert("RGB"))
            w, h = even_size((rgb.shape[1], rgb.shape[0]))
            yield np.ascontiguousarray(rgb[:h, :w])
